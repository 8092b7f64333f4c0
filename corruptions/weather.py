"""Weather corruptions: snow, frost, fog, spatter (ImageNet-C parameters). (B, 3, H, W) float in [0, 1]."""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _drops, _filters
from ._filters import normal, uniform

_GRAY = (0.299, 0.587, 0.114)


def plasma_fractal(batch: int, mapsize: int, wibbledecay: float, like: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Batched diamond-square height map (the reference's algorithm), (B, mapsize, mapsize) in [0, 1].

    Each level works on the contiguous grid of the points set so far (the reference's ``m[::step, ::step]``)
    and interleaves the new square and diamond points into a grid twice as fine.
    """
    grid = torch.zeros(batch, 1, 1, device=like.device, dtype=torch.float32)
    wibble = 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * uniform(a.shape, -wibble, wibble, like, generator)

    while grid.shape[-1] < mapsize:
        n = grid.shape[-1]
        sq = grid + grid.roll(-1, 1)
        centre = wibbled(sq + sq.roll(-1, 2))  # m[half::step, half::step]
        across = wibbled(centre + centre.roll(1, 1) + grid + grid.roll(-1, 2))  # m[0::step, half::step]
        down = wibbled(centre + centre.roll(1, 2) + grid + grid.roll(-1, 1))  # m[half::step, 0::step]
        even = torch.stack([grid, across], dim=-1).reshape(batch, n, 2 * n)
        odd = torch.stack([down, centre], dim=-1).reshape(batch, n, 2 * n)
        grid = torch.stack([even, odd], dim=2).reshape(batch, 2 * n, 2 * n)
        wibble /= wibbledecay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def fog(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c0, c1 = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    b, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    plasma = plasma_fractal(b, size, c1, x, generator)[:, None, :h, :w].to(x.dtype)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + c0 * plasma) * max_val / (max_val + c0)


@lru_cache(maxsize=1)
def frost_image_paths() -> tuple[Path, ...]:
    """The six frost photos shipped by the ``imagecorruptions`` package, found without importing it."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "frost needs the frost photos shipped with the 'imagecorruptions' package; install it with "
            "'pip install imagecorruptions' (it is not imported, only its image files are read)")
    root = Path(spec.origin).parent / "frost"
    paths = tuple(root / n for n in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg",
                                      "frost6.jpg"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"frost images missing: {missing}; reinstall 'imagecorruptions'")
    return paths


@lru_cache(maxsize=6)
def _frost_image(index: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    return decode_image(str(frost_image_paths()[index]), mode=ImageReadMode.RGB).float() / 255


def _frost_resized(index: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Frost photo ``index`` upscaled (bicubic) to cover an (h, w) crop with a 10% margin, (3, nh, nw)."""
    img = _frost_image(index).to(device)
    fh, fw = img.shape[-2:]
    scale = max(1.0, h / fh, w / fw) * 1.1
    nh, nw = math.ceil(fh * scale), math.ceil(fw * scale)
    return F.interpolate(img[None], size=(nh, nw), mode="bicubic", align_corners=False)[0].clamp(0, 1)


@lru_cache(maxsize=4)
def _frost_stack(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The five frost photos resized for an (h, w) image, zero-padded into one (5, 3, H, W) stack, and their
    (5, 2) float sizes (nh, nw) on ``device``: a crop of any of them is then one gather, with no host sync."""
    photos = [_frost_resized(k, h, w, device) for k in range(5)]
    stack = torch.zeros(5, 3, max(p.shape[1] for p in photos), max(p.shape[2] for p in photos), device=device)
    for k, p in enumerate(photos):
        stack[k, :, :p.shape[1], :p.shape[2]] = p
    sizes = torch.tensor([p.shape[1:] for p in photos], dtype=torch.float32, device=device)
    return stack, sizes


def frost(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Blend with a randomly chosen and cropped frost photo (one of the first five, like the reference)."""
    a, bw = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    b, _, h, w = x.shape
    choice = torch.floor(uniform((b,), 0, 5, x, generator)).long().clamp(max=4)
    u = uniform((2, b), 0, 1, x, generator, 1)  # images along dim 1
    stack, sizes = _frost_stack(h, w, x.device)
    top = (u[0] * (sizes[choice, 0] - h)).long()
    left = (u[1] * (sizes[choice, 1] - w)).long()
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
    layer = stack[choice[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, h, w, 3)
    return a * x + bw * layer.permute(0, 3, 1, 2).to(x.dtype)


def snow(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    c = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]
    b, _, h, w = x.shape
    layer = normal((b, 1, h, w), c[0], c[1], x, generator)
    layer = _filters.clipped_zoom(layer, c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    angle = uniform((b,), -135, -45, x, generator)
    layer = _filters.motion_blur(layer, c[4], c[5], angle)
    layer = (torch.round(layer * 255) / 255).to(x.dtype)
    gray = sum(wt * x[:, i:i + 1] for i, wt in enumerate(_GRAY))
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def spatter(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Water drops (severities 1-3) or mud (4-5), as the reference.

    Water: the 8-bit liquid layer times its drop shading (Canny edges, distance transform, histogram
    equalisation, emboss; see ``_drops``), normalised per image, tinted pale turquoise and added.
    """
    c = [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
         (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)][severity - 1]
    b, _, h, w = x.shape
    liquid = _filters.gaussian_blur(normal((b, 1, h, w), c[0], c[1], x, generator), c[2])
    liquid = torch.where(liquid < c[3], torch.zeros_like(liquid), liquid)
    if c[5] == 0:
        liquid_u8 = torch.floor(liquid * 255).remainder_(256)  # numpy's astype(np.uint8) on the float layer
        m = liquid_u8 * _drops.drop_shading(liquid_u8)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8) * c[4]
        color = torch.tensor([175, 238, 238], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
        return x + m.to(x.dtype) * color
    m = _filters.gaussian_blur((liquid > c[3]).float(), c[4])
    m = torch.where(m < 0.8, torch.zeros_like(m), m).to(x.dtype)
    color = torch.tensor([63, 42, 20], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
    return x * (1 - m) + color * m
