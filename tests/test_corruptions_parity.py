"""Parity of corruptions with the reference ``imagecorruptions`` on real photographs.

Deterministic corruptions: mean absolute difference <= 2/255 per severity. Random ones: mean PSNR against
the clean image within 0.5 dB of the reference's, severity by severity (fixed seeds on both sides).
"""

import numpy as np
import pytest
import torch

from corruptions import ALL_CORRUPTIONS, corrupt
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


# frost and spatter vary so much per draw (PSNR std ~2.5 dB per image: crop position, drop layout) that a
# mean over a few dozen independent draws is not a test; they are compared on the reference's own draws below.
PAIRED = ("frost", "spatter")


@pytest.mark.parametrize("name", [n for n in RANDOM if n not in PAIRED])
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


def _paired_check(ours: torch.Tensor, ref: torch.Tensor, clean: torch.Tensor, name: str, severity: int) -> None:
    mad = (ours - ref).abs().mean().item()
    gap = _psnr(ours, clean) - _psnr(ref, clean)
    assert mad <= 2 / 255, f"{name} severity {severity}: MAD {mad * 255:.2f}/255 on the reference's draws"
    assert abs(gap) <= 0.5, f"{name} severity {severity}: PSNR gap {gap:+.2f} dB on the reference's draws"


def test_spatter_matches_reference_on_same_draws(monkeypatch):
    """Our spatter fed the reference's liquid-layer noise (its only random draw) gives the same images."""
    from corruptions import weather

    def numpy_normal(shape, mean, std, like, generator):
        return torch.from_numpy(np.stack([np.random.normal(size=shape[2:], loc=mean, scale=std)
                                          for _ in range(shape[0])]))[:, None].float()

    monkeypatch.setattr(weather, "normal", numpy_normal)
    photos = _photos(128)
    x = _to_tensor(photos) / 255
    for severity in range(1, 6):
        np.random.seed(severity)
        ref = _to_tensor(np.stack([reference_corrupt(REF, p, "spatter", severity) for p in photos]))
        np.random.seed(severity)
        _paired_check(corrupt(x, "spatter", severity), ref, x, "spatter", severity)


def test_frost_matches_reference_on_same_draws(monkeypatch):
    """Our frost given the reference's photo index and crop offsets gives the same images.

    ``weather.frost`` draws one uniform per image for the photo (floor(5u)) and two per image for the crop
    (floor(u * range)); the patch returns the values that land on the reference's integers.
    """
    from corruptions import weather

    size = 128
    photos = _photos(size)
    x = _to_tensor(photos) / 255
    for severity in range(1, 6):
        np.random.seed(severity)
        ref = _to_tensor(np.stack([reference_corrupt(REF, p, "frost", severity) for p in photos]))
        np.random.seed(severity)
        index, offsets = [], []
        for _ in photos:
            k = np.random.randint(5)
            nh, nw = weather._frost_resized(k, size, size, torch.device("cpu")).shape[-2:]
            top, left = np.random.randint(0, nh - size), np.random.randint(0, nw - size)
            index.append(k + 0.5)
            offsets.append(((top + 0.5) / (nh - size), (left + 0.5) / (nw - size)))
        draws = iter([torch.tensor(index), torch.tensor(offsets).T.contiguous()])
        monkeypatch.setattr(weather, "uniform", lambda *args: next(draws))
        _paired_check(corrupt(x, "frost", severity), ref, x, "frost", severity)


def test_jpeg_equals_reference_exactly():
    photos = _photos(96)
    x = _to_tensor(photos) / 255
    for severity in range(1, 6):
        ref = _to_tensor(np.stack([reference_corrupt(REF, p, "jpeg_compression", severity) for p in photos]))
        assert torch.equal((corrupt(x, "jpeg_compression", severity) * 255).round(), (ref * 255).round().float())
