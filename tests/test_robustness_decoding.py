"""Decoding on the device (``robustness.decoding``) against PIL, the loader's default decoder.

torchvision's CPU decoder and PIL both use libjpeg-turbo: the decoded pixels are identical (tolerance 0).
The views differ only by the resize's rounding (tensor vs PIL resampling): at most 1 level, in under 1 % of
the values. nvJPEG (CUDA) is a different decoder and is not measured here (no GPU on the test machine).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustness.decoding as decoding
from robustness import datasets as ds
from robustness import geometry as geo
from robustness.runner import ModelSpec, run_robustness

CPU = torch.device("cpu")
GEOMETRIES = (geo.model_view(224, 0.875), geo.model_view(160, 0.95), geo.benchmark_view("made", 224),
              geo.benchmark_view("stored", 224))


def photo_like(h: int, w: int, seed: int) -> Image.Image:
    """Smooth colour fields plus noise: JPEG behaves as on photographs (pure noise would be atypical)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((h // 8 + 2, w // 8 + 2, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    noisy = np.asarray(base).astype(int) + rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


def item(data: bytes, tmp_path: Path) -> torch.Tensor:
    """``data`` as the loader's worker hands it over (``read_encoded`` of a file holding it)."""
    path = tmp_path / f"{hash(data)}.img"
    path.write_bytes(data)
    return decoding.read_encoded(str(path))


def pil_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


CASES = {  # name → JPEG bytes: the kinds of files of ImageNet val (colour 4:2:0 / 4:4:4, grayscale, CMYK)
    "rgb 4:2:0 500x375": jpeg(photo_like(375, 500, 0), quality=90, subsampling=2),
    "rgb 4:4:4 333x500": jpeg(photo_like(500, 333, 1), quality=75, subsampling=0),
    "grayscale 500x400": jpeg(photo_like(400, 500, 2).convert("L"), quality=90),
    "cmyk 480x640": jpeg(photo_like(480, 640, 3).convert("CMYK"), quality=90),
}


@pytest.mark.parametrize("name", CASES)
def test_torchvision_decoder_gives_pils_pixels(name, tmp_path):
    data = item(CASES[name], tmp_path)
    assert data.dim() == 1  # a JPEG: decoded later, on the device
    reference = torch.from_numpy(np.array(pil_rgb(CASES[name]))).permute(2, 0, 1)
    assert torch.equal(decoding.decode_jpeg([data], mode=decoding.ImageReadMode.RGB, device=CPU)[0], reference)


@pytest.mark.parametrize("name", CASES)
def test_device_views_are_pils_within_one_level(name, tmp_path):
    data = CASES[name]
    views, ok = decoding.decode_views([item(data, tmp_path)], GEOMETRIES, CPU)
    assert ok.tolist() == [True]
    for g, v in zip(GEOMETRIES, views):
        reference = g.transform()(pil_rgb(data))
        diff = (v[0].int() - reference.int()).abs()
        assert v.shape[1:] == reference.shape
        assert diff.max() <= 1, g
        assert (diff > 0).float().mean() < 0.01, g


def test_batch_mixes_jpegs_pngs_and_unreadable_files(tmp_path):
    png = io.BytesIO()
    photo_like(50, 70, 4).save(png, "PNG")
    broken = CASES["rgb 4:2:0 500x375"][:600]  # a truncated JPEG: neither decoder reads it
    items = [item(b, tmp_path) for b in (CASES["rgb 4:4:4 333x500"], png.getvalue(), broken)]
    assert [item.dim() for item in items] == [1, 3, 1]  # the PNG is decoded by PIL in the worker
    g = geo.model_view(32, 0.9)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        views, ok = decoding.decode_views(items, (g,), CPU)
    assert ok.tolist() == [True, True, False]
    for v, data in zip(views[0], (CASES["rgb 4:4:4 333x500"], png.getvalue())):
        assert (v.int() - g.transform()(pil_rgb(data)).int()).abs().max() <= 1


def test_auto_decodes_on_the_device_only_on_cuda():
    assert decoding.resolve_decoder("auto", torch.device("cuda")) == "device"
    assert decoding.resolve_decoder("auto", CPU) == "pil"
    assert decoding.resolve_decoder("device", CPU) == "device"


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs") / "val"
    for c, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.JPEG").write_bytes(jpeg(photo_like(45 + 7 * i, 60, 10 * c + i), quality=90))
    return root


RUN = dict(class_map="folder", img_size=32, crop_pct=0.9, batch_size=4, num_workers=0, progress=False, device="cpu",
           corrupt_on_the_fly=True, corruptions=["contrast"], severities=[2], imagenet_c_size=32)
MODEL = [ModelSpec("test_convnext", label="cnn", model_kwargs={"num_classes": 3})]


def test_run_decodes_batches_on_the_device_and_names_the_decoder(jpeg_folder, tmp_path, monkeypatch):
    calls, pil_reads = [], []
    decode_jpeg, default_loader = decoding.decode_jpeg, ds.default_loader
    monkeypatch.setattr(decoding, "decode_jpeg", lambda data, **kw: calls.append(len(data)) or decode_jpeg(data, **kw))
    monkeypatch.setattr(ds, "default_loader", lambda path: pil_reads.append(path) or default_loader(path))
    device = run_robustness(MODEL, str(jpeg_folder), str(tmp_path / "device"), decode="device", **RUN)
    assert calls == [4, 4, 1] and pil_reads == []  # 9 files, batches of 4, one decode call per batch
    monkeypatch.setattr(decoding, "decode_jpeg", decode_jpeg)
    pil = run_robustness(MODEL, str(jpeg_folder), str(tmp_path / "pil"), decode="pil", **RUN)
    assert len(pil_reads) == 9
    for d, p in zip(device["records"], pil["records"]):
        assert d["key"] == p["key"] and d["n"] == p["n"] == 9
        assert abs(d["top1_correct"] - p["top1_correct"]) <= 1  # views within one level: at most a rare flip
        assert "decoder" in d["options"]["geometry"] and "decoder" not in p["options"]["geometry"]
    with pytest.raises(ValueError, match="decoder"):  # a finished cell of the other decoder is never mixed in silently
        run_robustness(MODEL, str(jpeg_folder), str(tmp_path / "device"), decode="pil", **RUN)
