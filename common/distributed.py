"""torch.distributed set-up shared by every suite (launched with ``torchrun``), device-agnostic."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


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


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
