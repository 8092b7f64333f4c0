"""Training end to end on generated COCO data: overfitting to AP > 0.5 (pycocotools), exact
resume, a 2-process gloo DDP run under torchrun, evaluation/visualisation/compare, clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detection.compare import compare_runs
from detection.config import DetectionTrainConfig
from detection.engine import RESUME_FIELDS, evaluate_checkpoint, load_checkpoint, train_detector
from tests.coco_fixtures import make_tiny_coco

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6)
SMALL_IMAGES = dict(scales=[48, 64], max_size=96, test_size=64, num_workers=0, progress=False)


def train(**kwargs) -> dict:
    return train_detector(DetectionTrainConfig(**kwargs))


def _log(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run's log.jsonl (after its header line naming data and weights)."""
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"data", "weights"}
    return lines[1:]


def _paths(root) -> dict:
    paths = make_tiny_coco(root, num_images=4, size=(64, 96), seed=1, max_objects=2)
    paths.pop("root")
    return paths


def test_overfits_a_handful_of_images(tmp_path):
    torch.manual_seed(0)
    stats = train(backbone="pit_ti", **_paths(tmp_path / "data"), out=str(tmp_path / "run"), epochs=40,
                           batch_size=4, lr=2e-3, lr_backbone=5e-4, clip_max_norm=1.0, augment=False, eval_every=40,
                           scales=[64], max_size=128, test_size=64, num_workers=0, progress=False,
                           model_kwargs=dict(hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=128,
                                             num_queries=8, dropout=0.0))
    log = _log(tmp_path / "run")
    assert len(log) == 40 and log[-1]["train_loss"] < 0.25 * log[0]["train_loss"]
    assert stats["AP"] > 0.5, stats["summary"]
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert len(saved["stats"]) == 12 and saved["fps"] > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["backbone"] == "pit_ti" and run["num_classes"] == 3 and run["params"] > 0 and run["gflops"] > 0


def _state(path: Path) -> dict:
    return load_checkpoint(str(path), fields=RESUME_FIELDS)


def test_resume_gives_the_same_state_as_uninterrupted_training(tmp_path):
    paths = _paths(tmp_path / "data")
    common = dict(backbone="pit_ti", **paths, batch_size=2, eval_every=100, model_kwargs=TINY, **SMALL_IMAGES)
    train(**common, out=str(tmp_path / "straight"), epochs=2)
    train(**common, out=str(tmp_path / "split"), epochs=1)
    train(**common, out=str(tmp_path / "split"), epochs=2, resume=str(tmp_path / "split" / "checkpoint.pth"))
    a, b = _state(tmp_path / "straight" / "checkpoint.pth"), _state(tmp_path / "split" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 1
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], msg=k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"])
    assert a["scheduler"] == b["scheduler"]
    torch.testing.assert_close(a["rng"][0]["torch"], b["rng"][0]["torch"])
    log = _log(tmp_path / "split")
    assert [r["epoch"] for r in log] == [0, 1]

    # a checkpoint for another backbone, or another class count, is refused clearly
    with pytest.raises(ValueError, match="backbone 'pit_ti'"):
        train(**{**common, "backbone": "resnet18"}, out=str(tmp_path / "x"), epochs=3,
                       resume=str(tmp_path / "split" / "checkpoint.pth"))
    data = json.loads(Path(paths["train_ann"]).read_text())
    data["categories"].append({"id": 11, "name": "star"})
    for split in ("train", "val"):
        Path(tmp_path / f"{split}4.json").write_text(json.dumps(data))
    four = {**common, "train_ann": str(tmp_path / "train4.json"), "val_ann": str(tmp_path / "val4.json")}
    with pytest.raises(ValueError, match="num_classes=3"):
        train(**four, out=str(tmp_path / "y"), epochs=3, resume=str(tmp_path / "split" / "checkpoint.pth"))
    with pytest.warns(UserWarning, match="mismatched shapes"):
        train(**four, out=str(tmp_path / "ft"), epochs=1, finetune=str(tmp_path / "split" / "checkpoint.pth"))
    with pytest.raises(ValueError, match="trained on category ids"):
        evaluate_checkpoint(str(tmp_path / "split" / "checkpoint.pth"), str(tmp_path / "val4.json"),
                            paths["val_images"], str(tmp_path / "e"), progress=False, num_workers=0)

    stats = evaluate_checkpoint(str(tmp_path / "split" / "checkpoint.pth"), paths["val_ann"], paths["val_images"],
                                str(tmp_path / "eval"), save_vis=2, progress=False, num_workers=0)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "fps", "latency_ms"} <= set(stats)
    assert len(list((tmp_path / "eval" / "vis").glob("*.png"))) == 2
    table = compare_runs([str(tmp_path / "straight"), str(tmp_path / "split")], out=str(tmp_path / "cmp"))
    assert table.count("pit_ti") == 2 and (tmp_path / "cmp" / "compare_ap.png").is_file()


def test_two_process_ddp_with_gloo(tmp_path):
    paths = _paths(tmp_path / "data")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "eval.py"), "detection", "train", "--backbone", "pit_ti", "--train-ann", paths["train_ann"],
           "--train-images", paths["train_images"], "--val-ann", paths["val_ann"], "--val-images", paths["val_images"],
           "--epochs", "1", "--batch-size", "1", "--out", str(tmp_path / "ddp"), "--device", "cpu", "--num-workers", "0",
           "--scales", "48", "--max-size", "96", "--test-size", "64", "--no-progress", "--model-kwargs", json.dumps(TINY)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log = _log(tmp_path / "ddp")
    assert len(log) == 1 and "AP" in log[0]
    # the evaluator gathered every image from both processes
    assert "Average Precision" in done.stdout and json.loads((tmp_path / "ddp" / "eval.json").read_text())["fps"] > 0


def test_cli_errors(tmp_path):
    from eval import main

    assert main(["detection", "train", "--backbone", "pit_ti", "--coco", str(tmp_path / "none"), "--out", str(tmp_path)]) != 0
    paths = _paths(tmp_path / "data")
    with pytest.raises(ValueError, match="not both"):
        from detection import cli

        cli._data(type("A", (), {"coco": "x", "train_ann": "y", "train_images": None, "val_ann": None, "val_images": None})(),
                  train=True)
    os.remove(paths["val_ann"])
    assert main(["detection", "eval", "--checkpoint", str(tmp_path / "missing.pth"), "--val-ann", paths["val_ann"],
                 "--val-images", paths["val_images"], "--out", str(tmp_path)]) != 0
