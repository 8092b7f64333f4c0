"""The demo classifiers' training recipe, and the tuning split it was chosen on.

Both classifiers (PiT-Ti and DeiT-Ti, the paper's matched-cost pair) train with the same recipe, as the
paper's Table 1 compares matched training. The recipe was chosen on a tuning split cut from the demo's
*train* images (``tuning_split``: the last images of every train class held out as tuning-val), never on
the demo's val split; docs/demo.md holds every tuning run. What was chosen and why (``RECIPE_WHY``):
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classification.data import class_folders


@dataclass(frozen=True)
class ClassifierRecipe:
    """How each demo classifier trains (``classification.train.ClassifierTrainConfig`` fields)."""

    img_size: int = 64
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    warmup_epochs: float = 1.0
    amp: bool = False  # bfloat16 autocast where the CPU computes it natively (common.autocast.fast_autocast)

    def uses_amp(self, device: str) -> bool:
        """Whether this recipe trains under autocast on ``device``."""
        from common.autocast import fast_autocast

        return self.amp and fast_autocast(device)

    def train_kwargs(self, device: str) -> dict[str, Any]:
        """Fields of ``ClassifierTrainConfig`` (all but model, data, out and the run's own options)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "img_size": self.img_size, "lr": self.lr,
                "warmup_epochs": self.warmup_epochs, "amp": self.uses_amp(device)}


def tuning_split(root: str | Path, out: str | Path, held_out_per_class: int) -> Path:
    """An ImageFolder (``train/``, ``val/``) of symbolic links made from ``root/train`` alone: in every class
    folder the last ``held_out_per_class`` images (sorted by name) become tuning-val, the others tuning-train.
    ``root/val`` is never read. Returns ``out``; an existing ``out`` is reused as it is."""
    root, out = Path(root), Path(out)
    if (out / "val").is_dir():
        return out
    tmp = out.with_name(out.name + ".partial")
    for folder in class_folders(root / "train"):
        files = sorted(p for p in (root / "train" / folder).iterdir() if p.is_file())
        if len(files) <= held_out_per_class:
            raise ValueError(f"{root / 'train' / folder} has {len(files)} images: cannot hold out "
                             f"{held_out_per_class} and still train")
        cut = len(files) - held_out_per_class
        for split, part in (("train", files[:cut]), ("val", files[cut:])):
            (tmp / split / folder).mkdir(parents=True, exist_ok=True)
            for f in part:
                link = tmp / split / folder / f.name
                if not link.exists():
                    os.symlink(f.resolve(), link)
    os.replace(tmp, out)
    return out


# The report's paragraph on the recipe (docs/demo.md holds the tuning runs and their numbers).
CLASSIFIER_WHY = "Recipe chosen on a tuning split (TODO)."
