"""COCO-C on the fly (detection.coco_c): the clean cell equals ``detection eval``, mPC/rPC equal their
formulas from the per-cell records, native-size batched corruption equals ``corruptions.corrupt`` on the
image alone (any H×W, any grouping), resume skips finished cells, bad names fail in one line, and a
2-process torchrun run gathers exactly the single-process detections; both architectures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import corruptions
from detection import coco_c
from detection.coco_c import corrupt_native, image_seed, run_coco_c
from detection.config import DetectionTrainConfig
from detection.engine import evaluate_checkpoint, train_detector
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.coco_fixtures import make_tiny_coco

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=8, dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """4 generated non-square images (64×96 ± 16) in the COCO layout."""
    root = tmp_path_factory.mktemp("cococ")
    return {**make_tiny_coco(root / "data", num_images=4, size=(64, 96), seed=1, max_objects=2), "tmp": root}


@pytest.fixture(scope="module")
def trained(data) -> dict:
    """A tiny DETR (PiT-Ti backbone) overfitted on ``data`` (its val split holds the same images), so that the
    clean cell has a non-zero AP to reproduce."""
    torch.manual_seed(0)
    train_detector(DetectionTrainConfig(
        backbone="pit_ti", train_ann=data["train_ann"], train_images=data["train_images"], val_ann=data["val_ann"],
        val_images=data["val_images"], out=str(data["tmp"] / "run"), epochs=40, batch_size=4, lr=2e-3, lr_backbone=5e-4,
        clip_max_norm=1.0, augment=False, eval_every=100, scales=[64], max_size=128, test_size=64, num_workers=0,
        progress=False, model_kwargs=TINY, label_space="contiguous"))
    return {**data, "checkpoint": str(data["tmp"] / "run" / "checkpoint.pth")}


def _run(trained, out, corruptions_="gaussian_noise,contrast", severities="1,5", **kw) -> dict:
    return run_coco_c([trained["checkpoint"]], trained["root"], str(out), corruptions_, severities, seed=3,
                      device="cpu", batch_size=2, num_workers=0, progress=False, **kw)


def test_clean_cell_equals_detection_eval_and_summary_matches_formulas(trained, capsys):
    plain = evaluate_checkpoint(trained["checkpoint"], trained["val_ann"], trained["val_images"],
                                str(trained["tmp"] / "plain"), device="cpu", batch_size=2, num_workers=0, progress=False)
    argv = ["detection", "eval", "--checkpoint", trained["checkpoint"], "--coco", trained["root"], "--seed", "3",
            "--device", "cpu", "--out", str(trained["tmp"] / "cc")]
    code, out, err = run_cli([*argv, "--corruptions", "gaussian_noise", "contrast", "--severities", "1", "5",
                              "--workers", "0"])
    assert code == 0, err
    assert "run gaussian_noise/5: AP" in out  # lines name the run, not checkpoint.pth
    # the other spelling of the same cells: the run is found and nothing is computed again
    code, again, err = run_cli([*argv, "--corruptions", "gaussian_noise,contrast", "--severities", "1,5",
                                "--num-workers", "0", "--no-progress"])
    assert code == 0, err
    assert "5 cells already done" in again and "gaussian_noise/1: AP" not in again
    result = json.loads((trained["tmp"] / "cc" / "coco_c.json").read_text())
    cells = {(c["corruption"], c["severity"]): c for c in result["cells"]}
    assert set(cells) == {("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 5), ("contrast", 1), ("contrast", 5)}
    assert cells[("clean", 0)]["stats"] == plain["stats"]  # exactly, all 12 COCOeval numbers
    assert all(len(c["stats"]) == 12 and c["images"] == 4 for c in cells.values())
    # the formulas, recomputed from the per-cell records
    grid = np.array([[cells[(n, s)]["AP"] for s in (1, 5)] for n in ("gaussian_noise", "contrast")])
    clean = cells[("clean", 0)]["AP"]
    assert clean > 0.05  # a detector that finds something, so that equality with plain eval means something
    assert result["clean_ap"] == clean
    assert result["mpc"] == pytest.approx(grid.mean(), abs=1e-12)
    assert result["rpc"] == pytest.approx(grid.mean() / clean if clean > 0 else 0.0, abs=1e-12)  # 0 when clean AP is 0
    assert result["corruption_ap"] == pytest.approx({"gaussian_noise": grid[0].mean(), "contrast": grid[1].mean()})
    report = (trained["tmp"] / "cc" / "report.md").read_text()
    assert f"mPC **{100 * result['mpc']:.1f}**" in report and "| contrast |" in report
    assert (trained["tmp"] / "cc" / "coco_c_ap.png").stat().st_size > 1000
    assert f"{100 * result['rpc']:.1f}" in out  # the comparison table is printed


@pytest.mark.parametrize("name", ["frost", "gaussian_noise", "glass_blur", "motion_blur", "fog", "defocus_blur",
                                  "jpeg_compression"])
def test_native_batched_corruption_equals_corrupt_on_the_image_alone(name):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, hw, generator=g, dtype=torch.uint8) for hw in
              [(3, 37, 61), (3, 61, 37), (3, 37, 61), (3, 20, 90)]]
    seeds = [image_seed(7, name, 3, i) for i in range(len(images))]
    batched = corrupt_native(images, name, 3, seeds)
    for image, seed, got in zip(images, seeds, batched):
        assert got.dtype == torch.uint8 and got.shape == image.shape
        assert torch.equal(got, corrupt_native([image], name, 3, [seed])[0])  # grouping changes no pixel
        alone = corruptions.corrupt(image[None].float() / 255, name, 3, torch.Generator().manual_seed(seed))[0]
        # the reference's np.uint8 truncation; float32 values a hair below an integer may land one level lower
        reference = np.uint8(alone.double().numpy() * 255)
        diff = np.abs(got.numpy().astype(int) - reference.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 5e-3, (name, diff.max(), (diff > 0).mean())


def test_every_corruption_on_non_square_images_of_any_size():
    for hw in [(3, 33, 250), (3, 250, 33), (3, 7, 9)]:
        image = torch.randint(0, 256, hw, dtype=torch.uint8)
        for name in corruptions.CORRUPTIONS:
            assert corrupt_native([image], name, 5, [1])[0].shape == image.shape, (name, hw)


@pytest.mark.parametrize("name", corruptions.ALL_CORRUPTIONS)
def test_one_generator_per_image_equals_each_image_corrupted_alone(name):
    x = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    seeds = [11, 12, 13]
    batched = corruptions.corrupt(x, name, 4, [torch.Generator().manual_seed(s) for s in seeds])
    for k, seed in enumerate(seeds):
        alone = corruptions.corrupt(x[k:k + 1], name, 4, torch.Generator().manual_seed(seed))[0]
        torch.testing.assert_close(batched[k], alone, atol=1e-5, rtol=0, msg=name)
    with pytest.raises(ValueError, match="one per image"):
        corruptions.corrupt(x, name, 4, [torch.Generator()])


def test_resume_skips_finished_cells_and_refuses_other_options(trained, monkeypatch):
    out = trained["tmp"] / "resume"
    computed: list[tuple] = []
    interrupt = [True]
    real = coco_c.infer_cell

    def counting(*args, **kwargs):
        cell = (args[7].corruption, args[7].severity)
        if interrupt[0] and cell != ("clean", 0):
            raise KeyboardInterrupt  # the run is stopped after its clean cell
        computed.append(cell)
        return real(*args, **kwargs)

    monkeypatch.setattr(coco_c, "infer_cell", counting)
    with pytest.raises(KeyboardInterrupt):
        _run(trained, out, "contrast", "1")
    assert [c["corruption"] for c in json.loads((out / "coco_c.json").read_text())["cells"]] == ["clean"]
    interrupt[0] = False
    _run(trained, out, "contrast", "1")
    _run(trained, out, "contrast,brightness", "1")
    assert computed == [("clean", 0), ("contrast", 1), ("brightness", 1)]  # no cell computed twice
    result = json.loads((out / "coco_c.json").read_text())
    assert result["complete"] and len(result["cells"]) == 3
    with pytest.raises(ValueError, match="other options"):
        run_coco_c([trained["checkpoint"]], trained["root"], str(out), "contrast", "1", seed=4, device="cpu",
                   num_workers=0, progress=False)


def test_several_checkpoints_give_one_comparison_table(trained):
    other = trained["tmp"] / "copy" / "checkpoint.pth"
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(Path(trained["checkpoint"]).read_bytes())
    summary = run_coco_c([trained["checkpoint"], str(other)], trained["root"], str(trained["tmp"] / "multi"),
                         "brightness", "2", seed=0, device="cpu", num_workers=0, progress=False)
    assert list(summary["runs"]) == ["run", "checkpoint"]  # a run folder's name, else the file stem
    a, b = summary["runs"].values()
    assert a["mpc"] == b["mpc"] and a["rpc"] == b["rpc"]
    table = (trained["tmp"] / "multi" / "report.md").read_text()
    assert "| run |" in table and "| checkpoint |" in table and "mPC" in table
    assert (trained["tmp"] / "multi" / "checkpoint" / "coco_c.json").is_file()
    labelled = run_coco_c([trained["checkpoint"], str(other)], trained["root"], str(trained["tmp"] / "labelled"),
                          "brightness", "2", seed=0, device="cpu", num_workers=0, progress=False, labels=["a", "b"])
    assert list(labelled["runs"]) == ["a", "b"]


def test_bad_names_and_severities_fail_in_one_line(tmp_path):
    paths = make_tiny_coco(tmp_path / "data", num_images=1, size=(40, 56))
    base = ["detection", "eval", "--checkpoint", str(tmp_path / "none.pth"), "--coco", paths["root"],
            "--out", str(tmp_path / "o")]
    assert_one_line_error(base + ["--corruptions", "fogg,snow"], 2, "unknown", "fogg")
    assert_one_line_error(base + ["--corruptions", "all", "--severities", "0-6"], 2, "severities", "1..5")
    assert_one_line_error(base + ["--corruptions", "all", "--severities", "high"], 2, "severities")
    assert_one_line_error(base + ["--corruptions", "fog"], 2, "not found", "none.pth")
    assert_one_line_error(base + ["--severities", "3"], 2, "--corruptions")
    assert not (tmp_path / "o").exists()  # nothing written before validation


@pytest.mark.slow
def test_torchrun_two_processes_gather_the_single_process_detections(trained):
    args = ["--checkpoint", trained["checkpoint"], "--coco", trained["root"], "--corruptions", "shot_noise",
            "--severities", "4", "--seed", "5", "--batch-size", "1", "--device", "cpu", "--num-workers", "0",
            "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "eval.py"), "detection", "eval", *args, "--out", str(trained["tmp"] / "ddp")]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_cli(["detection", "eval", *args, "--out", str(trained["tmp"] / "single")])[0] == 0
    ddp, single = (json.loads((trained["tmp"] / d / "coco_c.json").read_text()) for d in ("ddp", "single"))
    assert [c["stats"] for c in ddp["cells"]] == [c["stats"] for c in single["cells"]]
    assert ddp["mpc"] == single["mpc"] and ddp["cells"][0]["images"] == 4


def test_deformable_detector_clean_cell_equals_detection_eval(data, tmp_path):
    """The other architecture, from a suite checkpoint holding a random-initialised Deformable DETR."""
    from detection.build import build_detector

    torch.manual_seed(0)
    kwargs = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=12,
                  dropout=0.0, num_feature_levels=2)
    model = build_detector("deformable", backbone="pit_ti", num_classes=3, **kwargs)
    checkpoint = tmp_path / "deformable.pth"
    torch.save({"model": model.state_dict(), "arch": "deformable", "backbone": "pit_ti", "num_classes": 3,
                "cat_ids": [2, 5, 9], "model_kwargs": kwargs, "args": {"test_size": 64, "max_size": 128}}, checkpoint)
    plain = evaluate_checkpoint(str(checkpoint), data["val_ann"], data["val_images"], str(tmp_path / "plain"),
                                device="cpu", batch_size=2, num_workers=0, progress=False)
    run_coco_c([str(checkpoint)], data["root"], str(tmp_path / "cc"), "motion_blur", "2", device="cpu",
               num_workers=0, progress=False)
    cells = json.loads((tmp_path / "cc" / "coco_c.json").read_text())["cells"]
    assert [(c["corruption"], c["severity"]) for c in cells] == [("clean", 0), ("motion_blur", 2)]
    assert cells[0]["stats"] == plain["stats"]
