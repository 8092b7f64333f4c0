"""Ctrl-C during training: finish the current step, save it, then stop (no traceback from any process).

Inside ``with StopRequest() as stop:`` the first SIGINT only sets ``stop.requested`` and says so; the
training loop checks it after every optimizer step, writes a checkpoint of the partial epoch and raises
``KeyboardInterrupt`` (``eval.py`` turns that into exit code 130). A second Ctrl-C stops at once.
DataLoader workers forked inside the block inherit the handler and ignore the signal: the main process
shuts them down, so none of them prints a traceback.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


class StopRequest:
    """A SIGINT handler for the main process of a training run (a no-op outside the main thread)."""

    def __init__(self) -> None:
        self.requested = False
        self._pid = os.getpid()
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker: the main process ends the run
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving the epoch so far after this step, then stopping (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)
