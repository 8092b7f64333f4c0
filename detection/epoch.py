"""One pass over the data: :func:`train_one_epoch` (resumable part-way, stoppable at a step boundary) and
:func:`evaluate` (COCO metrics and speed). Architecture-agnostic: any detector taking ``(images (B, 3, H, W)
in [0, 1], mask (B, H, W) True = padding)`` and any criterion with a ``weight_dict``."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.autocast import autocast, grad_scaler
from common.distributed import all_gather_objects, all_reduce_sum, is_distributed, is_main_process
from detection.coco_eval import CocoEvaluator
from common.interrupt import StopRequest

POSTFIX_EVERY = 20  # steps between progress-bar loss readouts (each one is a host sync)


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


def agree(device: torch.device, *flags: bool | Tensor) -> list[bool]:
    """Each flag (a host bool, or a 0-d device tensor left on the device until now) OR-ed over every process,
    in one all-reduce and at most one host sync; none on one process when every flag is a host bool.

    Every process takes the same decisions from it: skip a step when any process's batch had no readable
    image (so no process waits for another's gradients), stop when any process was asked to (Ctrl-C), fail
    when any process's loss was not finite (so no process is left waiting in a collective)."""
    if not is_distributed() and not any(isinstance(f, Tensor) for f in flags):
        return [bool(f) for f in flags]
    values = torch.stack([f.to(device=device, dtype=torch.float32).reshape(()) if isinstance(f, Tensor)
                          else torch.tensor(float(f)).to(device, non_blocking=True) for f in flags])
    return [v > 0 for v in all_reduce_sum(values).tolist()]


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
    ``stop.requested`` on any process, raises :class:`Stopped` at the next optimizer-step boundary.

    One host sync per step at most (:func:`agree`, which also checks the previous step's loss is finite);
    under DDP the gradients are all-reduced once per optimizer step (``no_sync`` for the other micro-batches)."""
    model.train()
    criterion.train()
    scaler = scaler or grad_scaler(device, False)
    at = position or EpochPosition()
    total = at.step + len(loader)
    bar = tqdm(loader, desc=desc or f"epoch {epoch + 1}", total=total, initial=at.step, dynamic_ncols=True,
               disable=not (progress and is_main_process()))
    optimizer.zero_grad(set_to_none=True)
    last: tuple[int, Tensor] | None = None  # (step, weighted loss) whose finiteness is not yet checked
    for batch in bar:
        skip, stopping, bad = agree(device, batch is None, bool(stop and stop.requested), _not_finite(last))
        if bad:
            _raise_not_finite(last, epoch)
        if stopping and at.step % accum_steps == 0:
            bar.close()
            raise Stopped(at)
        at.step += 1
        if skip:
            continue
        update = at.step % accum_steps == 0 or at.step == total  # an optimizer step follows this micro-batch
        with contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync():
            record = _train_step(model, criterion, batch, device, amp, scaler, accum_steps)
        last = (at.step, record["loss"])
        if update:
            _optimizer_step(model, optimizer, scaler, clip_max_norm)
        for k, v in record.items():
            at.sums[k] = at.sums.get(k, 0) + v.float()
        at.counted += 1
        if not bar.disable and (at.step % POSTFIX_EVERY == 0 or at.step == total):
            shown = [k for k in ("loss", "loss_ce", "loss_bbox", "loss_giou") if k in record]
            bar.set_postfix(dict(zip(shown, (f"{v:.3f}" for v in torch.stack([record[k] for k in shown]).tolist()))))
    if agree(device, _not_finite(last))[0]:
        _raise_not_finite(last, epoch)
    return _epoch_means(at, epoch, device)


def _not_finite(last: tuple[int, Tensor] | None) -> bool | Tensor:
    return False if last is None else ~torch.isfinite(last[1])


def _raise_not_finite(last: tuple[int, Tensor] | None, epoch: int) -> None:
    """The error every process raises together when some process's loss was NaN or infinite."""
    where = f"at epoch {epoch + 1} step {last[0]}" if last else f"in epoch {epoch + 1}"
    value = last[1].item() if last else float("nan")
    what = f"loss is {value}" if not math.isfinite(value) else "the loss on another process is not finite"
    raise RuntimeError(f"{what} {where}: lower the lr or disable AMP")


def _train_step(model: nn.Module, criterion: nn.Module, batch: tuple, device: torch.device, amp: bool,
                scaler: torch.amp.GradScaler, accum_steps: int) -> dict[str, Tensor]:
    """Forward, loss and backward of one batch (no host sync); returns the weighted ``loss`` and the
    unweighted components."""
    images, mask, targets = batch
    outputs = _forward(model, images.to(device, non_blocking=True), mask.to(device, non_blocking=True), device, amp)
    losses = criterion(outputs, _to_device(targets, device))
    loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
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
    """COCO bbox metrics over ``loader`` (detections gathered on rank 0, scored there, the numbers handed to
    every process) plus ``fps``/``latency_ms`` of the whole detector (forward + post-processing, per image,
    over every process). Returns (stats, this process's predictions). Unreadable images are left out of the
    score; a set with none readable is an error."""
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
    stats = evaluator.summarize()
    counts = all_gather_objects((images_seen, seconds))
    images_seen, seconds = sum(n for n, _ in counts), sum(t for _, t in counts)
    fps = images_seen / seconds if seconds > 0 else 0.0
    stats.update(fps=fps, latency_ms=1000.0 / fps if fps else 0.0)
    return stats, predictions
