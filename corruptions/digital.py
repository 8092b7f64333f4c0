"""Digital corruptions: brightness, contrast, saturate, pixelate, JPEG, elastic. (B, 3, H, W) float in [0, 1]."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import _filters
from ._filters import uniform

_T = TypeVar("_T")
_R = TypeVar("_R")


def brightness(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Add c to HSV value: with hue and saturation fixed this scales RGB by v'/v (grey v'=c where v=0)."""
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    v = x.amax(dim=1, keepdim=True)
    vn = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * vn / v.clamp_min(1e-12), vn.expand_as(x))


def contrast(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return torch.lerp(means.expand_as(x), x, c)  # (x - means) * c + means


def saturate(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """HSV saturation s' = clip(s*a + b): channels move linearly towards v; grey pixels (hue 0) turn red."""
    a, bb = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][severity - 1]
    v = x.amax(dim=1, keepdim=True)
    mn = x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * a + bb).clamp(0, 1)
    ratio = s_new / s.clamp_min(1e-12)
    coloured = v - ratio * (v - x)
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(s > 0, coloured, grey)


@lru_cache(maxsize=32)
def _box_weights(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n_out, n_in) weights of PIL's BOX resampling (equal weights on the input pixels whose centres fall
    inside each output pixel's footprint) on ``device``, and, when every input pixel falls in exactly one
    footprint, each input pixel's output index (else None). Built on the CPU once per size: no host sync
    per batch."""
    scale = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * scale
    centres = torch.arange(n_in, dtype=torch.float64)[None, :] + 0.5
    inside = (centres >= lo) & (centres < lo + scale)
    weights = inside.double() / inside.sum(dim=1, keepdim=True)
    segments = inside.to(torch.uint8).argmax(0).to(device) if bool((inside.sum(0) == 1).all()) else None
    return weights.to(device, dtype), segments


def _box_downsample(x: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """PIL BOX resampling of ``x`` along ``dim`` to ``n_out`` pixels.

    On CPU, when every input pixel falls in exactly one footprint (the usual case), this is a segment
    mean via ``index_add_`` (much cheaper than the dense matmul); otherwise, and on GPUs (where
    ``index_add_`` is atomic and not bitwise reproducible), it is a matmul with the weight matrix.
    """
    m, segments = _box_weights(x.shape[dim], n_out, x.device, x.dtype)  # (n_out, n_in)
    if x.device.type == "cpu" and segments is not None:
        shape = list(x.shape)
        shape[dim] = n_out
        sums = x.new_zeros(shape).index_add_(dim, segments, x)
        counts = (m > 0).sum(1).to(x.dtype).view([-1] + [1] * (x.ndim - 1 - dim))
        return sums / counts
    return torch.matmul(x.movedim(dim, -1), m.T).movedim(-1, dim)


def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[-2:]
    small = _box_downsample(_box_downsample(x, 3, max(1, int(w * c))), 2, max(1, int(h * c)))
    small = torch.round(small * 255) / 255  # PIL keeps the small image in uint8
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


def jpeg_bytes(images: torch.Tensor, quality: int) -> list[bytes]:
    """PIL's JPEG encoding (libjpeg, baseline, 4:2:0 chroma) of a (B, 3, H, W) uint8 batch, one file per image.

    Runs on the CPU for any input device: the same bytes everywhere, equal to ``Image.save(buf, "JPEG",
    quality=quality)`` as used by ``imagecorruptions`` and the stored ImageNet-C.
    """
    hwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return _map(lambda a: _encode(a, quality), list(hwc))


def jpeg_decode(files: list[bytes]) -> torch.Tensor:
    """Decode same-sized JPEG files with PIL (libjpeg) into a (B, H, W, 3) uint8 CPU tensor (channels last,
    as decoded)."""
    return torch.from_numpy(np.stack(_map(_decode, files)))


def _encode(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _map(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """``fn`` over ``items`` in up to ``torch.get_num_threads()`` threads (PIL's codec releases the GIL)."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Round trip through PIL's JPEG codec at the reference's quality: pixels equal to ``imagecorruptions``.

    The image is quantised to uint8 (round half to even of x * 255), encoded and decoded on the CPU, and
    returned on ``x``'s device, so every device gets the same bytes and pixels.
    """
    quality = [25, 18, 15, 10, 7][severity - 1]
    if x.shape[0] == 0:
        return x.clone()
    u8 = x.float().mul(255).round_().clamp_(0, 255).to(torch.uint8)
    decoded = jpeg_decode(jpeg_bytes(u8, quality)).to(x.device)  # uint8 crosses to the device
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    return out.copy_(decoded.permute(0, 3, 1, 2)).div_(255)


def elastic_transform(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Smooth random displacement field (sigma = 1% of H, W; amplitude alpha * 0.5% of H), bilinear resampling."""
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    b, _, h, w = x.shape
    max_d = h * 0.005
    field = uniform((b, 2, h, w), -max_d, max_d, x, generator)
    field = _filters.gaussian_blur(field, (h * 0.01, w * 0.01), truncate=3, mode="reflect") * alpha
    ys = torch.arange(h, device=x.device, dtype=torch.float32)[:, None] + field[:, 1]
    xs = torch.arange(w, device=x.device, dtype=torch.float32)[None, :] + field[:, 0]
    grid = torch.stack([2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=True)
