"""Shared batched filters for the corruptions: Gaussian blur, 2-D kernels, shifts, zoom, random draws.

All functions take and return float tensors of shape (B, C, H, W) on the input's device.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len


def gaussian_kernel1d(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's convention)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0,
                  mode: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur like ``scipy.ndimage.gaussian_filter`` (``mode``: "replicate" or "reflect").

    Each 1-D pass is one matmul with an (n, n) banded matrix that has the border padding folded in,
    which is much faster than a single-channel convolution on CPU.
    """
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    h, w = x.shape[-2:]
    my = _gaussian_band(float(sy), truncate, h, mode, x.device, x.dtype)
    mx = _gaussian_band(float(sx), truncate, w, mode, x.device, x.dtype)
    return torch.matmul(my, torch.matmul(x, mx.T))


@functools.lru_cache(maxsize=64)
def _gaussian_band(sigma: float, truncate: float, n: int, mode: str, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """The (n, n) blur matrix of :func:`_band_matrix`, built on the CPU (accumulating ``index_put_`` is
    not bitwise reproducible on CUDA) and cached per size and device."""
    return _band_matrix(gaussian_kernel1d(sigma, truncate, torch.device("cpu")), n, mode).to(device, dtype)


def _band_matrix(kernel: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """(n, n) matrix M with ``(M @ v)[i] = sum_j kernel[j] * v_padded[i + j]`` for a length-n vector v.

    ``mode`` is the torch pad mode of ``v_padded``: "replicate" or "reflect" (reflect-101, like
    ``F.pad``; replicate when the radius is not smaller than n, as ``_pad`` does).
    """
    r = kernel.numel() // 2
    if mode == "reflect" and r >= n:
        mode = "replicate"
    rows = torch.arange(n, device=kernel.device)[:, None].expand(n, 2 * r + 1)
    src = rows + torch.arange(-r, r + 1, device=kernel.device)
    if mode == "replicate":
        src = src.clamp(0, n - 1)
    elif mode == "reflect":
        src = torch.where(src < 0, -src, src)
        src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    else:
        raise ValueError(f"unsupported pad mode {mode!r}; use 'replicate' or 'reflect'")
    m = torch.zeros(n, n, device=kernel.device, dtype=kernel.dtype)
    return m.index_put_((rows, src), kernel.expand(n, 2 * r + 1), accumulate=True)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    # reflect padding needs pad < size; fall back to replicate on tiny images
    if mode == "reflect" and (pad[0] >= x.shape[-1] or pad[2] >= x.shape[-2]):
        mode = "replicate"
    return F.pad(x, pad, mode=mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D correlation with an odd (k, k) kernel and reflect-101 borders (cv2.filter2D)."""
    b, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    y = _pad(x.reshape(b * c, 1, h, w), (r, r, r, r), "reflect").reshape(b, c, h + 2 * r, w + 2 * r)
    return _correlate_valid(y, kernel.to(x)[None, None], (h, w))


def _correlate_valid(xp: torch.Tensor, kernel: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``out[..., i, j] = sum_uv kernel[..., u, v] * xp[..., i + u, j + v]`` for the top-left ``out_hw`` block.

    FFT correlation of the padded images ``xp`` (B, C, Hp, Wp) with ``kernel`` (B or 1, 1, kh, kw); the
    transform is at least (Hp, Wp) large, so the requested block never wraps around.
    """
    size = (next_fast_len(xp.shape[-2], real=True), next_fast_len(xp.shape[-1], real=True))
    dtype = torch.promote_types(xp.dtype, torch.float32)  # no half-precision FFT on CPU
    spectrum = torch.fft.rfft2(xp.to(dtype), s=size) * torch.fft.rfft2(kernel.to(dtype), s=size).conj()
    out = torch.fft.irfft2(spectrum, s=size)
    return out[..., :out_hw[0], :out_hw[1]].to(xp.dtype)


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
    """Reference motion blur: a half-Gaussian weighted sum of edge-clamped shifts along ``angle`` (deg, (B,)).

    ``out[y, x] = sum_i k_i * img[clamp(y - dy_i), clamp(x - dx_i)]``, computed as one FFT correlation of the
    edge-padded batch with a per-image line kernel. The kernel is built on the images' device with no host
    sync and no atomic accumulation: the padding covers the longest possible shift, and each tap is a sum
    of one-hot products (deterministic on every device).
    """
    b, c, h, w = x.shape
    width = 2 * radius + 1
    t = torch.arange(width, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    rad = torch.deg2rad(angle.to(x.device, torch.float64))  # float64: the shifts' rounding as on the CPU
    # point = width*(sin, cos); hypot = width -> unit direction
    dy = -torch.ceil(t[:, None] * torch.sin(rad) - 0.5).long()  # (width, B)
    dx = -torch.ceil(t[:, None] * torch.cos(rad) - 0.5).long()
    # a shift as large as the image ends the sum for that image (reference behaviour)
    active = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(0).bool()
    pad_y, pad_x = min(width - 1, h - 1), min(width - 1, w - 1)
    dy, dx = dy.clamp(-pad_y, pad_y), dx.clamp(-pad_x, pad_x)
    xp = F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode="replicate")
    weights = torch.where(active, kernel[:, None], torch.zeros_like(kernel[:, None])).float()
    rows = F.one_hot(pad_y - dy, 2 * pad_y + 1).float()  # (width, B, 2 pad_y + 1)
    cols = F.one_hot(pad_x - dx, 2 * pad_x + 1).float()
    taps = torch.einsum("ib,iby,ibx->byx", weights, rows, cols)
    return _correlate_valid(xp, taps[:, None].to(x.dtype), (h, w))


Generators = "torch.Generator | Sequence[torch.Generator] | None"


def _draw(sample: Callable[[tuple[int, ...], "torch.Generator | None"], torch.Tensor], shape: tuple[int, ...],
          generator: Generators, batch_dim: int) -> torch.Tensor:
    """``sample(shape, generator)``; with one generator per image (a sequence), each image's slice along
    ``batch_dim`` is drawn from its own generator, exactly as if that image were corrupted alone."""
    if generator is None or isinstance(generator, torch.Generator):
        return sample(shape, generator)
    one = shape[:batch_dim] + (1,) + shape[batch_dim + 1:]
    return torch.cat([sample(one, g) for g in generator], dim=batch_dim)


def uniform(shape: tuple[int, ...], low: float, high: float, like: torch.Tensor,
            generator: Generators, batch_dim: int = 0) -> torch.Tensor:
    """Uniform draws in [low, high) on ``like``'s device (``batch_dim``: where the images are in ``shape``)."""
    u = _draw(lambda s, g: torch.rand(s, generator=g, device=like.device, dtype=torch.float32), tuple(shape),
              generator, batch_dim)
    return u if (low, high) == (0, 1) else u.mul_(high - low).add_(low)


def normal(shape: tuple[int, ...], mean: float, std: float, like: torch.Tensor,
           generator: Generators, batch_dim: int = 0) -> torch.Tensor:
    """Normal draws on ``like``'s device (``batch_dim``: where the images are in ``shape``)."""
    z = _draw(lambda s, g: torch.randn(s, generator=g, device=like.device, dtype=torch.float32), tuple(shape),
              generator, batch_dim).mul_(std)
    return z if mean == 0 else z.add_(mean)


def poisson(rate: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Poisson draws with ``rate`` (B, ...), one generator for all or one per image."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.poisson(rate, generator=generator)
    return torch.cat([torch.poisson(r[None], generator=g) for r, g in zip(rate, generator)])
