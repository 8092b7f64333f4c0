"""Metrics (top-k counts, CE / mCE / relative mCE on hand-computed numbers) and occlusion transforms."""

import pytest
import torch

from classification.metrics import topk_correct
from corruptions import CORRUPTIONS
from robustness import metrics
from robustness.cells import CellKey, CellRecord
from robustness.occlusion import occlude_center, occlude_random


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # top1 = 1
                           [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],   # ranking 0,5,4,3,2,1
                           [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # top1 = 5
    labels = torch.tensor([1, 1, 5])
    # image 0: top-1 hit; image 1: label 1 is ranked 6th → miss even at 5; image 2: top-1 hit
    counts = topk_correct(logits, labels)
    assert counts.dtype == torch.int64 and counts.tolist() == [2, 2]
    # label 2 of image 1 is ranked 5th: a top-5 hit but not a top-1 hit
    assert topk_correct(logits[1:2], torch.tensor([2])).tolist() == [0, 1]


def test_topk_with_fewer_classes_than_k():
    assert topk_correct(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0])).tolist() == [1, 2]


def test_ce_mce_relative_hand_computed():
    errors = {"gaussian_noise": [0.5, 0.6, 0.7, 0.8, 0.9], "brightness": [0.2, 0.2, 0.3, 0.3, 0.5],
              "speckle_noise": [0.9] * 5}  # no AlexNet baseline → not in CE
    ce = metrics.corruption_errors(errors)
    assert set(ce) == {"gaussian_noise", "brightness"}
    # CE = mean err / AlexNet mean err: 0.7 / 0.886428 and 0.3 / 0.564592
    assert ce["gaussian_noise"] == pytest.approx(0.789686246373, rel=1e-9)
    assert ce["brightness"] == pytest.approx(0.531357157026, rel=1e-9)
    assert metrics.mean_ce(ce) == pytest.approx((0.789686246373 + 0.531357157026) / 2, rel=1e-9)
    rce = metrics.relative_corruption_errors(errors, clean_error=0.25)
    # (0.7 - 0.25) / (0.886428 - 0.4345) and (0.3 - 0.25) / (0.564592 - 0.4345)
    assert rce["gaussian_noise"] == pytest.approx(0.45 / 0.451928, rel=1e-9)
    assert rce["brightness"] == pytest.approx(0.05 / 0.130092, rel=1e-9)
    assert metrics.mean_corruption_error(errors) == pytest.approx((3.5 + 1.5 + 4.5) / 15)
    assert metrics.mean_ce({}) is None and metrics.mean_corruption_error({}) is None


def test_ce_needs_all_five_severities():
    with pytest.raises(ValueError, match="all 5 severities"):
        metrics.corruption_errors({"fog": [0.5, 0.6]})


def test_alexnet_baselines_cover_the_15_corruptions():
    assert list(metrics.ALEXNET_ERRORS) == list(CORRUPTIONS) and len(CORRUPTIONS) == 15


def test_occlude_center_fraction_and_pixels():
    x = torch.rand(2, 3, 8, 10)
    y = occlude_center(x, 0.5)
    assert y.shape == x.shape
    assert (y[:, :, 2:6, 2:7] == 0).all()  # 4x5 box centred in 8x10
    mask = torch.ones(8, 10, dtype=torch.bool)
    mask[2:6, 2:7] = False
    assert torch.equal(y[:, :, mask], x[:, :, mask])
    z = occlude_center(x, 2, fill="mean")
    expected = x.mean(dim=(2, 3))
    assert torch.allclose(z[:, :, 3:5, 4:6], expected[:, :, None, None].expand(-1, -1, 2, 2))
    assert (occlude_center(x, 0.0) == x).all()


def test_occlude_random_area_and_determinism():
    h, w, area = 20, 20, 0.25
    x = torch.rand(16, 3, h, w) + 1  # strictly positive so zeros mark the patch
    g = torch.Generator().manual_seed(3)
    y = occlude_random(x, area, generator=g)
    zeros = (y == 0).all(dim=1)  # (B, H, W)
    for patch in zeros:  # one solid square covering `area` of the image, the rest untouched
        rows, cols = patch.any(dim=1).nonzero().flatten(), patch.any(dim=0).nonzero().flatten()
        side = int(rows.max() - rows.min() + 1)
        assert side == int(cols.max() - cols.min() + 1) and side * side == int(patch.sum())
        assert side * side / (h * w) == pytest.approx(area)
    assert ((y == 0).all(dim=1) | (y == x).all(dim=1)).all()
    tops = zeros.any(dim=2).float().argmax(dim=1)
    assert len(set(tops.tolist())) > 1  # positions differ between images
    y2 = occlude_random(x, 0.25, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y, y2)
    with pytest.raises(ValueError, match="fill"):
        occlude_random(x, 0.25, fill="blue")
    with pytest.raises(ValueError):
        occlude_center(x, 1.5)


def _rec(model, dataset, variant="clean", corruption=None, severity=None, top1=50):
    return CellRecord(CellKey(model, dataset, corruption, severity, variant), "net", n=100, top1_correct=top1,
                      top5_correct=90)


def test_summary_and_comparison_report(tmp_path):
    from robustness.report import summarize, write_report

    records = [_rec("PiT", "imagenet", top1=75.0), _rec("PiT", "imagenet", "fgsm", top1=30.0),
               _rec("ResNet", "imagenet", top1=70.0), _rec("ResNet", "imagenet-a", top1=5.0)]
    records += [_rec("PiT", "imagenet-c", corruption="fog", severity=s, top1=100 - 10 * s) for s in range(1, 6)]
    records += [_rec("PiT", "imagenet-c", corruption="saturate", severity=s, top1=60.0) for s in (1, 2)]
    summary = summarize(records, ["PiT", "ResNet"])
    pit_s = summary["PiT"]
    # fog errors 0.1..0.5 (mean 0.3); saturate has no AlexNet baseline and only two severities
    assert pit_s["mCE"] == pytest.approx(100 * 0.3 / 0.819324)
    assert pit_s["relative_mCE"] == pytest.approx(100 * (0.3 - 0.25) / (0.819324 - 0.4345))
    assert pit_s["mean_corruption_error"] == pytest.approx(100 * (1.5 + 0.8) / 7)
    assert pit_s["corruption_top1"] == pytest.approx(100 - 100 * (1.5 + 0.8) / 7)
    assert pit_s["fgsm_top1"] == 30.0 and pit_s["imagenet_a_top1"] is None and pit_s["mCE_corruptions"] == 1
    assert summary["ResNet"]["imagenet_a_top1"] == 5.0 and summary["ResNet"]["mCE"] is None
    text = write_report(records, summary, tmp_path, options={"eps": 1 / 255, "steps": 5, "alpha": 0.5 / 255}).read_text()
    assert "| PiT | 75.00 |" in text and "| ResNet | 70.00 |" in text
    assert "Mean corruption error (raw)" in text and "mCE (AlexNet-norm.)" in text and "not comparable" in text
    assert (tmp_path / "plots" / "accuracy_vs_severity.png").exists() and (tmp_path / "plots" / "severity_PiT.png").exists()


def test_cell_key_string_form_reads_back_and_old_records_read():
    key = CellKey("pit_s:w|1", "imagenet-c", "fog", 3, "clean")
    assert str(key) == "pit_s:w|1|imagenet-c|fog|3|clean" and CellKey.parse(str(key)) == key
    assert str(CellKey("tiny", "imagenet", variant="pgd")) == "tiny|imagenet|None|None|pgd"
    assert CellKey("tiny", "imagenet", variant="pgd").label == "tiny imagenet pgd"
    with pytest.raises(ValueError, match="not a robustness cell key"):
        CellKey.parse("tiny|imagenet")
    old = {"key": "tiny|imagenet|None|None|clean", "model": "tiny", "dataset": "imagenet", "corruption": None,
           "severity": None, "variant": "clean", "model_name": "test_convnext", "n": 9, "skipped": 1,
           "top1_correct": 3, "top5_correct": 9, "top1": 100 * 3 / 9, "top5": 100.0, "root": "/v", "inputs": "ab",
           "skipped_files": {"/v/x.png": [3, 4]}, "options": {"limit": None}}
    rec = CellRecord.from_json(old)
    assert rec.key == CellKey("tiny", "imagenet") and rec.skipped == 1 and rec.to_json() == old
