"""Which pixels a cell's model sees: the model's own eval view, or the ImageNet-C benchmark's pixels.

Three geometries (``Geometry.kind``), each a PIL → uint8 transform run by the loader:

- ``"model"``: timm's eval transform of the model (``Resize(floor(size / crop_pct))`` bicubic →
  ``CenterCrop(size)``): clean images, occlusion, attacks, ImageNet-A/R.
- ``"stored"``: sets stored at the benchmark's size (the ImageNet-C files, 224×224): ``CenterCrop(224)``
  only, as the benchmark's own evaluation reads them (hendrycks/robustness ``ImageNet-C/test.py``).
- ``"made"``: corruptions computed on the fly, made as ``make_imagenet_c.py`` made ImageNet-C:
  ``Resize(256)`` bilinear → ``CenterCrop(224)`` → corruption → uint8 (``np.uint8``: truncation) →
  stored as JPEG quality 85 (``imagecorruption_storage``; the JPEG step can be turned off). The same
  pixels for every model, whatever its ``crop_pct``.

For ``"stored"`` and ``"made"`` a model whose input size is not the benchmark's gets one bicubic resize of
the benchmark crop (``to_model_size``), the same for every model of that size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from classification.data import eval_transform
from corruptions.digital import jpeg_bytes, jpeg_decode

BENCHMARK_SIZE = 224  # ImageNet-C's stored crop
BENCHMARK_RESIZE = 256  # make_imagenet_c.py: Resize(256) → CenterCrop(224)
STORAGE_QUALITY = 85  # make_imagenet_c.py saves every corrupted image as JPEG quality 85
KINDS = ("model", "stored", "made")
_QUANTUM_TOLERANCE = 1e-3  # float32 k/255·255 may land just under k: keep it k, as uint8 input would


@dataclass(frozen=True)
class Geometry:
    """How the loader turns a file into pixels: optional short-side resize, centre crop of ``size``.

    ``crop_pct`` is the model's (kind "model" only); ``size`` is the model's input size for "model" and
    the benchmark's crop size for "stored"/"made"."""

    kind: str
    size: int
    crop_pct: float | None = None

    @property
    def resize(self) -> int | None:
        """The short side the image is resized to before the crop (None: no resize)."""
        if self.kind == "model":
            return math.floor(self.size / self.crop_pct)
        if self.kind == "made":
            return round(self.size * BENCHMARK_RESIZE / BENCHMARK_SIZE)
        return None

    @property
    def interpolation(self) -> InterpolationMode:
        """The resize's interpolation: timm's eval transform is bicubic, ``make_imagenet_c.py``'s bilinear."""
        return InterpolationMode.BICUBIC if self.kind == "model" else InterpolationMode.BILINEAR

    def transform(self) -> v2.Compose:
        """PIL RGB image → uint8 (3, size, size)."""
        if self.kind == "model":
            return eval_transform(self.size, self.crop_pct)
        steps = []
        if self.kind == "made":  # torchvision's Resize on a PIL image: PIL bilinear (antialiased)
            steps.append(v2.Resize(self.resize, interpolation=self.interpolation, antialias=True))
        return v2.Compose([*steps, v2.CenterCrop(self.size), v2.PILToTensor()])


def model_view(img_size: int, crop_pct: float) -> Geometry:
    """The model's own eval geometry (timm's eval transform)."""
    return Geometry("model", img_size, crop_pct)


def benchmark_view(kind: str, size: int = BENCHMARK_SIZE) -> Geometry:
    """ImageNet-C's geometry: ``"stored"`` (files read at their pixels) or ``"made"`` (corrupted on the fly)."""
    if kind not in ("stored", "made"):
        raise ValueError(f"unknown benchmark geometry {kind!r}: use 'stored' or 'made'")
    return Geometry(kind, size)


def describe(geometry: Geometry, model_size: int, jpeg: bool = False, decoder: str = "pil") -> dict[str, Any]:
    """The geometry as a cell option (a cell is recomputed when it changes); ``decoder`` "device": files
    decoded and resized on the device (``robustness.decoding``; PIL, the default, is not named)."""
    out: dict[str, Any] = {"kind": geometry.kind, "size": geometry.size, "resize": geometry.resize}
    if decoder != "pil":
        out["decoder"] = "torchvision decode_jpeg + tensor resize on the device"
    if geometry.kind == "model":
        out["crop_pct"] = geometry.crop_pct
    else:
        out["model_size"] = model_size
    if geometry.kind == "made":
        out["jpeg_quality"] = STORAGE_QUALITY if jpeg else None
    return out


def text(described: dict[str, Any]) -> str:
    """One line for the report from ``describe``'s dict."""
    size = described["size"]
    decoder = f" ({described['decoder']})" if described.get("decoder") else ""
    if described["kind"] == "model":
        return (f"the model's eval transform: resize the short side to {described['resize']} (bicubic), "
                f"centre crop {size}{decoder}")
    if described["kind"] == "stored":
        line = (f"files read at their stored pixels: centre crop {size} only (as ImageNet-C/test.py and "
                "model-vs-human read their 224-px sets)")
    else:
        jpeg = described.get("jpeg_quality")
        line = (f"ImageNet-C's own chain: resize the short side to {described['resize']} (bilinear), centre crop "
                f"{size}, corrupt, truncate to uint8" + (f", JPEG quality {jpeg} (as stored)" if jpeg else
                                                         ", no JPEG storage step"))
    line += decoder
    if described["model_size"] != size:
        line += f"; then one bicubic resize {size} → {described['model_size']} px for the model"
    return line


def imagenet_c_storage(images: torch.Tensor, jpeg: bool = True) -> torch.Tensor:
    """What ``make_imagenet_c.py`` stored of a corrupted float batch in [0, 1]: ``np.uint8(x · 255)``
    (truncation), then a JPEG quality-85 round trip through PIL's codec when ``jpeg``; float in [0, 1] on
    the input's device."""
    u8 = images.float().mul(255).add_(_QUANTUM_TOLERANCE).floor_().clamp_(0, 255).to(torch.uint8)
    if jpeg and u8.shape[0]:
        u8 = jpeg_decode(jpeg_bytes(u8, STORAGE_QUALITY)).to(images.device).permute(0, 3, 1, 2)
    return u8.to(images.dtype).div_(255)


def to_model_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """A benchmark crop resized once to a model's input ``size`` (bicubic, antialiased, clamped to [0, 1]);
    unchanged when it already has that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return TF.resize(images, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp_(0, 1)
