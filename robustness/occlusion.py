"""Occlusion transforms: a centred square, or a randomly placed square patch, painted batched.

All take float images (B,3,H,W) in [0,1] on any device and return a new tensor of the same shape;
fill "zero" paints black, "mean" paints each image's own per-channel mean colour.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _side(size: float | int, h: int, w: int) -> tuple[int, int]:
    """Patch height/width from ``size``: a float in [0,1] is a fraction of each side, an int is pixels."""
    if isinstance(size, float):
        if not 0 <= size <= 1:
            raise ValueError(f"occlusion size fraction must be in [0, 1], got {size}")
        return round(size * h), round(size * w)
    if size < 0:
        raise ValueError(f"occlusion size must be >= 0 pixels, got {size}")
    return min(size, h), min(size, w)


def _fill_values(images: torch.Tensor, fill: str) -> torch.Tensor:
    if fill == "zero":
        return torch.zeros_like(images[:, :, :1, :1])
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True)
    raise ValueError(f"unknown occlusion fill {fill!r}: use 'zero' or 'mean'")


def _paint(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, ph: int, pw: int, fill: str) -> torch.Tensor:
    """Paint a (ph, pw) box at per-image (top, left) (each (B,)) with the fill colour, batched by masks."""
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + ph)  # (B, H)
    in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + pw)  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W), True = occluded
    return torch.where(mask, _fill_values(images, fill), images)


def occlude_center(images: torch.Tensor, size: float | int = 0.5, fill: str = "zero") -> torch.Tensor:
    """Occlude a centred box whose sides are ``size`` (fraction of each side, or pixels)."""
    b, _, h, w = images.shape
    ph, pw = _side(size, h, w)
    top = torch.full((b,), (h - ph) // 2, device=images.device)
    left = torch.full((b,), (w - pw) // 2, device=images.device)
    return _paint(images, top, left, ph, pw, fill)


def occlude_random(images: torch.Tensor, area: float = 0.25, fill: str = "zero",
                   generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Occlude one square patch covering ``area`` (fraction of the image area) at a random position per
    image, drawn uniformly from ``generator`` (on the images' device). A sequence of B generators gives
    each image its own draw: image i gets the patch it would get alone with ``generator[i]``."""
    if not 0 <= area <= 1:
        raise ValueError(f"occlusion area fraction must be in [0, 1], got {area}")
    b, _, h, w = images.shape
    side = min(round(math.sqrt(area * h * w)), h, w)
    if generator is None or isinstance(generator, torch.Generator):
        top = torch.randint(0, h - side + 1, (b,), generator=generator, device=images.device)
        left = torch.randint(0, w - side + 1, (b,), generator=generator, device=images.device)
    else:
        _check_count(generator, b)
        corners = [(torch.randint(0, h - side + 1, (1,), generator=g, device=images.device),
                    torch.randint(0, w - side + 1, (1,), generator=g, device=images.device)) for g in generator]
        top = torch.cat([t for t, _ in corners])
        left = torch.cat([l for _, l in corners])
    return _paint(images, top, left, side, side, fill)


def _check_count(generators: Sequence[torch.Generator], batch: int) -> None:
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch} images: give one per image")
