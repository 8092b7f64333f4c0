"""Tiny generated ImageFolder sets for the robustness tests: random 36 px PNGs, ``per_class`` per class folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["ant", "bee", "cat"]


def write_folder(root: Path, names=CLASSES, per_class: int = 3, seed: int = 0) -> Path:
    """``root/<name>/<i>.png`` for every name; returns ``root``."""
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root
