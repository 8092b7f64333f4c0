"""Pixel-space wrapper: models that take [0, 1] images and normalise inside.

Attacks (FGSM/PGD) and corruptions work in pixel space, so every model used downstream is
wrapped once here instead of normalising at each call site.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

__all__ = ["NormalizedModel", "create_pixel_model"]


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` for ``x`` of shape ``(B, C, H, W)`` with values in [0, 1].

    ``mean``/``std`` default to ``model.pretrained_cfg`` (ImageNet's when the model has none).
    The wrapped model is ``.model``; the statistics are non-persistent buffers, so the
    wrapper's ``state_dict`` is the model's (under ``model.``) and follows ``.to(device)``.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        std = tuple(std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD))
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"need one positive std per mean channel, got mean={mean}, std={std}")
        self.model = model
        self.register_buffer("mean", rearrange(torch.tensor(mean, dtype=torch.float32), "c -> 1 c 1 1"), persistent=False)
        self.register_buffer("std", rearrange(torch.tensor(std, dtype=torch.float32), "c -> 1 c 1 1"), persistent=False)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def create_pixel_model(name: str, **kwargs: Any) -> NormalizedModel:
    """``NormalizedModel(pit.create_model(name, **kwargs))``: same arguments, [0, 1] input."""
    from pit.factory import create_model

    return NormalizedModel(create_model(name, **kwargs))
