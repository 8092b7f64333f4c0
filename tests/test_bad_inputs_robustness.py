"""``eval.py robustness`` under bad input and faults: one ``error:`` line, the right exit code, no
traceback; resume that keeps finished cells and recomputes only what changed; Ctrl-C (exit 130) with
finished cells saved; the default run (no --data / --weights / --out)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.cli_helpers import ROOT, assert_one_line_error, run_cli
from tests.folder_fixtures import CLASSES, write_folder

A_WNIDS = ["n01498041", "n01531178"]  # two of the 200 ImageNet-A classes (the authors' list)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    write_folder(root / "val")
    write_folder(root / "a", names=A_WNIDS, per_class=1)
    write_folder(root / "a_extra", names=[*A_WNIDS, "n01440764"], per_class=1)  # n01440764 is not in IN-A
    write_folder(root / "c" / "fog" / "1")
    (root / "empty").mkdir()
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.pth").write_bytes(os.urandom(256))
    (root / "afile").write_text("x")
    det = root / "det_run"
    det.mkdir()
    (det / ".pit-suite-run.json").write_text(json.dumps({"kind": "detection", "options": {}}))
    (det / "checkpoint.pth").write_bytes(b"keep me")
    broken = root / "broken"
    for name in CLASSES:
        (broken / name).mkdir(parents=True)
        (broken / name / "0.png").write_bytes(b"not an image")
    bad_run = root / "bad_run"
    bad_run.mkdir()
    (bad_run / "run.json").write_text("{not json")
    return {k: str(v) for k, v in dict(root=root, val=root / "val", a=root / "a", a_extra=root / "a_extra",
                                        c=root / "c", empty=root / "empty", det=det, broken=broken,
                                        bad_run=bad_run).items()}


def base(files, out, *extra, data=True):
    argv = ["robustness", "--model", "test_convnext", "--num-classes", "3", "--class-map", "folder",
            "--img-size", "32", "--workers", "0", "--no-progress", "--device", "cpu", "--weights", "none",
            "--out", str(out)]
    if data:
        argv += ["--data", files["val"]]
    return argv + list(extra)


# (extra arguments, exit code, needles in the error line); "{key}" is replaced by files[key].
CASES = [
    (["--eps", "1e400"], 2, ["--eps", "finite"]),
    (["--eps=-0.5"], 2, ["--eps"]),
    (["--eps", "2"], 2, ["--eps", "[0, 1]"]),
    (["--alpha", "0"], 2, ["--alpha", "(0, 1]"]),
    (["--alpha=-1/255"], 2, ["--alpha"]),
    (["--crop-pct", "0"], 2, ["--crop-pct", "(0, 1]"]),
    (["--crop-pct", "1.5"], 2, ["--crop-pct"]),
    (["--num-classes", "0"], 2, ["--num-classes", ">= 1"]),
    (["--img-size", "0"], 2, ["--img-size"]),
    (["--steps", "0"], 2, ["--steps"]),
    (["--limit", "0"], 2, ["--limit"]),
    (["--batch-size", "0"], 2, ["--batch-size"]),
    (["--workers=-1"], 2, ["--workers"]),
    (["--severities", "0-3"], 2, ["--severities", "1..5"]),
    (["--imagenet-c", "{c}", "--corrupt-on-the-fly"], 2, ["exclude each other"]),
    (["--corruptions", "fog"], 2, ["--corruptions needs --imagenet-c"]),
    (["--corrupt-on-the-fly", "--corruptions", "fgo"], 2, ["unknown corruption 'fgo'", "--corruptions"]),
    (["--imagenet-c", "{c}", "--corruptions", "snow"], 2, ["missing", "snow", "fog"]),
    (["--weights", "a.pth", "b.pth"], 2, ["one path per --model"]),
    (["--weights", "{root}/missing.pth"], 2, ["--weights", "missing.pth", "does not exist"]),
    (["--weights", "{root}/empty.pth"], 2, ["empty.pth", "empty"]),
    (["--weights", "{root}"], 2, ["--weights", "is a folder"]),
    (["--weights", "{root}/garbage.pth"], 2, ["garbage.pth"]),
    (["--imagenet-a", "{root}/imagenet-a-typo"], 2, ["--imagenet-a", "imagenet-a-typo", "does not exist"]),
    (["--imagenet-r", "{empty}"], 2, ["no class folders"]),
]


@pytest.mark.parametrize("extra,code,needles", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_option_is_one_line(files, tmp_path, extra, code, needles):
    extra = [e.format(**files) for e in extra]
    assert_one_line_error(base(files, tmp_path / "o", *extra), code, *needles)
    assert not (tmp_path / "o" / "cells.jsonl").exists()  # reported before the first pass


def test_bad_paths_and_models_are_one_line(files, tmp_path):
    out = tmp_path / "o"
    assert_one_line_error(base(files, out, "--data", files["root"] + "/nope"), 2, "--data", "does not exist")
    assert_one_line_error(base(files, out, "--data", files["empty"]), 2, "no class folders")
    argv = base(files, out, "--class-map", "imagenet")
    assert_one_line_error(argv, 2, "unknown class folder", "--class-map folder")
    argv = ["robustness", "--model", "no_such_net", "--data", files["val"], "--out", str(out), "--weights", "none"]
    assert_one_line_error(argv, 2, "unknown model 'no_such_net'", "PiT name")
    argv = base(files, out, "--model", "test_convnext", "test_convnext", "--weights", "none", "none")
    line = assert_one_line_error(argv, 2, "given twice", "--weights")
    assert "ModelSpec" not in line
    argv = ["robustness", "--model", "test_convnext", "--class-map", "imagenet", "--out", str(out)]
    assert_one_line_error(argv, 2, "--class-map imagenet needs --data")
    argv = ["robustness", "--model", "test_convnext", "--num-classes", "5", "--out", str(out)]
    assert_one_line_error(argv, 2, "--num-classes 5 needs --data")


def test_imagenet_a_uses_the_authors_200_classes(files, tmp_path):
    argv = ["robustness", "--model", "test_convnext", "--data", files["a"], "--imagenet-a", files["a_extra"],
            "--img-size", "32", "--workers", "0", "--no-progress", "--device", "cpu", "--weights", "none",
            "--out", str(tmp_path / "x")]
    assert_one_line_error(argv, 2, "--imagenet-a", "outside the 200", "n01440764")
    code, out, err = run_cli([*argv[:6], files["a"], *argv[7:]])
    assert code == 0, err
    assert "lacks 198 of the 200 class folders" in out  # one line, and still scored over the 200 classes
    from robustness import datasets as ds

    wnids = ds.subset_wnids("imagenet-a")
    assert len(wnids) == len(set(wnids)) == 200 and set(A_WNIDS) <= set(wnids)
    assert len(ds.subset_wnids("imagenet-r")) == 200
    mask = ds.class_mask([i for i, w in enumerate(__import__("timm").data.ImageNetInfo().label_names()) if w in wnids],
                         1000, torch.device("cpu"))
    assert int(mask.sum()) == 200


def test_out_folder_errors(files, tmp_path):
    assert_one_line_error(base(files, files["root"] + "/afile"), 2, "--out", "existing file")
    before = sorted(os.listdir(files["det"]))
    assert_one_line_error(base(files, files["det"], "--overwrite"), 2, "detection run", "nothing was changed")
    assert sorted(os.listdir(files["det"])) == before and Path(files["det"], "checkpoint.pth").read_bytes() == b"keep me"
    assert_one_line_error(base(files, files["bad_run"]), 2, "run.json", "corrupt")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert_one_line_error(base(files, ro / "o"), 2, "--out", "cannot be written")


def test_every_image_unreadable_fails_without_report(files, tmp_path):
    assert_one_line_error(base(files, tmp_path / "o", "--data", files["broken"]), 2, "no readable image")
    assert not (tmp_path / "o" / "report.md").exists()


def _cells(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads((out / "results.json").read_text())["records"]}


def test_restored_and_added_images_are_recomputed(files, tmp_path):
    data = write_folder(tmp_path / "val")
    good = (data / "bee" / "1.png").read_bytes()
    (data / "bee" / "1.png").write_bytes(b"truncated")
    out = tmp_path / "o"
    argv = base(files, out, "--data", str(data))
    with pytest.warns(RuntimeWarning, match="1.png"):
        assert run_cli(argv)[0] == 0
    first = _cells(out)["test_convnext|imagenet|None|None|clean"]
    assert (first["n"], first["skipped"]) == (8, 1) and list(first["skipped_files"]) == [str(data / "bee" / "1.png")]
    (data / "bee" / "1.png").write_bytes(good)  # the image is restored
    code, stdout, _ = run_cli(argv)
    assert code == 0 and "recomputing" in stdout and "skipped image was replaced" in stdout
    restored = _cells(out)["test_convnext|imagenet|None|None|clean"]
    assert (restored["n"], restored["skipped"]) == (9, 0)
    code, stdout, _ = run_cli(argv)  # nothing changed: nothing recomputed, identical records
    assert code == 0 and "recomputing" not in stdout and _cells(out)["test_convnext|imagenet|None|None|clean"] == restored
    Image.new("RGB", (36, 36)).save(data / "cat" / "9.png")  # a file added
    code, stdout, _ = run_cli(argv)
    assert "added or removed" in stdout and _cells(out)["test_convnext|imagenet|None|None|clean"]["n"] == 10


def test_new_cells_only_and_weights_fix_keeps_other_models(files, tmp_path, monkeypatch):
    from robustness import runner

    computed = []
    real = runner._evaluate_pass
    monkeypatch.setattr(runner, "_evaluate_pass",
                        lambda p, cells, *a, **k: (computed.extend(c.key for c in cells), real(p, cells, *a, **k))[1])
    out = tmp_path / "o"
    assert run_cli(base(files, out))[0] == 0
    clean = _cells(out)
    computed.clear()
    argv = base(files, out, "--attacks", "fgsm", "pgd", "--occlusion", "--corrupt-on-the-fly", "--corruptions",
                "fog", "--severities", "1", "--imagenet-a", files["val"])
    code, _, err = run_cli(argv)
    assert code == 0, err
    assert sorted(k.split("|", 1)[1] for k in computed) == sorted([
        "imagenet|None|None|fgsm", "imagenet|None|None|pgd", "imagenet|None|None|occlusion_center",
        "imagenet|None|None|occlusion_random", "imagenet-c|fog|1|clean", "imagenet-a|None|None|clean"])
    assert {k: v for k, v in _cells(out).items() if k in clean} == clean

    # Model B's weights do not fit it (found when B loads, after model A finished): fixing them computes B only.
    weights = tmp_path / "b.pth"
    torch.save(__import__("timm").create_model("test_convnext", num_classes=3).state_dict(), weights)
    two = base(files, tmp_path / "two", "--model", "test_convnext", "test_vit", "--weights", "none", str(weights))
    computed.clear()
    assert_one_line_error(two, 2, "b.pth", "test_vit")
    assert [k.split("|")[0] for k in computed] == ["test_convnext"]
    assert "test_vit" not in json.loads((tmp_path / "two" / "run.json").read_text())["models"]
    torch.save(__import__("timm").create_model("test_vit", num_classes=3, img_size=32).state_dict(), weights)
    computed.clear()
    code, _, err = run_cli(two)
    assert code == 0, err
    assert [k.split("|")[0] for k in computed] == ["test_vit"]
    assert set(json.loads((tmp_path / "two" / "run.json").read_text())["models"]) == {"test_convnext", "test_vit"}


def test_default_run_writes_under_runs_and_resumes(files, tmp_path, monkeypatch, tmp_path_factory):
    from common import synthetic
    from robustness import runner

    monkeypatch.setattr(synthetic, "DEFAULT_CACHE", tmp_path_factory.getbasetemp() / "synthetic-cache")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["robustness", "--model", "pit_ti", "--limit", "8", "--no-progress"])
    assert code == 0, err
    assert "note: no --data given" in out and "--data DIR" in out and "note: pit_ti:" in out
    assert "writing to runs/robustness-pit_ti" in out and "results in runs/robustness-pit_ti" in out
    report = (tmp_path / "runs" / "robustness-pit_ti" / "report.md").read_text()
    assert "**Data:** built-in generated classification set" in report.split("Accuracies")[0]
    assert "**Weights of pit_ti:**" in report.split("Accuracies")[0]
    saved = json.loads((tmp_path / "runs" / "robustness-pit_ti" / "results.json").read_text())
    assert saved["records"][0]["n"] == 8 and "generated" in saved["options"]["data_used"]

    calls = []
    monkeypatch.setattr(runner, "_evaluate_pass", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    code, out, err = run_cli(["robustness", "--model", "pit_ti", "--limit", "8", "--no-progress"])
    assert code == 0 and calls == [] and "writing to runs/robustness-pit_ti\n" in out
    monkeypatch.undo()
    monkeypatch.setattr(synthetic, "DEFAULT_CACHE", tmp_path_factory.getbasetemp() / "synthetic-cache")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["robustness", "--model", "pit_ti", "--limit", "4", "--no-progress", "--workers", "0"])
    assert code == 0, err
    assert "writing to runs/robustness-pit_ti-2" in out


CHEAP = ["gaussian_noise", "shot_noise", "impulse_noise", "brightness", "contrast", "jpeg_compression"]


def _command(data: str, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "eval.py"), "robustness", "--model", "test_convnext", "--num-classes", "3",
            "--class-map", "folder", "--data", data, "--img-size", "32", "--workers", "2", "--batch-size", "4",
            "--weights", "none", "--corrupt-on-the-fly", "--corruptions", *CHEAP, "--severities", "1-5",
            "--no-progress", "--device", "cpu", "--out", str(out)]


@pytest.mark.slow
def test_ctrl_c_stops_with_cells_saved_and_rerun_finishes(tmp_path):
    data = write_folder(tmp_path / "val", per_class=6)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # A shell without job control starts background jobs with SIGINT ignored: restore the default for the child.
    proc = subprocess.Popen(_command(str(data), out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cells = out / "cells.jsonl"
    deadline = time.time() + 120
    while not (cells.exists() and cells.read_text().count("\n") >= 2) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    saved = [json.loads(line) for line in cells.read_text().splitlines()]
    assert 2 <= len(saved) < 1 + len(CHEAP) * 5
    done = subprocess.run(_command(str(data), out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = {r["key"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert len(final) == 1 + len(CHEAP) * 5
    assert all(final[r["key"]] == r for r in saved)  # cells finished before Ctrl-C are kept as they were
