"""Run folders: where a command writes, checked before any work, and recognised when run again.

Every command that writes results owns one folder (``--out``). The folder carries a small marker,
``.pit-suite-run.json`` = ``{"kind": ..., "options": {...}}``, so that the same command run again finds
and resumes its own run, a command with other options gets a new folder, and no command ever deletes or
overwrites a folder written by another kind of run. Without ``--out`` the folder is
``runs/<command>-<names>`` (numbered ``-2``, ``-3``, ... when that name holds another run).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence


MARKER = ".pit-suite-run.json"


class OutputError(ValueError):
    """An output folder that cannot be used (the message names the flag and the fix)."""


def check_out(path: str | os.PathLike, *, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove it writable, before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file, not a folder: choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except (PermissionError, OSError) as err:
        reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
        raise OutputError(f"{flag} {path} cannot be written ({reason}): choose a writable folder") from None
    return path


def check_out_file(path: str | os.PathLike, *, flag: str) -> Path:
    """Check that a single output file (e.g. ``bench --json F``) can be written, before any work."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder: give a file name such as {path / 'results.json'}")
    check_out(path.parent if str(path.parent) else Path("."), flag=flag)
    return path


def read_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of run folder ``path``, or None when it has none."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise OutputError(f"{marker} is corrupt (not JSON): delete it if the folder is yours, or choose another --out")
    if not isinstance(data, dict) or "kind" not in data:
        raise OutputError(f"{marker} is not a run marker: choose another --out")
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "run"


def default_out(command: str, names: Sequence[str], kind: str, options: dict[str, Any], *,
                root: str | os.PathLike = "runs") -> Path:
    """``runs/<command>-<names>``: reused when it holds the same run (same kind and options), else the
    first free or matching ``-2``, ``-3``, ... variant."""
    base = _slug("-".join([command, *names]))[:120]
    for i in range(1, 1000):
        path = Path(root) / (base if i == 1 else f"{base}-{i}")
        if not path.exists():
            return path
        try:
            marker = read_marker(path)
        except OutputError:
            continue
        if marker is not None and marker["kind"] == kind and marker.get("options") == options:
            return path
    raise OutputError(f"{root}/ holds 999 runs named {base}*: pass --out")


def announce(path: str | os.PathLike, *, finished: bool = False) -> None:
    """One line that says where the run writes (at the start) or wrote (at the end)."""
    print(f"{'results in' if finished else 'writing to'} {path}", flush=True)


def note(message: str) -> None:
    """A one-line banner about a default the run chose for the user (data, weights, folder)."""
    print(f"note: {message}", flush=True)
