"""COCO-C on the fly (detection.coco_c): the clean cell equals ``detection eval``, mPC/rPC equal their
formulas from the per-cell records, native-size batched corruption equals ``corruptions.corrupt`` on the
image alone (any H×W, any grouping), resume skips finished cells, bad names fail in one line, and a
2-process torchrun run gathers exactly the single-process detections; both architectures."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import corruptions
from detection import background_eval, coco_c
from detection.coco_c import corrupt_native, image_seed, run_coco_c
from detection.coco_eval import CocoEvaluator, coco_stats
from detection.config import DetectionTrainConfig
from detection.engine import evaluate_checkpoint, train_detector
from detection.epoch import evaluate
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
            _wait_for(lambda: _cells(out) == [("clean", 0)])  # the clean cell is scored in the background
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


# COCOeval in the background process (detection.background_eval). The scorers below replace ``coco_stats`` in
# that spawned process (a module-level function travels by name); they count their calls per process.
_calls = [0]


def _scored_after_release(coco_gt, results, image_ids) -> dict:
    """The first cell's COCOeval waits (at most 30 s) for the file ``$COCOC_RELEASE``, then notes in
    ``$COCOC_LOG`` whether it appeared: a cross-process event that the next cell's inference sets."""
    _calls[0] += 1
    if _calls[0] == 1:
        release = Path(os.environ["COCOC_RELEASE"])
        _wait_for(release.exists, seconds=30, fail=False)
        Path(os.environ["COCOC_LOG"]).write_text("released" if release.exists() else "timed out")
    return coco_stats(coco_gt, results, image_ids)


def _second_cocoeval_fails(coco_gt, results, image_ids) -> dict:
    _calls[0] += 1
    if _calls[0] == 2:
        raise ValueError("COCOeval failed on purpose")
    return coco_stats(coco_gt, results, image_ids)


def _wait_for(condition: Callable[[], bool], seconds: float = 60, fail: bool = True) -> None:
    """Poll ``condition`` (no timing is asserted: the limit only keeps a broken run from hanging the test)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            assert not fail, "condition not met"
            return
        time.sleep(0.05)


def _cells(out: Path) -> list[tuple]:
    path = out / "coco_c.json"
    if not path.is_file():
        return []
    return [(c["corruption"], c["severity"]) for c in json.loads(path.read_text())["cells"]]


def _counting_inference(monkeypatch, interrupt_at: tuple | None = None) -> list[tuple]:
    """Cells whose inference ran, in order (``infer_cell`` wrapped); Ctrl-C when ``interrupt_at`` begins."""
    computed: list[tuple] = []
    real = coco_c.infer_cell

    def counting(*args, **kwargs):
        cell = (args[7].corruption, args[7].severity)
        if cell == interrupt_at:
            raise KeyboardInterrupt
        computed.append(cell)
        return real(*args, **kwargs)

    monkeypatch.setattr(coco_c, "infer_cell", counting)
    return computed


def test_cocoeval_overlaps_the_next_inference_and_records_equal_sequential_evaluation(trained, tmp_path, monkeypatch):
    release, log = tmp_path / "release", tmp_path / "log"
    monkeypatch.setenv("COCOC_RELEASE", str(release))
    monkeypatch.setenv("COCOC_LOG", str(log))
    monkeypatch.setattr(background_eval, "coco_stats", _scored_after_release)
    started: list[str] = []
    real_iter = coco_c.CellBatches.__iter__

    def iterating(self):
        started.append(self.corruption)
        if len(started) == 2:
            release.touch()  # the second cell's inference begins
        yield from real_iter(self)

    monkeypatch.setattr(coco_c.CellBatches, "__iter__", iterating)
    _run(trained, tmp_path / "cc", "gaussian_noise,contrast", "3")
    # the clean cell's COCOeval was still running when the next cell's inference started
    assert log.read_text() == "released" and started == ["clean", "gaussian_noise", "contrast"]
    cells = json.loads((tmp_path / "cc" / "coco_c.json").read_text())["cells"]
    assert [(c["corruption"], c["severity"]) for c in cells] == [("clean", 0), ("gaussian_noise", 3), ("contrast", 3)]
    # the reference: each cell inferred and scored in turn by detection eval's own path (CocoEvaluator)
    device = torch.device("cpu")
    loaded, dataset, resize = coco_c.load_for_eval(trained["checkpoint"], trained["val_ann"], trained["val_images"],
                                                   device)
    loader = coco_c.native_loader(dataset, 2, 0)
    for record in cells:
        batches = coco_c.CellBatches(loader, resize, device, record["corruption"], record["severity"], 3)
        stats, _ = evaluate(loaded.model, loaded.postprocessor, batches, CocoEvaluator(dataset.coco, loaded.cat_ids),
                            device, progress=False)
        assert record["stats"] == stats["stats"] and record["AP"] == stats["AP"], record["corruption"]
    assert any(c["AP"] > 0 for c in cells)


def test_a_cocoeval_error_is_the_runs_one_line_error_and_the_rerun_scores_that_cell(trained, tmp_path, monkeypatch):
    out = tmp_path / "failed"
    argv = ["detection", "eval", "--checkpoint", trained["checkpoint"], "--coco", trained["root"], "--seed", "3",
            "--device", "cpu", "--workers", "0", "--no-progress", "--corruptions", "gaussian_noise,contrast",
            "--severities", "2"]
    monkeypatch.setattr(background_eval, "coco_stats", _second_cocoeval_fails)
    assert_one_line_error([*argv, "--out", str(out)], 2, "COCOeval failed on purpose")
    assert _cells(out) == [("clean", 0)]  # the cells scored before the error, nothing after it
    monkeypatch.setattr(background_eval, "coco_stats", coco_stats)
    computed = _counting_inference(monkeypatch)
    assert run_cli([*argv, "--out", str(out)])[0] == 0
    assert computed == [("gaussian_noise", 2), ("contrast", 2)]  # the failed cell inferred and scored again
    assert run_cli([*argv, "--out", str(tmp_path / "whole")])[0] == 0
    resumed, whole = (json.loads((d / "coco_c.json").read_text())["cells"] for d in (out, tmp_path / "whole"))
    assert [c["stats"] for c in resumed] == [c["stats"] for c in whole]


def test_ctrl_c_does_not_wait_for_cocoeval_and_the_unscored_cell_is_recomputed(trained, tmp_path, monkeypatch):
    log = tmp_path / "log"
    monkeypatch.setenv("COCOC_RELEASE", str(tmp_path / "never"))
    monkeypatch.setenv("COCOC_LOG", str(log))
    monkeypatch.setattr(background_eval, "coco_stats", _scored_after_release)  # clean's COCOeval blocks 30 s
    real_infer = coco_c.infer_cell
    computed = _counting_inference(monkeypatch, interrupt_at=("contrast", 1))
    with pytest.raises(KeyboardInterrupt):
        _run(trained, tmp_path / "cc", "contrast", "1")
    # the run ended while clean's COCOeval was blocked: the process was ended, not waited for, and the cell
    # whose inference finished but whose COCOeval did not is not recorded
    assert not log.exists() and not multiprocessing.active_children()
    assert computed == [("clean", 0)] and _cells(tmp_path / "cc") == []
    monkeypatch.setattr(background_eval, "coco_stats", coco_stats)
    monkeypatch.setattr(coco_c, "infer_cell", real_infer)
    computed = _counting_inference(monkeypatch)
    _run(trained, tmp_path / "cc", "contrast", "1")
    assert computed == [("clean", 0), ("contrast", 1)] and _cells(tmp_path / "cc") == [("clean", 0), ("contrast", 1)]
