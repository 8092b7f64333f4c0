"""Training end to end on generated COCO data: overfitting to AP > 0.5 (pycocotools), exact
resume, a 2-process gloo DDP run under torchrun, evaluation/visualisation/compare, clear errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detection.compare import compare_runs
from detection.config import DetectionTrainConfig
from detection.engine import RESUME_FIELDS, evaluate_checkpoint, load_checkpoint, train_detector
from tests.coco_fixtures import make_tiny_coco

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6)
SMALL_IMAGES = dict(scales=[48, 64], max_size=96, test_size=64, num_workers=0, progress=False)




def train(**kwargs) -> dict:
    """``train_detector`` with contiguous labels (3 head rows for the 3 generated categories) unless given."""
    return train_detector(DetectionTrainConfig(**{"label_space": "contiguous", **kwargs}))


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
    assert len(log) == 40 and log[-1]["train_loss"] < 0.3 * log[0]["train_loss"]
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
    train(**common, out=str(tmp_path / "split"), epochs=2, resume_from=str(tmp_path / "split" / "checkpoint.pth"))
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
                       resume_from=str(tmp_path / "split" / "checkpoint.pth"))
    data = json.loads(Path(paths["train_ann"]).read_text())
    data["categories"].append({"id": 11, "name": "star"})
    for split in ("train", "val"):
        Path(tmp_path / f"{split}4.json").write_text(json.dumps(data))
    four = {**common, "train_ann": str(tmp_path / "train4.json"), "val_ann": str(tmp_path / "val4.json")}
    with pytest.raises(ValueError, match="num_classes=3"):
        train(**four, out=str(tmp_path / "y"), epochs=3, resume_from=str(tmp_path / "split" / "checkpoint.pth"))
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
    # one unreadable training image: the process that draws it alone skips that step together with the other
    broken = sorted(Path(paths["train_images"]).iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:100])
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
    assert f"skipped unreadable image {broken}" in done.stderr
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


class Killed(BaseException):
    """Stands for SIGKILL / Ctrl-C at one chosen point of a run."""


def _dies_on_call(function, call: int):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Killed
        return function(*args, **kwargs)
    return wrapper


# (engine function, the call on which the run dies): mid-epoch (2 optimizer steps per epoch: call 3 is the
# first step of epoch 1), during the evaluation after epoch 1, while writing epoch 1's checkpoint.
KILL_POINTS = {"mid-epoch": ("epoch", "_optimizer_step", 3), "in evaluation": ("engine", "evaluate", -1),
               "writing the checkpoint": ("engine", "atomic_torch_save", 2)}
KILLS = [("mid-epoch", 1), ("in evaluation", 1), ("mid-epoch", 100), ("writing the checkpoint", 100)]
_STRAIGHT: dict[int, dict] = {}


@pytest.mark.slow
@pytest.mark.parametrize("kill,eval_every", KILLS, ids=[f"{k}-eval-every-{e}" for k, e in KILLS])
def test_killed_anywhere_then_run_again_gives_bitwise_equal_weights(tmp_path_factory, monkeypatch, kill, eval_every):
    """CPU, fixed seed: a run killed at any point and started again with the same command ends with exactly
    the weights and optimizer state of a run that was never interrupted (with and without evaluation
    between epochs: evaluation has its own RNG and does not move the training stream)."""
    from detection import engine, epoch

    data = tmp_path_factory.mktemp("kill_data")
    paths = make_tiny_coco(data, num_images=2, size=(48, 64), seed=3, max_objects=2)
    paths.pop("root")
    config = dict(backbone="pit_ti", **paths, batch_size=1, epochs=2, eval_every=eval_every, model_kwargs=TINY,
                  **{**SMALL_IMAGES, "scales": [48], "max_size": 64, "test_size": 48})
    if eval_every not in _STRAIGHT:
        train(**config, out=str(data / "straight"))
        _STRAIGHT[eval_every] = _state(data / "straight" / "checkpoint.pth")
    module, name, call = KILL_POINTS[kill]
    module = {"engine": engine, "epoch": epoch}[module]
    evaluations = 2 if eval_every == 1 else 1
    out = str(tmp_path_factory.mktemp("killed"))
    with monkeypatch.context() as patch:
        patch.setattr(module, name, _dies_on_call(getattr(module, name), evaluations if call == -1 else call))
        with pytest.raises(Killed):
            train(**config, out=out)
    train(**config, out=out)  # the same command again: resumes from the last checkpoint by itself
    a, b = _STRAIGHT[eval_every], _state(Path(out) / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert [r["epoch"] for r in _log(Path(out))] == [0, 1]


def test_full_disk_ends_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from tests.cli_helpers import assert_one_line_error

    paths = _paths(tmp_path / "data")
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj.get("epoch") == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    argv = ["detection", "train", "--backbone", "pit_ti", "--train-ann", paths["train_ann"], "--train-images",
            paths["train_images"], "--val-ann", paths["val_ann"], "--val-images", paths["val_images"], "--epochs", "2",
            "--eval-every", "5", "--out", str(out), "--scales", "48", "--max-size", "96", "--test-size", "64",
            "--num-workers", "0", "--no-progress", "--model-kwargs", json.dumps(TINY)]
    assert_one_line_error(argv, 1, "no space left", "checkpoint.pth")
    assert load_checkpoint(str(out / "checkpoint.pth"), fields=RESUME_FIELDS)["epoch"] == 0
    assert not list(out.glob(".checkpoint.pth.*"))  # no temporary file left behind


@pytest.mark.slow
def test_the_command_as_typed_runs_on_the_builtin_set_and_resumes(tmp_path, monkeypatch):
    """`eval.py detection train --backbone pit_ti --epochs 1` with nothing else: a smaller
    built-in set keeps the test fast; the command, the folder choice and the banners are the real ones."""
    from common import synthetic
    from detection import cli
    from tests.cli_helpers import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cli, "BUILTIN_DATA", synthetic.DetectionSpec(num_train=4, num_val=2, img_size=64, max_objects=2))
    argv = ["detection", "train", "--backbone", "pit_ti", "--epochs", "1"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    run = Path("runs/detection-train-pit_ti")
    assert f"writing to {run}" in out and f"results in {run}" in out
    assert "note: no --coco given: using the built-in generated COCO-format set" in out and "--coco DIR" in out
    assert "note: no --backbone-weights given: random pit_ti" in out or "note: using the published pit_ti" in out
    saved = json.loads((run / "eval.json").read_text())
    assert list(saved)[:2] == ["data", "weights"] and "built-in generated" in saved["data"]
    assert len(_log(run)) == 1

    code, again, err = run_cli(argv)  # the same command: the finished run is found, nothing is retrained
    assert code == 0, err
    assert "already finished its 1 epochs" in again and "epoch 0" not in again
    assert len(_log(run)) == 1

    code, scored, err = run_cli(["detection", "eval", "--checkpoint", str(run / "checkpoint.pth")])
    assert code == 0, err
    evaluated = Path("runs/detection-eval-detection-train-pit_ti")
    assert "note: no --coco given" in scored and f"writing to {evaluated}" in scored and f"results in {evaluated}" in scored
    assert json.loads((evaluated / "eval.json").read_text())["weights"] == f"detector checkpoint {run / 'checkpoint.pth'}"

    code, other, err = run_cli([*argv, "--model-kwargs", json.dumps(TINY)])  # other options: a new folder
    assert code == 0, err
    assert "writing to runs/detection-train-pit_ti-2" in other
    assert Path("runs/detection-train-pit_ti-2/checkpoint.pth").is_file()


def _sigint_after(function, call: int):
    """``function`` that sends this process SIGINT (a Ctrl-C) right after its ``call``-th call."""
    calls = []

    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return result
    return wrapper


@pytest.mark.parametrize("workers,accum,call", [(0, 1, 2), (0, 2, 1), (2, 1, 4)],
                         ids=["step-2-of-epoch-1", "accumulating", "workers-epoch-2"])
def test_ctrl_c_mid_epoch_saves_the_steps_taken_and_the_run_resumes_exactly(tmp_path, monkeypatch, workers, accum, call):
    """Ctrl-C after some optimizer steps of an epoch: the checkpoint holds those steps and where the epoch stands;
    the same command again ends with bitwise the weights, Adam moments and log of an uninterrupted run (random
    augmentation on, DataLoader workers or not: every sample draws from its own seed)."""
    from detection import epoch

    paths = make_tiny_coco(tmp_path / "data", num_images=6, size=(48, 64), seed=3, max_objects=2)
    paths.pop("root")
    config = dict(backbone="pit_ti", **paths, batch_size=2, epochs=2, eval_every=100, accum_steps=accum,
                  model_kwargs=TINY, **{**SMALL_IMAGES, "scales": [40, 48], "max_size": 64, "test_size": 48,
                                        "num_workers": workers})
    train(**config, out=str(tmp_path / "straight"))
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(epoch, "_optimizer_step", _sigint_after(epoch._optimizer_step, call))
        with pytest.raises(KeyboardInterrupt):
            train(**config, out=str(out))
    saved = _state(out / "checkpoint.pth")
    steps_per_epoch = 3  # 6 images, batch 2
    taken = call * accum
    assert saved["epoch"] == taken // steps_per_epoch - 1
    assert saved["partial"]["step"] == taken % steps_per_epoch
    train(**config, out=str(out))  # the same command again
    a, b = _state(tmp_path / "straight" / "checkpoint.pth"), _state(out / "checkpoint.pth")
    assert "partial" not in b and a["epoch"] == b["epoch"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    timeless = [[{k: v for k, v in r.items() if k != "fps"} for r in _log(run)] for run in (out, tmp_path / "straight")]
    assert timeless[0] == timeless[1]  # the same losses, lr and AP per epoch


def _hog(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_under_load_stops_quietly_with_code_130_and_the_run_resumes(tmp_path, attempt):
    """Ctrl-C to the whole process group (main process and DataLoader workers, as a terminal sends it) while the
    CPUs are busy with other work: exit code 130, no traceback from any process, and the same command finishes
    the run."""
    paths = make_tiny_coco(tmp_path / "data", num_images=8, size=(48, 64), seed=attempt, max_objects=2)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "eval.py"), "detection", "train", "--backbone", "pit_ti", "--train-ann",
           paths["train_ann"], "--train-images", paths["train_images"], "--val-ann", paths["val_ann"], "--val-images",
           paths["val_images"], "--epochs", "3", "--batch-size", "1", "--eval-every", "10", "--out", str(out),
           "--device", "cpu", "--workers", "2", "--scales", "48", "--max-size", "64", "--test-size", "48",
           "--no-progress", "--model-kwargs", json.dumps(TINY)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    hogs = _hog(2)
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        while not (out / "log.jsonl").exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5 + 0.5 * attempt)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert [r["epoch"] for r in _log(out)] == [0, 1, 2]


def test_train_says_its_recipe_and_counts_epochs_of_the_total(tmp_path):
    """At start: the folder, the recipe it chose and where from; progress: "epoch i of N" (per step) and the
    overall "epoch k of N" with an ETA; run again with more epochs and --resume: what was already done."""
    from tests.cli_helpers import run_cli

    paths = _paths(tmp_path / "data")
    argv = ["detection", "train", "--backbone", "pit_ti", "--train-ann",
            paths["train_ann"], "--train-images", paths["train_images"], "--val-ann", paths["val_ann"], "--val-images",
            paths["val_images"], "--out", str(tmp_path / "run"), "--scales", "48", "--max-size", "96",
            "--test-size", "64", "--workers", "0", "--eval-every", "5", "--model-kwargs", json.dumps(TINY)]
    code, out, err = run_cli([*argv, "--epochs", "2"])
    assert code == 0, err
    assert "note: no --preset given: the official recipe of --arch detr, detr-r50" in out
    assert "recipe detr-r50: detr, 2 epochs, no lr drop, lr 0.0001 (backbone 1e-05), batch 2 per process" in out
    assert "epoch 1 of 2" in err and "epoch 2 of 2" in err and "ETA" in err
    code, out, err = run_cli([*argv, "--epochs", "3", "--resume"])
    assert code == 0, err
    assert "2 of 3 epochs done" in out and "epoch 3 of 3" in err and "epoch 1 of 3" not in err
