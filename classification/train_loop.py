"""The training loop of ``train-classifier``: one session (model, data, optimiser, ...), its steps and epochs.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` and every process trains on its
share of each global batch (``classification.train_data``); the processes agree, through one small
``all_reduce`` before each forward and one before each backward, on skipping a step (a process whose
batch had no readable image), on the step's loss (the mean over processes: the one-process loss of
the global batch) and on stopping (Ctrl-C on any process), so no process ever waits in a collective the
others skipped. Only rank 0 writes (``classification.checkpointing``); every process validates its
shard and the counts are summed (``classification.evaluate.evaluate_topk``).
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import pit
from classification.checkpointing import CHECKPOINT_NAME, save
from classification.data import to_float
from classification.evaluate import evaluate_topk
from classification.recipe import build_objective
from classification.train_config import ClassifierTrainConfig
from classification.train_data import build_loaders
from common.autocast import autocast, grad_scaler
from common.distributed import all_reduce_sum, gather_to_main, get_rank, get_world_size, is_distributed
from common.distributed import is_main_process
from common.interrupt import StopRequest, rng_state, set_rng_state
from common.progress import Progress, duration
from common.seeding import image_seed


@dataclass
class Session:
    """The live pieces of one training run (``train_net``: ``net``, wrapped in DDP under ``torchrun``)."""

    config: ClassifierTrainConfig
    device: torch.device
    net: pit.NormalizedModel
    train_net: torch.nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    classes: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    loss: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
    mixup: Mixup | None
    ema: ModelEmaV3 | None
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None  # where an interrupted epoch stopped (see ``train_epoch``)


def build_session(config: ClassifierTrainConfig, device: torch.device, state: dict[str, Any] | None) -> Session:
    """Model, data, optimiser, schedule, gradient scaler, EMA and loss for ``config``, continued from ``state``."""
    train_loader, val_loader, classes = build_loaders(config)
    torch.manual_seed(config.seed)  # the same initial weights on every process
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
    scaler = grad_scaler(device, config.amp)
    ema = ModelEmaV3(inner, decay=config.ema_decay) if config.ema_decay else None
    if state is not None:
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and "model_ema" in state:
            ema.module.load_state_dict(state["model_ema"])
    train_net: torch.nn.Module = net
    if is_distributed():
        train_net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    session = Session(config, device, net, train_net, train_loader, val_loader, classes, optimizer, scheduler, scaler,
                      loss, mixup, ema)
    if state is not None:
        session.start_epoch, session.history = state["epoch"] + 1, list(state["history"])
        session.partial = state.get("partial")
    return session


def seed_epoch(seed: int, epoch: int, train_loader: DataLoader) -> None:
    """Every random stream training draws from (batch order, worker seeds, augmentation, Mixup, dropout) is a
    function of ``(seed, epoch)`` and this process's rank alone: a resumed epoch replays exactly, and no two
    processes draw the same augmentations. The batch order is the sampler's, the same on every process."""
    rank = get_rank()
    train_loader.sampler.set_epoch(epoch)
    train_loader.generator.manual_seed(image_seed(seed, "workers", epoch, rank))
    stream = image_seed(seed, "main", epoch, rank)
    torch.manual_seed(stream)
    np.random.seed(stream % 2**32)
    random.seed(stream)


def _sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over the processes (as they are without ``torchrun``)."""
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def train_step(s: Session, images: torch.Tensor, targets: torch.Tensor, update: int,
               stop: StopRequest) -> tuple[float, bool]:
    """One optimiser update on a uint8 batch (``update`` counts from 1); returns the loss (the mean over the
    processes) and whether any process was asked to stop, both agreed before the backward pass."""
    images, targets = to_float(images, s.device), targets.to(s.device, non_blocking=True)
    if s.mixup is not None and len(targets) % 2:  # an unreadable image was dropped: Mixup needs pairs
        images, targets = images[:-1], targets[:-1]
    loss_targets = targets
    if s.mixup is not None:
        images, loss_targets = s.mixup(images, targets)
    with autocast(s.device, enabled=s.config.amp):
        loss = s.loss(images, s.train_net(images), loss_targets)
    total, stopping = _sum([loss.item(), float(stop.requested)], s.device)
    value = total / get_world_size()
    if not math.isfinite(value):
        raise RuntimeError(f"loss became {value} at update {update}: lower --lr")
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if s.config.clip_grad:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.net.parameters(), s.config.clip_grad)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step_update(update)
    if s.ema is not None:
        s.ema.update(s.net.model, step=update)
    return value, stopping > 0


def _batches(s: Session, epoch: int) -> Iterator:
    """The epoch's batches from where ``s.partial`` stopped: the first ``steps`` are replayed through the
    loader untrained (the workers' random streams advance as in an uninterrupted epoch), then this
    process's streams are restored as they were after the last finished step."""
    seed_epoch(s.config.seed, epoch, s.train_loader)
    batches = iter(s.train_loader)
    if s.partial is not None:
        for _ in range(s.partial["steps"]):
            next(batches)
        saved = s.partial["rng"]
        saved = [saved] if isinstance(saved, dict) else saved  # one process's streams, or one per rank
        if get_rank() < len(saved):
            set_rng_state(saved[get_rank()])
    return batches


def train_epoch(s: Session, epoch: int, stop: StopRequest) -> float | None:
    """One pass over the training set; returns the mean loss, or None when ``stop`` asked (on any process)
    to end the run mid-epoch (``s.partial`` then says where, with every process's random streams)."""
    c = s.config
    partial = s.partial or {"steps": 0, "total": 0.0, "updates": 0}
    total, updates, steps = partial["total"], partial["updates"], len(s.train_loader)
    s.train_net.train()
    bar = tqdm(total=steps, initial=partial["steps"], desc=f"{c.model} epoch {epoch + 1} of {c.epochs}",
               disable=not (c.progress and is_main_process()), leave=False)
    batches = _batches(s, epoch)
    s.partial = None
    for step, (images, targets, _) in enumerate(batches, start=partial["steps"]):
        unusable = len(targets) == 0 or (s.mixup is not None and len(targets) < 2)  # unreadable images were dropped
        skip, stopping = _sum([float(unusable), float(stop.requested)], s.device)
        if not skip:
            value, stopping = train_step(s, images, targets, epoch * steps + step + 1, stop)
            total += value
            updates += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / max(updates, 1):.3f}", lr=f"{s.optimizer.param_groups[0]['lr']:.2e}")
        if stopping and step + 1 < steps:
            s.partial = {"epoch": epoch, "steps": step + 1, "total": total, "updates": updates,
                         "rng": gather_to_main(rng_state())}
            break
    del batches  # shuts the workers down before anything is saved
    bar.close()
    if s.partial is not None:
        return None
    if updates == 0:
        raise ValueError(f"{c.data}/train: no readable image in a whole epoch (every image was skipped as unreadable)")
    return total / updates


def validate(s: Session) -> dict[str, float]:
    """Top-1/top-5/loss on the val split, every process's shard counted once (and of the EMA weights, ``_ema``)."""
    amp, bars = s.config.amp, s.config.progress and is_main_process()
    val = evaluate_topk(s.net, s.val_loader, s.device, amp, progress=bars)
    if s.ema is not None:
        ema = pit.NormalizedModel(s.ema.module)
        val.update({f"{k}_ema": v for k, v in evaluate_topk(ema, s.val_loader, s.device, amp, progress=False).items()})
    return val


def checkpoint_state(s: Session, epoch: int, val: dict[str, float]) -> dict[str, Any]:
    """What ``checkpoint.pth`` holds after ``epoch`` (see ``classification.train``'s docstring)."""
    state = {"model": s.net.model.state_dict(), "optimizer": s.optimizer.state_dict(),
             "scaler": s.scaler.state_dict(), "epoch": epoch, "options": s.config.options(), "classes": s.classes,
             "val": val, "history": s.history}
    if s.partial is not None:
        state["partial"] = s.partial
    if s.ema is not None:
        state["model_ema"] = s.ema.module.state_dict()
    return state


def _any_process(flag: bool, device: torch.device) -> bool:
    return _sum([float(flag)], device)[0] > 0


def run_epochs(s: Session, out: Path, state: dict[str, Any] | None, stop: StopRequest) -> dict[str, Any]:
    """The epochs from ``s.start_epoch`` on, a checkpoint after each; the last checkpoint's contents."""
    c = s.config
    main = is_main_process()
    progress = Progress(c.epochs, unit="epoch", done=s.start_epoch, enabled=c.progress, desc=c.model)
    last_val = (state or {}).get("val", {})
    try:
        for epoch in range(s.start_epoch, c.epochs):
            started = time.perf_counter()
            train_loss = train_epoch(s, epoch, stop)
            if train_loss is None:
                save(out, checkpoint_state(s, epoch - 1, last_val))
                if main:
                    tqdm.write(f"stopped: epoch {epoch + 1} saved after step {s.partial['steps']} of "
                               f"{len(s.train_loader)} in {out / CHECKPOINT_NAME}")
                raise KeyboardInterrupt
            val = validate(s) if epoch + 1 == c.epochs or (epoch + 1) % c.eval_every == 0 else {}
            s.history.append({"epoch": epoch, "train_loss": train_loss, "seconds": time.perf_counter() - started, **val})
            last_val = val or last_val
            state = save(out, checkpoint_state(s, epoch, last_val))
            progress.update(1)
            if main:
                _say_epoch(s, epoch, train_loss, val, progress.eta())
            if _any_process(stop.requested, s.device) and epoch + 1 < c.epochs:
                raise KeyboardInterrupt
    finally:
        progress.close()
    return state


def _say_epoch(s: Session, epoch: int, train_loss: float, val: dict[str, float], eta: float | None) -> None:
    c = s.config
    line = f"{c.model} epoch {epoch + 1} of {c.epochs}: loss {train_loss:.3f}"
    if val:
        line += f"  val top-1 {val['top1']:.2f}" + (f"  (EMA {val['top1_ema']:.2f})" if s.ema else "")
    tqdm.write(line + (f"  · ETA {duration(eta)}" if eta and epoch + 1 < c.epochs else ""))
    sys.stdout.flush()  # epoch lines show up at once when the output goes to a file or pipe
