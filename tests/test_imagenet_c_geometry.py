"""ImageNet-C reaches the model at the benchmark's pixels: stored files through CenterCrop(224) only (as
hendrycks/robustness ImageNet-C/test.py), on-the-fly corruptions through make_imagenet_c.py's chain
(Resize(256) → CenterCrop(224) → corrupt → np.uint8 → JPEG 85), the same for models of any crop_pct.
The expected pixels are computed here with PIL and numpy, independently of the suite's transforms."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from corruptions import corrupt
from robustness import geometry, runner
from robustness.cells import CellKey
from robustness.runner import ModelSpec, run_robustness

CLASSES = ("ant", "bee", "cat")
# two models whose timm configs give different crop_pct (0.9 and 0.95) and the same input size
MODELS = [ModelSpec("pit_ti_224", label="pit", model_kwargs={"num_classes": 3}),
          ModelSpec("resnet50", label="resnet", model_kwargs={"num_classes": 3})]
RUN = dict(class_map="folder", batch_size=8, num_workers=0, progress=False, device="cpu", attacks=(), occlusion=False)


class Recorder(nn.Module):
    """Stands in for a model: keeps every batch it is given (not the one-image probe of its output size)."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], len(CLASSES))


@pytest.fixture
def recorded(monkeypatch):
    seen: dict[str, list] = {}

    def build(spec, device, seed, img_size):
        return Recorder(seen.setdefault(spec.display, []))

    monkeypatch.setattr(runner, "_build_model", build)
    return seen


def write_images(root: Path, size: tuple[int, int], fmt: str = "PNG") -> list[Path]:
    """One smooth random RGB image (w, h) per class; the files in listing order."""
    rng = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.BICUBIC)
        path = root / name / f"{i}.{fmt.lower()}"
        image.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


def pil_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255


def center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    return image.crop((left, top, left + size, top + size))


def resize_short(image: Image.Image, short: int) -> Image.Image:
    w, h = image.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return image.resize(new, Image.BILINEAR)


def stored_as_imagenet_c(x: torch.Tensor) -> torch.Tensor:
    """make_imagenet_c.py's storage of a corrupted float32 image in [0, 1]: np.uint8(x·255) (truncation; a value
    within 1e-3 under an integer is that integer, float32's k/255·255 landing just under k), JPEG quality 85."""
    arr = np.uint8(np.floor(x.permute(1, 2, 0).numpy() * np.float32(255) + np.float32(1e-3)))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85, optimize=True)
    return pil_pixels(Image.open(io.BytesIO(buf.getvalue())))


def test_stored_files_reach_every_model_at_their_pixels(tmp_path, recorded):
    """224×224 ImageNet-C files: the models (crop_pct 0.9 and 0.95) both get the files' own pixels."""
    clean = write_images(tmp_path / "val", (250, 200))
    files = write_images(tmp_path / "c" / "contrast" / "2", (224, 224), fmt="JPEG")
    run_robustness(MODELS, str(tmp_path / "val"), str(tmp_path / "out"), imagenet_c=str(tmp_path / "c"),
                   corruptions=["contrast"], severities=[2], **RUN)
    expected = torch.stack([pil_pixels(Image.open(p)) for p in files])
    for label in ("pit", "resnet"):
        clean_input, stored_input = recorded[label]
        assert torch.equal(stored_input, expected), label
        assert clean_input.shape[-1] == 224 and len(clean) == 3
    assert not torch.equal(recorded["pit"][0], recorded["resnet"][0])  # clean images: each model's own eval view


def test_stored_files_get_one_resize_for_another_input_size(tmp_path, recorded):
    """At --img-size 160 both models get the same single bicubic resize of the stored 224 crop."""
    files = write_images(tmp_path / "c" / "fog" / "1", (224, 224), fmt="JPEG")
    write_images(tmp_path / "val", (230, 230))
    run_robustness(MODELS, str(tmp_path / "val"), str(tmp_path / "out"), imagenet_c=str(tmp_path / "c"),
                   corruptions=["fog"], severities=[1], img_size=160, **RUN)
    crops = torch.stack([pil_pixels(Image.open(p)) for p in files])
    expected = TF.resize(crops, [160, 160], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    for label in ("pit", "resnet"):
        assert torch.equal(recorded[label][1], expected), label


@pytest.mark.parametrize("name, severity", [("contrast", 3), ("gaussian_noise", 2), ("jpeg_compression", 1)])
def test_on_the_fly_input_is_imagenet_c_chain_for_every_model(tmp_path, recorded, name, severity):
    """input = JPEG85(uint8(corrupt(center_crop_224(resize_256(image))))) for both models."""
    paths = write_images(tmp_path / "val", (300, 260), fmt="JPEG")
    run_robustness(MODELS, str(tmp_path / "val"), str(tmp_path / "out"), corrupt_on_the_fly=True, corruptions=[name],
                   severities=[severity], seed=3, **RUN)
    crops = torch.stack([pil_pixels(center_crop(resize_short(Image.open(p).convert("RGB"), 256), 224)) for p in paths])
    cell = CellKey("any", "imagenet-c", name, severity)
    corrupted = corrupt(crops, name, severity, generator=runner.cell_generators(3, cell, [0, 1, 2], torch.device("cpu")))
    expected = torch.stack([stored_as_imagenet_c(x) for x in corrupted])
    for label in ("pit", "resnet"):
        assert torch.equal(recorded[label][1], expected), label
    assert torch.equal(recorded["pit"][1], recorded["resnet"][1])


def test_storage_step_truncates_like_numpy_and_encodes_like_pil():
    g = torch.Generator().manual_seed(0)  # (k + f) / 255 with f away from the integers: plain truncation decides
    x = (torch.randint(0, 255, (2, 3, 40, 48), generator=g) + 0.01 + 0.98 * torch.rand(2, 3, 40, 48, generator=g)) / 255
    plain = geometry.imagenet_c_storage(x, jpeg=False)
    truncated = np.uint8(x.permute(0, 2, 3, 1).double().numpy() * 255)
    assert torch.equal(plain, torch.from_numpy(truncated).permute(0, 3, 1, 2).float() / 255)
    stored = geometry.imagenet_c_storage(x, jpeg=True)
    assert torch.equal(stored, torch.stack([stored_as_imagenet_c(img) for img in x]))
    on_grid = torch.arange(256.0).div(255).reshape(1, 1, 8, 32).expand(1, 3, 8, 32).contiguous()  # values already uint8 stay put
    assert torch.equal(geometry.imagenet_c_storage(on_grid, jpeg=False), on_grid)


def test_report_and_results_record_each_cells_geometry(tmp_path, recorded):
    write_images(tmp_path / "val", (300, 260))
    result = run_robustness(MODELS[:1], str(tmp_path / "val"), str(tmp_path / "out"), corrupt_on_the_fly=True,
                            corruptions=["contrast"], severities=[1], imagenet_c_jpeg=False, **RUN)
    kinds = {r["dataset"]: r["options"]["geometry"]["kind"] for r in result["records"]}
    assert kinds == {"imagenet": "model", "imagenet-c": "made"}
    made = next(r for r in result["records"] if r["dataset"] == "imagenet-c")["options"]["geometry"]
    assert made == {"kind": "made", "size": 224, "resize": 256, "model_size": 224, "jpeg_quality": None}
    report = Path(result["report"]).read_text()
    assert "resize the short side to 256 (bilinear), centre crop 224, corrupt, truncate to uint8, no JPEG" in report
