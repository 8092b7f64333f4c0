"""One pass over the data: :func:`train_one_epoch` (resumable part-way, stoppable at a step boundary) and
:func:`evaluate` (COCO metrics and speed). Architecture-agnostic: any detector taking ``(images (B, 3, H, W)
in [0, 1], mask (B, H, W) True = padding)`` and any criterion with a ``weight_dict``."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.autocast import autocast, grad_scaler
from common.distributed import all_reduce_sum, is_main_process
from detection.coco_eval import CocoEvaluator
from common.interrupt import StopRequest


def _forward(model: nn.Module, images: Tensor, mask: Tensor, device: torch.device, amp: bool) -> dict:
    """The detector on one padded batch ([0, 1] pixels, mask True = padding) under the suite's autocast policy."""
    with autocast(device, amp):
        return model(images, mask)


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    clip_max_norm: float) -> None:
    scaler.unscale_(optimizer)
    if clip_max_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def agree(empty: bool, stop: bool, device: torch.device) -> tuple[bool, bool]:
    """(skip, stop) agreed by every process: skip this step when any process's batch had no readable image
    (so no process waits for another's gradients); stop when any process was asked to (Ctrl-C)."""
    flags = all_reduce_sum(torch.tensor([float(empty), float(stop)], device=device))
    return bool(flags[0] > 0), bool(flags[1] > 0)


@dataclass
class EpochPosition:
    """Where an epoch stands: ``step`` batches taken, the loss sums over the ``counted`` of them that were
    not skipped (for the epoch's mean)."""

    step: int = 0
    counted: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    def state(self) -> dict:
        return {"step": self.step, "counted": self.counted, "sums": {k: v.item() for k, v in self.sums.items()}}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "EpochPosition":
        sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in state["sums"].items()}
        return cls(state["step"], state["counted"], sums)


class Stopped(Exception):
    """Raised by :func:`train_one_epoch` when asked to stop: ``position`` is where the epoch stands."""

    def __init__(self, position: EpochPosition) -> None:
        super().__init__(f"stopped at step {position.step}")
        self.position = position


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, clip_max_norm: float = 0.1, accum_steps: int = 1,
                    amp: bool = False, scaler: torch.amp.GradScaler | None = None, progress: bool = True,
                    position: EpochPosition | None = None, stop: StopRequest | None = None,
                    desc: str = "") -> dict[str, float]:
    """One pass over ``loader`` (which starts at ``position.step`` when resuming part-way); returns mean
    weighted ``loss`` and every unweighted component (all processes). Batches whose images were all
    unreadable are skipped (on every process together); an epoch with none readable is an error. When
    ``stop.requested`` on any process, raises :class:`Stopped` at the next optimizer-step boundary."""
    model.train()
    criterion.train()
    scaler = scaler or grad_scaler(device, False)
    at = position or EpochPosition()
    total = at.step + len(loader)
    bar = tqdm(loader, desc=desc or f"epoch {epoch + 1}", total=total, initial=at.step, dynamic_ncols=True,
               disable=not (progress and is_main_process()))
    optimizer.zero_grad(set_to_none=True)
    for batch in bar:
        skip, stopping = agree(batch is None, bool(stop and stop.requested), device)
        if stopping and at.step % accum_steps == 0:
            bar.close()
            raise Stopped(at)
        at.step += 1
        if skip:
            continue
        record = _train_step(model, criterion, batch, device, amp, scaler, accum_steps, epoch, at.step)
        if at.step % accum_steps == 0 or at.step == total:
            _optimizer_step(model, optimizer, scaler, clip_max_norm)
        for k, v in record.items():
            at.sums[k] = at.sums.get(k, 0) + v.float()
        at.counted += 1
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in record.items() if k in ("loss", "loss_ce", "loss_bbox", "loss_giou")})
    return _epoch_means(at, epoch, device)


def _train_step(model: nn.Module, criterion: nn.Module, batch: tuple, device: torch.device, amp: bool,
                scaler: torch.amp.GradScaler, accum_steps: int, epoch: int, step: int) -> dict[str, Tensor]:
    """Forward, loss and backward of one batch; returns the weighted ``loss`` and the unweighted components."""
    images, mask, targets = batch
    outputs = _forward(model, images.to(device, non_blocking=True), mask.to(device, non_blocking=True), device, amp)
    losses = criterion(outputs, _to_device(targets, device))
    loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"loss is {loss.item()} at epoch {epoch + 1} step {step}: lower the lr or disable AMP")
    scaler.scale(loss / accum_steps).backward()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items() if not k[-1].isdigit()}}


def _epoch_means(at: EpochPosition, epoch: int, device: torch.device) -> dict[str, float]:
    keys = sorted(at.sums)
    totals = all_reduce_sum(torch.stack([at.sums[k] for k in keys] + [torch.tensor(float(at.counted), device=device)])
                            if keys else torch.zeros(1, device=device))
    if totals[-1] == 0:
        raise ValueError(f"every training image was unreadable in epoch {epoch + 1} (see the warnings above): "
                         "check the image folder")
    return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}


@torch.no_grad()
def evaluate(model: nn.Module, postprocessor: nn.Module, loader: DataLoader, evaluator: CocoEvaluator,
             device: torch.device, *, amp: bool = False, progress: bool = True) -> tuple[dict, dict[int, dict]]:
    """COCO bbox metrics over ``loader`` (gathered across processes) plus ``fps``/``latency_ms`` of the
    whole detector (forward + post-processing, per image). Returns (stats, this process's predictions).
    Unreadable images are left out of the score; a set with none readable is an error."""
    model.eval()
    predictions: dict[int, dict] = {}
    seconds, images_seen = 0.0, 0
    for batch in tqdm(loader, desc="eval", disable=not (progress and is_main_process()), dynamic_ncols=True):
        if batch is None:
            continue
        images, mask, targets = batch
        images, mask = images.to(device), mask.to(device)
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        results = postprocessor(_forward(model, images, mask, device, amp), sizes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        images_seen += len(images)
        batch_predictions = {t["image_id"]: {k: v.cpu() for k, v in r.items()} for t, r in zip(targets, results)}
        evaluator.update(batch_predictions)
        predictions.update(batch_predictions)
    evaluator.synchronize()
    if not evaluator.image_ids:
        raise ValueError("every evaluation image was unreadable (see the warnings above): nothing to score")
    stats = evaluator.summarize()
    fps = images_seen / seconds if seconds > 0 else 0.0
    stats.update(fps=fps, latency_ms=1000.0 / fps if fps else 0.0)
    return stats, predictions
