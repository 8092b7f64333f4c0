"""``eval.py robustness`` under bad input and faults: one ``error:`` line, the right exit code, no
traceback; resume that keeps finished cells and recomputes only what changed; Ctrl-C (exit 130) with
finished cells saved; the default run (no dataset / --weights / --out); each dataset given alone; both
spellings of every shared flag."""
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
    r_wnids = __import__("robustness.datasets", fromlist=["x"]).subset_wnids("imagenet-r")[:2]
    write_folder(root / "r", names=r_wnids, per_class=1)
    for c in ("fog", "jpeg_compression"):
        for s in (1, 3):
            write_folder(root / "c_wnid" / c / str(s), names=A_WNIDS, per_class=1)
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
    (bad_run / ".pit-suite-run.json").write_text(json.dumps({"kind": "robustness", "options": {}}))
    (bad_run / "run.json").write_text("{not json")
    unmarked = root / "unmarked"
    unmarked.mkdir()
    (unmarked / "cells.jsonl").write_text("")
    return {k: str(v) for k, v in dict(root=root, val=root / "val", a=root / "a", a_extra=root / "a_extra", r=root / "r",
                                        c_wnid=root / "c_wnid",
                                        c=root / "c", empty=root / "empty", det=det, broken=broken,
                                        bad_run=bad_run, unmarked=unmarked).items()}


def base(files, out, *extra, data=True):
    """A clean-only run (``--attacks`` with no name selects no other evaluation) of a tiny model on ``files``."""
    argv = ["robustness", "--model", "test_convnext", "--num-classes", "3", "--class-map", "folder",
            "--img-size", "32", "--workers", "0", "--no-progress", "--device", "cpu", "--weights", "none",
            "--attacks", "--out", str(out)]
    if data:
        argv += ["--data", files["val"]]
    return argv + list(extra)


# (extra arguments, exit code, needles in the error line); "{key}" is replaced by files[key].
CASES = [
    (["--eps", "1e400"], 2, ["--eps", "finite"]),
    (["--resume"], 2, ["--resume", "holds no robustness run", "drop --resume"]),
    (["--eps=-0.5"], 2, ["--eps"]),
    (["--eps", "2"], 2, ["--eps", "[0, 1]"]),
    (["--alpha", "0"], 2, ["--alpha", "(0, 1]"]),
    (["--alpha=-1/255"], 2, ["--alpha"]),
    (["--crop-pct", "0"], 2, ["--crop-pct", "(0, 1]"]),
    (["--crop-pct", "1.5"], 2, ["--crop-pct"]),
    (["--num-classes", "0"], 2, ["--num-classes", "positive integer"]),
    (["--img-size", "0"], 2, ["--img-size"]),
    (["--steps", "0"], 2, ["--steps"]),
    (["--limit", "0"], 2, ["--limit"]),
    (["--batch-size", "0"], 2, ["--batch-size"]),
    (["--workers=-1"], 2, ["--workers"]),
    (["--num-workers=-1"], 2, ["--workers"]),
    (["--severities", "0-3"], 2, ["--severities", "1..5"]),
    (["--severities", "1", "x"], 2, ["--severities", "1,3,5"]),
    (["--severities", "1,6"], 2, ["--severities", "1..5"]),
    (["--imagenet-c", "{c}", "--corrupt-on-the-fly"], 2, ["exclude each other"]),
    (["--corrupt-on-the-fly", "--corruptions", "fgo"], 2, ["unknown corruption 'fgo'", "--corruptions", "did you mean 'fog'"]),
    (["--corruptions", "fog,jpg_compression"], 2, ["unknown corruption 'jpg_compression'", "jpeg_compression"]),
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
    assert_one_line_error(base(files, files["unmarked"]), 2, "cells.jsonl", "unmarked run", "--overwrite")
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
                        lambda p, cells, *a, **k: (computed.extend(map(str, cells)), real(p, cells, *a, **k))[1])
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

    # Model B's weights do not fit it: found when the models of the first pass load, before any image is
    # read (the models share each pass), so nothing is computed; fixing them computes both.
    weights = tmp_path / "b.pth"
    torch.save(__import__("timm").create_model("test_convnext", num_classes=3).state_dict(), weights)
    two = base(files, tmp_path / "two", "--model", "test_convnext", "test_vit", "--weights", "none", str(weights))
    computed.clear()
    assert_one_line_error(two, 2, "b.pth", "test_vit")
    assert computed == []
    assert "test_vit" not in json.loads((tmp_path / "two" / "run.json").read_text())["models"]
    torch.save(__import__("timm").create_model("test_vit", num_classes=3, img_size=32).state_dict(), weights)
    computed.clear()
    code, _, err = run_cli(two)
    assert code == 0, err
    assert sorted({k.split("|")[0] for k in computed}) == ["test_convnext", "test_vit"]
    assert set(json.loads((tmp_path / "two" / "run.json").read_text())["models"]) == {"test_convnext", "test_vit"}


def test_default_run_writes_under_runs_and_resumes(files, tmp_path, monkeypatch, tmp_path_factory):
    from common import synthetic
    from robustness import runner

    monkeypatch.setattr(synthetic, "DEFAULT_CACHE", tmp_path_factory.getbasetemp() / "synthetic-cache")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["robustness", "--model", "pit_ti", "--limit", "8", "--no-progress"])
    assert code == 0, err
    assert "note: no dataset given" in out and "--data DIR" in out and "note: pit_ti:" in out
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


def alone(files, out, flag, *extra):
    """A run of a 1000-class model on one dataset given alone (no --data)."""
    return ["robustness", "--model", "test_convnext", "--img-size", "32", "--workers", "0", "--no-progress",
            "--device", "cpu", "--weights", "none", "--out", str(out), flag,
            files[{"--imagenet-a": "a", "--imagenet-r": "r", "--imagenet-c": "c_wnid"}[flag]], *extra]


@pytest.mark.parametrize("flag,extra,dataset", [
    ("--imagenet-a", [], "imagenet-a"),
    ("--imagenet-r", [], "imagenet-r"),
    ("--imagenet-c", ["--corruptions", "fog,jpeg_compression", "--severities", "1,3"], "imagenet-c"),
])
def test_a_dataset_given_alone_is_the_dataset_evaluated(files, tmp_path, flag, extra, dataset):
    code, out, err = run_cli(alone(files, tmp_path / "o", flag, *extra))
    assert code == 0, err
    assert "generated" not in out and ("no evaluation selected" in out) == (not extra)
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {r["dataset"] for r in results["records"]} == {dataset}
    assert len(results["records"]) == (4 if extra else 1) and all(r["n"] == 2 for r in results["records"])
    assert "clean_top1" in results["not_run"] and results["summary"]["test_convnext"]["clean_top1"] is None
    table = next(line for line in (tmp_path / "o" / "report.md").read_text().splitlines()
                 if line.startswith("| test_convnext |"))
    assert table.count("not run") >= 2
    assert "clean_top1, clean_top5" in out and "not run: needs clean images (--data DIR)" in out


def test_cells_that_need_clean_images_are_refused_without_them(files, tmp_path):
    for selection in (["--attacks", "fgsm"], ["--occlusion"], ["--corrupt-on-the-fly"]):
        assert_one_line_error(alone(files, tmp_path / "o", "--imagenet-a", *selection), 2, selection[0],
                              "needs clean images", "--data")
    assert_one_line_error(alone(files, tmp_path / "o", "--imagenet-a", "--corruptions", "fog"), 2,
                          "--corruptions needs --imagenet-c")
    assert not (tmp_path / "o" / "cells.jsonl").exists()


def test_both_spellings_of_shared_flags_make_the_same_run(files, tmp_path):
    """--model/--models, --workers/--num-workers, comma- or space-separated corruptions, 1,3 / 1 3 / 1-3."""
    out = tmp_path / "o"
    first = ["robustness", "--models", "test_convnext", "--num-classes", "3", "--class-map", "folder",
             "--img-size", "32", "--num-workers", "0", "--no-progress", "--device", "cpu", "--weights", "none",
             "--data", files["val"], "--out", str(out), "--corruptions", "fog,jpeg_compression", "--severities", "1,3"]
    code, stdout, err = run_cli(first)
    assert code == 0, err
    assert "clean, 2 corruption(s) × 2 severities on the fly: 5 cell(s) per model × 1 model(s) = 5 cells" in stdout
    cells = _cells(out)
    assert sorted(cells) == sorted(["test_convnext|imagenet|None|None|clean"] + [
        f"test_convnext|imagenet-c|{c}|{s}|clean" for c in ("fog", "jpeg_compression") for s in (1, 3)])
    second = base(files, out, "--corruptions", "fog", "jpeg_compression", "--severities", "1", "3")
    second.remove("--attacks")
    code, stdout, err = run_cli(second)
    assert code == 0, err
    assert f"resuming {out}: 5 of 5 cells done" in stdout and _cells(out) == cells
    code, stdout, err = run_cli([*second[:-2], "1-3"])  # severity 2 added: only its two cells are new
    assert code == 0, err
    assert f"resuming {out}: 5 of 7 cells done" in stdout and {k: v for k, v in _cells(out).items() if k in cells} == cells


CHEAP = ["gaussian_noise", "shot_noise", "impulse_noise", "brightness", "contrast", "jpeg_compression"]


def _command(data: str, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "eval.py"), "robustness", "--model", "test_convnext", "--num-classes", "3",
            "--class-map", "folder", "--data", data, "--img-size", "32", "--workers", "2", "--batch-size", "4",
            "--weights", "none", "--corrupt-on-the-fly", "--corruptions", *CHEAP, "--severities", "1-5",
            "--chunk-images", "4", "--no-progress", "--device", "cpu", "--out", str(out)]


def _interrupt_then_finish(tmp_path: Path) -> None:
    """Ctrl-C once two chunks of the shared pass are saved: exit 130, one "interrupted" line and no traceback
    from any process (the DataLoader workers included); the same command then resumes after the saved
    chunks and finishes with the numbers of an uninterrupted run."""
    data = write_folder(tmp_path / "val", per_class=6)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # A shell without job control starts background jobs with SIGINT ignored: restore the default for the child.
    proc = subprocess.Popen(_command(str(data), out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    chunks = out / "partial.jsonl"
    while not (chunks.exists() and chunks.read_text().count("\n") >= 2) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not (out / "results.json").exists()
    done = subprocess.run(_command(str(data), out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming at image" in done.stdout
    final = {r["key"]: r["top1_correct"] for r in json.loads((out / "results.json").read_text())["records"]}
    assert len(final) == 1 + len(CHEAP) * 5
    whole = subprocess.run(_command(str(data), tmp_path / "whole"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr
    assert final == {r["key"]: r["top1_correct"] for r in json.loads((tmp_path / "whole" / "results.json").read_text())["records"]}


@pytest.mark.slow
def test_ctrl_c_stops_with_cells_saved_and_rerun_finishes(tmp_path):
    _interrupt_then_finish(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("repetition", range(3))
def test_ctrl_c_is_quiet_under_a_cpu_hog(tmp_path, repetition):
    """The same interruption while another process keeps a core busy (workers lag behind the main process)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _interrupt_then_finish(tmp_path)
    finally:
        hog.kill()
        hog.wait()
