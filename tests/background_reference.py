"""An independent, straightforward re-implementation of the authors' Background Challenge loop
(MadryLab/backgrounds_challenge ``challenge_eval.py`` + ``tools/model_utils.adv_bgs_eval_model``), for
tests and the benchmark: one foreground at a time, backgrounds in file order through a torchvision
``ImageFolder`` + ``ToTensor`` loader in batches of 32, stop at the first batch with a wrong prediction.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def reference_challenge(model: Callable[[torch.Tensor], torch.Tensor], root: str | os.PathLike,
                        map_pred: Callable[[int], int], batch_size: int = 32,
                        limit: int | None = None) -> tuple[int, int, int]:
    """(vulnerable foregrounds, foregrounds, forward passes) of the authors' loop.

    ``model``: float (B,3,H,W) [0,1] → logits; ``map_pred``: model class → IN-9 class (−1 outside).
    ``limit``: the first N masks per class.
    """
    root = Path(root)
    bg_set = datasets.ImageFolder(str(root / "only_bg_t" / "val"), transform=transforms.ToTensor())
    bg_loader = DataLoader(bg_set, batch_size=batch_size, shuffle=False)
    mask_base = root / "fg_mask" / "val"
    class_names = sorted(os.listdir(mask_base))
    vulnerable = computed = passes = 0
    for fg_class, class_name in enumerate(class_names):
        for mask_name in sorted(os.listdir(mask_base / class_name))[:limit]:
            mask = np.load(mask_base / class_name / mask_name)
            mask = np.tile(mask[:, :, np.newaxis], [1, 1, 3]).astype("uint8")
            mask = transforms.ToTensor()(Image.fromarray(mask * 255))
            stem = mask_name[:-len(".npy")]
            image_path = next((root / "original" / "val" / class_name).glob(stem + ".*"))
            image = transforms.ToTensor()(Image.open(image_path).convert("RGB"))
            is_adv = False
            for inp, _ in bg_loader:
                combined = inp * (1 - mask) + mask * image
                with torch.no_grad():
                    output = model(combined)
                passes += 1
                preds = [map_pred(int(p)) for p in output.argmax(1)]
                if any(p != fg_class for p in preds):
                    is_adv = True
                    break
            vulnerable += is_adv
            computed += 1
    return vulnerable, computed, passes
