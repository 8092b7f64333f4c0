"""The one run lifecycle: open a command's ``--out`` folder and decide fresh | resume | refuse.

Every command that writes results calls :func:`open_run` before any work. The decision is taken on the
main process and broadcast, so all processes of a torchrun job agree (and all raise the same error).
In order:

1. ``--out`` must be writable; a folder marked as another kind's run is refused (nothing is touched).
2. None of the kind's output ``files`` exists: **fresh** (``--resume`` is then refused: nothing to continue).
3. ``--overwrite``: **fresh**; the kind's ``files`` are deleted, nothing else in the folder.
4. Output files without a run marker: refused (an unmarked run: ``--overwrite`` or another ``--out``).
5. The recorded options equal the new ones, or ``compatible(old, new)``: **resume** (cell-based commands
   accept any options here and check each cell themselves).
6. Other options: **resume** with the new options when ``--resume`` is given and ``continuable(old, new)``
   (e.g. only the number of epochs grew); otherwise refused, in one line that names the changed options
   and the flags that change the decision.

"Run the same command again" therefore resumes everywhere; ``--resume`` and ``--overwrite`` mean the
same thing in every command. The folder's marker (``common.rundir.MARKER``) records the options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from common.distributed import all_gather_objects, is_main_process
from common.io import atomic_write_json
from common.rundir import MARKER, OutputError, check_out, read_marker

Check = Callable[[dict, dict], bool]


@dataclass
class Run:
    """An opened run folder: ``state`` is "fresh" or "resume"; ``previous`` the options found there."""

    path: Path
    kind: str
    state: str
    previous: dict | None = None

    @property
    def resumed(self) -> bool:
        return self.state == "resume"


def changed_options(old: dict, new: dict) -> list[str]:
    """Names of the options whose values differ between two option dicts."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_resume_overwrite(resume: bool, overwrite: bool) -> None:
    """``--resume`` continues a run and ``--overwrite`` starts it over: one of them at most."""
    if resume and overwrite:
        raise OutputError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                          "--overwrite starts it over; pass one of them")


def _decide(path: Path, kind: str, options: dict, files: Sequence[str], resume: bool, overwrite: bool,
            continuable: Check | None, compatible: Check | None, flag: str) -> tuple[str, dict | None]:
    """(state, previous options) by the rules of the module docstring; raises OutputError to refuse."""
    check_resume_overwrite(resume, overwrite)
    check_out(path, flag=flag)
    marker = read_marker(path)
    if marker is not None and marker["kind"] != kind:
        raise OutputError(f"{flag} {path} holds a {marker['kind']} run, not a {kind} run: choose another folder "
                          "(nothing was changed)")
    present = [name for name in files if (path / name).exists()]
    if overwrite:
        return "fresh", None
    if not present:
        if resume:
            raise OutputError(f"--resume: {flag} {path} holds no {kind} run to continue: drop --resume to start one")
        return "fresh", None
    if marker is None:
        raise OutputError(f"{flag} {path} holds {', '.join(present)} of an unmarked run: pass --overwrite to start "
                          f"over, or choose another {flag}")
    old = marker.get("options", {})
    if old == options or (compatible is not None and compatible(old, options)):
        return "resume", old
    could_continue = continuable is not None and continuable(old, options)
    if resume and could_continue:
        return "resume", old
    fixes = ("pass --resume to continue it with these options, " if could_continue else "") + \
        f"--overwrite to start over, or choose another {flag}"
    raise OutputError(f"{flag} {path} holds a {kind} run with other options ({', '.join(changed_options(old, options))} "
                      f"differ): {fixes} (nothing was changed)")


def open_run(out: str | os.PathLike, kind: str, options: dict[str, Any], *, files: Sequence[str],
             resume: bool = False, overwrite: bool = False, continuable: Check | None = None,
             compatible: Check | None = None, flag: str = "--out") -> Run:
    """Open ``out`` as a ``kind`` run with ``options`` (plain JSON data); see the module docstring.

    ``files``: the kind's output files (relative to ``out``) whose presence means a run is there, and
    which ``--overwrite`` deletes. Decided on rank 0 and broadcast."""
    path = Path(out)
    decision: tuple[str, dict | None] | OutputError | None = None
    if is_main_process():
        try:
            decision = _decide(path, kind, options, files, resume, overwrite, continuable, compatible, flag)
            if decision[0] == "fresh" and overwrite:
                for name in files:
                    target = path / name
                    if target.is_file() or target.is_symlink():
                        target.unlink()
            atomic_write_json(path / MARKER, {"kind": kind, "options": options})
        except OutputError as err:
            decision = err
    decision = all_gather_objects(decision)[0]
    if isinstance(decision, OutputError):
        raise OutputError(str(decision))
    state, previous = decision
    return Run(path, kind, state, previous)


def say_resumed(run: Run, done: str) -> None:
    """One line on the main process: where the run resumes and what was already done there."""
    if run.resumed and is_main_process():
        print(f"resuming {run.path}: {done}", flush=True)
