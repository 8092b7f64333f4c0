"""train-classifier under torchrun (2 gloo processes) against the one-process run, and ``--amp``'s gradient scaler.

With an augmentation that draws no randomness and no dropout, 2 processes with the same global batch take
the one-process updates (DDP averages the half-batch gradients); each process reads half of the images,
validation counts every image once, only rank 0 writes the run folder, and a resume decided on rank 0
reaches a rank whose listing of the folder lags.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import classification.train_data as train_data
import classification.train_loop as train_loop
import common.autocast as suite_autocast
from classification.train import ClassifierTrainConfig, train_classifier
from common import synthetic
from tests.distributed_helpers import lagging_listing, spawn

pytestmark = pytest.mark.distributed

# No qkv bias: the key bias has an exactly zero gradient (softmax ignores a shift shared by all keys), so AdamW
# turns its float noise into full-size steps that differ between any two summation orders.
SMALL = {"depth": 1, "embed_dim": 48, "num_heads": 2, "qkv_bias": False}
# 16 train images, global batch 4: 4 updates per epoch (2 images per process and step under 2 processes).
FAST = dict(model="deit_tiny_patch16_224", model_kwargs=SMALL, img_size=32, batch_size=4, workers=0, progress=False,
            device="cpu", label_smoothing=0.0)


class _CountingResize:
    """A training transform that draws no randomness (resize + centre crop), counting the images it reads."""

    calls = 0

    def __init__(self, img_size: int) -> None:
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)])

    def __call__(self, image):
        type(self).calls += 1
        return self.transform(image)


def _fixed_augmentation() -> None:
    _CountingResize.calls = 0
    train_data.train_transform = _CountingResize


def _record_writes(rank: int, folder: str) -> None:
    """Every file this process renames into place (atomic writes) is appended to ``folder/writes-rank<r>.txt``."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        with open(Path(folder, f"writes-rank{rank}.txt"), "a") as f:
            f.write(Path(dst).name + "\n")
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def _stop_on_rank1_at(update: int) -> None:
    """Rank 1 alone is asked to stop (a Ctrl-C that reached one process) during its ``update``-th update."""
    real, calls = train_loop.train_step, {"n": 0}

    def train_step(s, images, targets, at, stop):
        calls["n"] += 1
        if calls["n"] == update and torch.distributed.get_rank() == 1:
            stop.requested = True
        return real(s, images, targets, at, stop)

    train_loop.train_step = train_step


def _worker(rank: int, kwargs: dict, record: str, lagging: str | None = None, stop_at: int | None = None) -> None:
    """One torchrun process: train with the fixed augmentation, then write what it saw to ``record``."""
    torch.set_num_threads(1)
    _fixed_augmentation()
    _record_writes(rank, record)
    if stop_at:
        _stop_on_rank1_at(stop_at)
    config = ClassifierTrainConfig(**kwargs)
    try:
        with lagging_listing(lagging) if lagging else contextlib.nullcontext():
            result = train_classifier(config)
    except KeyboardInterrupt:
        result = "stopped"
    Path(record, f"rank{rank}.json").write_text(json.dumps({"result": result, "images_read": _CountingResize.calls}))


def _ranks(record: Path) -> list[dict]:
    return [json.loads((record / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    spec = synthetic.ClassificationSpec(num_classes=4, train_per_class=4, val_per_class=2, img_size=32)
    return synthetic.make_classification(tmp_path_factory.mktemp("cache"), spec)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The one-process reference: 2 epochs (8 updates) with the fixed augmentation; (result, final weights)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(train_data, "train_transform", _CountingResize)
    try:
        result = train_classifier(ClassifierTrainConfig(**FAST, data=str(data), epochs=2,
                                                        out=str(tmp_path_factory.mktemp("one"))))
    finally:
        mp.undo()
    return result, torch.load(result["checkpoint"], weights_only=True)["model"]


def _assert_close_weights(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_two_processes_take_the_one_process_updates_and_only_rank0_writes(data, tmp_path, one_process):
    reference, weights = one_process
    record = tmp_path / "record"
    record.mkdir()
    kwargs = {**FAST, "data": str(data), "epochs": 2, "out": str(tmp_path / "run")}
    spawn(_worker, 2, kwargs, str(record), None, timeout=120)
    ranks = _ranks(record)
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    _assert_close_weights(state["model"], weights)
    assert [r["images_read"] for r in ranks] == [16, 16]  # 2 epochs × half of the 16 training images each
    for r in ranks:  # every process reports the validation of all 8 images, counted once
        assert r["result"]["images"] == 8 and r["result"]["top1"] == pytest.approx(reference["top1"], abs=1e-9)
    assert (record / "writes-rank0.txt").read_text().count("checkpoint.pth\n") == 2
    assert not (record / "writes-rank1.txt").exists()  # no checkpoint, log or marker from rank 1


def test_rank1_with_a_lagging_listing_still_resumes_with_rank0(data, tmp_path, one_process):
    """Epoch 1 in one process; then 2 processes continue to epoch 2 while rank 1 cannot see the run folder."""
    _, weights = one_process
    first = {**FAST, "data": str(data), "epochs": 1, "out": str(tmp_path / "run")}
    mp = pytest.MonkeyPatch()
    mp.setattr(train_data, "train_transform", _CountingResize)
    try:
        train_classifier(ClassifierTrainConfig(**first))
    finally:
        mp.undo()
    epoch0 = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["history"][0]
    record = tmp_path / "record"
    record.mkdir()
    spawn(_worker, 2, {**first, "epochs": 2, "resume": True}, str(record), str(tmp_path / "run"), timeout=120)
    ranks = _ranks(record)
    assert [r["images_read"] for r in ranks] == [8, 8]  # both trained epoch 2 only, on half of the images each
    assert [r["result"]["epoch"] for r in ranks] == [1, 1]
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["history"][0] == epoch0 and [h["epoch"] for h in state["history"]] == [0, 1]
    _assert_close_weights(state["model"], weights)


def test_a_stop_on_one_process_stops_both_and_the_rerun_is_bitwise_exact(data, tmp_path):
    """Mixup draws from each process's own streams: rank 1 alone asked to stop during update 3 of 4 stops both
    processes after that update, the checkpoint keeps both processes' streams, and the same run again ends
    bitwise equal to an uninterrupted 2-process run."""
    kwargs = {**FAST, "data": str(data), "epochs": 1, "mixup": 0.4}
    spawn(_worker, 2, {**kwargs, "out": str(tmp_path / "whole")}, str(tmp_path), None, None, timeout=120)
    for name, stop_at in (("stopped", 3), ("resumed", None)):
        (tmp_path / name).mkdir()
        spawn(_worker, 2, {**kwargs, "out": str(tmp_path / "run")}, str(tmp_path / name), None, stop_at, timeout=120)
        if stop_at:
            assert [r["result"] for r in _ranks(tmp_path / name)] == ["stopped", "stopped"]
            partial = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["partial"]
            assert partial["steps"] == 3 and len(partial["rng"]) == 2
            assert not torch.equal(partial["rng"][0]["torch"], partial["rng"][1]["torch"])
    whole, resumed = (torch.load(tmp_path / name / "checkpoint.pth", weights_only=True) for name in ("whole", "run"))
    assert "partial" not in resumed
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_each_process_draws_its_own_augmentations(monkeypatch):
    """The random streams of an epoch (torch's, and the generator that seeds the loader's workers) differ
    between ranks, so no two processes crop and flip alike, and are a function of (seed, epoch, rank) alone."""
    def draws(rank: int) -> torch.Tensor:
        monkeypatch.setattr(train_loop, "get_rank", lambda: rank)
        loader = torch.utils.data.DataLoader(range(8), generator=torch.Generator(),
                                             sampler=torch.utils.data.DistributedSampler(range(8), 2, rank))
        train_loop.seed_epoch(0, 3, loader)
        return torch.cat([torch.rand(4), torch.rand(4, generator=loader.generator)])

    first, other, again = draws(0), draws(1), draws(0)
    assert torch.equal(first, again) and not torch.equal(first[:4], other[:4]) and not torch.equal(first[4:], other[4:])


def test_global_batch_must_split_over_the_processes():
    assert ClassifierTrainConfig(batch_size=8).per_process_batch(2) == 4
    with pytest.raises(ValueError, match="--batch-size 6 is the global batch.*multiple of 4"):
        ClassifierTrainConfig(batch_size=6).per_process_batch(4)
    with pytest.raises(ValueError, match="Mixup/CutMix need an even batch.*multiple of 8"):
        ClassifierTrainConfig(batch_size=12, mixup=0.2).per_process_batch(4)


def test_amp_on_cpu_trains_in_bfloat16(data, tmp_path):
    """One update (a batch of all 16 images): autocast changes the weights, and there is no scaler state (bf16)."""
    one_step = {**FAST, "data": str(data), "epochs": 1, "batch_size": 16}
    fp32 = train_classifier(ClassifierTrainConfig(**one_step, out=str(tmp_path / "fp32")))
    amp = train_classifier(ClassifierTrainConfig(**one_step, amp=True, out=str(tmp_path / "amp")))
    a, b = (torch.load(r["checkpoint"], weights_only=True) for r in (fp32, amp))
    assert b["options"]["amp"] is True and b["scaler"] == {}
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_float16_scaler_state_is_saved_and_restored(data, tmp_path, monkeypatch):
    """Where the policy picks float16 the scaler is live: its state is in the checkpoint and a resume continues it."""
    monkeypatch.setattr(suite_autocast, "amp_dtype", lambda device: torch.float16)
    run = {**FAST, "data": str(data), "batch_size": 16, "amp": True, "out": str(tmp_path / "run")}
    result = train_classifier(ClassifierTrainConfig(**run, epochs=1))
    state = torch.load(result["checkpoint"], weights_only=True)
    assert state["scaler"]["scale"] == 2.0**16 and state["scaler"]["_growth_tracker"] == 1  # one finite step
    state["scaler"].update(scale=1024.0, _growth_tracker=5)
    torch.save(state, result["checkpoint"])
    resumed = train_classifier(ClassifierTrainConfig(**run, epochs=2, resume=True))
    scaler = torch.load(resumed["checkpoint"], weights_only=True)["scaler"]
    assert scaler["scale"] == 1024.0 and scaler["_growth_tracker"] == 6  # continued, not a fresh 2**16 / 1


def test_the_demo_refuses_torchrun(tmp_path, monkeypatch):
    """`eval.py demo` is one process: under torchrun (WORLD_SIZE > 1) it stops in one line, touching nothing."""
    from tests.cli_helpers import assert_one_line_error

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert_one_line_error(["demo", "--quick", "--out", str(tmp_path / "demo")], 2, "WORLD_SIZE=2", "without torchrun")
    assert not (tmp_path / "demo").exists()
