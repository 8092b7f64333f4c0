"""Noise corruptions (ImageNet-C parameters). Input/output: (B, 3, H, W) float in [0, 1]."""

from __future__ import annotations

import torch

from ._filters import normal, poisson, uniform


def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return normal(x.shape, 0.0, c, x, generator).to(x.dtype).add_(x)


def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c = [60, 25, 12, 5, 3][severity - 1]
    return poisson(x.float() * c, generator).to(x.dtype) / c


def impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Salt-and-pepper (skimage ``random_noise(mode='s&p', amount=c)``): a fraction c of values set to 0 or 1."""
    c = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    # one draw u: u < c hits the pixel and, given a hit, u < c / 2 is a fair coin for salt vs pepper
    u = uniform(x.shape, 0, 1, x, generator)
    return torch.where(u < c, (u < c / 2).to(x.dtype), x)


def speckle_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    return torch.addcmul(x, x, normal(x.shape, 0.0, c, x, generator).to(x.dtype))
