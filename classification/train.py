"""A small image-classification trainer built from timm's recipe pieces — ``python eval.py train-classifier``.

Recipe (DeiT-style, scaled down): AdamW (``timm.optim.create_optimizer_v2``) with a per-step cosine
schedule and linear warm-up (``timm.scheduler.CosineLRScheduler``), label smoothing
(``LabelSmoothingCrossEntropy``) or Mixup/CutMix (``timm.data.Mixup`` + ``SoftTargetCrossEntropy``),
optional EMA of the weights (``timm.utils.ModelEmaV3``) and optional DeiT hard distillation from a
teacher for two-head ("distilled") models: ``loss = ½·CE(cls_head, y) + ½·CE(dist_head, argmax teacher)``.

Data: an ImageFolder root with ``train/`` and ``val/`` (class folders, e.g. wnids), read through
``classification.data.ImageFolderSet`` (uint8 decode once, unreadable images skipped with a warning);
without ``--data`` the built-in generated set (``common.synthetic.make_classification``). Every model
takes [0, 1] pixels and normalises inside itself (``pit.NormalizedModel``); the checkpoint holds the
inner model's weights, so ``pit.create_model(name, weights=checkpoint)`` loads it.

Example::

    python eval.py train-classifier --model pit_ti --data DATA --img-size 64 --epochs 10 --out runs/pit_ti

Run folder (``--out``, default ``runs/train-classifier-<model>``), opened by ``common.run.open_run``:
``checkpoint.pth`` (written atomically after every epoch) = ``{"model", "model_ema"?, "optimizer", "epoch",
"options", "classes", "val", "history", "partial"?}`` and ``log.jsonl`` (one record per epoch, rewritten
from the checkpoint's history). Running the same command again resumes from the checkpoint (a finished
run is returned as is); other options are refused unless ``--resume`` (continue to more ``--epochs``) or
``--overwrite`` (start over).

Ctrl-C stops after the step in flight and saves the partial epoch (``"partial"``: the steps done, the
running loss and every random stream); the DataLoader workers ignore the signal and are shut down in
order (``common.interrupt``). Resume is exact: every epoch reseeds all random streams from
``(seed, epoch)``, a partial epoch replays its first batches through the loader (so the workers' streams
advance as before) and restores the saved streams, and evaluation draws from its own generator, so an
interrupted and resumed run ends with bitwise the same weights (with the same ``--workers``).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

import pit
from classification.data import ImageFolderSet, UnknownClassFolders, build_class_index, make_loader
from classification.data import skip_none_collate, to_float
from classification.evaluate import evaluate_topk
from common.interrupt import StopRequest, ignore_sigint, rng_state, set_rng_state
from classification.recipe import build_objective
from common import synthetic
from common.autocast import autocast
from common.checkpoint import safe_load
from common.distributed import default_device
from common.io import atomic_torch_save, atomic_write_text
from common.options import non_negative_float, open_fraction, positive_float, positive_int
from common.progress import Progress, duration
from common.run import Run, check_resume_overwrite, open_run, say_resumed
from common.rundir import OutputError, announce, default_out, note
from common.vocabulary import add_shared_flags, default_workers

KIND = "train-classifier"
CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"
# Fields that say where and how a run executes, not what it trains: they may change between reruns.
RUNTIME_FIELDS = ("out", "device", "workers", "progress", "resume", "overwrite", "eval_every")


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Everything ``train_classifier`` needs; these field defaults are the command's only defaults.

    ``data`` None: the built-in generated set; ``out`` None: ``runs/train-classifier-<model>``.
    ``mixup``/``cutmix`` are Beta alphas (0 disables); ``teacher`` (+ ``teacher_weights``) turns on hard
    distillation and needs a distilled ``model``; ``model_kwargs``/``teacher_kwargs`` go to
    ``pit.create_model`` (e.g. ``{"depth": 4}``). ``eval_every``: validate every N epochs (and after
    the last). ``resume``: continue a run whose options differ only in ``epochs`` (to more epochs);
    ``overwrite``: delete this folder's checkpoint and log and start over. ``workers``: DataLoader
    processes (None: ``common.vocabulary.default_workers()``); ``amp``: autocast with the suite's policy.
    """

    model: str = "pit_ti"
    data: str | None = None
    out: str | None = None
    epochs: int = 10
    batch_size: int = 64
    img_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float | None = None
    clip_grad: float | None = None
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    teacher_weights: str | None = None
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    eval_every: int = 1
    resume: bool = False
    overwrite: bool = False
    device: str | None = None
    amp: bool = False
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "img_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or (self.workers is not None and self.workers < 0):
            raise ValueError(f"need --lr > 0 and --workers >= 0, got {self.lr} and {self.workers}")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"Mixup/CutMix need an even --batch-size, got {self.batch_size}")
        if self.teacher is None and self.teacher_weights is not None:
            raise ValueError("--teacher-weights given without --teacher")
        check_resume_overwrite(self.resume, self.overwrite)

    def options(self) -> dict[str, Any]:
        """What the run trains (every field except ``RUNTIME_FIELDS``), as plain JSON data."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


@dataclass
class _Session:
    """The live pieces of one training run."""

    config: ClassifierTrainConfig
    device: torch.device
    net: pit.NormalizedModel
    train_loader: DataLoader
    val_loader: DataLoader
    classes: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    loss: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
    mixup: Mixup | None
    ema: ModelEmaV3 | None
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None  # where an interrupted epoch stopped (see ``_train_epoch``)


def _resolve_data(config: ClassifierTrainConfig) -> ClassifierTrainConfig:
    """``data`` as an absolute path; without one, the built-in generated set (with a banner saying so)."""
    if config.data is not None:
        return replace(config, data=str(Path(config.data).resolve()))
    spec = synthetic.ClassificationSpec()
    root = synthetic.make_classification(None, spec)
    note(f"no --data: training on the built-in generated set ({spec.num_classes} shape/texture classes, "
         f"{spec.train_per_class}/{spec.val_per_class} train/val images per class, {spec.img_size} px, in {root}); "
         "pass --data DIR (an ImageFolder root with train/ and val/) for real data")
    return replace(config, data=str(root.resolve()))


def _check_data(root: Path) -> None:
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"--data {root}: {split}/ not found; --data must be an ImageFolder root with "
                                    "train/ and val/ class folders (e.g. made by common.synthetic.make_classification)")


def build_loaders(config: ClassifierTrainConfig) -> tuple[DataLoader, DataLoader, list[str]]:
    """Train/val loaders over ``data/train`` and ``data/val`` → uint8 ``(images (B,3,S,S), labels, indices)``
    batches (S = ``img_size``) and the class-folder names in label order.

    Train: random-resized crop (scale 0.5–1) + horizontal flip, shuffled by its own generator. Val: timm's
    eval transform at crop_pct 1 (bicubic resize of the short side to S, centre crop), ordered, with its
    own generator so that evaluation never draws from the global random streams.
    """
    root = Path(config.data)
    _check_data(root)
    index = build_class_index("folder", root / "train")
    train_tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(config.img_size, scale=(0.5, 1.0), antialias=True),
                           v2.RandomHorizontalFlip()])
    train_set = ImageFolderSet(root / "train", index, config.img_size, 1.0, transform=train_tf)
    try:
        val_set = ImageFolderSet(root / "val", index, config.img_size, 1.0)
    except UnknownClassFolders as err:
        raise ValueError(f"--data {root}: val/ has class folders {err.folders[:5]} that train/ lacks: train/ and "
                         "val/ must hold the same class folders") from None
    if train_set.folders != val_set.folders:
        raise ValueError(f"--data {root}: train/ and val/ have different class folders")
    if len(train_set) < config.batch_size:
        raise ValueError(f"{root / 'train'} has {len(train_set)} images, fewer than one batch of {config.batch_size}: "
                         "lower --batch-size")
    pin = torch.cuda.is_available()
    workers = default_workers(config.workers)
    # Fresh workers every epoch (no persistent workers): their seeds come from the generator reseeded per epoch.
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator(), num_workers=workers, pin_memory=pin,
                              collate_fn=skip_none_collate, worker_init_fn=ignore_sigint)
    val_loader = make_loader(val_set, 2 * config.batch_size, workers, pin,
                             generator=torch.Generator().manual_seed(config.seed), worker_init_fn=ignore_sigint)
    return train_loader, val_loader, train_set.folders


def _build_session(config: ClassifierTrainConfig, state: dict[str, Any] | None) -> _Session:
    """Model, data, optimiser, schedule, EMA and loss for ``config``, continued from ``state`` when given."""
    device = torch.device(config.device) if config.device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {config.device}: no CUDA GPU is available here; use --device cpu")
    train_loader, val_loader, classes = build_loaders(config)
    torch.manual_seed(config.seed)
    inner = pit.create_model(config.model, weights=config.weights, num_classes=len(classes), img_size=config.img_size,
                             **config.model_kwargs)
    if hasattr(inner, "set_distilled_training"):
        inner.set_distilled_training(True)
    net = pit.NormalizedModel(inner).to(device).train()
    loss, mixup = build_objective(len(classes), device, mixup=config.mixup, cutmix=config.cutmix,
                                  label_smoothing=config.label_smoothing, teacher=config.teacher,
                                  teacher_weights=config.teacher_weights, teacher_kwargs=config.teacher_kwargs,
                                  img_size=config.img_size)
    optimizer = create_optimizer_v2(inner, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    steps = len(train_loader)
    # The LR at update n is a pure function of n (t_in_epochs=False), so a resumed run rebuilds the same schedule.
    scheduler = CosineLRScheduler(optimizer, t_initial=config.epochs * steps, lr_min=config.min_lr,
                                  warmup_t=int(config.warmup_epochs * steps), warmup_lr_init=config.lr * 0.01,
                                  warmup_prefix=True, t_in_epochs=False)
    ema = ModelEmaV3(inner, decay=config.ema_decay) if config.ema_decay else None
    session = _Session(config, device, net, train_loader, val_loader, classes, optimizer, scheduler, loss, mixup, ema)
    if state is not None:
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "model_ema" in state:
            ema.module.load_state_dict(state["model_ema"])
        session.start_epoch, session.history = state["epoch"] + 1, list(state["history"])
        session.partial = state.get("partial")
    return session


def _seed_epoch(seed: int, epoch: int, train_loader: DataLoader) -> None:
    """Every random stream training draws from (batch order, worker seeds, augmentation, Mixup, dropout)
    is a function of ``(seed, epoch)`` alone: a resumed epoch replays exactly."""
    train_loader.generator.manual_seed(seed + epoch)
    stream = seed + 1000 + epoch
    torch.manual_seed(stream)
    np.random.seed(stream % 2**32)
    random.seed(stream)


def _train_step(s: _Session, images: torch.Tensor, targets: torch.Tensor, update: int) -> float:
    """One optimiser update on a uint8 batch; returns the loss. ``update`` counts updates from 1."""
    images, targets = to_float(images, s.device), targets.to(s.device, non_blocking=True)
    if s.mixup is not None and len(targets) % 2:  # an unreadable image was dropped: Mixup needs pairs
        images, targets = images[:-1], targets[:-1]
    loss_targets = targets
    if s.mixup is not None:
        images, loss_targets = s.mixup(images, targets)
    with autocast(s.device, enabled=s.config.amp):
        loss = s.loss(images, s.net(images), loss_targets)
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"loss became {value} at update {update}: lower --lr")
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.config.clip_grad:
        torch.nn.utils.clip_grad_norm_(s.net.parameters(), s.config.clip_grad)
    s.optimizer.step()
    s.scheduler.step_update(update)
    if s.ema is not None:
        s.ema.update(s.net.model, step=update)
    return value


def _batches(s: _Session, epoch: int):
    """The epoch's batches from where ``s.partial`` stopped: the first ``steps`` are replayed through the
    loader untrained (the workers' random streams advance as in an uninterrupted epoch), then the main
    process's streams are restored as they were after the last finished step."""
    _seed_epoch(s.config.seed, epoch, s.train_loader)
    batches = iter(s.train_loader)
    if s.partial is not None:
        for _ in range(s.partial["steps"]):
            next(batches)
        set_rng_state(s.partial["rng"])
    return batches


def _train_epoch(s: _Session, epoch: int, stop: StopRequest) -> float | None:
    """One pass over the training set; returns the mean loss, or None when ``stop`` asked to end the run
    mid-epoch (``s.partial`` then says where, with the random streams to resume from)."""
    c = s.config
    partial = s.partial or {"steps": 0, "total": 0.0, "updates": 0}
    total, updates, steps = partial["total"], partial["updates"], len(s.train_loader)
    s.net.train()
    bar = tqdm(total=steps, initial=partial["steps"], desc=f"{c.model} epoch {epoch + 1} of {c.epochs}",
               disable=not c.progress, leave=False)
    batches = _batches(s, epoch)
    s.partial = None
    for step, (images, targets, _) in enumerate(batches, start=partial["steps"]):
        if len(targets) > 0 and (s.mixup is None or len(targets) >= 2):  # else unreadable images were dropped
            total += _train_step(s, images, targets, epoch * steps + step + 1)
            updates += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / max(updates, 1):.3f}", lr=f"{s.optimizer.param_groups[0]['lr']:.2e}")
        if stop.requested and step + 1 < steps:
            s.partial = {"epoch": epoch, "steps": step + 1, "total": total, "updates": updates, "rng": rng_state()}
            break
    del batches  # shuts the workers down before anything is saved
    bar.close()
    if s.partial is not None:
        return None
    if updates == 0:
        raise ValueError(f"{c.data}/train: no readable image in a whole epoch (every image was skipped as unreadable)")
    return total / updates


def _validate(s: _Session) -> dict[str, float]:
    """Top-1/top-5/loss on the val split (and of the EMA weights, suffixed ``_ema``)."""
    amp = s.config.amp
    val = evaluate_topk(s.net, s.val_loader, s.device, amp, progress=s.config.progress)
    if s.ema is not None:
        ema = pit.NormalizedModel(s.ema.module)
        val.update({f"{k}_ema": v for k, v in evaluate_topk(ema, s.val_loader, s.device, amp, progress=False).items()})
    return val


def _save(s: _Session, out: Path, epoch: int, val: dict[str, float]) -> dict[str, Any]:
    """Checkpoint (atomic), then ``log.jsonl`` rewritten from the checkpoint's history."""
    state = {"model": s.net.model.state_dict(), "optimizer": s.optimizer.state_dict(), "epoch": epoch,
             "options": s.config.options(), "classes": s.classes, "val": val, "history": s.history}
    if s.partial is not None:
        state["partial"] = s.partial
    if s.ema is not None:
        state["model_ema"] = s.ema.module.state_dict()
    atomic_torch_save(state, out / CHECKPOINT_NAME)
    _write_log(out, s.history)
    return state


def _write_log(out: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(out / LOG_NAME, "".join(json.dumps(record) + "\n" for record in history))


def _more_epochs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """``--resume`` continues a run whose options differ only in a larger ``epochs``."""
    return {**old, "epochs": new.get("epochs")} == new and new.get("epochs", 0) > old.get("epochs", 0)


def _open_run(config: ClassifierTrainConfig, out: Path) -> tuple[Run, dict[str, Any] | None]:
    """Open ``out`` (``common.run.open_run``: fresh | resume | refuse) and read the checkpoint to resume from."""
    run = open_run(out, KIND, config.options(), files=(CHECKPOINT_NAME, LOG_NAME), resume=config.resume,
                   overwrite=config.overwrite, continuable=_more_epochs)
    if not run.resumed or not (out / CHECKPOINT_NAME).exists():
        return run, None
    state = safe_load(out / CHECKPOINT_NAME, what="train-classifier checkpoint")
    if not isinstance(state, dict) or "options" not in state or "history" not in state:
        raise OutputError(f"--out {out} holds a {CHECKPOINT_NAME} this trainer did not write: pass --overwrite "
                          "to replace it, or choose another --out")
    return run, state


def _done_text(state: dict[str, Any], epochs: int) -> str:
    """What a resumed run had finished, e.g. "2 of 10 epochs finished, epoch 3 stopped after step 51 of 128"."""
    text = f"{state['epoch'] + 1} of {epochs} epochs finished"
    partial = state.get("partial")
    return text + (f", epoch {partial['epoch'] + 1} stopped after step {partial['steps']}" if partial else "")


def _result(state: dict[str, Any], out: Path) -> dict[str, Any]:
    return {**state["val"], "epoch": state["epoch"], "classes": state["classes"],
            "checkpoint": str(out / CHECKPOINT_NAME), "out": str(out)}


def train_classifier(config: ClassifierTrainConfig) -> dict[str, Any]:
    """Train ``config.model`` and return ``{"top1", "top5", "loss", "top1_ema"?, ..., "epoch", "classes",
    "checkpoint", "out"}`` (accuracies in percent, of the last validation; ``epoch`` counts from 0).

    Ctrl-C saves the partial epoch and raises ``KeyboardInterrupt``; the same call again resumes it."""
    config = _resolve_data(config)
    _check_data(Path(config.data))  # before the run folder is claimed
    out = Path(config.out) if config.out else default_out(KIND, [config.model], KIND, config.options())
    announce(out)
    run, state = _open_run(config, out)
    if state is not None:
        say_resumed(run, _done_text(state, config.epochs))
        _write_log(out, state["history"])  # the log matches the checkpoint, whatever was interrupted
        if state["epoch"] + 1 >= config.epochs and "partial" not in state:
            print(f"{out} already holds this finished run ({state['epoch'] + 1} epochs): nothing to train", flush=True)
            return _result(state, out)
    s = _build_session(config, state)
    with StopRequest() as stop:
        state = _train(s, out, state, stop)
    return _result(state, out)


def _train(s: _Session, out: Path, state: dict[str, Any] | None, stop: StopRequest) -> dict[str, Any]:
    """The epochs from ``s.start_epoch`` on, a checkpoint after each; the last checkpoint's contents."""
    c = s.config
    progress = Progress(c.epochs, unit="epoch", done=s.start_epoch, enabled=c.progress, desc=c.model)
    last_val = (state or {}).get("val", {})
    try:
        for epoch in range(s.start_epoch, c.epochs):
            started = time.perf_counter()
            train_loss = _train_epoch(s, epoch, stop)
            if train_loss is None:
                _save(s, out, epoch - 1, last_val)
                tqdm.write(f"stopped: epoch {epoch + 1} saved after step {s.partial['steps']} of "
                           f"{len(s.train_loader)} in {out / CHECKPOINT_NAME}")
                raise KeyboardInterrupt
            val = _validate(s) if epoch + 1 == c.epochs or (epoch + 1) % c.eval_every == 0 else {}
            s.history.append({"epoch": epoch, "train_loss": train_loss, "seconds": time.perf_counter() - started, **val})
            last_val = val or last_val
            state = _save(s, out, epoch, last_val)
            progress.update(1)
            line = f"{c.model} epoch {epoch + 1} of {c.epochs}: loss {train_loss:.3f}"
            if val:
                line += f"  val top-1 {val['top1']:.2f}" + (f"  (EMA {val['top1_ema']:.2f})" if s.ema else "")
            eta = progress.eta()
            tqdm.write(line + (f"  · ETA {duration(eta)}" if eta and epoch + 1 < c.epochs else ""))
            sys.stdout.flush()  # epoch lines show up at once when the output goes to a file or pipe
            if stop.requested and epoch + 1 < c.epochs:
                raise KeyboardInterrupt
    finally:
        progress.close()
    return state


def _default(name: str) -> Any:
    """The config's default for field ``name`` (the CLI shows and uses it, never a copy)."""
    return next(f.default for f in fields(ClassifierTrainConfig) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _default
    add_shared_flags(parser, "models", models=[d("model")])
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="ImageFolder root with train/ and val/ class folders (default: the built-in generated set)")
    add_shared_flags(parser, "out", out_help="run folder: checkpoint.pth, log.jsonl (default: runs/train-classifier-<model>)")
    g = parser.add_argument_group("recipe")
    g.add_argument("--epochs", type=positive_int, default=d("epochs"))
    add_shared_flags(g, "batch_size", batch_size=d("batch_size"))
    g.add_argument("--img-size", type=positive_int, default=d("img_size"), help="square training/eval side in pixels")
    g.add_argument("--lr", type=positive_float, default=d("lr"), help="peak AdamW learning rate (cosine, linear warm-up)")
    g.add_argument("--weight-decay", type=non_negative_float, default=d("weight_decay"))
    g.add_argument("--warmup-epochs", type=non_negative_float, default=d("warmup_epochs"))
    g.add_argument("--min-lr", type=non_negative_float, default=d("min_lr"))
    g.add_argument("--smoothing", dest="label_smoothing", type=open_fraction, default=d("label_smoothing"),
                   help="label smoothing in [0, 1)")
    g.add_argument("--mixup", type=non_negative_float, default=d("mixup"), help="Mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=non_negative_float, default=d("cutmix"), help="CutMix alpha (0 = off)")
    g.add_argument("--ema-decay", type=open_fraction, default=d("ema_decay"), help="keep an EMA of the weights")
    g.add_argument("--clip-grad", type=positive_float, default=d("clip_grad"), help="clip the gradient norm to this")
    add_shared_flags(g, "seed", "amp", seed=d("seed"))
    g = parser.add_argument_group("models")
    g.add_argument("--weights", default=d("weights"), help="initial weights for the model (checkpoint path)")
    g.add_argument("--teacher", default=d("teacher"), help="teacher model: DeiT hard distillation (needs a *_distilled model)")
    g.add_argument("--teacher-weights", default=d("teacher_weights"), help="teacher checkpoint (e.g. this trainer's)")
    g = parser.add_argument_group("run")
    g.add_argument("--eval-every", type=positive_int, default=d("eval_every"), help="validate every N epochs (and last)")
    add_shared_flags(g, "device", "workers", "resume", "overwrite", "progress")


def main(args: argparse.Namespace) -> int:
    if len(args.models) != 1:
        raise ValueError(f"train-classifier trains one model, got {len(args.models)} ({' '.join(args.models)}): "
                         "run it once per --model")
    names = {f.name for f in fields(ClassifierTrainConfig)}
    values = {**vars(args), "model": args.models[0]}
    config = ClassifierTrainConfig(**{k: v for k, v in values.items() if k in names})
    result = train_classifier(config)
    print(f"val top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  checkpoint {result['checkpoint']}")
    announce(result["out"], finished=True)
    return 0
