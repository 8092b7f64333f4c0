"""The single entry point: every subcommand is wired, and bad input ends in one clear line, not a traceback."""
from __future__ import annotations

import pytest

import eval as entry


def test_no_command_prints_the_menu_and_succeeds(capsys):
    assert entry.main([]) == 0
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


@pytest.mark.parametrize("argv, suggestion", [
    (["benh"], "did you mean 'bench'?"),
    (["detection", "trian"], "did you mean 'train'?"),
    (["bench", "--modles", "pit_s"], "did you mean --models?"),
    (["train-classifier", "--epoch-count", "3"], "did you mean --epochs?"),
    (["detection", "train", "--backbnoe", "pit_s"], "did you mean --backbone?"),
])
def test_near_misses_get_one_line_with_did_you_mean(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and suggestion in err, err


def test_unknown_flag_far_from_every_option_gets_no_suggestion(capsys):
    with pytest.raises(SystemExit):
        entry.main(["bench", "--zzzzzzzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzzzz" in err and "did you mean" not in err
