"""Accuracy on the IN-9 variants and the BG-gap (Xiao et al. 2021), sharded with exact totals.

A model's top-1 output is mapped to IN-9 through :func:`layout.output_map` (−1: outside IN-9, always
wrong). BG-gap = accuracy(mixed_same) − accuracy(mixed_rand), in percentage points.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from classification.data import make_loader
from common.autocast import autocast
from robustness.background import layout
from robustness.metrics import reduce_counts

Predict = Callable[[torch.Tensor], torch.Tensor]


class VariantSet(Dataset):
    """The images of one IN-9 variant, unresized: items ``(uint8 (3,H,W), label 0..8, index)``."""

    def __init__(self, root: str | os.PathLike, variant: str) -> None:
        self.samples = layout.variant_samples(root, variant)
        layout.check_sizes([s.path for s in self.samples], variant)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        return layout.read_image(sample.path), sample.label, index


def in9_predictor(model: nn.Module, out_map: torch.Tensor, amp: bool = False) -> Predict:
    """float (B,3,H,W) [0,1] → int64 (B,) IN-9 labels (−1 outside IN-9): top-1 of ``model`` mapped by ``out_map``."""
    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(images.device, amp):
            logits = model(images)
        return out_map.to(logits.device)[logits.float().argmax(1)]
    return predict


def evaluate_variant(predict: Predict, root: str | os.PathLike, variant: str, device: torch.device,
                     batch_size: int = 64, num_workers: int = 2, progress: bool = False) -> tuple[int, int]:
    """(images, correct) on ``<root>/<variant>/val``, summed over processes."""
    loader = make_loader(VariantSet(root, variant), batch_size, num_workers, pin_memory=device.type == "cuda")
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    for images, labels, _ in tqdm(loader, desc=f"IN-9 {variant}", disable=not progress, leave=False):
        images = images.to(device, non_blocking=True).float().div_(255)
        pred = predict(images)
        counts[0] += labels.numel()
        counts[1] += (pred == labels.to(device)).sum()
    n, correct = reduce_counts(counts).tolist()
    return n, correct


def bg_gap(accuracies: dict[str, float | None]) -> float | None:
    """accuracy(mixed_same) − accuracy(mixed_rand) in points; None unless both were evaluated."""
    same, rand = accuracies.get("mixed_same"), accuracies.get("mixed_rand")
    return None if same is None or rand is None else same - rand
