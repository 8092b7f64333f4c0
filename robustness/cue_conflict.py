"""The cue-conflict stimuli of Geirhos et al. (ICLR 2019): their 16 categories, ImageNet classes and layout.

Layout (the texture-vs-shape / model-vs-human release): ``<root>/<shape category>/<shape><n>-<texture><m>.png``,
e.g. ``airplane/airplane1-bicycle2.png`` (an airplane's shape in a bicycle's texture); 1,280 PNGs of
224×224 pixels. An image's shape category is its folder, its texture category the part of the file name
after the last ``-`` without digits (a prefix up to the last ``_`` is ignored, as model-vs-human does).

``CATEGORY_CLASSES`` is the ImageNet-1k class indices of each category, the lists model-vs-human decides
with (``helper/human_categories.py``, the ``<category>_indices`` lists; see docs/robustness.md).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from PIL import Image

CATEGORIES = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog",
              "elephant", "keyboard", "knife", "oven", "truck")  # sorted: a category's index is its position
SIZE = 224  # the stimuli's pixels; fed to the model unresized (model-vs-human: no resize, no crop at 224 px)


def _spans(*spans: int | tuple[int, int]) -> tuple[int, ...]:
    """Class indices from single indices and inclusive (first, last) runs."""
    out: list[int] = []
    for s in spans:
        out += list(range(s[0], s[1] + 1)) if isinstance(s, tuple) else [s]
    return tuple(out)


CATEGORY_CLASSES: dict[str, tuple[int, ...]] = {
    "airplane": _spans(404),
    "bear": _spans((294, 297)),
    "bicycle": _spans(444, 671),
    "bird": _spans(8, (10, 16), (18, 20), (22, 24), (80, 83), (87, 96), (98, 100), (127, 133), (135, 145)),
    "boat": _spans(472, 554, 625, 814, 914),
    "bottle": _spans(440, 720, 737, 898, 899, 901, 907),
    "car": _spans(436, 511, 817),
    "cat": _spans((281, 286)),
    "chair": _spans(423, 559, 765, 857),
    "clock": _spans(409, 530, 892),
    "dog": _spans((152, 191), (193, 203), (205, 226), (228, 241), (243, 250), (252, 257), 259, (261, 263),
                  (265, 268)),
    "elephant": _spans(385, 386),
    "keyboard": _spans(508, 878),
    "knife": _spans(499),
    "oven": _spans(766),
    "truck": _spans(555, 569, 656, 675, 717, 734, 864, 867),
}
LAYOUT = "DIR/<shape category>/<shape><n>-<texture><m>.png (e.g. airplane/airplane1-bicycle2.png)"
_NAME = re.compile(r"^(?:.*_)?([a-z]+)\d+-([a-z]+)\d+$")


def texture_category(path: str | os.PathLike) -> str:
    """The texture category named by a stimulus file (``airplane1-bicycle2.png`` → ``bicycle``)."""
    match = _NAME.match(Path(path).stem)
    if not match or match.group(2) not in CATEGORIES:
        raise ValueError(f"--cue-conflict: {path} is not named <shape><n>-<texture><m>.png with two of the 16 "
                         f"categories (expected {LAYOUT})")
    return match.group(2)


def stimuli(root: str | os.PathLike, limit: int | None = None) -> tuple[list[tuple[str, int]], list[int]]:
    """(samples ``(path, shape category index)`` in file order, texture category index of each); ``limit``:
    an evenly spread subset. Raises FileNotFoundError / ValueError (one line, naming --cue-conflict)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--cue-conflict folder {root} does not exist (expected {LAYOUT})")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [f for f in folders if f not in CATEGORIES]
    if unknown or not folders:
        found = f"found folder(s) {unknown[:3]}" if unknown else "found no category folder"
        raise ValueError(f"--cue-conflict {root}: {found}; expected the 16 category folders "
                         f"{', '.join(CATEGORIES)} ({LAYOUT})")
    samples, textures = [], []
    for folder in folders:
        for f in sorted((root / folder).iterdir()):
            if f.suffix.lower() != ".png" or f.name.startswith("."):
                continue
            match = _NAME.match(f.stem)
            if match and match.group(1) != folder:
                raise ValueError(f"--cue-conflict: {f} names shape {match.group(1)!r} but lies in folder {folder!r} "
                                 f"(expected {LAYOUT})")
            textures.append(CATEGORIES.index(texture_category(f)))
            samples.append((str(f), CATEGORIES.index(folder)))
    if not samples:
        raise ValueError(f"--cue-conflict {root}: no PNG stimuli found (expected {LAYOUT})")
    if limit is not None and limit < len(samples):
        keep = [i * len(samples) // limit for i in range(limit)]
        samples, textures = [samples[i] for i in keep], [textures[i] for i in keep]
    return samples, textures


def check_stimuli(root: str | os.PathLike) -> None:
    """Check the layout, the file names and that every stimulus is 224×224 (read from the file headers)."""
    for path, _ in stimuli(root)[0]:
        with Image.open(path) as img:
            if img.size != (SIZE, SIZE):
                raise ValueError(f"--cue-conflict: {path} is {img.width}x{img.height}; the stimuli are {SIZE}x{SIZE} "
                                 "PNGs, fed to the model at their pixels (point --cue-conflict at the release's "
                                 "224-px stimuli)")


def texture_targets(textures: list[int]) -> torch.Tensor:
    """int64 (N, 1): each image's texture category, the per-image extra label of a cue-conflict pass."""
    return torch.tensor(textures, dtype=torch.int64).reshape(-1, 1)
