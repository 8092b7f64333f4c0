"""Result files: atomic, normal permissions under the umask, one line naming a full disk, and the run-folder
checks every command uses (tested through ``eval.py demo``, the one command not covered elsewhere)."""
from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from common import io
from tests.cli_helpers import assert_one_line_error


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.atomic_write_json(tmp_path / "results.json", {"a": 1})
        io.atomic_torch_save({"w": torch.ones(1)}, tmp_path / "checkpoint.pth")
        io.append_jsonl(tmp_path / "log.jsonl", {"epoch": 0})
    finally:
        os.umask(old)
    for name in ("results.json", "checkpoint.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert stat.S_IMODE((tmp_path / "log.jsonl").stat().st_mode) == mode  # open(..., "a") honours the umask itself


def test_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    io.atomic_write_json(target, {"version": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="no space left on the device while writing .*results.json"):
        io.atomic_write_json(target, {"version": 2})
    assert target.read_text().strip().endswith("}") and '"version": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_demo_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert_one_line_error(["demo", "--quick", "--out", str(tmp_path / "a_file")], 2, "--out", "existing file")


def test_demo_refuses_another_commands_run_folder(tmp_path):
    from common.run import open_run

    open_run(tmp_path / "rob", "robustness", {"models": ["pit_ti"]}, files=("cells.jsonl",))
    (tmp_path / "rob" / "cells.jsonl").write_text("{}\n")
    assert_one_line_error(["demo", "--quick", "--out", str(tmp_path / "rob")], 2, "robustness run")
    assert (tmp_path / "rob" / "cells.jsonl").read_text() == "{}\n"  # nothing touched


def test_random_bytes_are_always_named_as_not_a_checkpoint(tmp_path):
    """Random bytes reach pickle's opcodes in many ways (IndexError, KeyError, struct.error, ...): every one
    must end as the same one-line CheckpointError, whatever the bytes."""
    import random

    from common.checkpoint import CheckpointError, safe_load

    rng = random.Random(0)
    path = tmp_path / "random.pth"
    for size in [rng.randrange(1, 4096) for _ in range(200)]:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        with pytest.raises(CheckpointError, match="random.pth"):
            safe_load(path)
