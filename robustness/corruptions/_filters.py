"""Shared batched filters for the corruptions: Gaussian blur, 2-D kernels, shifts, zoom, random draws.

All functions take and return float tensors of shape (B, C, H, W) on the input's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's convention)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0,
                  mode: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur like ``scipy.ndimage.gaussian_filter`` (``mode`` is a torch pad mode)."""
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    ky = gaussian_kernel1d(sy, truncate, x.device).to(x.dtype)
    kx = gaussian_kernel1d(sx, truncate, x.device).to(x.dtype)
    ry, rx = ky.numel() // 2, kx.numel() // 2
    y = _pad(y, (0, 0, ry, ry), mode)
    y = F.conv2d(y, ky.view(1, 1, -1, 1))
    y = _pad(y, (rx, rx, 0, 0), mode)
    y = F.conv2d(y, kx.view(1, 1, 1, -1))
    return y.reshape(b, c, h, w)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    # reflect padding needs pad < size; fall back to replicate on tiny images
    if mode == "reflect" and (pad[0] >= x.shape[-1] or pad[2] >= x.shape[-2]):
        mode = "replicate"
    return F.pad(x, pad, mode=mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D correlation with an odd (k, k) kernel and reflect-101 borders (cv2.filter2D)."""
    b, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    y = _pad(x.reshape(b * c, 1, h, w), (r, r, r, r), "reflect")
    return F.conv2d(y, kernel.to(x).view(1, 1, *kernel.shape)).reshape(b, c, h, w)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Centre-crop ``1/zoom`` of the image and zoom it back (scipy ``zoom(order=1)``), cropped to (H, W)."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    out = F.interpolate(crop, size=(round(ch * zoom), round(cw * zoom)), mode="bilinear", align_corners=True)
    out = out[..., :h, :w]
    if out.shape[-2] < h or out.shape[-1] < w:
        out = F.pad(out, (0, w - out.shape[-1], 0, h - out.shape[-2]), mode="replicate")
    return out


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """Reference motion blur: a half-Gaussian weighted sum of edge-clamped shifts along ``angle`` (deg, (B,))."""
    b, c, h, w = x.shape
    width = 2 * radius + 1
    t = torch.arange(width, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    rad = torch.deg2rad(angle.float())
    # point = width*(sin, cos); hypot = width -> unit direction
    py, px = torch.sin(rad), torch.cos(rad)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(flat)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    for i in range(width):
        dy = -torch.ceil(i * py - 0.5).long()
        dx = -torch.ceil(i * px - 0.5).long()
        active = active & (dy.abs() < h) & (dx.abs() < w)
        r = (rows[None, :] - dy[:, None]).clamp(0, h - 1)
        cc = (cols[None, :] - dx[:, None]).clamp(0, w - 1)
        idx = (r[:, :, None] * w + cc[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
        out += (kernel[i] * active.to(x.dtype))[:, None, None] * flat.gather(2, idx)
    return out.reshape(b, c, h, w)


def uniform(shape: tuple[int, ...], low: float, high: float, like: torch.Tensor,
            generator: torch.Generator | None) -> torch.Tensor:
    """Uniform draws in [low, high) on ``like``'s device."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)
    return low + (high - low) * u


def normal(shape: tuple[int, ...], mean: float, std: float, like: torch.Tensor,
           generator: torch.Generator | None) -> torch.Tensor:
    """Normal draws on ``like``'s device."""
    return mean + std * torch.randn(shape, generator=generator, device=like.device, dtype=torch.float32)
