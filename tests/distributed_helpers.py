"""Helpers for tests that run several gloo processes: a free port, a spawn that fails loudly (and never
hangs), and a lagging view of the disk on the non-main ranks."""
from __future__ import annotations

import contextlib
import os
import pathlib
import socket
from typing import Callable, Iterator

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """Environment of a ``torchrun`` process (CPU, one thread), then ``init_distributed``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from common.distributed import init_distributed

    init_distributed("cpu")


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    from common.distributed import cleanup_distributed

    join_group(rank, world, port)
    try:
        fn(rank, *args)
    finally:
        cleanup_distributed()


def spawn(fn: Callable, world: int, *args, timeout: float = 240) -> None:
    """Run ``fn(rank, *args)`` in ``world`` gloo processes (picklable module-level ``fn``); raises if any
    process fails, and fails (instead of hanging) if they have not all finished after ``timeout`` seconds."""
    context = torch.multiprocessing.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world,
                                                    join=False, start_method="spawn")
    import time

    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world} processes still running after {timeout} s: a collective hangs")


@contextlib.contextmanager
def lagging_listing(hidden: os.PathLike | str) -> Iterator[None]:
    """On every rank but 0, paths at or under ``hidden`` do not exist (a shared filesystem whose listing
    lags on one node): ``exists``/``is_file``/``is_dir``/``os.path.exists``/``os.path.isfile``/``stat`` say no."""
    from common.distributed import get_rank

    if get_rank() == 0:
        yield
        return
    root = pathlib.Path(hidden).resolve()

    def hidden_path(path) -> bool:
        try:
            resolved = pathlib.Path(path).resolve()
        except (OSError, RuntimeError, TypeError):
            return False
        return resolved == root or root in resolved.parents

    originals = {name: getattr(pathlib.Path, name) for name in ("exists", "is_file", "is_dir")}
    os_originals = {name: getattr(os.path, name) for name in ("exists", "isfile", "isdir")}
    patched = {name: (lambda f: lambda self, *a, **k: False if hidden_path(self) else f(self, *a, **k))(f)
               for name, f in originals.items()}
    os_patched = {name: (lambda f: lambda p: False if hidden_path(p) else f(p))(f) for name, f in os_originals.items()}
    try:
        for name, f in patched.items():
            setattr(pathlib.Path, name, f)
        for name, f in os_patched.items():
            setattr(os.path, name, f)
        yield
    finally:
        for name, f in originals.items():
            setattr(pathlib.Path, name, f)
        for name, f in os_originals.items():
            setattr(os.path, name, f)
