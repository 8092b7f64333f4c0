"""PiT: Pooling-based Vision Transformers (Heo et al., ICCV 2021). TEMPORARY STUB, replaced by the pit/ work."""
from __future__ import annotations

import timm
import torch
from torch import nn


def create_model(name: str, weights: str | None = None, num_classes: int | None = None, img_size=None,
                 pretrained: bool = False, **kwargs) -> nn.Module:
    """Stub: builds any timm model; the real factory also loads ``weights``."""
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=pretrained, **kwargs)


class NormalizedModel(nn.Module):
    """Stub: takes [0,1] images and normalises inside."""

    def __init__(self, model: nn.Module, mean=None, std=None) -> None:
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = mean or cfg.get("mean", (0.485, 0.456, 0.406))
        std = std or cfg.get("std", (0.229, 0.224, 0.225))
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def create_pixel_model(name: str, **kwargs) -> NormalizedModel:
    return NormalizedModel(create_model(name, **kwargs))
