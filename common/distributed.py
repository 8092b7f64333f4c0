"""torch.distributed set-up shared by every suite (launched with ``torchrun``), device-agnostic."""
from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

T = TypeVar("T")


def init_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group when launched by ``torchrun`` and return this process's device.

    Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing is initialised.
    The backend is NCCL for CUDA devices and gloo otherwise; under ``torchrun`` a CUDA
    device is picked by ``LOCAL_RANK``.
    """
    device = torch.device(device) if device is not None else default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def default_device() -> torch.device:
    """CUDA if available, else Apple MPS if available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place and returned); a no-op without a process group."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every process, in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def main_decides(decide: Callable[[], T]) -> T:
    """``decide()`` run on rank 0 only and its result (or its exception, re-raised) on every process.

    For every choice read from the disk (reuse a finished cell, resume from a checkpoint, stale inputs):
    each process's own view of a shared filesystem can lag, and a process that decided otherwise would
    skip a collective the others wait in forever."""
    outcome: tuple[bool, Any] | None = None
    if is_main_process():
        try:
            outcome = (True, decide())
        except Exception as err:  # noqa: BLE001 - handed to every process and re-raised there
            outcome = (False, err)
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` in rank order on rank 0 (None elsewhere); ``[obj]`` when not distributed.
    Unlike :func:`all_gather_objects`, only rank 0 holds (and pays the memory of) the whole list."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0)
    return out


class ShardSampler(DistributedSampler):
    """``DistributedSampler`` without padding: rank r gets indices r, r+W, r+2W, ... in order, so every
    item is seen exactly once over the processes (``DistributedSampler`` repeats items to even out the
    shards) and totals summed over processes equal the one-process totals."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
