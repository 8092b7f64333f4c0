"""Run folders of ``detection train`` / ``eval``: checked before any work, and resumed when run again.

``detection train`` marks its ``--out`` as a ``detection-train`` run with the options that define what
it computes (:meth:`DetectionTrainConfig.options`). Run again on that folder:

* no ``checkpoint.pth`` yet (or ``--overwrite``) → the run starts (over) at epoch 0;
* same options → it resumes from ``checkpoint.pth`` (a finished run says so and trains nothing);
* other options → refused in one line that names ``--resume`` (continue with the new options, e.g. more
  epochs) and ``--overwrite`` (start over); nothing is touched;
* ``--resume FILE`` → continues from ``FILE`` whatever the folder holds.

A folder of another kind of run (robustness, a classifier, ...) is always refused.
"""
from __future__ import annotations

from pathlib import Path

from common.distributed import all_gather_objects, is_main_process
from common.rundir import OutputError, check_out, claim, read_marker
from detection.config import DetectionTrainConfig

TRAIN_KIND = "detection-train"
EVAL_KIND = "detection-eval"
RUN_FILES = ("checkpoint.pth", "log.jsonl", "eval.json", "run.json")


def resume_source(config: DetectionTrainConfig, out: Path) -> str | None:
    """The checkpoint this run continues from, or None to start at epoch 0 (see the module docstring)."""
    if config.resume:
        return config.resume
    checkpoint = out / "checkpoint.pth"
    marker = read_marker(out)
    if marker is not None and marker["kind"] != TRAIN_KIND:
        claim(out, TRAIN_KIND)  # raises: another kind's folder
    if config.overwrite or not checkpoint.exists():
        return None
    fixes = f"pass --resume {checkpoint} to continue it with these options, --overwrite to start over, or another --out"
    if marker is None:
        raise OutputError(f"--out {out} already holds a checkpoint.pth of an unmarked run: {fixes}")
    old = marker.get("options", {})
    new = config.options()
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise OutputError(f"--out {out} holds a detection train run with other options ({', '.join(changed)} "
                          f"differ): {fixes}")
    return str(checkpoint)


def prepare_out(config: DetectionTrainConfig) -> tuple[Path, str | None]:
    """Check and claim ``config.out`` before any work; returns (folder, checkpoint to resume or None).

    The main process decides; the others follow its decision. Starting over removes only the files a
    detection train run writes."""
    out = Path(config.out)
    decision = None
    if is_main_process():
        check_out(out)
        decision = resume_source(config, out)
        claim(out, TRAIN_KIND, config.options())
        if decision is None:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    return out, all_gather_objects(decision)[0]


def claim_eval_out(out: str | Path, checkpoint: str) -> Path:
    """``detection eval``'s folder: writable, and either unmarked, an eval folder or a training run folder
    (evaluating a run into its own folder is the documented use); any other kind is refused."""
    path = check_out(out)
    marker = read_marker(path)
    if marker is None or marker["kind"] not in (TRAIN_KIND, EVAL_KIND):
        claim(path, EVAL_KIND, {"checkpoint": str(Path(checkpoint).resolve())})
    return path
