"""``eval.py robustness`` with --imagenet-v2/-sketch/-real and --cue-conflict end to end on generated copies of
the published layouts and a tiny 1000-class model: the numbers against a hand-made reference (the model run
by hand on the same pixels, each set's rule applied by hand), the table columns, resume, the shared forward
of the clean and ReaL cells, the one-line errors, and two gloo processes giving the one-process counts."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from classification.data import eval_transform
from robustness import cue_conflict as cue
from robustness import runner
from robustness.runner import ModelSpec, run_robustness
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.sets_fixtures import write_cue_conflict, write_real, write_v2, write_val, write_wnid_folder

MODEL = ModelSpec("test_convnext", label="tiny")
SIZE = 32


@pytest.fixture(scope="module")
def model():
    return runner._build_model(MODEL, torch.device("cpu"), 0, SIZE)


def _logits(model, images: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.stack(images))


def model_view(model, paths) -> torch.Tensor:
    """Logits on timm's eval view (resize short side to 32 bicubic, crop 32; crop_pct 1)."""
    tf = eval_transform(SIZE, 1.0)
    return _logits(model, [tf(Image.open(p).convert("RGB")).float() / 255 for p in paths])


def stimulus_view(model, paths) -> torch.Tensor:
    """Logits on the stimuli as model-vs-human feeds them (224 px unresized), resized once to the model's 32 px."""
    images = [TF.pil_to_tensor(Image.open(p).convert("RGB")).float() / 255 for p in paths]
    return _logits(model, [TF.resize(x, [SIZE, SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)
                           .clamp(0, 1) for x in images])


def category_decision(logits: torch.Tensor) -> list[str]:
    """The 16-way decision, written out: mean softmax probability over each category's classes."""
    p = logits.softmax(-1)
    means = {c: p[:, list(classes)].mean(-1) for c, classes in cue.CATEGORY_CLASSES.items()}
    return [max(means, key=lambda c: means[c][i].item()) for i in range(len(p))]


@pytest.fixture(scope="module")
def sets(tmp_path_factory, model):
    """The four sets, with labels and stimulus names chosen from the model's own predictions so that every
    rule is exercised: ReaL hits, top-5-only hits, unlabelled images; shape, texture and no-conflict images."""
    root = tmp_path_factory.mktemp("sets")
    val = write_val(root / "val", numbers_per_class=((1, 5, 9), (2, 50000)))
    by_number = {int(p.stem[-8:]): p for p in val.rglob("*.JPEG")}
    top5 = {n: model_view(model, [p])[0].topk(5).indices.tolist() for n, p in by_number.items()}
    outside = next(c for c in range(1000) if all(c not in t for t in top5.values()))
    real = write_real(root / "real.json", {1: [top5[1][0]], 5: [], 9: [top5[9][3]], 2: [outside],
                                           50000: [outside, top5[50000][0]]})
    expected_real = (4, 2, 3)  # labelled 1, 9, 2, 50000; top-1 right: 1, 50000; top-5 also 9

    staging = write_cue_conflict(root / "staging", {"cat": [f"cat{i}-dog1.png" for i in range(4)]})
    decided = category_decision(stimulus_view(model, sorted((staging / "cat").iterdir())))
    other = [c for c in cue.CATEGORIES if c not in decided]
    names = [(decided[0], other[0]), (other[0], decided[1]), (decided[2], decided[2]), (other[0], other[1])]
    stimuli = root / "cue"
    for i, (path, (shape, texture)) in enumerate(zip(sorted((staging / "cat").iterdir()), names)):
        (stimuli / shape).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, stimuli / shape / f"{shape}{i}-{texture}1.png")
    expected_cue = (4, 1, 1)  # shape decision, texture decision, no conflict, neither

    v2 = write_v2(root / "v2", classes=(2, 10), per_class=2)
    hit = next((v2 / "10").iterdir())  # one image moved to the folder of its own prediction
    predicted = str(model_view(model, [hit])[0].argmax().item())
    (v2 / predicted).mkdir(exist_ok=True)
    shutil.move(hit, v2 / predicted / hit.name)
    v2_paths = sorted(v2.rglob("*.jpeg"))
    expected_v2 = int((model_view(model, v2_paths).argmax(-1) == torch.tensor([int(p.parent.name) for p in v2_paths]))
                      .sum())
    assert expected_v2 >= 1
    sketch = write_wnid_folder(root / "sketch", wnids=("n01443537", "n15075141"), per_class=2)
    s_paths = sorted(sketch.rglob("*.JPEG"))
    expected_sketch = int((model_view(model, s_paths).argmax(-1) == torch.tensor([1, 1, 999, 999])).sum())
    return {"root": root, "val": str(val), "real": str(real), "cue": str(stimuli), "v2": str(v2),
            "sketch": str(sketch), "expected": {"real": expected_real, "cue": expected_cue, "v2": expected_v2,
                                                "sketch": expected_sketch}}


def argv(sets, out, *extra):
    return ["robustness", "--model", "test_convnext", "--data", sets["val"], "--imagenet-real", sets["real"],
            "--imagenet-v2", sets["v2"], "--imagenet-sketch", sets["sketch"], "--cue-conflict", sets["cue"],
            "--out", str(out), "--img-size", str(SIZE), "--crop-pct", "1", "--batch-size", "4", "--workers", "0",
            "--no-progress", "--device", "cpu", "--attacks", *extra]


def test_cli_all_sets_against_the_hand_made_reference(sets, tmp_path, monkeypatch):
    forwards = []
    real_score = runner._score
    monkeypatch.setattr(runner, "_score", lambda *a, **k: forwards.append(1) or real_score(*a, **k))
    code, out, err = run_cli(argv(sets, tmp_path / "o"))
    assert code == 0, err
    # one forward per batch: clean+ReaL 5 images (2 batches, shared), V2 4 (1), Sketch 4 (1), cue-conflict 4 (1)
    assert len(forwards) == 5
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    rec = {(r["dataset"], r["variant"]): r for r in saved["records"]}
    exp = sets["expected"]
    assert (rec["imagenet", "real"]["n"], rec["imagenet", "real"]["top1_correct"],
            rec["imagenet", "real"]["top5_correct"]) == exp["real"]
    cue_rec = rec["cue-conflict", "clean"]
    assert (cue_rec["n"], cue_rec["decisions"]["shape"], cue_rec["decisions"]["texture"]) == exp["cue"]
    assert (rec["imagenet-v2", "clean"]["n"], rec["imagenet-v2", "clean"]["top1_correct"]) == (4, exp["v2"])
    assert (rec["imagenet-sketch", "clean"]["n"], rec["imagenet-sketch", "clean"]["top1_correct"]) == (4, exp["sketch"])
    s = saved["summary"]["test_convnext"]
    assert s["real_top1"] == 50.0 and s["real_top5"] == 75.0 and s["shape_bias"] == 50.0
    assert s["shape_fraction"] == 25.0 and s["texture_fraction"] == 25.0
    assert s["imagenet_v2_top1"] == 100 * exp["v2"] / 4
    header = next(line for line in (tmp_path / "o" / "report.md").read_text().splitlines() if line.startswith("| Model"))
    for column in ("IN-V2", "IN-Sketch", "ReaL", "Shape bias"):
        assert f"| {column} |" in header

    monkeypatch.setattr(runner, "_evaluate_pass", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    code, _, err = run_cli(argv(sets, tmp_path / "o"))
    assert code == 0, err


def _without(args: list[str], *flags: str) -> list[str]:
    for flag in flags:
        i = args.index(flag)
        args = args[:i] + args[i + 2:]
    return args


@pytest.mark.parametrize("change,needles", [
    (lambda a, s: _without(a, "--data"), ["--imagenet-real", "--data"]),
    (lambda a, s: a + ["--imagenet-v2", s["sketch"]], ["--imagenet-v2", "n01443537", "class indices 0..999"]),
    (lambda a, s: a + ["--imagenet-sketch", s["v2"]], ["--imagenet-sketch", "not ImageNet wnids"]),
    (lambda a, s: a + ["--data", s["sketch"]], ["--imagenet-real", "not an ILSVRC2012 val file"]),
    (lambda a, s: a + ["--cue-conflict", s["v2"]], ["--cue-conflict", "16 category folders"]),
    (lambda a, s: a + ["--imagenet-real", s["v2"]], ["--imagenet-real", "does not exist"]),
    (lambda a, s: _without(a, "--data", "--imagenet-real") + ["--num-classes", "3"],
     ["--imagenet-v2 needs a 1000-class ImageNet model", "3 outputs"]),
])
def test_cli_errors_name_the_flag(sets, tmp_path, change, needles):
    assert_one_line_error(change(argv(sets, tmp_path / "o"), sets), 2, *needles)


def _two_process_worker(rank, sets, out):
    result = run_robustness([MODEL], sets["val"], out, img_size=SIZE, crop_pct=1.0, batch_size=2, num_workers=0,
                            progress=False, device="cpu", attacks=[], imagenet_real=sets["real"],
                            imagenet_v2=sets["v2"], imagenet_sketch=sets["sketch"], cue_conflict=sets["cue"])
    if rank == 0:
        Path(out, "counts.json").write_text(json.dumps({r["key"]: [r["n"], r["top1_correct"], r["top5_correct"],
                                                                    r.get("decisions")] for r in result["records"]}))


@pytest.mark.distributed
def test_two_gloo_processes_give_the_one_process_counts(sets, tmp_path):
    from tests.distributed_helpers import spawn

    _two_process_worker(0, sets, str(tmp_path / "one"))
    spawn(_two_process_worker, 2, sets, str(tmp_path / "two"), timeout=180)
    one, two = (json.loads((tmp_path / d / "counts.json").read_text()) for d in ("one", "two"))
    assert two == one and len(one) == 5
