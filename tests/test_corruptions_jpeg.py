"""JPEG corruption: PIL's encoder bytes (4:2:0 chroma) and PIL's decoded pixels, on every device."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from corruptions import corrupt
from corruptions.digital import jpeg_bytes, jpeg_decode

QUALITY = [25, 18, 15, 10, 7]


def _photo(h: int = 96, w: int = 72) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[40:40 + h, 150:150 + w])


def _pil_bytes(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _pil_pixels(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("quality", QUALITY)
def test_bytes_equal_pil_encoder(quality):
    photos = np.stack([_photo(), _photo()[::-1].copy()])
    ours = jpeg_bytes(torch.from_numpy(photos).permute(0, 3, 1, 2), quality)
    assert ours == [_pil_bytes(p, quality) for p in photos]
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(ours[0]))) == 2  # 2 = 4:2:0


def test_decode_equals_pil_decoder():
    files = [_pil_bytes(_photo(), q) for q in (25, 7)]
    decoded = jpeg_decode(files)
    assert decoded.dtype == torch.uint8 and decoded.shape == (2, 96, 72, 3)
    for got, data in zip(decoded, files):
        assert np.array_equal(got.numpy(), _pil_pixels(data))


@pytest.mark.parametrize("severity", range(1, 6))
def test_pixels_equal_pil_round_trip(severity):
    """Float input is quantised as x * 255 rounded; the output is exactly PIL-decode(PIL-encode(u8)) / 255."""
    u8 = _photo(61, 90)
    x = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255
    expected = _pil_pixels(_pil_bytes(u8, QUALITY[severity - 1]))
    out = corrupt(x, "jpeg_compression", severity)
    assert torch.equal(out, torch.from_numpy(expected).permute(2, 0, 1)[None].float() / 255)


def test_empty_batch_and_half_precision():
    x = torch.from_numpy(_photo()).permute(2, 0, 1)[None].float() / 255
    assert corrupt(x[:0], "jpeg_compression", 3).shape == (0, 3, 96, 72)
    half = corrupt(x.bfloat16(), "jpeg_compression", 3)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, corrupt(x, "jpeg_compression", 3).bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    x = torch.from_numpy(_photo()).permute(2, 0, 1)[None].float() / 255
    out = corrupt(x.cuda(), "jpeg_compression", 4)
    assert out.device.type == "cuda" and torch.equal(out.cpu(), corrupt(x, "jpeg_compression", 4))
