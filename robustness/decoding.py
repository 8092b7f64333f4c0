"""Decoding on the run's device: JPEG files decoded in batches by torchvision (nvJPEG on CUDA), views made there.

The default CPU path decodes with PIL in the loader's workers, as timm and the benchmarks read images. With
``decode="device"`` the workers only read each file's bytes (``read_encoded``) and the main process decodes the
batch with ``torchvision.io.decode_jpeg(..., device=device)`` and makes every view (each model's eval view,
ImageNet-C's crop: ``robustness.geometry``) with the same resize and crop on the device, so no decoded pixel
crosses the host. Files that are not JPEG (PNG, ...) are decoded with PIL in the worker; a JPEG the device
decoder refuses (e.g. CMYK on nvJPEG) is decoded with PIL instead, alone.

The two decoders differ by rounding (docs/robustness.md, "Decoding on the device"; measured by
``tests/test_robustness_decoding.py``), so the decoder is a cell option: cells are never silently mixed.
"""
from __future__ import annotations

import io
import warnings

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from robustness.geometry import Geometry

_JPEG_MAGIC = b"\xff\xd8\xff"


def resolve_decoder(choice: str, device: torch.device) -> str:
    """``"device"`` or ``"pil"`` for ``--decode`` ``choice`` (``config.DECODERS``): ``auto`` decodes on the
    device on CUDA (where nvJPEG exists), else with PIL."""
    if choice == "auto":
        return "device" if device.type == "cuda" else "pil"
    return choice


def read_encoded(path: str) -> torch.Tensor:
    """A file for ``decode_views``: a JPEG's bytes (uint8 (N,)), or any other image decoded here by PIL (RGB,
    uint8 (3,H,W)). Raises ``OSError`` / ``ValueError`` for a file that cannot be read."""
    data = read_file(path)
    if bytes(data[:3].tolist()) == _JPEG_MAGIC:
        return data
    return _pil_decode(data)


def decode_views(items: list[torch.Tensor], geometries: tuple[Geometry, ...], device: torch.device
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decode ``read_encoded``'s items on ``device`` in one batch and make each geometry's view of every image.

    Returns (uint8 (B',3,S,S) per geometry, bool (B,) mask of the images decoded): an unreadable file is left
    out with a warning, as the PIL path skips it."""
    images = _decode(items, device)
    ok = torch.tensor([im is not None for im in images], dtype=torch.bool)
    decoded = [im for im in images if im is not None]
    if not decoded:
        return [], ok
    return [torch.stack([view(im, g) for im in decoded]) for g in geometries], ok


def view(image: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``geometry``'s transform on a decoded uint8 (3,H,W) tensor: the short side resized with its
    interpolation (antialiased, as torchvision resizes PIL images), then the centre crop."""
    if geometry.resize is not None:
        image = TF.resize(image, [geometry.resize], interpolation=geometry.interpolation, antialias=True)
    return TF.center_crop(image, [geometry.size, geometry.size])


def _decode(items: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    out: list[torch.Tensor | None] = [None] * len(items)
    encoded = [i for i, item in enumerate(items) if item.dim() == 1]
    for i, item in enumerate(items):
        if item.dim() == 3:
            out[i] = item.to(device, non_blocking=True)
    if encoded:
        try:
            batch = decode_jpeg([items[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one file the decoder refuses fails the batch: decode them one by one
            batch = [_decode_one(items[i], device) for i in encoded]
        for i, image in zip(encoded, batch):
            out[i] = image
    return out


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        return _pil_decode(data).to(device)
    except (OSError, ValueError, SyntaxError) as err:
        warnings.warn(f"skipping unreadable image: {err}", RuntimeWarning, stacklevel=2)
        return None


def _pil_decode(data: torch.Tensor) -> torch.Tensor:
    """PIL → RGB, as torchvision's ``default_loader`` reads a file."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        return TF.pil_to_tensor(image.convert("RGB"))
