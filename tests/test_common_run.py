"""The one run lifecycle: fresh, resume or refuse, with the same meaning of --resume / --overwrite."""
from __future__ import annotations

import json

import pytest

from common.rundir import MARKER, OutputError
from common.run import open_run

FILES = ("checkpoint.pth", "log.jsonl")


def _finish(run) -> None:
    (run.path / "checkpoint.pth").write_text("x")


def _more_epochs(old: dict, new: dict) -> bool:
    return {k for k in set(old) | set(new) if old.get(k) != new.get(k)} == {"epochs"} and new["epochs"] > old["epochs"]


def test_fresh_then_resume(tmp_path) -> None:
    run = open_run(tmp_path / "r", "train", {"epochs": 2}, files=FILES)
    assert run.state == "fresh" and not run.resumed
    assert json.loads((run.path / MARKER).read_text()) == {"kind": "train", "options": {"epochs": 2}}
    _finish(run)
    again = open_run(tmp_path / "r", "train", {"epochs": 2}, files=FILES)
    assert again.resumed and again.previous == {"epochs": 2}


def test_other_options_refused_with_the_fixes(tmp_path) -> None:
    _finish(open_run(tmp_path, "train", {"epochs": 2, "lr": 1}, files=FILES))
    with pytest.raises(OutputError, match=r"epochs differ\): pass --resume .*--overwrite"):
        open_run(tmp_path, "train", {"epochs": 3, "lr": 1}, files=FILES, continuable=_more_epochs)
    with pytest.raises(OutputError, match=r"\(lr differ\): --overwrite to start over"):
        open_run(tmp_path, "train", {"epochs": 2, "lr": 2}, files=FILES, resume=True, continuable=_more_epochs)
    run = open_run(tmp_path, "train", {"epochs": 3, "lr": 1}, files=FILES, resume=True, continuable=_more_epochs)
    assert run.resumed and run.previous == {"epochs": 2, "lr": 1}
    assert json.loads((tmp_path / MARKER).read_text())["options"] == {"epochs": 3, "lr": 1}


def test_overwrite_removes_only_the_kinds_files(tmp_path) -> None:
    run = open_run(tmp_path, "train", {"epochs": 2}, files=FILES)
    _finish(run)
    (tmp_path / "notes.txt").write_text("mine")
    run = open_run(tmp_path, "train", {"epochs": 5}, files=FILES, overwrite=True)
    assert run.state == "fresh" and not (tmp_path / "checkpoint.pth").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_without_a_run_and_other_kinds_are_refused(tmp_path) -> None:
    with pytest.raises(OutputError, match="holds no train run to continue: drop --resume"):
        open_run(tmp_path / "empty", "train", {}, files=FILES, resume=True)
    _finish(open_run(tmp_path / "r", "robustness", {}, files=FILES))
    with pytest.raises(OutputError, match="holds a robustness run, not a train run"):
        open_run(tmp_path / "r", "train", {}, files=FILES, overwrite=True)


def test_unmarked_outputs_and_compatible_options(tmp_path) -> None:
    (tmp_path / "log.jsonl").write_text("{}")
    with pytest.raises(OutputError, match="log.jsonl of an unmarked run: pass --overwrite"):
        open_run(tmp_path, "cells", {"a": 1}, files=FILES)
    (tmp_path / "log.jsonl").unlink()
    _finish(open_run(tmp_path, "cells", {"a": 1}, files=FILES))
    run = open_run(tmp_path, "cells", {"a": 2}, files=FILES, compatible=lambda old, new: True)
    assert run.resumed


def test_a_file_in_place_of_the_folder(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is an existing file"):
        open_run(tmp_path / "f", "train", {}, files=FILES)
