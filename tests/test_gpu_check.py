"""benchmarks/gpu_check.py: its command line and how a section's outcome is recorded (the check itself
needs a GPU and minutes; it is not run here)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_lists_the_options():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for flag in ("--device", "--quick", "--out", "--timeout", "--budget"):
        assert flag in done.stdout


def test_sections_record_ok_failed_and_skipped_independently():
    check = _module()
    cpu = torch.device("cpu")

    def boom() -> dict:
        raise RuntimeError("kernel missing")

    def skipped() -> dict:
        raise check.Skipped("needs CUDA")

    ok = check.run_section("ok", lambda: {"value": 3}, cpu)
    failed = check.run_section("failed", boom, cpu)
    partial = check.run_section("partial", lambda: {"failures": ["fog: NaN"]}, cpu)
    skip = check.run_section("skip", skipped, cpu)
    assert ok["status"] == "ok" and ok["results"] == {"value": 3} and ok["peak_gpu_mib"] is None
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: kernel missing"
    assert "Traceback" in failed["traceback"]
    assert partial["status"] == "failed" and partial["error"] == "fog: NaN"
    assert skip["status"] == "skipped" and skip["error"] == "needs CUDA"
