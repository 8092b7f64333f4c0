"""The suite's one top-k: counts of samples whose label is among the k largest logits."""
from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k.

    logits (B, K) (masked classes set to -inf beforehand), labels (B,) int64 → int64 tensor (len(ks),)
    on the logits' device. k larger than K is clamped to K.
    """
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(labels[:, None])
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]).to(torch.int64)
