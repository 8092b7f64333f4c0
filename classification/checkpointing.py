"""The run folder of ``train-classifier``: open it, read the checkpoint to resume from, write checkpoint and log.

Every decision read from the disk is rank 0's (``common.run.open_run``, ``common.distributed.main_decides``):
a process whose view of a shared filesystem lags still resumes from rank 0's checkpoint, which reaches it
through a broadcast. Only rank 0 writes; the others wait for it (and share its error, if any), so when a
save returns on any process the files are complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from classification.train_config import KIND, ClassifierTrainConfig
from common.checkpoint import safe_load
from common.distributed import is_main_process, main_decides
from common.io import atomic_torch_save, atomic_write_text
from common.run import Run, open_run
from common.rundir import OutputError

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"


def write_log(out: Path, history: list[dict[str, Any]]) -> None:
    """``log.jsonl``: one JSON record per finished epoch (rank 0 only)."""
    if is_main_process():
        atomic_write_text(out / LOG_NAME, "".join(json.dumps(record) + "\n" for record in history))


def save(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint (atomic), then ``log.jsonl`` rewritten from the checkpoint's history, by rank 0 while the
    others wait; a failed write (a full disk) is raised on every process. Returns ``state``."""
    def write() -> None:
        atomic_torch_save(state, out / CHECKPOINT_NAME)
        write_log(out, state["history"])

    main_decides(write)
    return state


def more_epochs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """``--resume`` continues a run whose options differ only in a larger ``epochs``."""
    return {**old, "epochs": new.get("epochs")} == new and new.get("epochs", 0) > old.get("epochs", 0)


def _read_checkpoint(out: Path) -> dict[str, Any] | None:
    """The trainer's checkpoint in ``out``, or None when there is none (a run stopped before its first save)."""
    path = out / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = safe_load(path, what="train-classifier checkpoint")
    if not isinstance(state, dict) or "options" not in state or "history" not in state:
        raise OutputError(f"--out {out} holds a {CHECKPOINT_NAME} this trainer did not write: pass --overwrite "
                          "to replace it, or choose another --out")
    return state


def open_run_state(config: ClassifierTrainConfig, out: Path) -> tuple[Run, dict[str, Any] | None]:
    """Open ``out`` (``common.run.open_run``: fresh | resume | refuse) and the checkpoint to resume from,
    both decided on rank 0 (the checkpoint is read there and broadcast to every process)."""
    run = open_run(out, KIND, config.options(), files=(CHECKPOINT_NAME, LOG_NAME), resume=config.resume,
                   overwrite=config.overwrite, continuable=more_epochs)
    state = main_decides(lambda: _read_checkpoint(out) if run.resumed else None)
    return run, state


def done_text(state: dict[str, Any], epochs: int) -> str:
    """What a resumed run had finished, e.g. "2 of 10 epochs finished, epoch 3 stopped after step 51 of 128"."""
    text = f"{state['epoch'] + 1} of {epochs} epochs finished"
    partial = state.get("partial")
    return text + (f", epoch {partial['epoch'] + 1} stopped after step {partial['steps']}" if partial else "")


def result(state: dict[str, Any], out: Path) -> dict[str, Any]:
    """What ``train_classifier`` returns: the last validation, the epoch, the classes and where the files are."""
    return {**state["val"], "epoch": state["epoch"], "classes": state["classes"],
            "checkpoint": str(out / CHECKPOINT_NAME), "out": str(out)}
