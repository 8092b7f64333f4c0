"""Blur corruptions (ImageNet-C parameters). Input/output: (B, 3, H, W) float in [0, 1]."""

from __future__ import annotations

import math

import torch

from . import _filters
from ._filters import uniform


def _disk(radius: int, alias_blur: float, device: torch.device) -> torch.Tensor:
    """The reference's anti-aliased disk kernel (normalised, then a small Gaussian blur)."""
    half = max(radius, 8)
    ar = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(ar, ar, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).float()
    disk = disk / disk.sum()
    ksize = 3 if radius <= 8 else 5
    g = torch.arange(ksize, device=device, dtype=torch.float32) - ksize // 2
    g = torch.exp(-g ** 2 / (2 * alias_blur ** 2))
    g = g / g.sum()
    return _filters.filter2d(disk[None, None], g[:, None] * g[None, :])[0, 0]


def defocus_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    return _filters.filter2d(x, _disk(radius, alias, x.device))


def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    sigma = [1, 2, 3, 4, 6][severity - 1]
    return _filters.gaussian_blur(x, sigma)


def glass_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Blur, locally shuffle pixels, blur again.

    The reference swaps pixels one at a time in a sequential loop; here each pass moves every interior
    pixel to a random offset in [-delta, delta) at once (a vectorised approximation of the same local shuffle).
    """
    sigma, delta, _ = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    # parallel passes that give the same mean PSNR as the reference's sequential (chaining) swap passes;
    # the fractional part is a pass in which only that fraction of the pixels moves
    passes = (2.0, 1.4, 4.5, 3.0, 3.0)[severity - 1]
    b, c, h, w = x.shape
    y = torch.floor(_filters.gaussian_blur(x, sigma) * 255) / 255
    rows = torch.arange(h, device=x.device)[:, None].expand(h, w)
    cols = torch.arange(w, device=x.device)[None, :].expand(h, w)
    interior = (rows > delta) & (rows <= h - delta - 1) & (cols > delta) & (cols <= w - delta - 1)
    full, frac = int(passes), passes - int(passes)
    for fraction in [1.0] * full + ([frac] if frac > 0 else []):
        d = torch.floor(uniform((2, b, h, w), -delta, delta, x, generator, batch_dim=1)).long()
        moves = interior & (uniform((b, h, w), 0, 1, x, generator) < fraction)
        r = torch.where(moves, (rows + d[0]).clamp(0, h - 1), rows)
        cc = torch.where(moves, (cols + d[1]).clamp(0, w - 1), cols)
        idx = (r * w + cc).reshape(b, 1, h * w).expand(b, c, h * w)
        y = y.reshape(b, c, h * w).gather(2, idx).reshape(b, c, h, w)
    return _filters.gaussian_blur(y, sigma)


def motion_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angle = uniform((x.shape[0],), -45, 45, x, generator)
    return _filters.motion_blur(x, radius, sigma, angle)


def zoom_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    start, stop, step = [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)][
        severity - 1]
    zooms = [start + i * step for i in range(math.ceil((stop - start) / step))]  # torch.arange's values, in Python
    out = x.clone()
    for z in zooms:
        out += _filters.clipped_zoom(x, z)
    return out / (len(zooms) + 1)
