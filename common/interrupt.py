"""Stopping a training run cleanly on Ctrl-C, and the random state that lets it resume mid-epoch exactly.

Inside ``with StopRequest() as stop:`` the first SIGINT only sets ``stop.requested`` and says so; the
training loop checks it after every optimizer step (the weights are never saved half-updated), writes a
checkpoint of the partial epoch and raises ``KeyboardInterrupt`` (``eval.py`` turns that into exit code
130). A second Ctrl-C stops at once. DataLoader workers ignore SIGINT (:func:`ignore_sigint` as their
``worker_init_fn``; a worker forked inside the block also returns from the inherited handler): the main
process shuts them down in order, so no worker dies mid-transfer and prints a traceback.
:func:`rng_state` / :func:`set_rng_state` capture every random stream a training step draws from (torch
CPU and CUDA, numpy, Python) as plain data that ``torch.load(weights_only=True)`` reads back.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
from types import FrameType
from typing import Any

import numpy as np
import torch


class StopRequest:
    """A SIGINT handler for the main process of a training run (a no-op outside the main thread)."""

    def __init__(self) -> None:
        self.requested = False
        self._pid = os.getpid()
        self._previous: Any = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker: the main process ends the run
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving the epoch so far after this step, then stopping (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)


def ignore_sigint(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader: a Ctrl-C reaches the main process only, and the worker prints
    no traceback of a background thread (e.g. multiprocessing's resource sharer when the main process stops
    reading mid-transfer); a failure in the dataset itself still reaches the main process through the loader."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.excepthook = lambda args: None
    sys.excepthook = lambda *args: None


def rng_state() -> dict[str, Any]:
    """Every global random stream of this process, as tensors and plain lists."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
