"""Robustness datasets on top of ``classification.data``: ImageNet-C on disk
(``<root>/<corruption>/<severity>/<wnid>/*.JPEG``) and the 200-class masks of ImageNet-A/R."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from classification.data import (  # noqa: F401  (the robustness suite's view of the shared data layer)
    IMG_EXTENSIONS, ImageFolderSet, ShardSampler, build_class_index, class_folders, eval_transform, make_loader,
    skip_none_collate, to_float,
)


def imagenet_c_root(root: str | os.PathLike, corruption: str, severity: int) -> Path:
    """``<root>/<corruption>/<severity>``, with an error naming what exists when it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C folder {root} does not exist")
    path = root / corruption / str(severity)
    if not path.is_dir():
        present = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise FileNotFoundError(f"ImageNet-C: missing {path} (expected <root>/<corruption>/<severity>/<wnid>/*.JPEG; "
                                f"corruptions present: {present or 'none'})")
    return path


def class_mask(classes: list[int], num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Bool (num_classes,) mask, True for the classes present; None when every class is present."""
    if len(classes) == num_classes:
        return None
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.tensor(classes, device=device)] = True
    return mask
