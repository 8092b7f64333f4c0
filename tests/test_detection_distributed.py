"""Detection under several gloo processes against one process: evaluation scores every image exactly once
(AP, detections.json, a COCO-C cell equal whatever the number of processes), rank 0 makes every choice read
from the disk (a rank whose listing lags follows it instead of hanging), and DDP trains every parameter
without ``find_unused_parameters``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detection.build import build_criterion, build_detector
from detection.coco_c import run_coco_c
from detection.config import DetectionTrainConfig
from detection.engine import DETECTIONS_FILE, evaluate_checkpoint, train_detector
from tests.coco_fixtures import make_tiny_coco
from tests.distributed_helpers import lagging_listing, spawn

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=8, dropout=0.0)
EVAL = dict(device="cpu", batch_size=1, num_workers=0, progress=False)  # one image a batch: no padding differs
CELL = dict(corruptions="gaussian_noise", severities="2", seed=3, device="cpu", batch_size=1, num_workers=0,
            progress=False)
TRAIN = dict(backbone="pit_ti", epochs=25, batch_size=4, lr=2e-3, lr_backbone=5e-4, clip_max_norm=1.0, eval_every=100,
             scales=[48], max_size=64, test_size=48, num_workers=0, progress=False, augment=False, model_kwargs=TINY,
             label_space="contiguous", device="cpu")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    """Two generated sets of 5 and 7 images (shards of 2 and 3 processes are uneven; their first 4 images are
    the same) and a tiny DETR trained a little on the 7 (so that AP is not 0): a finished training run."""
    root = tmp_path_factory.mktemp("dist")
    data = {n: make_tiny_coco(root / f"data{n}", num_images=n, size=(48, 64), seed=7, max_objects=2) for n in (5, 7)}
    torch.manual_seed(0)
    train_detector(DetectionTrainConfig(**TRAIN, **_train_paths(data[7]), out=str(root / "run")))
    return {"root": root, "data": data, "checkpoint": str(root / "run" / "checkpoint.pth"),
            "run": TRAIN, "run_dir": root / "run"}


def _evaluate_all(sets: dict, out: Path) -> dict:
    """``detection eval`` of the checkpoint on both sets and a COCO-C cell on the 7-image set → the stats."""
    found = {}
    for n, paths in sets["data"].items():
        found[n] = evaluate_checkpoint(sets["checkpoint"], paths["val_ann"], paths["val_images"], str(out / f"eval{n}"),
                                       **EVAL)
    result = run_coco_c([sets["checkpoint"]], sets["data"][7]["root"], str(out / "coco_c"), **CELL)
    found["coco_c"] = result["runs"]
    return found


def _evaluate_worker(rank: int, sets: dict, out: Path) -> None:
    found = _evaluate_all(sets, out)
    (out / f"rank{rank}.json").write_text(json.dumps(found))


@pytest.fixture(scope="module")
def single(sets) -> dict:
    """The one-process results (the reference every process count must reproduce)."""
    out = sets["root"] / "single"
    return {"stats": json.loads(json.dumps(_evaluate_all(sets, out))), "out": out}


@pytest.mark.parametrize("world", [2, 3])
def test_every_image_is_scored_once_whatever_the_number_of_processes(sets, single, world):
    out = sets["root"] / f"world{world}"
    spawn(_evaluate_worker, world, sets, out, timeout=120)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    for n in (5, 7):
        reference = single["stats"][str(n)]
        assert reference["AP50"] > 0  # not a trivial 0 == 0
        assert all(found[str(n)] == ranks[0][str(n)] for found in ranks)  # every process returns rank 0's numbers
        assert ranks[0][str(n)]["stats"] == pytest.approx(reference["stats"], abs=1e-9)
        detections = json.loads((out / f"eval{n}" / DETECTIONS_FILE).read_text())
        assert detections == json.loads((single["out"] / f"eval{n}" / DETECTIONS_FILE).read_text())
        # each image once: DETR keeps one detection per query, so every image has exactly num_queries
        ids = [d["image_id"] for d in detections]
        assert ids == sorted(ids) and {i: ids.count(i) for i in set(ids)} == {i: TINY["num_queries"] for i in
                                                                                 range(1, n + 1)}
    cells = [json.loads((d / "coco_c" / "coco_c.json").read_text())["cells"] for d in (out, single["out"])]
    assert [(c["corruption"], c["severity"]) for c in cells[0]] == [("clean", 0), ("gaussian_noise", 2)]
    for many, one in zip(*cells):
        assert many["stats"] == pytest.approx(one["stats"], abs=1e-9) and many["images"] == one["images"] == 7
    assert all(r["coco_c"] == ranks[0]["coco_c"] for r in ranks)


def _lagging_worker(rank: int, sets: dict, finished: Path, out: Path) -> None:
    """Reruns of finished runs while rank 1 cannot see them: every process must take rank 0's decision
    (reuse), so none evaluates or trains alone and waits for the others forever."""
    paths = sets["data"][5]
    with lagging_listing(finished):
        found = {"eval": evaluate_checkpoint(sets["checkpoint"], paths["val_ann"], paths["val_images"],
                                             str(finished / "eval"), **EVAL)["stats"],
                 "coco_c": run_coco_c([sets["checkpoint"]], paths["root"], str(finished / "coco_c"), **CELL)["runs"],
                 "train": train_detector(DetectionTrainConfig(**TRAIN, **_train_paths(paths),
                                                              out=str(finished / "train")))["stats"]}
    (out / f"rank{rank}.json").write_text(json.dumps(found))


def _train_paths(paths: dict) -> dict:
    return {k: v for k, v in paths.items() if k != "root"}


def test_a_rank_whose_listing_lags_follows_rank_0_and_nothing_hangs(sets, tmp_path):
    """A finished eval, COCO-C run and training run, run again on 2 processes while rank 1 cannot list them:
    every rank returns the one-process numbers and nothing is evaluated or trained again."""
    paths = sets["data"][5]
    finished = tmp_path / "finished"
    expected = {"eval": evaluate_checkpoint(sets["checkpoint"], paths["val_ann"], paths["val_images"],
                                            str(finished / "eval"), **EVAL)["stats"],
                "coco_c": json.loads(json.dumps(run_coco_c([sets["checkpoint"]], paths["root"], str(finished / "coco_c"),
                                                           **CELL)["runs"])),
                "train": train_detector(DetectionTrainConfig(**TRAIN, **_train_paths(paths),
                                                             out=str(finished / "train")))["stats"]}
    saved = (finished / "train" / "checkpoint.pth").stat().st_mtime_ns
    spawn(_lagging_worker, 2, sets, finished, tmp_path, timeout=90)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected, rank
    assert (finished / "train" / "checkpoint.pth").stat().st_mtime_ns == saved  # nothing trained again


def _ddp_worker(rank: int, paths: dict, out: Path) -> None:
    """Two DDP steps (accumulated over two micro-batches) recording, at each optimizer step, which trainable
    parameters got no gradient."""
    from detection import epoch

    step = epoch._optimizer_step
    missing: list[list[str]] = []

    def recording(model, optimizer, scaler, clip_max_norm):
        missing.append([n for n, p in model.named_parameters() if p.requires_grad and p.grad is None])
        return step(model, optimizer, scaler, clip_max_norm)

    epoch._optimizer_step = recording
    train_detector(DetectionTrainConfig(**{**TRAIN, "epochs": 1, "batch_size": 1, "accum_steps": 2}, **_train_paths(paths), out=str(out / "ddp")))
    (out / f"rank{rank}.json").write_text(json.dumps({"missing": missing}))


def test_ddp_trains_every_parameter_without_find_unused_parameters(tmp_path):
    """8 images, 2 processes, batch 1, 2 accumulation steps (``no_sync`` on the first): two optimizer steps;
    DDP without ``find_unused_parameters`` fails at the next backward if a parameter got no gradient."""
    paths = make_tiny_coco(tmp_path / "data", num_images=8, size=(48, 64), seed=4, max_objects=2)
    spawn(_ddp_worker, 2, paths, tmp_path, timeout=90)
    for rank in range(2):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert found["missing"] == [[], []]


@pytest.mark.parametrize("arch,backbone,extra", [("detr", "pit_ti", {}), ("detr", "deit_tiny_patch16_224", {}),
                                                 ("deformable", "pit_ti", {"num_feature_levels": 2})])
def test_every_trainable_parameter_gets_a_gradient(arch, backbone, extra):
    """The backbones drop what their feature maps never use (PiT's and ViT's final norm): one backward
    reaches every trainable parameter, so DDP needs no search for unused ones."""
    torch.manual_seed(0)
    kwargs = {**TINY, **extra}
    model = build_detector(arch, backbone=backbone, num_classes=3, **kwargs)
    criterion = build_criterion(arch, num_classes=3, model_kwargs=kwargs)
    losses = criterion(model(torch.rand(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool)),
                       [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[.5, .5, .3, .2], [.3, .4, .2, .3]])}] * 2)
    sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not getattr(model, "gradless_in_forward", False)


def test_a_checkpoint_written_before_the_pruning_still_loads(sets, tmp_path):
    """A suite checkpoint holding the backbone's (never used) final norm loads and detects as before."""
    from detection.load import load_detector

    ckpt = torch.load(sets["checkpoint"], weights_only=True)
    ckpt["model"] = {**ckpt["model"], "backbone.body.norm.weight": torch.ones(256),
                     "backbone.body.norm.bias": torch.zeros(256)}
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    images, mask = torch.rand(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    with torch.no_grad():
        a, b = (load_detector(str(p)).model(images, mask) for p in (sets["checkpoint"], old))
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


class _Scale(torch.nn.Module):
    """A one-parameter stand-in detector."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, mask):
        return {"x": self.w * images.mean()}


class _ScaledLoss(torch.nn.Module):
    """Its loss is the detector's output times each batch's ``scale``."""

    weight_dict = {"loss_x": 1.0}

    def forward(self, outputs, targets):
        return {"loss_x": outputs["x"] * targets[0]["scale"]}


def _nan_epoch(scales: list[float]) -> str:
    """``train_one_epoch`` over batches whose losses are scaled by ``scales`` → the error it raised."""
    from detection.epoch import train_one_epoch

    model = _Scale()
    batches = [(torch.ones(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool), [{"scale": torch.tensor(s)}])
               for s in scales]
    try:
        train_one_epoch(model, _ScaledLoss(), batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"),
                        epoch=0, progress=False)
    except RuntimeError as err:
        return str(err)
    return "no error"


def _nan_worker(rank: int, out: Path) -> None:
    (out / f"rank{rank}.txt").write_text(_nan_epoch([1.0, 1.0 if rank == 0 else float("nan"), 1.0, 1.0]))


def test_a_non_finite_loss_on_one_process_stops_every_process_with_one_error(tmp_path):
    """The finite check runs on the device and is read with the next step's agreement: the step is named,
    and a NaN on rank 1 only stops rank 0 too (instead of leaving it waiting in a collective)."""
    assert _nan_epoch([1.0, float("inf"), 1.0]) == "loss is inf at epoch 1 step 2: lower the lr or disable AMP"
    assert _nan_epoch([1.0, 1.0, float("nan")]) == "loss is nan at epoch 1 step 3: lower the lr or disable AMP"
    spawn(_nan_worker, 2, tmp_path, timeout=60)
    assert (tmp_path / "rank1.txt").read_text() == "loss is nan at epoch 1 step 2: lower the lr or disable AMP"
    assert (tmp_path / "rank0.txt").read_text() == ("the loss on another process is not finite at epoch 1 step 2: "
                                                    "lower the lr or disable AMP")
