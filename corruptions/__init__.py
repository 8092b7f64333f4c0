"""ImageNet-C corruptions as batched torch ops on the input's device (the JPEG codec runs on the CPU).

``corrupt(images, name, severity, generator=None)`` (one generator, or one per image) takes (B, 3, H, W) float images in [0, 1] and
returns the corrupted batch with the same shape, dtype and device, clamped to [0, 1]. Parameters per
severity follow the ``imagecorruptions`` reference (Hendrycks & Dietterich 2019).
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch

from . import blur, digital, noise, weather

__all__ = ["CORRUPTIONS", "EXTRA_CORRUPTIONS", "ALL_CORRUPTIONS", "corrupt"]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS

_Fn = Callable[[torch.Tensor, int, "torch.Generator | None"], torch.Tensor]
_REGISTRY: dict[str, _Fn] = {
    name: getattr(module, name)
    for module in (noise, blur, weather, digital)
    for name in ALL_CORRUPTIONS
    if hasattr(module, name) and callable(getattr(module, name))
}


def _check(images: torch.Tensor, name: str, severity: int, check_range: bool) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, ALL_CORRUPTIONS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown corruption '{name}'.{hint} Valid names: {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}; convert uint8 with x.float() / 255")
    if check_range and images.numel():
        lo, hi = torch.aminmax(images)
        if bool((lo < 0) | (hi > 1)):  # the one host sync of a call
            raise ValueError("images must be in [0, 1] (got values outside); pass un-normalised pixels")


def corrupt(images: torch.Tensor, name: str, severity: int,
            generator: torch.Generator | Sequence[torch.Generator] | None = None, *,
            check_range: bool = True) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a (B, 3, H, W) batch in [0, 1].

    ``generator`` (on the images' device) makes the random corruptions reproducible. A sequence of B
    generators gives each image its own random draws: image i comes out as if corrupted alone with
    ``generator[i]``, whatever else is in the batch. Half-precision batches are corrupted in float32
    and returned in their dtype. ``check_range=False`` skips the [0, 1] value check, the call's one
    host sync, for batches known to be in range (e.g. uint8 / 255 from a loader); only
    ``jpeg_compression`` then waits for the device (its codec runs on the CPU).
    """
    _check(images, name, severity, check_range)
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != images.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {images.shape[0]} images: give one per image")
    work = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    out = _REGISTRY[name](work, severity, generator)
    return out.clamp(0, 1).to(images.dtype)
