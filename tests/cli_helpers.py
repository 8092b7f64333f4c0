"""Run ``eval.py`` in-process and check the one-line-error contract (shared by the CLI tests)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import eval as cli  # the top-level script (the repository root is on sys.path when pytest runs from it)

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``python eval.py *argv`` in this process → (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(argv: list[str], code: int, *needles: str) -> str:
    """The command fails with exit ``code``, a single ``error:`` line containing every needle, no traceback."""
    rc, out, err = run_cli(argv)
    assert rc == code, f"exit {rc} (expected {code}) for {argv}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err + out, err
    errors = [line for line in err.splitlines() if line.startswith("error:") or "error:" in line]
    assert len(errors) == 1, f"expected one error line, got {errors}\nstderr: {err}"
    for needle in needles:
        assert needle.lower() in errors[0].lower(), f"{needle!r} not in {errors[0]!r}"
    return errors[0]
