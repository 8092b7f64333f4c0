"""Bad input to `train-classifier`, `bench` and `demo`: exit 2 (1 for runtime faults), one `error:` line, no traceback.

Each case builds its own broken input on tiny generated data; the table names what it checks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import pit
from common import synthetic
from tests.cli_helpers import assert_one_line_error

TRAIN = ["train-classifier", "--model", "test_vit", "--img-size", "32", "--batch-size", "4", "--epochs", "1",
         "--num-workers", "0", "--device", "cpu", "--no-progress"]
BENCH = ["bench", "--models", "pit_ti", "--img-size", "32", "--batch-size", "2", "--warmup", "0", "--min-time", "0.01",
         "--workers", "0", "--device", "cpu"]
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = synthetic.ClassificationSpec(num_classes=2, train_per_class=4, val_per_class=1, img_size=32)
    return synthetic.make_classification(tmp_path_factory.mktemp("cache"), spec)


@pytest.fixture(scope="module")
def pit_ti_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "pit_ti.pth"
    torch.save(pit.create_model("pit_ti").state_dict(), path)
    return path


def _read_only(path: Path) -> Path:
    """A folder this process cannot write into (as root, where permissions do not bind: a path under /proc)."""
    if ROOT_USER:
        return Path("/proc/pit-suite-unwritable")
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    return path


def _file(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _copy_with(data: Path, tmp: Path, broken: str) -> Path:
    """A copy of the generated set with the images of ``broken`` ("train" or "val") replaced by junk bytes."""
    root = tmp / "copy"
    for src in data.rglob("*.JPEG"):
        dst = root / src.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(b"not an image" if src.relative_to(data).parts[0] == broken else src.read_bytes())
    return root


def _wnid_free_folder(tmp: Path) -> Path:
    for name in ("cats", "dogs"):
        (tmp / "val" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp / "val" / name / "a.JPEG")
    return tmp / "val"


def _unreadable_wnid_folder(tmp: Path) -> Path:
    _file(tmp / "val" / "n01440764" / "a.JPEG", b"junk")
    return tmp / "val"


def _marked(tmp: Path, kind: str) -> Path:
    _file(tmp / "run" / ".pit-suite-run.json", json.dumps({"kind": kind, "options": {}}).encode())
    return tmp / "run"


# (id, argv builder (data, weights, tmp) -> argv, exit code, needles in the one error line)
Case = tuple[str, Callable[[Path, Path, Path], list[str]], int, tuple[str, ...]]
CASES: list[Case] = [
    # train-classifier: parse-time validation
    ("epochs-0", lambda d, w, t: TRAIN + ["--epochs", "0"], 2, ("--epochs", "positive")),
    ("batch-size-negative", lambda d, w, t: TRAIN + ["--batch-size", "-4"], 2, ("--batch-size",)),
    ("img-size-0", lambda d, w, t: TRAIN + ["--img-size", "0"], 2, ("--img-size",)),
    ("lr-0", lambda d, w, t: TRAIN + ["--lr", "0"], 2, ("--lr",)),
    ("lr-not-a-number", lambda d, w, t: TRAIN + ["--lr", "fast"], 2, ("--lr", "number")),
    ("smoothing-1", lambda d, w, t: TRAIN + ["--smoothing", "1"], 2, ("--smoothing", "[0, 1)")),
    ("ema-decay-inf", lambda d, w, t: TRAIN + ["--ema-decay", "inf"], 2, ("--ema-decay",)),
    ("eval-every-0", lambda d, w, t: TRAIN + ["--eval-every", "0"], 2, ("--eval-every",)),
    ("num-workers-negative", lambda d, w, t: TRAIN + ["--num-workers", "-1"], 2, ("--num-workers",)),
    # train-classifier: option combinations
    ("mixup-odd-batch", lambda d, w, t: TRAIN + ["--data", str(d), "--mixup", "0.8", "--batch-size", "3"], 2,
     ("even", "--batch-size")),
    ("teacher-weights-alone", lambda d, w, t: TRAIN + ["--data", str(d), "--teacher-weights", str(w)], 2,
     ("--teacher",)),
    ("resume-and-overwrite", lambda d, w, t: TRAIN + ["--data", str(d), "--resume", "--overwrite"], 2,
     ("--resume", "--overwrite")),
    # train-classifier: paths and data
    ("data-missing", lambda d, w, t: TRAIN + ["--data", str(t / "nope"), "--out", str(t / "o")], 2,
     ("--data", "train/")),
    ("data-without-val", lambda d, w, t: TRAIN + ["--data", str(_file(t / "d" / "train" / "c" / "a.JPEG").parents[2]),
                                                  "--out", str(t / "o")], 2, ("val/",)),
    ("batch-larger-than-train-set", lambda d, w, t: TRAIN + ["--data", str(d), "--batch-size", "64", "--out",
                                                              str(t / "o")], 2, ("fewer than one batch",)),
    ("every-train-image-unreadable", lambda d, w, t: TRAIN + ["--data", str(_copy_with(d, t, "train")), "--out",
                                                               str(t / "o")], 2, ("unreadable",)),
    ("every-val-image-unreadable", lambda d, w, t: TRAIN + ["--data", str(_copy_with(d, t, "val")), "--out",
                                                             str(t / "o")], 2, ("no readable image",)),
    ("weights-missing", lambda d, w, t: TRAIN + ["--data", str(d), "--weights", str(t / "none.pth"), "--out",
                                                 str(t / "o")], 2, ("none.pth",)),
    ("out-is-a-file", lambda d, w, t: TRAIN + ["--data", str(d), "--out", str(_file(t / "f"))], 2,
     ("--out", "existing file")),
    ("out-of-another-kind", lambda d, w, t: TRAIN + ["--data", str(d), "--out", str(_marked(t, "robustness"))], 2,
     ("robustness run", "nothing was changed")),
    ("checkpoint-not-ours", lambda d, w, t: TRAIN + ["--data", str(d), "--out",
                                                     str(_file(t / "r" / "checkpoint.pth", b"junk").parent)], 2,
     ("checkpoint",)),
    # bench
    ("bench-img-size-0", lambda d, w, t: BENCH + ["--img-size", "0"], 2, ("--img-size",)),
    ("bench-crop-pct-0", lambda d, w, t: BENCH + ["--crop-pct", "0"], 2, ("--crop-pct", "(0, 1]")),
    ("bench-crop-pct-above-1", lambda d, w, t: BENCH + ["--crop-pct", "1.5"], 2, ("--crop-pct",)),
    ("bench-batch-size-0", lambda d, w, t: BENCH + ["--batch-size", "0"], 2, ("--batch-size",)),
    ("bench-min-time-0", lambda d, w, t: BENCH + ["--min-time", "0"], 2, ("--min-time",)),
    ("bench-unknown-model", lambda d, w, t: BENCH + ["--models", "pit_tiny"], 2, ("unknown model", "pit_ti")),
    ("bench-weights-count", lambda d, w, t: BENCH + ["--weights", str(w), str(w)], 2, ("one file per --models",)),
    ("bench-weights-missing", lambda d, w, t: BENCH + ["--weights", str(t / "none.pth")], 2, ("none.pth",)),
    ("bench-data-without-weights", lambda d, w, t: BENCH + ["--data", str(d / "val")], 2, ("--weights",)),
    ("bench-data-missing", lambda d, w, t: BENCH + ["--weights", str(w), "--data", str(t / "nope")], 2,
     ("does not exist",)),
    ("bench-data-not-wnids", lambda d, w, t: BENCH + ["--weights", str(w), "--data", str(_wnid_free_folder(t))], 2,
     ("--data", "ImageNet val layout")),
    ("bench-data-empty", lambda d, w, t: BENCH + ["--weights", str(w), "--data",
                                                  str(_file(t / "v" / "n01440764" / "x.txt").parents[1])], 2,
     ("no images found",)),
    ("bench-data-all-unreadable", lambda d, w, t: BENCH + ["--weights", str(w), "--data",
                                                           str(_unreadable_wnid_folder(t))], 2, ("no readable image",)),
    ("bench-json-is-a-folder", lambda d, w, t: BENCH + ["--json", str(t)], 2, ("--json", "is a folder")),
]
DEMO = ["demo", "--quick", "--device", "cpu", "--no-progress"]
# Both spellings of the shared flags that have two (--model/--models, --workers/--num-workers), in every command here.
SPELLINGS: list[Case] = [
    *[(f"train-{flag}-unknown-model", lambda d, w, t, flag=flag: TRAIN + ["--data", str(d), "--out", str(t / "o"), flag,
                                                                          "pit_tiny"], 2, ("unknown model", "pit_ti"))
      for flag in ("--model", "--models")],
    *[(f"bench-{flag}-unknown-model", lambda d, w, t, flag=flag: BENCH + [flag, "pit_tiny"], 2, ("unknown model",))
      for flag in ("--model", "--models")],
    *[(f"{cmd[0]}-{flag}-negative", lambda d, w, t, cmd=cmd, flag=flag: cmd + [flag, "-1"], 2,
       ("--workers/--num-workers", "0 or more"))
      for cmd in (TRAIN, BENCH, DEMO) for flag in ("--workers", "--num-workers")],
    ("train-two-models", lambda d, w, t: TRAIN + ["--models", "test_vit", "pit_ti"], 2, ("one model",)),
    ("train-resume-nothing", lambda d, w, t: TRAIN + ["--data", str(d), "--out", str(t / "empty"), "--resume"], 2,
     ("--resume", "holds no train-classifier run", "drop --resume")),
    ("bench-resume-without-out", lambda d, w, t: BENCH + ["--resume"], 2, ("--resume", "--out")),
    ("bench-resume-nothing", lambda d, w, t: BENCH + ["--out", str(t / "empty"), "--resume"], 2,
     ("holds no bench run",)),
    ("demo-resume-nothing", lambda d, w, t: DEMO + ["--out", str(t / "empty"), "--resume"], 2, ("holds no demo run",)),
    ("demo-resume-and-overwrite", lambda d, w, t: DEMO + ["--out", str(t / "o"), "--resume", "--overwrite"], 2,
     ("--resume", "--overwrite")),
    ("demo-out-of-another-kind", lambda d, w, t: DEMO + ["--out", str(_marked(t, "bench"))], 2, ("bench run",)),
    ("demo-batch-size-is-not-a-demo-flag", lambda d, w, t: DEMO + ["--batch-sise", "4"], 2,
     ("unrecognized arguments: --batch-sise",)),
    ("train-near-miss", lambda d, w, t: TRAIN + ["--epoch", "3", "--modles", "x"], 2, ("did you mean", "--models")),
]
READ_ONLY: list[Case] = [  # --out / --json in a folder that cannot be written
    ("out-read-only", lambda d, w, t: TRAIN + ["--data", str(d), "--out", str(_read_only(t / "ro") / "run")], 2,
     ("--out", "cannot be written")),
    ("bench-json-read-only", lambda d, w, t: BENCH + ["--json", str(_read_only(t / "ro") / "b.json")], 2,
     ("--json", "cannot be written")),
]


@pytest.mark.parametrize("case", CASES + SPELLINGS + READ_ONLY, ids=lambda c: c[0])
def test_bad_input_gives_one_line(case: Case, data, pit_ti_weights, tmp_path, recwarn):
    _, argv, code, needles = case
    line = assert_one_line_error(argv(data, pit_ti_weights, tmp_path), code, *needles)
    if case[0] == "bench-data-not-wnids":
        assert "--class-map" not in line  # bench has no such flag
    for ro in tmp_path.glob("ro"):
        ro.chmod(0o755)


def test_rerun_with_other_options_is_refused_naming_the_fixes(data, tmp_path):
    from tests.cli_helpers import run_cli

    argv = TRAIN + ["--data", str(data), "--out", str(tmp_path / "run")]
    assert run_cli(argv)[0] == 0
    before = (tmp_path / "run" / "checkpoint.pth").stat().st_mtime_ns
    assert_one_line_error(argv + ["--lr", "0.01"], 2, "other options", "lr", "--overwrite")
    assert_one_line_error(argv + ["--epochs", "2"], 2, "epochs differ", "--resume to continue", "--overwrite")
    assert_one_line_error(argv + ["--epochs", "1", "--seed", "3", "--resume"], 2, "seed", "--overwrite")
    assert (tmp_path / "run" / "checkpoint.pth").stat().st_mtime_ns == before  # nothing overwritten
