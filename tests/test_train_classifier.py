"""The classification trainer: learning, checkpoints loadable by pit.create_model, exact resume, reruns, recipes."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.transforms_factory import transforms_imagenet_eval
from torch.nn import functional as F
from torchvision.datasets import ImageFolder

import classification.recipe as recipe
import classification.train as tc
import classification.train_loop as loop
import pit
from classification.recipe import DistillationLoss
from classification.train import ClassifierTrainConfig, train_classifier
from common import synthetic
from common.rundir import OutputError
from tests.cli_helpers import run_cli

MODEL = "deit_tiny_patch16_224"
SMALL = {"depth": 1, "embed_dim": 48, "num_heads": 2}  # a one-block, 48-wide DeiT: fast on a shared CPU
FAST = dict(model=MODEL, model_kwargs=SMALL, img_size=32, batch_size=4, workers=0, progress=False, device="cpu")


def config(data, out, **kw) -> ClassifierTrainConfig:
    return ClassifierTrainConfig(**{**FAST, "data": str(data), "out": str(out), **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    spec = synthetic.ClassificationSpec(num_classes=4, train_per_class=4, val_per_class=2, img_size=32)
    return synthetic.make_classification(tmp_path_factory.mktemp("cache"), spec)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train_classifier(config(data, out, epochs=2)), out


def _weights(result) -> dict[str, torch.Tensor]:
    return torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["model"]


def test_checkpoint_loads_in_pit_create_model_and_reproduces_accuracy(trained, data):
    result, out = trained
    assert 0 <= result["top1"] <= 100 and result["top1"] <= result["top5"] <= 100
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch", "options", "classes", "history"} <= set(state)
    assert state["epoch"] == 1 and state["classes"] == synthetic.class_wnids(4)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[-1]["top1"] == result["top1"]
    # Independent loop: torchvision's ImageFolder + timm's eval transform (crop 1.0, bicubic) with its own
    # normalisation, and the plain timm model loaded from the checkpoint by path.
    model = pit.create_model(MODEL, weights=result["checkpoint"], num_classes=4, img_size=32, **SMALL).eval()
    tf = transforms_imagenet_eval(img_size=32, crop_pct=1.0, interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN,
                                  std=IMAGENET_DEFAULT_STD)
    val = ImageFolder(str(data / "val"), transform=tf)
    with torch.no_grad():
        x = torch.stack([img for img, _ in val])
        correct = (model(x).argmax(1) == torch.tensor(val.targets)).sum().item()
    assert 100 * correct / len(val) == pytest.approx(result["top1"], abs=1e-4)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """Final weights of a 3-epoch run, per ``eval_every`` (1: validation after every epoch; 99: only at the end)."""
    return {every: _weights(train_classifier(config(data, tmp_path_factory.mktemp(f"ref{every}"), epochs=3,
                                                    eval_every=every, mixup=0.2)))
            for every in (1, 99)}


def test_evaluation_between_epochs_does_not_change_training(uninterrupted):
    for key, value in uninterrupted[1].items():
        assert torch.equal(value, uninterrupted[99][key]), key


def _interrupting(real, at: int, how: str):
    """``real`` that, on its ``at``-th call, raises KeyboardInterrupt at once (``how="raise"``: the process is
    killed there) or sends this process a SIGINT and then runs (``how="signal"``: a Ctrl-C during the call)."""
    calls = {"n": 0}

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at and how == "raise":
            raise KeyboardInterrupt
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("eval_every, target, at", [
    (1, "train_step", 6),  # mid epoch 2 (4 updates per epoch)
    (1, "validate", 2),  # validating epoch 2, before its checkpoint
    (99, "train_step", 9),  # first update of epoch 3
    (99, "validate", 1),  # the final validation, after the last update
])
def test_kill_anywhere_then_rerun_gives_bitwise_equal_weights(data, tmp_path, monkeypatch, uninterrupted, eval_every,
                                                             target, at):
    """Killed mid-run, the same command run again resumes from the last checkpoint and ends bitwise equal."""
    cfg = config(data, tmp_path, epochs=3, eval_every=eval_every, mixup=0.2)
    monkeypatch.setattr(loop, target, _interrupting(getattr(loop, target), at, "raise"))
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg)
    monkeypatch.undo()
    resumed = train_classifier(cfg)  # the same call again: no --resume needed
    state = torch.load(resumed["checkpoint"], weights_only=True)
    assert [r["epoch"] for r in state["history"]] == [0, 1, 2]
    for key, value in uninterrupted[eval_every].items():
        assert torch.equal(value, state["model"][key]), key


@pytest.mark.parametrize("workers, at", [(0, 6), (0, 1), (0, 4), (2, 7)])
def test_ctrl_c_saves_the_partial_epoch_and_the_rerun_ends_bitwise_equal(data, tmp_path, monkeypatch, capsys,
                                                                        uninterrupted, workers, at):
    """Ctrl-C during update ``at`` (4 updates per epoch): that update finishes, the partial epoch is saved with
    its sampler position and random streams, and the same call again ends with the uninterrupted weights."""
    cfg = config(data, tmp_path / "run", epochs=3, mixup=0.2, workers=workers)
    reference = uninterrupted[1] if workers == 0 else _weights(train_classifier(
        config(data, tmp_path / "ref", epochs=3, mixup=0.2, workers=workers)))
    monkeypatch.setattr(loop, "train_step", _interrupting(loop.train_step, at, "signal"))
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg)
    monkeypatch.undo()
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    finished, steps = divmod(at, 4)
    assert saved["epoch"] == finished - 1 and saved.get("partial", {}).get("steps", 0) == steps
    capsys.readouterr()
    resumed = train_classifier(cfg)
    said = f"{finished} of 3 epochs finished" + (f", epoch {finished + 1} stopped after step {steps}" if steps else "")
    assert f"resuming {tmp_path / 'run'}: {said}\n" in capsys.readouterr().out
    state = torch.load(resumed["checkpoint"], weights_only=True)
    assert [r["epoch"] for r in state["history"]] == [0, 1, 2] and "partial" not in state
    for key, value in reference.items():
        assert torch.equal(value, state["model"][key]), key


@pytest.mark.parametrize("wait_for", ["writing to", "epoch 1 of", "epoch 2 of"])
def test_sigint_under_load_exits_130_without_a_traceback(data, tmp_path, wait_for):
    """A real Ctrl-C (SIGINT to the whole process group, DataLoader workers included) while a CPU hog competes
    for the cores: exit 130, the interrupted line, no traceback from any process."""
    root = Path(__file__).resolve().parents[1]
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 300\nwhile time.time() < end: pass"])
    argv = [sys.executable, "eval.py", "train-classifier", "--model", MODEL, "--data", str(data), "--out",
            str(tmp_path / "run"), "--epochs", "500", "--img-size", "32", "--batch-size", "4", "--workers", "2",
            "--device", "cpu", "--no-progress"]
    try:
        proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seen = []
        while not any(wait_for in line for line in seen):
            line = proc.stdout.readline()
            assert line, f"ended before {wait_for!r}: {proc.stderr.read()}"
            seen.append(line)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate()
    finally:
        hog.kill()
        hog.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert (tmp_path / "run" / "checkpoint.pth").exists() or wait_for == "writing to"


def test_rerun_semantics(trained, data, tmp_path):
    reference, out = trained
    before = (out / "checkpoint.pth").stat().st_mtime_ns
    again = train_classifier(config(data, out, epochs=2))  # finished: returned as is
    assert again["top1"] == reference["top1"] and (out / "checkpoint.pth").stat().st_mtime_ns == before
    with pytest.raises(OutputError, match=r"other options \(lr differ\): --overwrite") as refused:
        train_classifier(config(data, out, epochs=2, lr=5e-4))
    assert "--resume" not in str(refused.value)  # another lr cannot be continued
    with pytest.raises(OutputError, match=r"\(epochs differ\): pass --resume to continue it"):
        train_classifier(config(data, out, epochs=3))
    with pytest.raises(OutputError, match="--overwrite"):  # a longer run is never cut short or overwritten
        train_classifier(config(data, out, epochs=1, resume=True))
    assert (out / "checkpoint.pth").stat().st_mtime_ns == before
    run = tmp_path / "grow"
    train_classifier(config(data, run, epochs=1))
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    grown = train_classifier(config(data, run, epochs=2, resume=True))
    assert grown["epoch"] == 1 and len((run / "log.jsonl").read_text().splitlines()) == 2
    fresh = train_classifier(config(data, run, epochs=1, overwrite=True))
    assert fresh["epoch"] == 0 and len((run / "log.jsonl").read_text().splitlines()) == 1


def test_mixup_cutmix_and_ema(data, tmp_path):
    result = train_classifier(config(data, tmp_path, epochs=1, mixup=0.8, cutmix=1.0, ema_decay=0.9))
    assert 0 <= result["top1_ema"] <= 100
    assert "model_ema" in torch.load(result["checkpoint"], weights_only=True)


def test_distillation_loss_is_deit_hard_distillation():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    images, targets = torch.randn(6, 3, 2, 2), torch.randint(0, 5, (6,))
    cls_logits, dist_logits = torch.randn(6, 5), torch.randn(6, 5)
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher)(images, (cls_logits, dist_logits), targets)
    expected = 0.5 * F.cross_entropy(cls_logits, targets) + 0.5 * F.cross_entropy(dist_logits, teacher(images).argmax(1))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="two-head"):
        DistillationLoss(torch.nn.CrossEntropyLoss(), teacher)(images, cls_logits, targets)


def test_distilled_student_trains_from_a_teacher_checkpoint(trained, data, tmp_path, monkeypatch):
    teacher, _ = trained
    losses = []

    class RecordedLoss(DistillationLoss):
        def __init__(self, base, teacher_model):
            super().__init__(base, teacher_model)
            losses.append(self)

    monkeypatch.setattr(recipe, "DistillationLoss", RecordedLoss)
    result = train_classifier(config(data, tmp_path, epochs=1, model="deit_tiny_distilled_patch16_224",
                                     teacher=MODEL, teacher_weights=teacher["checkpoint"], teacher_kwargs=SMALL))
    assert 0 <= result["top1"] <= 100
    assert len(losses) == 1  # the student was trained with the distillation loss, its teacher = the checkpoint
    used = losses[0].teacher.model.state_dict()
    assert all(torch.equal(used[k], value) for k, value in _weights(teacher).items())


def test_config_checks():
    with pytest.raises(ValueError, match="--epochs"):
        ClassifierTrainConfig(epochs=0)
    with pytest.raises(ValueError, match="even --batch-size"):
        ClassifierTrainConfig(mixup=0.2, batch_size=7)
    with pytest.raises(ValueError, match="--teacher-weights given without --teacher"):
        ClassifierTrainConfig(teacher_weights="t.pth")
    with pytest.raises(ValueError, match="--resume and --overwrite"):
        ClassifierTrainConfig(resume=True, overwrite=True)


def test_cli_defaults_write_under_runs_and_rerun_resumes(data, tmp_path, monkeypatch):
    """No --data: the built-in generated set with a note; no --out: runs/train-classifier-<model>, reused by the
    same command, a new numbered folder for other options."""
    monkeypatch.chdir(tmp_path)
    small = functools.partial(synthetic.ClassificationSpec, num_classes=3, train_per_class=4, val_per_class=2,
                              img_size=32)
    monkeypatch.setattr(synthetic, "ClassificationSpec", small)
    argv = ["train-classifier", "--model", "test_vit", "--epochs", "1", "--img-size", "32", "--batch-size", "4",
            "--num-workers", "0", "--device", "cpu", "--no-progress"]
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    folder = f"runs/{tc.KIND}-test_vit"
    assert "note: no --data: training on the built-in generated set" in out and "--data DIR" in out
    assert f"writing to {folder}" in out and f"results in {folder}" in out and "val top-1" in out
    assert (tmp_path / folder / "checkpoint.pth").is_file()
    rc, out, _ = run_cli(argv)
    assert rc == 0 and "already holds this finished run" in out and f"results in {folder}\n" in out
    rc, out, _ = run_cli(argv + ["--lr", "5e-4"])
    assert rc == 0 and f"results in {folder}-2" in out
