"""The run folder of a robustness run: which cells are finished, and whether they can be kept.

The folder is opened with the suite's one run lifecycle (``common.run.open_run``, kind ``robustness``):
a folder of another kind of run is refused and never touched; any options resume, because cells are
checked one by one. ``cells.jsonl`` gets one record per finished cell (``CellRecord.to_json``; appended,
so an interrupted run keeps every cell it finished); the latest record of a key wins. A pass's progress
is saved every ``chunk_images`` images to ``partial.jsonl`` (its cells' running counts), so a run stopped
in the middle of a long shared pass resumes after its last finished chunk. Each record
carries the options that made its number, the images it read and skipped and a fingerprint of its input
file list. On a rerun a cell is kept when its options are unchanged and its inputs are the same; it is
recomputed, with a note, when its inputs changed or it read nothing; a cell computed with other options
is a conflict: refused unless ``--overwrite``, which recomputes just those cells. ``run.json`` records
each model's identity once the model has loaded, so a model that failed to load leaves no trace.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import io, rundir
from common.distributed import all_gather_objects, is_main_process
from common.run import Run, open_run
from robustness.cells import CellKey, CellRecord
from robustness.datasets import file_state

KIND = "robustness"
FILES = ("cells.jsonl", "run.json", "partial.jsonl")


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists), so stored and current values compare equal."""
    return json.loads(json.dumps(obj))


class RunStore:
    """Finished cells of ``out_dir`` (the same on every process); only rank 0 writes."""

    def __init__(self, run: Run, records: dict[CellKey, CellRecord], models: dict[str, dict]) -> None:
        self.run = run
        self.out_dir = run.path
        self.records = records
        self.models = models

    @classmethod
    def open(cls, out: str, marker_options: dict, *, overwrite: bool = False, resume: bool = False) -> "RunStore":
        """Open ``out`` as a robustness run (``common.run.open_run``) and read its finished cells.

        ``overwrite`` keeps the cells of a robustness run found there (``conflicts`` recomputes the ones made
        with other options); it starts over only a folder that holds an unmarked run's files."""
        marked = False
        if is_main_process():
            try:
                marked = rundir.read_marker(out) is not None
            except rundir.OutputError:  # open_run reports it, on every process
                marked = True
        restart = overwrite and not all_gather_objects(marked)[0]
        run = open_run(out, KIND, jsonable(marker_options), files=FILES, resume=resume, overwrite=restart,
                       compatible=lambda old, new: True)
        error, records, models = None, {}, {}
        if is_main_process():
            try:
                models = _read_run_json(run.path / "run.json")
                records = {r.key: r for r in map(CellRecord.from_json, io.read_jsonl(run.path / "cells.jsonl"))}
            except (ValueError, KeyError, TypeError, OSError) as err:
                error = err if isinstance(err, (ValueError, OSError)) else ValueError(
                    f"{run.path / 'cells.jsonl'} holds a line that is not a robustness cell ({err}): "
                    "delete that line or choose another --out")
        error, records, models = all_gather_objects((error, records, models))[0]
        if error is not None:
            raise error
        return cls(run, records, models)

    def conflicts(self, wanted: dict[CellKey, dict], overwrite: bool) -> None:
        """Refuse (ValueError, one line) when a wanted cell was computed with other options, unless ``overwrite``."""
        clashes = [(key, self.records[key]) for key, opts in wanted.items()
                   if key in self.records and self.records[key].options is not None
                   and self.records[key].options != opts]
        if not clashes or overwrite:
            return
        key, rec = clashes[0]
        old, new = rec.options, wanted[key]
        diffs = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        raise ValueError(f"--out {self.out_dir} holds {len(clashes)} cell(s) computed with other options "
                         f"(e.g. {key.model} {key.dataset}: {'; '.join(diffs)}): pass --overwrite to "
                         "recompute them (other cells are kept), or choose another --out")

    def reusable(self, key: CellKey, options: dict, fingerprint: str) -> tuple[bool, str | None]:
        """(keep the finished record?, why it is recomputed — None when it was simply not computed yet)."""
        rec = self.records.get(key)
        if rec is None:
            return False, None
        if rec.options != options:
            return False, "computed with other options" if rec.options is not None else "computed by an older version"
        if not rec.n:
            return False, "it read no image last time"
        if rec.inputs != fingerprint:
            return False, "image files were added or removed"
        if any(file_state(path) != state for path, state in rec.skipped_files.items()):
            return False, "a skipped image was replaced"
        return True, None

    def partial(self, key: dict) -> dict | None:
        """The latest saved progress of the unfinished pass identified by ``key`` (its folder, fingerprint, cells
        and their options), or None (none saved, or the pass finished since: a pass computed again starts
        over). Read on the calling process: call it through ``main_decides``."""
        latest = None
        for rec in io.read_jsonl(self.out_dir / "partial.jsonl"):
            if rec.get("key") == key:
                latest = None if rec.get("finished") else rec
        return latest

    def save_partial(self, key: dict, progress: dict) -> None:
        """Append a pass's progress (rank 0 writes; one fsynced line per chunk)."""
        if is_main_process():
            io.append_jsonl(self.out_dir / "partial.jsonl", {"key": key, **progress})

    def record_model(self, label: str, identity: dict) -> None:
        """Note in ``run.json`` that ``label`` loaded with ``identity`` (called after a successful load)."""
        self.models[label] = jsonable(identity)
        if is_main_process():
            io.atomic_write_json(self.out_dir / "run.json", {"kind": KIND, "models": self.models})

    def add(self, records: list[CellRecord]) -> None:
        for rec in records:
            self.records[rec.key] = rec
            if is_main_process():
                io.append_jsonl(self.out_dir / "cells.jsonl", rec.to_json())


def _read_run_json(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        models = data["models"]
        if not isinstance(models, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is corrupt (not a robustness run record): delete it (cells.jsonl keeps the "
                         "finished cells) and run again") from None
    return models
