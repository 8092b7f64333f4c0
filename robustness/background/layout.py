"""The ImageNet-9 (IN-9) test-set layout of the Background Challenge and how its files are read.

Layout (MadryLab/backgrounds_challenge release): ``<root>/<variant>/val/<class>/<image>`` for the
variants in :data:`VARIANTS`, and the foreground masks ``<root>/fg_mask/val/<class>/<stem>.npy`` of the
``original`` images. Class folders are the nine of :data:`IN9_CLASSES` (class index = position).
Images are read like the authors' ``transforms.ToTensor()``: no resize, no crop; we keep them as
uint8 (3, H, W) and divide by 255 on the device (the same floats). Masks are (H, W) arrays,
foreground where nonzero after the authors' ``astype(uint8)`` (so fractions below 1 are background).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from classification.data import IMG_EXTENSIONS

IN9_CLASSES = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
               "06_musical instrument", "07_primate", "08_fish")
VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
BACKGROUNDS = "only_bg_t"  # the challenge's backgrounds
MASKS = "fg_mask"


@dataclass(frozen=True)
class Sample:
    """One image of a variant: its path, IN-9 label (0..8) and key ``"<class>/<file>"``."""

    path: str
    label: int
    key: str


@dataclass(frozen=True)
class Foreground:
    """One challenge foreground: an ``original`` image and its mask, IN-9 label (0..8), key ``"<class>/<file>"``."""

    image: str
    mask: str
    label: int
    key: str


def in_to_in9() -> torch.Tensor:
    """int64 (1000,): IN-9 class of each ImageNet-1k class, −1 outside IN-9 (the authors' ``in_to_in9.json``)."""
    table = json.loads(resources.files(__package__).joinpath("in_to_in9.json").read_text())
    return torch.tensor([table[str(i)] for i in range(1000)], dtype=torch.int64)


def output_map(num_outputs: int, class_map: list[int] | None = None) -> torch.Tensor:
    """int64 (num_outputs,): the IN-9 class (or −1) of each model output.

    ``class_map`` given: used as is (e.g. a model trained on a generated set). Otherwise a 1000-class
    model is mapped through ``in_to_in9.json`` and a 9-class model is an IN-9 classifier (identity).
    """
    if class_map is not None:
        table = torch.as_tensor(class_map, dtype=torch.int64)
        if table.shape != (num_outputs,) or table.min() < -1 or table.max() >= len(IN9_CLASSES):
            raise ValueError(f"class_map needs one IN-9 index in -1..8 per model output ({num_outputs}), got {class_map}")
        return table
    if num_outputs == 1000:
        return in_to_in9()
    if num_outputs == len(IN9_CLASSES):
        return torch.arange(len(IN9_CLASSES))
    raise ValueError(f"IN-9 needs a 1000-class ImageNet model or a 9-class IN-9 model, this one has {num_outputs} "
                     "outputs: drop --num-classes or evaluate another model")


def _class_dirs(folder: Path) -> list[tuple[Path, int]]:
    """(class folder, IN-9 label) under ``folder``, sorted; an unknown folder name is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"IN-9: missing folder {folder} (expected <root>/<variant>/val/<class>/)")
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in dirs if d.name not in IN9_CLASSES]
    if unknown:
        raise ValueError(f"IN-9: unknown class folder(s) {unknown} in {folder}: expected names from {list(IN9_CLASSES)}")
    if not dirs:
        raise ValueError(f"IN-9: {folder} has no class folders (expected {list(IN9_CLASSES)})")
    return [(d, IN9_CLASSES.index(d.name)) for d in dirs]


def variant_samples(root: str | os.PathLike, variant: str) -> list[Sample]:
    """The images of ``<root>/<variant>/val`` in file order (classes, then file names)."""
    samples = []
    for folder, label in _class_dirs(Path(root) / variant / "val"):
        samples += [Sample(str(f), label, f"{folder.name}/{f.name}") for f in sorted(folder.iterdir())
                    if f.suffix.lower() in IMG_EXTENSIONS]
    if not samples:
        raise ValueError(f"IN-9: no images under {Path(root) / variant / 'val'}")
    return samples


def present_variants(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(variants present under ``root``, notes for the missing ones); ``root`` itself must exist."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IN-9 folder {root} does not exist (expected <root>/<variant>/val/<class>/)")
    present = [v for v in VARIANTS if (root / v / "val").is_dir()]
    notes = [f"IN-9 variant {v!r} not found under {root} (no {v}/val/): skipped" for v in VARIANTS if v not in present]
    return present, notes


def challenge_foregrounds(root: str | os.PathLike, limit: int | None = None) -> list[Foreground]:
    """The ``original`` images with their masks, in file order; ``limit``: the first N per class."""
    root = Path(root)
    mask_root = root / MASKS / "val"
    out: list[Foreground] = []
    per_class: dict[int, int] = {}
    for sample in variant_samples(root, "original"):
        if limit is not None and per_class.get(sample.label, 0) >= limit:
            continue
        per_class[sample.label] = per_class.get(sample.label, 0) + 1
        mask = mask_root / IN9_CLASSES[sample.label] / (Path(sample.path).stem + ".npy")
        if not mask.is_file():
            raise FileNotFoundError(f"IN-9: foreground {sample.path} has no mask {mask} (the challenge needs "
                                    f"<root>/{MASKS}/val/<class>/<stem>.npy for every original image)")
        out.append(Foreground(sample.path, str(mask), sample.label, sample.key))
    return out


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    with Image.open(path) as img:
        return img.height, img.width


def check_sizes(paths: list[str], what: str) -> tuple[int, int]:
    """The common (H, W) of ``paths``; a file of another size is an error naming it."""
    size = image_size(paths[0])
    for p in paths[1:]:
        other = image_size(p)
        if other != size:
            raise ValueError(f"IN-9: {what}: {p} is {other[1]}x{other[0]} but {paths[0]} is {size[1]}x{size[0]}: "
                             "all images must have the same size (the release's are 224x224)")
    return size


def read_image(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB pixels of ``path``, unresized."""
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB"))


def read_mask(path: str, size: tuple[int, int]) -> torch.Tensor:
    """bool (H, W) foreground mask (True = foreground) from a ``.npy`` file; its shape must be ``size``."""
    array = np.load(path, allow_pickle=False)
    if array.shape != tuple(size):
        raise ValueError(f"IN-9: mask {path} has shape {array.shape}, its image is {tuple(size)}: masks are (H, W)")
    return torch.from_numpy(array.astype(np.uint8) != 0)
