"""ECE and NLL of the robustness cells (robustness/calibration.py): a hand computation with confidences on
bin edges, torchmetrics' MulticlassCalibrationError on random logits, the runner end to end against the
model's own logits, and bitwise-equal statistics after a resume by chunk and over 2 gloo processes."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustness import calibration
from robustness import runner
from robustness.cells import CellKey, CellRecord
from robustness.report import summarize, write_report
from robustness.runner import ModelSpec, run_robustness
from tests.distributed_helpers import spawn
from tests.folder_fixtures import CLASSES
from tests.folder_fixtures import write_folder

torchmetrics = pytest.importorskip("torchmetrics")

MODEL = ModelSpec("test_convnext", label="tiny", model_kwargs={"num_classes": 3})
FAST = dict(class_map="folder", img_size=32, crop_pct=1.0, batch_size=4, num_workers=0, progress=False, device="cpu")
INF = float("inf")


class Interrupted(Exception):
    """Stands in for a killed job in the middle of a pass."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cal")
    return {"val": str(write_folder(root / "val", CLASSES, 3, 0)),
            "a": str(write_folder(root / "a", CLASSES[:2], 2, 1))}


def statistic(*batches: tuple[list[list[float]], list[int]]) -> dict:
    total = sum(calibration.batch_statistic(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels))
                for logits, labels in batches)
    return calibration.to_record(total)


def test_hand_computed_bins_ece_and_nll_with_confidences_on_bin_edges():
    """Six images in three batches (3, 15 and 5 classes). Bin b is (b/15, (b+1)/15]; ties predict the first
    class. Equal logits over K classes give confidence 1/K exactly: 1/3 = 5/15, 1/15 and 1/5 = 3/15 lie on
    edges and belong to the bin below (4, 0 and 2)."""
    e2 = math.exp(2)
    rec = statistic(([[0, 0, 0],                  # conf 1/3 (edge) → bin 4, correct, NLL ln 3
                      [math.log(9), 0, 0],        # conf 9/11 = 0.818 → bin 12, wrong (label 1), NLL ln 11
                      [-INF, 0, math.log(3)],     # masked class: conf 3/4 → bin 11, correct, NLL ln 4/3
                      [0, 2, 0]], [0, 1, 2, 1]),  # conf e²/(e²+2) = 0.787 → bin 11, correct
                    ([[0.0] * 15], [3]),          # conf 1/15 (edge) → bin 0, wrong, NLL ln 15
                    ([[0.0] * 5], [0]))           # conf 1/5 (edge) → bin 2, correct, NLL ln 5
    count = [0] * 15
    for b, n in {0: 1, 2: 1, 4: 1, 11: 2, 12: 1}.items():
        count[b] = n
    assert rec["count"] == count and rec["nonfinite"] == 0
    assert [rec["correct"][b] for b in (0, 2, 4, 11, 12)] == [0, 1, 1, 2, 0]
    c11 = 3 / 4 + e2 / (e2 + 2)
    ece = (abs(0 - 1 / 15) + abs(1 - 1 / 5) + abs(1 - 1 / 3) + abs(2 - c11) + abs(0 - 9 / 11)) / 6
    nll = (math.log(3) + math.log(11) + math.log(4 / 3) + math.log((e2 + 2) / e2) + math.log(15) + math.log(5)) / 6
    assert calibration.ece(rec) == pytest.approx(ece, abs=1e-9)
    assert calibration.nll(rec) == pytest.approx(nll, abs=1e-9)


def test_undefined_softmax_is_counted_and_gives_no_ece():
    rec = statistic(([[float("nan"), 0.0], [INF, 0.0], [1.0, 0.0]], [0, 0, 0]))
    assert rec["nonfinite"] == 2 and sum(rec["count"]) == 1
    assert calibration.ece(rec) is None and calibration.nll(rec) is None
    with pytest.raises(ValueError, match="logits"):
        calibration.batch_statistic(torch.zeros(4), torch.zeros(4, dtype=torch.int64))


@pytest.mark.parametrize("seed", range(4))
def test_equals_torchmetrics_and_cross_entropy_on_random_logits(seed):
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(seed)
    n, k = 500 + 37 * seed, (10, 200, 1000, 3)[seed]
    logits = torch.randn(n, k, generator=g) * (1 + seed)
    labels = torch.randint(0, k, (n,), generator=g)
    rec = calibration.to_record(calibration.batch_statistic(logits, labels))
    reference = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(logits, labels)
    assert calibration.ece(rec) == pytest.approx(float(reference), abs=1e-6)
    assert calibration.nll(rec) == pytest.approx(float(F.cross_entropy(logits.double(), labels)), abs=1e-9)


def test_masked_logits_equal_the_subset_softmax():
    """ImageNet-A/R: classes outside the subset at -inf give the ECE/NLL of the subset's own softmax."""
    g = torch.Generator().manual_seed(5)
    logits, keep = torch.randn(300, 50, generator=g), torch.randperm(50, generator=g)[:20]
    mask = torch.zeros(50, dtype=torch.bool)
    mask[keep] = True
    sub_labels = torch.randint(0, 20, (300,), generator=g)
    masked = calibration.to_record(calibration.batch_statistic(logits.masked_fill(~mask, -INF), keep[sub_labels]))
    subset = logits[:, keep]
    reference = torchmetrics.classification.MulticlassCalibrationError(num_classes=20, n_bins=15)(subset, sub_labels)
    assert calibration.ece(masked) == pytest.approx(float(reference), abs=1e-6)
    assert calibration.nll(masked) == pytest.approx(float(F.cross_entropy(subset.double(), sub_labels)), abs=1e-9)


def test_sums_over_any_split_are_bitwise_the_whole():
    """Chunks and processes add statistics: any split of the images gives exactly the whole batch's."""
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(257, 7, generator=g) * 3, torch.randint(0, 7, (257,), generator=g)
    whole = calibration.batch_statistic(logits, labels)
    order = torch.randperm(257, generator=g)
    parts = [order[i:i + size] for i, size in zip((0, 1, 60, 200), (1, 59, 140, 57))]
    assert sum(p.numel() for p in parts) == 257
    assert torch.equal(sum(calibration.batch_statistic(logits[p], labels[p]) for p in parts), whole)


def _rec(model, dataset, corruption=None, severity=None, stat=None):
    cal = None if stat is None else calibration.to_record(stat)
    return CellRecord(CellKey(model, dataset, corruption, severity), "net", n=4, top1_correct=2, top5_correct=4,
                      calibration=cal)


def test_records_summary_and_report(tmp_path):
    g = torch.Generator().manual_seed(2)

    def stat():
        return calibration.batch_statistic(torch.randn(4, 3, generator=g), torch.randint(0, 3, (4,), generator=g))

    pit = [_rec("PiT", "imagenet", stat=stat()), _rec("PiT", "imagenet-c", "fog", 1, stat()),
           _rec("PiT", "imagenet-c", "fog", 2, stat())]
    old = [_rec("Old", "imagenet"), _rec("Old", "imagenet-c", "fog", 1)]  # an older version's records
    back = CellRecord.from_json(json.loads(json.dumps(pit[0].to_json())))
    assert back == pit[0] and pit[0].to_json()["ece"] == pit[0].ece == 100 * calibration.ece(pit[0].calibration)
    assert pit[0].to_json()["nll"] == calibration.nll(pit[0].calibration)
    assert "ece" not in old[0].to_json() and old[0].ece is None and old[0].nll is None
    summary = summarize(pit + old, ["PiT", "Old"])
    assert summary["PiT"]["clean_ece"] == pit[0].ece and summary["PiT"]["clean_nll"] == pit[0].nll
    assert summary["PiT"]["corruption_ece"] == pytest.approx((pit[1].ece + pit[2].ece) / 2)
    assert summary["PiT"]["corruption_nll"] == pytest.approx((pit[1].nll + pit[2].nll) / 2)
    assert summary["Old"]["clean_ece"] is None and summary["Old"]["corruption_ece"] is None
    text = write_report(pit + old, summary, tmp_path, options={}).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Model"))
    assert header.endswith("| Clean ECE | Corruption ECE |")
    assert f"| {pit[0].ece:.2f} | {summary['PiT']['corruption_ece']:.2f} |" in text
    assert next(line for line in text.splitlines() if line.startswith("| Old")).endswith("| – | – |")
    assert "15 equal-width bins" in text and "Guo et al." in text


def test_runner_records_the_ece_and_nll_of_the_models_logits(data, tmp_path, monkeypatch):
    """Clean and ImageNet-A cells (ImageNet-A: the 2 classes present, softmax over them) equal torchmetrics /
    cross-entropy on the logits the model gives for the inputs the runner fed it."""
    seen: dict[str, list] = {"clean": [], "imagenet-a": []}
    real = runner._score

    def capture(m, x, labels, counts, ctx, *rest):
        seen[m.p.subset or "clean"].append((m.run.module, x.clone(), labels.clone()))
        return real(m, x, labels, counts, ctx, *rest)

    monkeypatch.setattr(runner, "_score", capture)
    result = run_robustness([MODEL], data["val"], str(tmp_path / "out"), **FAST, imagenet_a=data["a"])
    records = {r["dataset"]: r for r in result["records"]}
    for cell, keep in (("clean", [0, 1, 2]), ("imagenet-a", [0, 1])):
        with torch.no_grad():
            logits = torch.cat([module(x)[:, keep] for module, x, _ in seen[cell]])
        labels = torch.cat([y for _, _, y in seen[cell]])
        rec = records["imagenet" if cell == "clean" else cell]
        assert rec["n"] == len(labels) == (9 if cell == "clean" else 4)
        ece = torchmetrics.classification.MulticlassCalibrationError(num_classes=len(keep), n_bins=15)(logits, labels)
        assert rec["ece"] == pytest.approx(100 * float(ece), abs=1e-4)
        assert rec["nll"] == pytest.approx(float(F.cross_entropy(logits.double(), labels)), abs=1e-6)
        assert sum(rec["calibration"]["correct"]) == rec["top1_correct"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["tiny"]["clean_ece"] == records["imagenet"]["ece"]
    assert "Clean ECE" in Path(result["report"]).read_text()


RESUME = dict(FAST, chunk_images=4, corrupt_on_the_fly=True, corruptions=["gaussian_noise"], severities=[2])


def calibrations(result) -> dict:
    return {r["key"]: (r["calibration"], r["ece"], r["nll"]) for r in result["records"]}


def test_resume_inside_a_pass_gives_bitwise_the_same_ece_and_nll(data, tmp_path, monkeypatch):
    full = run_robustness([MODEL], data["val"], str(tmp_path / "full"), **RESUME)
    calls = {"n": 0, "die_at": 3}  # chunks of 4 images = 1 batch of 2 cells: dies in the second chunk
    real = runner._score

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_score", dying)
    with pytest.raises(Interrupted):
        run_robustness([MODEL], data["val"], str(tmp_path / "killed"), **RESUME)
    shutil.copytree(tmp_path / "killed", tmp_path / "older")  # progress saved by a version without calibration:
    partial = tmp_path / "older" / "partial.jsonl"             # 3 count columns, not resumed from
    lines = [json.loads(line) for line in partial.read_text().splitlines()]
    partial.write_text("".join(json.dumps({**rec, "counts": [row[:3] for row in rec["counts"]]}) + "\n"
                               for rec in lines))
    calls.update(n=0, die_at=-1)
    resumed = run_robustness([MODEL], data["val"], str(tmp_path / "killed"), **RESUME)
    assert calls["n"] == 2 * 2  # the second and third chunks only
    assert calibrations(resumed) == calibrations(full)
    calls.update(n=0)
    assert calibrations(run_robustness([MODEL], data["val"], str(tmp_path / "older"), **RESUME)) == calibrations(full)
    assert calls["n"] == 3 * 2  # started over
    assert all(ece is not None for _, ece, _ in calibrations(full).values())
    assert resumed["summary"]["tiny"]["corruption_ece"] == full["summary"]["tiny"]["corruption_ece"] is not None


class PerImage(torch.nn.Module):
    """The model run one image at a time: its logits do not depend on which images share a batch (a batch
    of 4 and one of 2 can differ in the last bits), so the 1- and 2-process runs see the same logits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.inner(image[None]) for image in x])


def per_image_models(build):
    return lambda *args, **kwargs: PerImage(build(*args, **kwargs))


def _sharded(rank: int, val: str, out: str) -> None:
    runner._build_model = per_image_models(runner._build_model)
    result = run_robustness([MODEL], val, out, **RESUME)
    if rank == 0:
        Path(out, "calibration.json").write_text(json.dumps(calibrations(result)))


@pytest.mark.distributed
def test_two_gloo_processes_give_bitwise_the_single_process_ece_and_nll(data, tmp_path, monkeypatch):
    """Each process adds its shard's integer statistic; the all-reduced sums, hence ECE and NLL, are bitwise
    those of one process (given the same per-image logits)."""
    monkeypatch.setattr(runner, "_build_model", per_image_models(runner._build_model))
    single = calibrations(run_robustness([MODEL], data["val"], str(tmp_path / "one"), **RESUME))
    spawn(_sharded, 2, data["val"], str(tmp_path / "two"), timeout=120)
    assert json.loads((tmp_path / "two" / "calibration.json").read_text()) == json.loads(json.dumps(single))
