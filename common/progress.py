"""Overall progress of a long job: "cell 3 of 40" / "epoch 2 of 50", elapsed time and an ETA.

Shown on the main process only (a tqdm bar when enabled; one line per step otherwise is left to the
caller's log). A resumed job starts at ``done`` so the bar and the ETA count only the work left.
"""
from __future__ import annotations

import time

from tqdm import tqdm

from common.distributed import is_main_process


def duration(seconds: float) -> str:
    """``75`` → ``1m15s``; ``3700`` → ``1h01m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``total`` units of work (``unit`` = "cell", "epoch", ...), ``done`` of them finished before this run."""

    def __init__(self, total: int, *, unit: str, done: int = 0, enabled: bool = True, desc: str = "") -> None:
        self.total, self.unit, self.done, self.start_done = total, unit, done, done
        self.started = time.monotonic()
        self.bar = None
        if enabled and is_main_process():
            self.bar = tqdm(total=total, initial=done, desc=desc or f"{unit}s", unit=unit, dynamic_ncols=True)
            self.bar.set_postfix_str(self.status())

    def eta(self) -> float | None:
        """Seconds left at the pace of this run's finished units (None before the first one)."""
        finished = self.done - self.start_done
        if finished <= 0:
            return None
        return (time.monotonic() - self.started) / finished * (self.total - self.done)

    def status(self, label: str = "") -> str:
        """``cell 4 of 40 · ETA 3m10s`` (the unit being worked on is ``done + 1``)."""
        current = min(self.done + 1, self.total)
        eta = self.eta()
        text = f"{self.unit} {current} of {self.total}" + (f" · ETA {duration(eta)}" if eta is not None else "")
        return f"{text} · {label}" if label else text

    def update(self, n: int = 1, *, label: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(self.status(label))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
