"""ImageNet-V2 and ImageNet-Sketch on disk, and how a pass lists its images and labels.

Each pass reads its folder with one of four label rules (``Pass.labels``):

- ``"run"``: the run's class index (``--class-map``): clean images, ImageNet-C/A/R.
- ``"imagenet"``: wnid folders through timm's ImageNet class index, whatever ``--class-map`` says:
  ImageNet-Sketch (Wang et al. 2019; the release's ``sketch/<wnid>/*.JPEG``).
- ``"v2"``: folders named by class index, label = ``int(folder)`` (not the sorted order, in which "10"
  comes before "2"): ImageNet-V2 (Recht et al. 2019; ``imagenetv2-matched-frequency-format-val/<0..999>/``).
- ``"cue-conflict"``: the shape category folders of the cue-conflict stimuli (``robustness.cue_conflict``),
  with the texture category as each image's extra label.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from classification.data import ImageFolderSet, build_class_index
from robustness import cue_conflict as cue

LABELS = ("run", "imagenet", "v2", "cue-conflict")
V2_LAYOUT = "DIR/<class index 0..999>/*.jpeg (the release's imagenetv2-matched-frequency-format-val folder)"
SKETCH_LAYOUT = "DIR/<wnid>/*.JPEG, e.g. DIR/n01440764/ (the release's sketch folder)"
FLAGS = {"imagenet": "--imagenet-sketch", "v2": "--imagenet-v2", "cue-conflict": "--cue-conflict"}


@dataclass
class Listing:
    """A pass's images: ``samples`` (path, label), the sorted labels present, the folder, and per image
    extra labels (``targets``, int64 (N, L), or None): the texture category (cue-conflict) or the ReaL labels."""

    samples: list[tuple[str, int]]
    classes: list[int]
    root: str
    targets: torch.Tensor | None = None


def v2_index() -> dict[str, int]:
    """ImageNet-V2's folder names → class index: "0".."999" → 0..999."""
    return {str(i): i for i in range(1000)}


def check_v2(root: str | os.PathLike) -> list[str]:
    """Check an ImageNet-V2 folder (one-line errors naming --imagenet-v2); returns notes on missing classes."""
    return _check_folders("--imagenet-v2", root, v2_index(), V2_LAYOUT, "are not class indices 0..999")


def check_sketch(root: str | os.PathLike) -> list[str]:
    """Check an ImageNet-Sketch folder (one-line errors naming --imagenet-sketch); returns notes on missing classes."""
    return _check_folders("--imagenet-sketch", root, build_class_index("imagenet", None), SKETCH_LAYOUT,
                          "are not ImageNet wnids")


def _check_folders(flag: str, root: str | os.PathLike, index: dict[str, int], layout: str, what: str) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag} folder {root} does not exist (expected {layout})")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    bad = [f for f in folders if f not in index]
    if bad or not folders:
        inner = root / folders[0] if len(folders) == 1 else None
        hint = f"; point {flag} at {inner}?" if inner is not None and any(d.is_dir() for d in inner.iterdir()) else ""
        found = f"folder(s) {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} {what}" if bad else "no class folders"
        raise ValueError(f"{flag} {root}: {found}; expected {layout}{hint}")
    ImageFolderSet(root, index, 8, 1.0)  # raises when the folders hold no image
    if len(folders) < 1000:
        return [f"{flag} {root} has {len(folders)} of the 1000 class folders: scored over all 1000 classes"]
    return []


def list_pass(labels: str, root: str, run_index: dict[str, int], limit: int | None) -> Listing:
    """The images of a pass over ``root`` with label rule ``labels`` (see the module doc); ``limit``: an
    evenly spread subset."""
    if labels == "cue-conflict":
        samples, textures = cue.stimuli(root, limit)
        return Listing(samples, sorted({label for _, label in samples}), str(Path(root)), cue.texture_targets(textures))
    indices = {"run": lambda: run_index, "imagenet": lambda: build_class_index("imagenet", None), "v2": v2_index}
    if labels not in indices:
        raise KeyError(f"unknown pass label rule {labels!r}: choose from {LABELS}")
    listing = ImageFolderSet(root, indices[labels](), 8, 1.0, limit=limit)
    return Listing(listing.samples, listing.classes, str(listing.root))


def check_outputs(labels: str, model: str, num_outputs: int) -> None:
    """ImageNet-V2, -Sketch and the cue-conflict categories are ImageNet-1k classes: other heads are an error."""
    if labels in FLAGS and num_outputs != 1000:
        raise ValueError(f"{FLAGS[labels]} needs a 1000-class ImageNet model (its labels are ImageNet classes); "
                         f"{model} has {num_outputs} outputs")
