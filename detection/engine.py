"""Training runs and checkpoint evaluation of COCO detectors, architecture-agnostic (``detection.build``).

The recipe (image sizes, loss/matcher numbers, detections kept, schedule) is the resolved
:class:`detection.config.DetectionTrainConfig`; AdamW, grad-norm clip, StepLR ×0.1 at ``lr_drop``; one
epoch's loop is ``detection.epoch``. Multi-GPU / multi-process: ``torchrun --nproc_per_node N eval.py detection
train ...`` (DDP, DistributedSampler; gloo on CPU); the batch size is per process.

A run folder ``out`` holds ``run.json`` (data, weights, arch, backbone, params, GFLOPs, config),
``log.jsonl`` (a header line naming data and weights, then one line per epoch: mean losses, lr, eval
stats), ``checkpoint.pth`` (written atomically every epoch on the main process; resume-complete; plain
tensors and data only, read back with ``weights_only=True``) and ``eval.json``. The folder is opened with
``common.run.open_run``: the same command run again resumes from ``checkpoint.pth``; ``--resume`` also
continues it with more epochs. Ctrl-C saves the epoch so far (``common.interrupt``) and the run resumes
from that step exactly (``detection.sampling``).
"""
from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.models import clean_state_dict
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.autocast import grad_scaler
from common.checkpoint import CheckpointError, safe_load
from common.distributed import (ShardSampler, all_gather_objects, get_rank, get_world_size, init_distributed,
                                is_distributed, is_main_process, main_decides)
from common.interrupt import StopRequest, rng_state, set_rng_state
from common.io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, read_jsonl
from common.progress import Progress
from common.run import Run, open_run, say_resumed
from common.rundir import announce, note
from common.tables import fmt
from detection.backbones import without_pruned
from detection.build import build_criterion, build_detector, build_postprocessor
from detection.coco_eval import CocoEvaluator
from detection.config import DetectionTrainConfig, more_epochs, same_run
from detection.data import CocoDetection, collate, make_transforms
from detection.epoch import EpochPosition, Stopped, agree, evaluate, train_one_epoch
from detection.sampling import EpochSeeded, ResumableSampler

PRINTED = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MODEL_FIELDS = ("model", "arch", "backbone", "num_classes", "cat_ids")  # what evaluation needs
RESUME_FIELDS = (*MODEL_FIELDS, "optimizer", "scheduler", "epoch", "rng")  # what exact resumption needs
TRAIN_KIND, EVAL_KIND = "detection-train", "detection-eval"  # run-folder kinds (common.run)
TRAIN_FILES = ("checkpoint.pth", "log.jsonl", "eval.json", "run.json")  # what a training run writes
# every detection of `detection eval`, COCO results format: [{"image_id", "category_id", "bbox": [x, y, w, h] in
# original-image pixels, "score"}], sorted by image id, each image's in the detector's order
DETECTIONS_FILE = "detections.json"
EVAL_FILES = ("eval.json", DETECTIONS_FILE)  # what `detection eval` writes (--overwrite deletes them)


def param_groups(model: nn.Module, lr: float, lr_backbone: float, weight_decay: float) -> list[dict]:
    """``model.param_groups(lr, lr_backbone, weight_decay)`` if the model defines it, else
    ``backbone.*`` at ``lr_backbone`` and everything else at ``lr``."""
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, lr_backbone, weight_decay)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.startswith("backbone.")], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for n, p in named if n.startswith("backbone.")], "lr": lr_backbone, "weight_decay": weight_decay}]


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _train_loader(dataset: EpochSeeded, batch_size: int, num_workers: int, seed: int) -> DataLoader:
    """Shuffled by a :class:`ResumableSampler` (shards evened out by repeating samples, as DDP needs the same
    step count on every process)."""
    sampler = ResumableSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=True, seed=seed,
                               drop_last=False)
    return _loader(dataset, sampler, batch_size, num_workers, seed)


def eval_loader(dataset: CocoDetection, batch_size: int, num_workers: int) -> DataLoader:
    """In dataset order; under ``torchrun`` process r reads images r, r+W, ... (``ShardSampler``: no padding
    samples, so every image is scored exactly once)."""
    return _loader(dataset, ShardSampler(dataset), batch_size, num_workers, 0)


def _loader(dataset: CocoDetection | EpochSeeded, sampler: torch.utils.data.Sampler, batch_size: int,
            num_workers: int, seed: int) -> DataLoader:
    """A loader with its own generator (no draw from the global RNG, which checkpoints save for dropout)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed))


def count_gflops(model: nn.Module, size: tuple[int, int]) -> float:
    """GMACs ("GFLOPs" in the DETR papers' sense) of one forward on a (3, *size) image."""
    from pit.flops import count_macs

    class _Single(nn.Module):
        def __init__(self, detector: nn.Module) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, x: Tensor) -> dict:
            return self.detector(x, torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool, device=x.device))

    return count_macs(_Single(model), (3, *size)) / 1e9


def load_state_dropping_mismatched(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load ``state`` (``module.`` prefixes removed by timm's ``clean_state_dict``) into ``model``, dropping
    with a warning the keys whose shapes differ (a new class head); any other mismatch is an error."""
    state = clean_state_dict(state)
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if dropped:
        warnings.warn(f"dropped parameters with mismatched shapes (re-initialised): {dropped}", stacklevel=2)
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False)
    if unexpected or [k for k in missing if k not in dropped]:
        raise ValueError(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return dropped


def load_checkpoint(path: str, *, fields: tuple[str, ...] = MODEL_FIELDS) -> dict:
    """A checkpoint written by ``detection train``, read safely; refused in one line when it lacks ``fields``."""
    ckpt = safe_load(path, what="detection checkpoint")
    missing = [k for k in fields if k not in ckpt] if isinstance(ckpt, dict) else list(fields)
    if missing:
        holds = f"a dict with keys {sorted(ckpt)[:6]}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise CheckpointError(f"detection checkpoint {path} holds {holds}, not a `detection train` checkpoint "
                              f"(missing {', '.join(missing)}): expected the checkpoint.pth of a detection train "
                              "run folder")
    return ckpt


def _finetune_state(path: str, arch: str, backbone: str) -> dict[str, Tensor]:
    """The weights of any detector ``load_detector`` reads (suite, official, Hugging Face), checked to be ``arch`` over ``backbone``."""
    from detection.load import load_detector

    loaded = load_detector(path)
    config = loaded.config
    if (config["arch"], config["backbone"]) != (arch, backbone):
        raise ValueError(f"--finetune {path} is {config['arch']} over {config['backbone']}: pass --arch {config['arch']} "
                         f"--backbone {config['backbone']}")
    return loaded.model.state_dict()


def _check_compatible(ckpt: dict, path: str, *, arch: str, backbone: str, num_classes: int, cat_ids: list[int]) -> None:
    if ckpt["arch"] != arch:
        raise ValueError(f"checkpoint {path} is for --arch {ckpt['arch']}, not {arch}")
    if ckpt["backbone"] != backbone:
        raise ValueError(f"checkpoint {path} is for backbone {ckpt['backbone']!r}, not {backbone!r}: pass --backbone "
                         f"{ckpt['backbone']} or start a new run")
    if ckpt["num_classes"] != num_classes or list(ckpt["cat_ids"]) != list(cat_ids):
        raise ValueError(f"checkpoint {path} has num_classes={ckpt['num_classes']} (category ids {ckpt['cat_ids']}) "
                         f"but the dataset has {num_classes} ({cat_ids}): use --finetune to start from it with a new head")


@dataclass
class _Run:
    """The live pieces of one training run."""

    config: DetectionTrainConfig
    out: Path
    device: torch.device
    amp: bool
    train_set: CocoDetection
    val_set: CocoDetection
    model: nn.Module
    criterion: nn.Module
    postprocessor: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def header(self) -> dict:
        return {"data": self.config.data_note or f"train {self.config.train_ann}, val {self.config.val_ann}",
                "weights": self.config.weights_note or (f"backbone weights {self.config.backbone_weights}"
                                                        if self.config.backbone_weights else "random initialisation")}

    def checkpoint(self, epoch: int) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "rng": all_gather_objects(rng_state()), "args": self.config.options(), "arch": self.config.arch,
                "backbone": self.config.backbone, "num_classes": self.train_set.num_classes,
                "cat_ids": self.train_set.cat_ids, "category_names": self.train_set.category_names,
                "model_kwargs": self.config.model_kwargs}

    def evaluate(self) -> dict:
        loader = eval_loader(self.val_set, self.config.batch_size, self.config.num_workers)
        evaluator = CocoEvaluator(self.val_set.coco, self.val_set.cat_ids)
        return evaluate(self.model, self.postprocessor, loader, evaluator, self.device, amp=self.amp,
                        progress=self.config.progress)[0]


def _build_run(config: DetectionTrainConfig, out: Path, device: torch.device) -> _Run:
    sizes = config.image_sizes()
    train_set = CocoDetection(config.train_ann, config.train_images, make_transforms(config.augment, sizes),
                              label_space=config.label_space)
    val_set = CocoDetection(config.val_ann, config.val_images, make_transforms(False, sizes),
                            label_space=config.label_space)
    if val_set.cat_ids != train_set.cat_ids:
        raise ValueError(f"train and val category ids differ: {train_set.cat_ids} vs {val_set.cat_ids}")
    _seed(config.seed + get_rank())
    model = build_detector(config.arch, backbone=config.backbone, num_classes=train_set.num_classes,
                           backbone_weights=config.backbone_weights, **config.model_kwargs).to(device)
    criterion = build_criterion(config.arch, num_classes=train_set.num_classes, model_kwargs=config.model_kwargs,
                                **config.loss_kwargs).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config.lr, config.lr_backbone, config.weight_decay),
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_drop, gamma=0.1)
    return _Run(config, out, device, config.amp, train_set, val_set, model, criterion,
                build_postprocessor(config.arch, config.num_select), optimizer, scheduler, grad_scaler(device, config.amp))


def _resume_at(run: _Run, source: str | None) -> tuple[int, EpochPosition | None]:
    """The epoch to run next and, part-way through it, where it stands: rank 0 restores from ``source`` and
    says (``main_decides``); the other processes restore too only when epochs remain (a finished run needs
    nothing more from the checkpoint, so a process whose listing lags behind need not read it)."""
    if not source:
        return 0, None
    start_epoch, partial = main_decides(lambda: _restore(run, source))
    if not is_main_process() and start_epoch < run.config.epochs:
        _restore(run, source)
    return start_epoch, EpochPosition.from_state(partial, run.device) if partial else None


def _restore(run: _Run, source: str) -> tuple[int, dict | None]:
    """Continue from checkpoint ``source`` exactly (weights, optimizer, schedule, RNG); returns the epoch to
    run next and, for a checkpoint saved part-way through it (Ctrl-C), where that epoch stands (plain data)."""
    ckpt = load_checkpoint(source, fields=RESUME_FIELDS)
    _check_compatible(ckpt, source, arch=run.config.arch, backbone=run.config.backbone,
                      num_classes=run.train_set.num_classes, cat_ids=run.train_set.cat_ids)
    if len(without_pruned(run.model, ckpt["model"])) < len(ckpt["model"]):
        raise ValueError(f"checkpoint {source} was written before the backbone's unused final layers were removed: "
                         "its optimizer state cannot be resumed exactly; --finetune it to start a new run from its weights")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    set_rng_state(rng[get_rank()] if get_rank() < len(rng) else rng[0])
    return int(ckpt["epoch"]) + 1, ckpt.get("partial")


def _write_run_files(run: _Run) -> None:
    """Write ``run.json`` and the log's header line of a run starting at epoch 0 (main process)."""
    config = run.config
    if not is_main_process():
        return
    size = config.gflops_size or (config.image_sizes().test_size,) * 2
    rng = rng_state()  # the FLOP count must not move the training RNG stream
    atomic_write_json(run.out / "run.json", {
        **run.header(), "arch": config.arch, "backbone": config.backbone, "num_classes": run.train_set.num_classes,
        "category_names": run.train_set.category_names, "params": sum(p.numel() for p in run.model.parameters()),
        "gflops": count_gflops(run.model, tuple(size)), "gflops_size": list(size), "args": config.options()})
    set_rng_state(rng)
    atomic_write_text(run.out / "log.jsonl", json.dumps(run.header()) + "\n")
    (run.out / "eval.json").unlink(missing_ok=True)


def _keep_log_before(out: Path, epoch: int) -> None:
    """Drop log lines of epochs ≥ ``epoch`` (written before an interrupted run could save its checkpoint)."""
    records = [r for r in read_jsonl(out / "log.jsonl") if r.get("epoch", -1) < epoch]
    atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _save(run: _Run, checkpoint: dict, record: dict | None = None) -> None:
    if is_main_process():
        if record is not None:
            append_jsonl(run.out / "log.jsonl", record)
        atomic_torch_save(checkpoint, run.out / "checkpoint.pth")


def _train_epochs(run: _Run, start_epoch: int, position: EpochPosition | None, stop: StopRequest) -> dict:
    """Epochs ``start_epoch``.. (the first from ``position`` when resuming part-way), a checkpoint after each;
    on Ctrl-C the epoch so far is saved and ``KeyboardInterrupt`` raised."""
    config = run.config
    train_model = _ddp(run.model) if is_distributed() else run.model
    seeded = EpochSeeded(run.train_set, config.seed)
    train_loader = _train_loader(seeded, config.batch_size, config.num_workers, config.seed)
    epochs = Progress(config.epochs, unit="epoch", done=start_epoch, enabled=config.progress)
    stats: dict = {}
    for epoch in range(start_epoch, config.epochs):
        seeded.set_epoch(epoch)
        train_loader.sampler.set_epoch(epoch, start=position.step * config.batch_size if position else 0)
        if position is None:  # the global RNG's one draw per epoch where a loader without a generator takes its
            torch.empty((), dtype=torch.int64).random_()  # worker seed: the dropout stream of every run stays as it was
        try:
            train_stats = train_one_epoch(
                train_model, run.criterion, train_loader, run.optimizer, run.device, epoch=epoch,
                clip_max_norm=config.clip_max_norm, accum_steps=config.accum_steps, amp=run.amp, scaler=run.scaler,
                progress=config.progress, position=position, stop=stop, desc=f"epoch {epoch + 1} of {config.epochs}")
        except Stopped as stopped:
            _save(run, {**run.checkpoint(epoch - 1), "partial": stopped.position.state()})
            epochs.close()
            raise KeyboardInterrupt from None
        position = None
        run.scheduler.step()
        record = {"epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"], **{f"train_{k}": v for k, v in train_stats.items()}}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            stats = run.evaluate()
            record.update({k: stats[k] for k in PRINTED}, fps=stats["fps"])
        _save(run, run.checkpoint(epoch), record)
        epochs.update(label=f"loss {train_stats['loss']:.3f}" + (f", AP {fmt(100 * stats['AP'])}" if "AP" in record else ""))
        if agree(run.device, stop.requested)[0] and epoch + 1 < config.epochs:
            epochs.close()
            raise KeyboardInterrupt
    epochs.close()
    return stats


def _ddp(model: nn.Module) -> nn.Module:
    """DDP that expects a gradient for every trainable parameter (the backbones drop what they never run,
    ``detection.backbones.prune_unused``), unless the detector says its forward runs some that get none."""
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=getattr(model, "gradless_in_forward", False))


def _report(out: Path, stats: dict, header: dict) -> None:
    """Write ``eval.json`` (data and weights first) and print the COCO summary and the headline numbers
    (in %, "–" where COCOeval has no such objects, as in every report)."""
    if not is_main_process():
        return
    atomic_write_json(out / "eval.json", {**header, **{k: v for k, v in stats.items() if k != "summary"}})
    print(stats.get("summary", "") + headline(stats))


def headline(stats: dict) -> str:
    """``AP 43.1  AP50 ...  APl –  fps 12.3`` from COCO stats in [0, 1] (-1 = no such objects)."""
    return "  ".join(f"{k} {fmt(100 * stats[k], missing_below=0)}" for k in PRINTED) + f"  fps {fmt(stats['fps'])}"


def _open_train_run(config: DetectionTrainConfig) -> Run:
    """``config.out`` opened as a detection train run (``common.run``): the same options (or a folder written
    before a recipe field existed) resume; more epochs with ``--resume``; ``--resume FILE`` any folder."""
    return open_run(config.out, TRAIN_KIND, config.options(), files=("checkpoint.pth",), resume=config.resume,
                    overwrite=config.overwrite, continuable=more_epochs,
                    compatible=(lambda old, new: True) if config.resume_from else same_run)


def train_detector(config: DetectionTrainConfig) -> dict:
    """Train ``config.arch`` over ``config.backbone`` on a COCO-format set, evaluating on the val set;
    returns the final eval stats (see :func:`evaluate`). The run folder is opened before any work; an
    existing run of the same options there is resumed (part-way through an epoch after Ctrl-C), a
    finished one is reported, not retrained."""
    device = init_distributed(config.device)
    opened = _open_train_run(config)
    out, main = opened.path, is_main_process()
    if main:
        announce(out)
        print(config.recipe_line(), flush=True)
    run = _build_run(config, out, device)
    source, logged = main_decides(lambda: _resume_source(config, out, opened.resumed))
    start_epoch, position = _resume_at(run, source)
    if config.finetune and not source:
        load_state_dropping_mismatched(run.model, _finetune_state(config.finetune, config.arch, config.backbone))
    if not source or not logged:
        _write_run_files(run)
    elif main:
        _keep_log_before(out, start_epoch)
    if source and main:
        print(f"resuming {out} from {source}: {_done(start_epoch, position, config)}", flush=True)
    if start_epoch >= config.epochs:
        if main:
            note(f"the run in {out} already finished its {config.epochs} epochs: nothing to train "
                 "(--resume --epochs N continues it, --overwrite starts it over)")
        stats = main_decides(lambda: _saved_json(out / "eval.json")) or run.evaluate()
    else:
        with StopRequest() as stop:
            stats = _train_epochs(run, start_epoch, position, stop) or run.evaluate()
    _report(out, stats, run.header())
    if main:
        announce(out, finished=True)
    return stats


def _resume_source(config: DetectionTrainConfig, out: Path, resumed: bool) -> tuple[str | None, bool]:
    """(the checkpoint to resume from, None for a fresh start; whether the run's log.jsonl exists), read from the
    disk by rank 0 (``main_decides``): a process whose listing lags must not start over while the others resume."""
    saved = out / "checkpoint.pth"
    source = config.resume_from or (str(saved) if resumed and saved.is_file() else None)
    return source, (out / "log.jsonl").is_file()


def _saved_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _done(start_epoch: int, position: EpochPosition | None, config: DetectionTrainConfig) -> str:
    text = f"{start_epoch} of {config.epochs} epochs done"
    return text + (f", epoch {start_epoch + 1} continues after its step {position.step}" if position else "")


def eval_options(checkpoint: str, val_ann: str, val_images: str) -> dict:
    """What a ``detection eval`` run computes (its run-folder options): the detector and the data."""
    return {k: str(Path(v).resolve()) for k, v in
            {"checkpoint": checkpoint, "val_ann": val_ann, "val_images": val_images}.items()}


def _saved_eval(out: Path) -> dict | None:
    """The stats of a finished evaluation in ``out`` (both its files there), else None."""
    return _saved_json(out / "eval.json") if (out / DETECTIONS_FILE).is_file() else None


def evaluate_checkpoint(checkpoint: str, val_ann: str, val_images: str, out: str, *, device: str | None = None,
                        batch_size: int = 2, num_workers: int | None = None, save_vis: int = 0, progress: bool = True,
                        amp: bool = False, data_note: str = "", resume: bool = False, overwrite: bool = False) -> dict:
    """Evaluate a detector (any ``detection.load.load_detector`` format: suite, official DETR / Deformable DETR
    .pth, Hugging Face folder) on a COCO-format set; writes ``eval.json``, ``detections.json`` (COCO results
    format, :data:`DETECTIONS_FILE`) and ``vis/*.png`` under ``out`` (opened before the evaluation starts: the
    same command again reports the saved result). Under ``torchrun`` every image is scored exactly once and
    every process returns rank 0's numbers."""
    from common.vocabulary import default_workers
    from detection.load import load_detector

    device = init_distributed(device)
    opened = open_run(out, EVAL_KIND, eval_options(checkpoint, val_ann, val_images), files=EVAL_FILES,
                      resume=resume, overwrite=overwrite)
    out_dir = opened.path
    if is_main_process():
        announce(out_dir)
    saved = main_decides(lambda: _saved_eval(out_dir)) if opened.resumed and save_vis == 0 else None
    if saved is not None:
        stats = saved
        say_resumed(opened, "already evaluated (--overwrite evaluates again)")
        if is_main_process():
            print(headline(stats))
            announce(out_dir, finished=True)
        return stats
    loaded = load_detector(checkpoint, device=str(device))
    rows_are_ids = loaded.cat_ids == list(range(len(loaded.cat_ids)))
    val_set = CocoDetection(val_ann, val_images, make_transforms(False, loaded.sizes),
                            label_space="coco-ids" if rows_are_ids else "contiguous")
    unknown = sorted(set(val_set.coco.getCatIds()) - set(loaded.cat_ids))
    if unknown:
        raise ValueError(f"checkpoint {checkpoint} ({loaded.source}) was trained on category ids {loaded.cat_ids} but "
                         f"{val_ann} also has {unknown}: evaluate on the dataset it was trained on")
    loader = eval_loader(val_set, batch_size, default_workers(num_workers))
    evaluator = CocoEvaluator(val_set.coco, loaded.cat_ids)
    stats, predictions = evaluate(loaded.model, loaded.postprocessor, loader, evaluator, device, amp=amp,
                                  progress=progress)
    if is_main_process():
        atomic_write_json(out_dir / DETECTIONS_FILE, evaluator.results)
    _report(out_dir, stats, {"data": data_note or f"val {val_ann}", "weights": f"detector checkpoint {checkpoint}"})
    if save_vis > 0 and is_main_process():
        from detection.visualize import save_visualizations

        save_visualizations(val_set, predictions, out_dir / "vis", save_vis)
    if is_main_process():
        announce(out_dir, finished=True)
    return stats
