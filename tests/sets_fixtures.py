"""Tiny generated copies of the published layouts of ImageNet-V2, ImageNet-Sketch, the ImageNet val set (for
ReaL) and the cue-conflict stimuli, for the robustness test-set tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random RGB image (upsampled 8×8 noise: small PNGs even at 224 px)."""
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return small.resize((size, size), Image.BILINEAR)


def write_v2(root: Path, classes=(2, 10, 999), per_class: int = 2, seed: int = 0) -> Path:
    """``root/<class index>/<i>.jpeg`` as ImageNet-V2 matched-frequency is published."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _image(rng, 40).save(root / str(c) / f"{i:040x}.jpeg")
    return root


def write_wnid_folder(root: Path, wnids=("n01443537", "n15075141"), per_class: int = 2, seed: int = 1,
                      names=None) -> Path:
    """``root/<wnid>/<name>``: ImageNet-Sketch's (and ImageNet val's) layout; ``names`` the file names per
    class (default ``<wnid>_<i>.JPEG``)."""
    rng = np.random.default_rng(seed)
    for k, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for name in (names[k] if names else [f"{wnid}_{i}.JPEG" for i in range(per_class)]):
            _image(rng, 40).save(root / wnid / name, format="JPEG")
    return root


def write_val(root: Path, numbers_per_class=((1, 5, 9), (2, 50000)), wnids=("n01443537", "n15075141")) -> Path:
    """An ImageNet val folder: ``root/<wnid>/ILSVRC2012_val_<number:08d>.JPEG``."""
    names = [[f"ILSVRC2012_val_{n:08d}.JPEG" for n in numbers] for numbers in numbers_per_class]
    return write_wnid_folder(root, wnids, names=names, seed=2)


def write_real(path: Path, labels: dict[int, list[int]]) -> Path:
    """A ``real.json``: 50,000 label lists in val order, ``labels`` {val number (1-based): list}, others []."""
    entries = [[] for _ in range(50000)]
    for number, classes in labels.items():
        entries[number - 1] = list(classes)
    path.write_text(json.dumps(entries))
    return path


CUE_STIMULI = {"airplane": ["airplane1-bicycle2.png", "airplane2-airplane1.png", "airplane3-cat1.png"],
               "cat": ["cat1-knife3.png", "cat2-cat2.png"],
               "knife": ["knife1-oven2.png", "knife2-dog1.png"]}


def write_cue_conflict(root: Path, stimuli=CUE_STIMULI, size: int = 224, seed: int = 3) -> Path:
    """``root/<shape category>/<shape><n>-<texture><m>.png`` of ``size`` px, as the stimuli are published."""
    rng = np.random.default_rng(seed)
    for folder, names in stimuli.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            _image(rng, size).save(root / folder / name)
    return root
