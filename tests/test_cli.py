"""The single entry point: every subcommand is wired, and bad input ends in one clear line, not a traceback."""
from __future__ import annotations

import pytest

import eval as entry


def test_no_command_prints_help(capsys):
    assert entry.main([]) == 2
    out = capsys.readouterr().out
    for command in entry.COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", sorted(entry.COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["bench", "--models", "pit_zz"], "unknown model 'pit_zz'"),
    (["robustness", "--model", "pit_ti", "--data", "/nonexistent/val", "--out", "OUT"], "/nonexistent/val"),
    (["detection", "train", "--backbone", "pit_ti", "--coco", "/nonexistent/coco", "--out", "OUT"], "/nonexistent/coco"),
    (["robustness", "--model", "pit_ti", "--data", "DATA", "--corrupt-on-the-fly", "--corruptions", "fogg",
      "--out", "OUT"], "unknown corruption 'fogg'"),
])
def test_bad_input_gives_one_clear_error(argv, expected, capsys, tmp_path):
    argv = [str(tmp_path / a) if a in ("OUT", "DATA") else a for a in argv]
    (tmp_path / "DATA").mkdir()
    assert entry.main(argv) == 2  # bad input
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
