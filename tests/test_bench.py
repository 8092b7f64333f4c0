"""`python eval.py bench`: table/JSON, GMACs including attention, top-1 on an ImageNet-layout folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import eval as cli
import pit
from classification.evaluate import imagenet_val_set


def test_bench_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "--models", "pit_ti", "--batch-size", "1", "--img-size", "96", "--warmup", "0",
                   "--min-time", "0.01", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pit_ti" in printed and "4,847,272" in printed and "paper" in printed
    (row,) = json.loads(out.read_text())["rows"]
    assert row["params"] == 4_847_272 and row["img_s"] > 0
    assert row["paper"] == {"gmacs": 0.71, "params_m": 4.9, "img_s": 3030, "top1": 73.0}
    assert 0.05 < row["gmacs"] < 0.71  # 96 px: fewer tokens than at 224


def test_gmacs_include_attention():
    """pit_s ≈ 2.9 and deit_small ≈ 4.6 GMACs (paper); attention adds exactly 2·N²·C per layer."""
    with torch.device("meta"):  # shapes are all that counting needs
        pit_s, deit = pit.create_model("pit_s"), timm.create_model("deit_small_patch16_224").eval()
    assert abs(pit.count_macs(pit_s) / 1e9 - 2.9) < 0.05
    total = pit.count_macs(deit)
    assert abs(total / 1e9 - 4.6) < 0.05
    with torch.no_grad(), FlopCounterMode(display=False) as plain:  # torch's counter alone (no CPU SDPA formula)
        for block in deit.blocks:
            block.attn.fused_attn = False  # explicit q@k and attn@v matmuls, which torch does count
        deit(torch.zeros(1, 3, 224, 224, device="meta"))
    assert total == plain.get_total_flops() // 2
    n, c, depth = 197, 384, 12  # analytic: linears 12·N·C² + attention 2·N²·C per block, patch embed, head
    analytic = depth * (12 * n * c * c + 2 * n * n * c) + 196 * 768 * c + c * 1000
    assert abs(total - analytic) < 1e-3 * analytic


def _wnid_folder(root, per_class=2):
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):  # ImageNet indices 0 and 1
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(root / wnid / f"{i}.JPEG")
    return root


def test_bench_top1_on_imagenet_folder(tmp_path):
    data = _wnid_folder(tmp_path / "val")
    model = pit.create_model("pit_ti")
    with torch.no_grad():  # the head always ranks class 0 first and class 1 second
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[:2] = torch.tensor([100.0, 50.0])
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "--models", "pit_ti", "--weights", str(tmp_path / "w.pth"), "--data", str(data),
                   "--img-size", "64", "--batch-size", "3", "--warmup", "0", "--min-time", "0.01", "--workers", "0",
                   "--device", "cpu", "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["images"] == 4 and row["top1"] == pytest.approx(50.0) and row["top5"] == pytest.approx(100.0)


def test_bench_skips_unreadable_images(tmp_path):
    data = _wnid_folder(tmp_path / "val")
    (data / "n01440764" / "broken.JPEG").write_bytes(b"not a jpeg")
    torch.save(pit.create_model("pit_ti").state_dict(), tmp_path / "w.pth")
    out = tmp_path / "bench.json"
    with pytest.warns(RuntimeWarning, match="unreadable image"):
        rc = cli.main(["bench", "--models", "pit_ti", "--weights", str(tmp_path / "w.pth"), "--data", str(data),
                       "--img-size", "64", "--batch-size", "2", "--warmup", "0", "--min-time", "0.01", "--workers", "0",
                       "--device", "cpu", "--json", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["rows"][0]["images"] == 4


def test_imagenet_folder_targets_and_errors(tmp_path, capsys):
    data = _wnid_folder(tmp_path / "val", per_class=1)
    assert [label for _, label in imagenet_val_set(data).samples] == [0, 1]
    (tmp_path / "bad" / "cats").mkdir(parents=True)
    (tmp_path / "bad" / "cats" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="must be ImageNet wnids"):
        imagenet_val_set(tmp_path / "bad")
    assert cli.main(["bench", "--models", "pit_ti", "--data", str(data)]) == 2
    assert "--weights" in capsys.readouterr().err


def test_throughput_is_batch_over_the_median_of_time_call(monkeypatch):
    """img/s comes from the suite's one timer (torch.utils.benchmark via common.timing.time_call)."""
    import classification.bench as bench

    calls = []

    def fake_time_call(fn, *, min_run_time, warmup):
        fn()  # the timed call runs the model once on the batch
        calls.append((min_run_time, warmup))
        return 0.25

    monkeypatch.setattr(bench, "time_call", fake_time_call)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    assert bench.measure_throughput(model, 6, 8, torch.device("cpu"), warmup=3, min_time=0.5) == pytest.approx(24.0)
    assert calls == [(0.5, 3)]


def test_bench_out_writes_a_run_folder_and_a_rerun_reuses_the_measured_models(tmp_path, capsys, monkeypatch):
    import classification.bench as bench

    out = tmp_path / "run"
    argv = ["bench", "--model", "pit_ti", "test_vit", "--img-size", "32", "--batch-size", "1", "--warmup", "0",
            "--min-time", "0.01", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["pit_ti", "test_vit"]
    report = (out / "report.md").read_text()
    for row in rows:  # the terminal and the report show the same table
        line = next(ln for ln in report.splitlines() if ln.startswith(f"| {row['model']} |"))
        assert line in printed and f"| {row['img_s']:.1f} |" in line and f"| {row['params']:,} |" in line

    def no_timing(*args, **kwargs):
        raise AssertionError("a measured model was measured again")

    monkeypatch.setattr(bench, "time_call", no_timing)
    assert cli.main(argv[:3] + argv[4:]) == 0  # pit_ti alone: already measured
    assert f"resuming {out}: 1 of 1 models already measured" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["rows"] == rows[:1]
    monkeypatch.undo()
    assert cli.main(argv[:-2] + ["--img-size", "48", "--out", str(out)]) == 2
    assert "img_size differ" in capsys.readouterr().err and json.loads((out / "results.json").read_text())["rows"] == rows[:1]
    assert cli.main(argv + ["--overwrite"]) == 0
    assert [r["model"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["pit_ti", "test_vit"]
