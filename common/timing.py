"""The suite's one timing helper: ``torch.utils.benchmark.Timer`` (warm-up, CUDA synchronisation,
thread settings and repeat statistics handled by PyTorch)."""
from __future__ import annotations

from typing import Any, Callable

import torch.utils.benchmark as benchmark


def time_call(fn: Callable[[], Any], *, min_run_time: float = 1.0, warmup: int = 1,
              num_threads: int | None = None) -> float:
    """Median seconds per call of ``fn()`` over at least ``min_run_time`` seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    kwargs = {} if num_threads is None else {"num_threads": num_threads}
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, **kwargs)
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)
