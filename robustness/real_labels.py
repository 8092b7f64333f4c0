"""ImageNet ReaL labels (Beyer et al. 2020, "Are we done with ImageNet?"): re-assessed multi-label val labels.

``real.json`` is a JSON list of 50,000 label lists in val-file order: entry i belongs to
``ILSVRC2012_val_{i+1:08d}.JPEG``. A prediction is right when it is any of the image's labels; images
with an empty list are left out (``n`` counts the labelled images only). Top-5 as timm's
``RealLabelsImagenet``: right when any of the 5 best classes is among the labels. Images are matched by
file name, as timm does (the stem ``ILSVRC2012_val_<8 digits>``; any image extension).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import torch

VARIANT = "real"  # the ReaL cell of the clean pass: CellKey(model, "imagenet", variant="real")
VAL_IMAGES = 50_000
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")


def read_labels(path: str | os.PathLike) -> list[list[int]]:
    """The label lists of ``real.json``; a missing file or another content is an error naming --imagenet-real."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--imagenet-real file {path} does not exist (expected real.json: a JSON list of "
                                f"{VAL_IMAGES:,} label lists in val-file order)")
    return _read(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read(path: str, size: int, mtime_ns: int) -> list[list[int]]:
    expected = f"expected real.json: a JSON list of {VAL_IMAGES:,} lists of ImageNet class indices 0..999"
    try:
        labels = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"--imagenet-real {path} is not JSON ({err}); {expected}") from None
    ok = isinstance(labels, list) and len(labels) == VAL_IMAGES and all(
        isinstance(entry, list) and all(isinstance(c, int) and 0 <= c < 1000 for c in entry) for entry in labels)
    if not ok:
        size_text = f"{len(labels):,} entries" if isinstance(labels, list) else type(labels).__name__
        raise ValueError(f"--imagenet-real {path} holds {size_text} that are not all label lists; {expected}")
    return labels


def identity(path: str | os.PathLike) -> dict[str, str]:
    """The labels file as a cell option: absolute path and a hash of its content (a changed file recomputes)."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


def val_number(path: str | os.PathLike) -> int | None:
    """The 1-based number of an ILSVRC2012 val file (``ILSVRC2012_val_00000042.JPEG`` → 42), else None."""
    match = _VAL_NAME.match(Path(path).stem)
    number = int(match.group(1)) if match else 0
    return number if 1 <= number <= VAL_IMAGES else None


def check_names(paths: list[str]) -> None:
    """Every --data image must be an ILSVRC2012 val file: ReaL labels are matched by file name."""
    for p in paths:
        if val_number(p) is None:
            raise ValueError(f"--imagenet-real: --data image {p} is not an ILSVRC2012 val file "
                             "(ILSVRC2012_val_00000001.JPEG … ILSVRC2012_val_00050000.JPEG): ReaL labels are matched "
                             "by file name; point --data at the ImageNet val set or drop --imagenet-real")


def targets(paths: list[str], labels: list[list[int]]) -> torch.Tensor:
    """int64 (N, L): the ReaL labels of each image, padded with −1 (L ≥ 1; an unlabelled image is all −1)."""
    check_names(paths)
    rows = [labels[val_number(p) - 1] for p in paths]
    width = max([1, *map(len, rows)])
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.int64).reshape(-1, width)


def real_counts(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 (3,) [labelled images, top-1 right, top-5 right] of a batch: ``rows`` (B, L) its padded labels."""
    labelled = (rows >= 0).any(-1)
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, 5)
    hit = (top[:, :, None] == rows[:, None, :]) & (rows[:, None, :] >= 0)  # (B, 5, L)
    top1 = hit[:, 0].any(-1) & labelled
    top5 = hit.any(-1).any(-1) & labelled
    return torch.stack([labelled.sum(), top1.sum(), top5.sum()]).long()
