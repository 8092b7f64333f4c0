"""Stopping a training run cleanly on Ctrl-C, and the random state that lets it resume mid-epoch exactly.

:class:`StopRequest` turns the first SIGINT into a request that the training loop honours after the step
in flight (the weights are never saved half-updated); a second Ctrl-C stops at once. DataLoader workers
ignore SIGINT (:func:`ignore_sigint` as their ``worker_init_fn``): the main process shuts them down in
order, so no worker dies mid-transfer and prints a traceback. :func:`rng_state` / :func:`set_rng_state`
capture every random stream a training step draws from (torch CPU and CUDA, numpy, Python) as plain data
that ``torch.load(weights_only=True)`` reads back.
"""
from __future__ import annotations

import random
import signal
import threading
from types import FrameType
from typing import Any

import numpy as np
import torch


class StopRequest:
    """Context manager: while active (main thread only), the first Ctrl-C sets :attr:`requested` instead of
    raising ``KeyboardInterrupt``; the default handler returns for a second Ctrl-C, and on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def ignore_sigint(worker_id: int) -> None:
    """``worker_init_fn`` of the training loaders: a Ctrl-C reaches the main process only (see module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rng_state() -> dict[str, Any]:
    """Every random stream of this process, as tensors and plain tuples."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                         gauss), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
