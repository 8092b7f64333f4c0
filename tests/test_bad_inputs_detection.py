"""``eval.py detection train / eval / compare`` on bad input: every case ends with its exit code (2 = bad
input, 1 = runtime fault), exactly one ``error:`` line naming the problem, and no traceback.

The data is the tiny generated COCO set of ``tests/coco_fixtures.py``; each case writes only the one
defect it is about (a broken annotation file, a random checkpoint, a malicious pickle, ...).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.coco_fixtures import make_tiny_coco

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = '{"hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 64, "num_queries": 4}'
FAST = ["--scales", "48", "--max-size", "96", "--test-size", "64", "--num-workers", "0", "--no-progress",
        "--batch-size", "2", "--epochs", "1", "--model-kwargs", TINY]




class _Payload:
    """Unpickling this runs ``touch MARKER`` — exactly what a safe loader must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """No command here may wait for the hub (published-weights check without --backbone-weights)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad_detection")
    paths = make_tiny_coco(root / "coco", num_images=3, size=(64, 96), seed=2, max_objects=2)
    data = json.loads(Path(paths["val_ann"]).read_text())
    marker = root / "pwned"
    torch.save({"model": _Payload(marker)}, root / "evil.pth")
    (root / "random.pth").write_bytes(os.urandom(4096))
    (root / "empty.pth").write_bytes(b"")
    torch.save({"model": {"w": torch.zeros(2)}}, root / "fields.pth")
    (root / "a_file").write_text("not a folder")
    trained = root / "trained"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(train(SimpleNamespace(root=root, paths=paths), out=str(trained)))[0] == 0
    torch.set_num_threads(threads)
    robustness = root / "robustness_run"
    robustness.mkdir()
    (robustness / ".pit-suite-run.json").write_text(json.dumps({"kind": "robustness", "options": {}}))
    return SimpleNamespace(root=root, paths=paths, data=data, marker=marker, checkpoint=str(trained / "checkpoint.pth"))


def _ann(env: SimpleNamespace, name: str, content) -> str:
    """Write an annotation file ``name`` (JSON of ``content``, or the text itself when a str)."""
    path = env.root / f"{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _with_annotations(env: SimpleNamespace, name: str, change: Callable[[dict], None]) -> str:
    data = json.loads(json.dumps(env.data))
    change(data)
    return _ann(env, name, data)


def _images(env: SimpleNamespace, name: str, write: Callable[[Path], None]) -> str:
    """A copy of the image folder in which every image is replaced by ``write(path)``."""
    folder = env.root / name
    if not folder.exists():
        shutil.copytree(env.paths["val_images"], folder)
        for image in folder.iterdir():
            write(image)
    return str(folder)


def train(env: SimpleNamespace, *extra: str, ann: str | None = None, images: str | None = None,
          out: str | None = None) -> list[str]:
    p = env.paths
    return ["detection", "train", "--backbone", "pit_ti", "--train-ann", ann or p["train_ann"],
            "--train-images", images or p["train_images"], "--val-ann", ann or p["val_ann"],
            "--val-images", images or p["val_images"], "--out", out or str(env.root / "out"), *FAST, *extra]


def evaluate(env: SimpleNamespace, checkpoint: str, *extra: str, ann: str | None = None, out: str | None = None) -> list[str]:
    return ["detection", "eval", "--checkpoint", checkpoint, "--val-ann", ann or env.paths["val_ann"],
            "--val-images", env.paths["val_images"], "--out", out or str(env.root / "eval_out"),
            "--num-workers", "0", "--no-progress", *extra]


def _set_first(key: str, value) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["annotations"][0][key] = value
    return change


def _drop_bbox(data: dict) -> None:
    del data["annotations"][0]["bbox"]


def _every_box_zero(data: dict) -> None:
    for a in data["annotations"]:
        a["bbox"][2] = 0


def _only_crowd(data: dict) -> None:
    for a in data["annotations"]:
        a["iscrowd"] = 1


def _file_name(name: str) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["images"][0]["file_name"] = name
    return change


CASES: dict[str, tuple[Callable[[SimpleNamespace], list[str]], int, tuple[str, ...]]] = {
    # parse-time validation of numbers
    "epochs 0": (lambda e: train(e, "--epochs", "0"), 2, ("--epochs", "must be a positive integer")),
    "batch size 0": (lambda e: train(e, "--batch-size", "0"), 2, ("--batch-size",)),
    "batch size -2": (lambda e: train(e, "--batch-size", "-2"), 2, ("--batch-size",)),
    "lr 0": (lambda e: train(e, "--lr", "0"), 2, ("--lr",)),
    "lr nan": (lambda e: train(e, "--lr", "nan"), 2, ("--lr",)),
    "lr overflow": (lambda e: train(e, "--lr", "1e400"), 2, ("--lr",)),
    "img scale 0": (lambda e: train(e, "--img-scale", "0"), 2, ("--img-scale",)),
    "eval every 0": (lambda e: train(e, "--eval-every", "0"), 2, ("--eval-every",)),
    "scales 0": (lambda e: train(e, "--scales", "0"), 2, ("--scales",)),
    "accum steps 0": (lambda e: train(e, "--accum-steps", "0"), 2, ("--accum-steps",)),
    "num queries 0": (lambda e: train(e, "--model-kwargs", '{"num_queries": 0}'), 2, ("num_queries",)),
    "model kwargs not json": (lambda e: train(e, "--model-kwargs", "{hidden"), 2, ("--model-kwargs", "JSON")),
    "model kwargs a list": (lambda e: train(e, "--model-kwargs", "[1]"), 2, ("--model-kwargs", "object")),
    "loss kwargs not json": (lambda e: train(e, "--loss-kwargs", "{cls"), 2, ("--loss-kwargs", "JSON")),
    "loss kwargs unknown name": (lambda e: train(e, "--loss-kwargs", '{"cls_los_coef": 5}'), 2,
                                 ("cls_los_coef", "cls_loss_coef")),
    "loss kwargs negative": (lambda e: train(e, "--loss-kwargs", '{"cls_loss_coef": -1}'), 2, ("cls_loss_coef", "≥ 0")),
    "loss kwargs not a number": (lambda e: train(e, "--loss-kwargs", '{"cls_loss_coef": "5"}'), 2, ("cls_loss_coef",)),
    "resume and overwrite": (lambda e: train(e, "--resume", "--overwrite"), 2, ("--overwrite",)),
    "resume file and overwrite": (lambda e: train(e, "--resume", "x.pth", "--overwrite"), 2, ("--overwrite",)),
    "resume with no run": (lambda e: train(e, "--resume", out=str(e.root / "empty_run")), 2,
                           ("--resume", "no detection-train run")),
    "eval resume with no run": (lambda e: evaluate(e, e.checkpoint, "--resume", out=str(e.root / "empty_eval")), 2,
                                ("--resume", "no detection-eval run")),
    # the shared flags, in each of their spellings
    "train --workers -1": (lambda e: train(e, "--workers", "-1"), 2, ("--workers",)),
    "train --num-workers -1": (lambda e: train(e, "--num-workers", "-1"), 2, ("--num-workers",)),
    "eval --workers -1": (lambda e: evaluate(e, e.checkpoint, "--workers", "-1"), 2, ("--workers",)),
    "eval --num-workers -1": (lambda e: evaluate(e, e.checkpoint, "--num-workers", "-1"), 2, ("--num-workers",)),
    "eval batch size 0": (lambda e: evaluate(e, e.checkpoint, "--batch-size", "0"), 2, ("--batch-size",)),
    "corruptions spaced, near miss": (lambda e: evaluate(e, e.checkpoint, "--corruptions", "fgo", "snow"), 2,
                                      ("unknown corruption", "did you mean 'fog'")),
    "corruptions commas, near miss": (lambda e: evaluate(e, e.checkpoint, "--corruptions", "fgo,snow"), 2,
                                      ("unknown corruption", "did you mean 'fog'")),
    "severities spaced": (lambda e: evaluate(e, e.checkpoint, "--corruptions", "fog", "--severities", "0", "3"), 2,
                          ("--severities", "1..5")),
    "severities commas": (lambda e: evaluate(e, e.checkpoint, "--corruptions", "fog", "--severities", "0,3"), 2,
                          ("--severities", "1..5")),
    "severities range": (lambda e: evaluate(e, e.checkpoint, "--corruptions", "fog", "--severities", "3-6"), 2,
                         ("--severities", "1..5")),
    "severities without corruptions": (lambda e: evaluate(e, e.checkpoint, "--severities", "1", "3"), 2,
                                       ("--corruptions",)),
    "seed without corruptions": (lambda e: evaluate(e, e.checkpoint, "--seed", "3"), 2, ("--corruptions",)),
    "label count": (lambda e: evaluate(e, e.checkpoint, "--label", "a", "b"), 2, ("--label", "one per checkpoint")),
    # data paths
    "coco folder missing": (lambda e: ["detection", "train", "--backbone", "pit_ti", "--coco", str(e.root / "none")],
                            2, ("COCO folder", "does not exist")),
    "incomplete paths": (lambda e: ["detection", "train", "--backbone", "pit_ti", "--train-ann", "a.json"],
                         2, ("--train-images",)),
    # annotation files
    "malformed json": (lambda e: train(e, ann=_ann(e, "malformed", '{"images": [')), 2, ("malformed.json", "not valid JSON")),
    "json list": (lambda e: train(e, ann=_ann(e, "list", [1, 2])), 2, ("list.json", "JSON list")),
    "unknown category": (lambda e: train(e, ann=_with_annotations(e, "cat99", _set_first("category_id", 99))),
                         2, ("category id 99",)),
    "no bbox": (lambda e: train(e, ann=_with_annotations(e, "nobbox", _drop_bbox)), 2, ("no \"bbox\"",)),
    "bbox not numbers": (lambda e: train(e, ann=_with_annotations(e, "badbox", _set_first("bbox", [1, "a", 2, 3]))),
                         2, ("bbox",)),
    "absolute file_name": (lambda e: train(e, ann=_with_annotations(e, "abs", _file_name("/etc/passwd"))),
                           2, ("/etc/passwd", "outside the image folder")),
    "escaping file_name": (lambda e: train(e, ann=_with_annotations(e, "dotdot", _file_name("../../secret.jpg"))),
                           2, ("../../secret.jpg", "outside the image folder")),
    "every box invalid": (lambda e: train(e, ann=_with_annotations(e, "zero", _every_box_zero)), 2, ("every box",)),
    "only crowd boxes (eval)": (lambda e: evaluate(e, e.checkpoint,
                                                   ann=_with_annotations(e, "crowd", _only_crowd)), 2, ("crowd",)),
    "no annotations (eval)": (lambda e: evaluate(e, e.checkpoint,
                                                 ann=_with_annotations(e, "noann", lambda d: d.update(annotations=[]))),
                              2, ("no annotated boxes",)),
    # images
    "every image empty": (lambda e: train(e, images=_images(e, "zero_byte", lambda p: p.write_bytes(b""))),
                          2, ("missing on disk or empty",)),
    "every image not an image": (lambda e: train(e, images=_images(e, "text", lambda p: p.write_text("hello"))),
                                 2, ("every training image was unreadable",)),
    # checkpoints
    "resume random file": (lambda e: train(e, "--resume", str(e.root / "random.pth")), 2, ("random.pth", "checkpoint")),
    "resume empty file": (lambda e: train(e, "--resume", str(e.root / "empty.pth")), 2, ("empty.pth", "empty")),
    "resume missing fields": (lambda e: train(e, "--resume", str(e.root / "fields.pth")), 2,
                              ("fields.pth", "missing", "optimizer")),
    "resume missing file": (lambda e: train(e, "--resume", str(e.root / "nope.pth")), 2, ("nope.pth", "does not exist")),
    "resume malicious pickle": (lambda e: train(e, "--resume", str(e.root / "evil.pth")), 2, ("evil.pth", "refused")),
    "finetune malicious pickle": (lambda e: train(e, "--finetune", str(e.root / "evil.pth"), out=str(e.root / "ft")),
                                  2, ("evil.pth", "refused")),
    "eval malicious pickle": (lambda e: evaluate(e, str(e.root / "evil.pth")), 2, ("evil.pth", "refused")),
    "eval random file": (lambda e: evaluate(e, str(e.root / "random.pth")), 2, ("random.pth",)),
    "eval empty file": (lambda e: evaluate(e, str(e.root / "empty.pth")), 2, ("empty.pth", "empty")),
    "eval missing fields": (lambda e: evaluate(e, str(e.root / "fields.pth")), 2, ("fields.pth", "fits neither")),
    # output folders
    "train out is a file": (lambda e: train(e, out=str(e.root / "a_file")), 2, ("--out", "existing file")),
    "eval out is a file": (lambda e: evaluate(e, str(e.root / "fields.pth"), out=str(e.root / "a_file")),
                           2, ("--out", "existing file")),
    "compare out is a file": (lambda e: ["detection", "compare", "--runs", str(e.root), "--out", str(e.root / "a_file")],
                              2, ("--out", "existing file")),
    "compare not a run": (lambda e: ["detection", "compare", "--runs", str(e.root / "coco")], 2, ("no run.json",)),
    "train into a robustness run": (lambda e: train(e, out=str(e.root / "robustness_run")), 2, ("robustness run",)),
    "compare into a robustness run": (lambda e: ["detection", "compare", "--runs", str(e.root / "trained"), "--out",
                                                 str(e.root / "robustness_run")], 2, ("robustness run",)),
    "eval into a robustness run": (lambda e: evaluate(e, str(e.root / "fields.pth"), out=str(e.root / "robustness_run")),
                                   2, ("robustness run",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line(env, case):
    build, code, needles = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped images and dropped boxes warn; the error line is what counts
        assert_one_line_error(build(env), code, *needles)
    assert not env.marker.exists(), "a checkpoint ran code while being loaded"


def test_read_only_out_is_refused_before_any_work(env, monkeypatch):
    """Root ignores file modes, so a read-only folder is simulated where the write probe happens."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("common.rundir.tempfile.mkstemp", refuse)
    for argv in (train(env, out=str(env.root / "ro")), evaluate(env, str(env.root / "random.pth"), out=str(env.root / "ro")),
                 ["detection", "compare", "--runs", str(env.root), "--out", str(env.root / "ro")]):
        assert_one_line_error(argv, 2, "--out", "cannot be written")


def test_an_existing_run_with_other_options_is_not_overwritten(env):
    out = env.root / "trained"
    before = (out / "checkpoint.pth").read_bytes()
    error = assert_one_line_error(train(env, "--lr", "3e-4", out=str(out)), 2, "lr differ", "--overwrite")
    assert "--resume" not in error  # another lr is not a continuation of this run
    assert_one_line_error(train(env, "--epochs", "3", out=str(out)), 2, "epochs differ", "--resume", "--overwrite")
    assert (out / "checkpoint.pth").read_bytes() == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # --resume continues with more epochs; then the plain command finds the finished run
        code, resumed, err = run_cli(train(env, "--epochs", "2", "--resume", out=str(out)))
        assert code == 0, err
        assert "resuming" in resumed and "1 of 2 epochs done" in resumed
        code, again, err = run_cli(train(env, "--epochs", "2", out=str(out)))
        assert code == 0, err
        assert "already finished its 2 epochs" in again
        # today's --resume FILE is still accepted, with a note that the plain command resumes by itself
        code, from_file, err = run_cli(train(env, "--epochs", "3", "--resume", str(out / "checkpoint.pth"), out=str(out)))
    assert code == 0, err
    assert f"note: --resume {out / 'checkpoint.pth'}: continuing from that checkpoint" in from_file
    assert "resumes by itself" in from_file
    epochs = [json.loads(line).get("epoch") for line in (out / "log.jsonl").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2]


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--num-workers", "0"]])
def test_both_spellings_of_workers_reach_the_config(flags):
    from detection.cli import train_config
    from eval import build_parser

    parser, _ = build_parser(["detection"])
    args = parser.parse_args(["detection", "train", "--backbone", "pit_ti", "--backbone-weights", "w.pth",
                              "--train-ann", "a", "--train-images", "a", "--val-ann", "b", "--val-images", "b",
                              "--out", "o", *flags])
    assert train_config(args).num_workers == 0


@pytest.mark.parametrize("corruptions,severities", [(["fog", "jpeg_compression"], ["1", "3", "5"]),
                                                    (["fog,jpeg_compression"], ["1,3,5"]),
                                                    (["fog", "jpeg_compression"], ["1-5"])])
def test_both_spellings_of_corruptions_and_severities_parse_alike(corruptions, severities):
    from common.vocabulary import parse_corruptions, parse_severities
    from eval import build_parser

    parser, _ = build_parser(["detection"])
    args = parser.parse_args(["detection", "eval", "--checkpoint", "c.pth", "--corruptions", *corruptions,
                              "--severities", *severities])
    assert parse_corruptions(args.corruptions) == ("fog", "jpeg_compression")
    assert parse_severities(args.severities) == ((1, 3, 5) if len(severities) > 1 or "," in severities[0]
                                                 else (1, 2, 3, 4, 5))


def test_one_unreadable_image_is_skipped_with_a_warning_naming_it(env, tmp_path):
    from detection.data import CocoDetection, collate

    images = tmp_path / "images"
    shutil.copytree(env.paths["val_images"], images)
    first = sorted(images.iterdir())[0]
    first.write_bytes(first.read_bytes()[:200])  # a truncated JPEG
    dataset = CocoDetection(env.paths["val_ann"], images)
    with pytest.warns(UserWarning, match=f"skipped unreadable image {first}"):
        batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch is not None and len(batch[2]) == len(dataset) - 1
    assert 1 not in [t["image_id"] for t in batch[2]]


def test_out_of_image_and_zero_size_boxes_are_dropped_with_one_counting_warning(env):
    from detection.annotations import load_coco

    data = json.loads(json.dumps(env.data))
    width = data["images"][0]["width"]
    data["annotations"][0]["bbox"] = [width + 5, 0, 10, 10]  # wholly right of its image
    data["annotations"][1]["bbox"][3] = 0  # zero height
    with pytest.warns(UserWarning, match=r"dropped 2 of \d+ boxes") as caught:
        coco = load_coco(_ann(env, "two_bad_boxes", data))
    assert len(caught) == 1
    assert len(coco.anns) == len(data["annotations"]) - 2
