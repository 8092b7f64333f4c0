"""IN-9 backgrounds (Xiao et al. 2021): the challenge against the authors' loop, the IN-9 mapping,
variant accuracies / BG-gap on a hand-made set, resume, sharding and layout errors."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.synthetic_backgrounds import IN9_FOLDERS, IN9_VARIANTS, BackgroundsSpec, make_in9_style
from robustness.background import challenge as challenge_mod
from robustness.background import (IN9_CLASSES, VARIANTS, bg_gap, evaluate_in9, evaluate_variant, in9_predictor,
                                   in9_summary, output_map, run_challenge)
from robustness.background.layout import present_variants
from tests.background_reference import reference_challenge

CPU = torch.device("cpu")
MAPPING_FILE = Path(__file__).resolve().parents[1] / "robustness" / "background" / "in_to_in9.json"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is fastest


@pytest.fixture(scope="module")
def in9_root(tmp_path_factory) -> Path:
    return make_in9_style(tmp_path_factory.mktemp("cache"), BackgroundsSpec(per_class=4, img_size=32))


def tiny_model(num_outputs: int, seed: int) -> nn.Module:
    """A seeded pooled-pixels linear classifier whose predictions vary with the background."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, num_outputs)).eval()
    with torch.no_grad():
        model[2].weight.mul_(8)
    return model


def authors_map(num_outputs: int):
    """The authors' rule: ``map_to_in9[str(pred)]`` for a 1000-class model, identity for an IN-9 model."""
    table = json.loads(MAPPING_FILE.read_text())
    return (lambda k: table[str(k)]) if num_outputs == 1000 else (lambda k: k)


def test_generated_folders_are_in9s() -> None:
    assert IN9_FOLDERS == IN9_CLASSES and IN9_VARIANTS == VARIANTS


def test_mapping_is_the_authors_file() -> None:
    table = output_map(1000)
    # Spot checks of the released file: tench/goldfish → fish, Chihuahua → dog, brambling → bird,
    # leaf beetle → insect; tabby cat and 970 (alp) are outside IN-9.
    assert [int(table[i]) for i in (0, 1, 151, 10, 300, 281, 970)] == [8, 8, 0, 1, 5, -1, -1]
    assert int((table == -1).sum()) == 630 and [int((table == k).sum()) for k in range(9)] == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    assert torch.equal(output_map(9), torch.arange(9))
    with pytest.raises(ValueError, match="1000-class ImageNet model or a 9-class"):
        output_map(10)


@pytest.mark.parametrize("num_outputs,seed", [(9, 0), (9, 2), (1000, 4)])
def test_challenge_equals_authors_loop(in9_root: Path, num_outputs: int, seed: int, tmp_path: Path) -> None:
    model = tiny_model(num_outputs, seed)
    vulnerable, total, ref_passes = reference_challenge(model, in9_root, authors_map(num_outputs))
    predict = in9_predictor(model, output_map(num_outputs))
    for i, (order, batch) in enumerate([("adaptive", 1), ("adaptive", 7), ("adaptive", 64), ("file", 5),
                                        ("file", 64), ("shuffled", 3), ("shuffled", 50)]):
        result = run_challenge(predict, in9_root, tmp_path / str(i), device=CPU, batch_size=batch, order=order, seed=i)
        assert (result.robust, result.total) == (total - vulnerable, total), (order, batch)
        assert result.reference_passes_min <= ref_passes <= result.reference_passes_max
        if order == "file":  # backgrounds tried in file order: the authors' pass count is known exactly
            assert result.reference_passes_min == ref_passes == result.reference_passes_max
        assert sum(t for _, t in result.per_class.values()) == total


def test_challenge_has_both_outcomes(in9_root: Path, tmp_path: Path) -> None:
    """The models above are neither always fooled nor never: the equality tests are not vacuous."""
    robust = [run_challenge(in9_predictor(tiny_model(n, s), output_map(n)), in9_root, tmp_path / f"{n}-{s}",
                            device=CPU).robust for n, s in [(9, 0), (9, 2), (1000, 4)]]
    assert any(0 < r < 36 for r in robust), robust


def test_challenge_limit_takes_first_per_class(in9_root: Path, tmp_path: Path) -> None:
    model = tiny_model(9, 0)
    vulnerable, total, _ = reference_challenge(model, in9_root, authors_map(9), limit=2)
    result = run_challenge(in9_predictor(model, output_map(9)), in9_root, tmp_path, device=CPU, limit=2, batch_size=8)
    assert total == 18 and (result.robust, result.total) == (total - vulnerable, total)


class _Killed(Exception):
    pass


def test_resume_after_kill_gives_the_same_answer(in9_root: Path, tmp_path: Path) -> None:
    model = tiny_model(9, 2)
    predict = in9_predictor(model, output_map(9))
    full = run_challenge(predict, in9_root, tmp_path / "full", device=CPU, batch_size=4)
    calls = {"n": 0}

    def dying(images: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 6:
            raise _Killed
        return predict(images)

    with pytest.raises(_Killed):
        run_challenge(dying, in9_root, tmp_path / "resumed", device=CPU, batch_size=4)
    log = tmp_path / "resumed" / "challenge.rank0.jsonl"
    with open(log, "a") as f:
        f.write('{"fg": "08_fish/8_00')  # a line cut by the kill
    saved = log.read_text().count("\n")
    assert 0 < saved < 36
    resumed = run_challenge(predict, in9_root, tmp_path / "resumed", device=CPU, batch_size=4)
    assert (resumed.robust, resumed.total) == (full.robust, full.total)
    assert resumed.per_class == full.per_class


def _sharded_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from common.distributed import cleanup_distributed, init_distributed

    init_distributed("cpu")
    result = run_challenge(in9_predictor(tiny_model(9, 0), output_map(9)), root, out, device=CPU, batch_size=8)
    Path(out, f"result{rank}.json").write_text(json.dumps([result.robust, result.total]))
    cleanup_distributed()


@pytest.mark.distributed
def test_sharded_runs_sum_exactly(in9_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Two gloo processes each take every other foreground and return the exact totals; a later
    single-process run reads both shards' progress and has nothing left to evaluate."""
    model = tiny_model(9, 0)
    vulnerable, total, _ = reference_challenge(model, in9_root, authors_map(9))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharded_worker, args=(2, port, str(in9_root), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"result{rank}.json").read_text()) == [total - vulnerable, total]
    assert sorted(len((tmp_path / f"challenge.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)) == [18, 18]
    monkeypatch.setattr(challenge_mod, "load_backgrounds", lambda *a: pytest.fail("nothing left to evaluate"))
    merged = run_challenge(in9_predictor(model, output_map(9)), in9_root, tmp_path, device=CPU)
    assert (merged.robust, merged.total) == (total - vulnerable, total)


# ---------------------------------------------------------------------------------------------
# Variant accuracies and BG-gap on a hand-made set
# ---------------------------------------------------------------------------------------------

class GreyLevelModel(nn.Module):
    """Predicts class round(8 · mean pixel) (one-hot logits over ``num_outputs``)."""

    def __init__(self, num_outputs: int = 9) -> None:
        super().__init__()
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((x.mean((1, 2, 3)) * 8).round().long(), self.num_outputs).float()


def _solid(path: Path, level: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), round(level * 255 / 8), np.uint8)).save(path)


def _hand_made(root: Path, levels: dict[str, list[tuple[int, int]]]) -> None:
    """``levels``: variant → [(class, grey level)]; the model predicts the grey level."""
    for variant, items in levels.items():
        for i, (label, level) in enumerate(items):
            _solid(root / variant / "val" / IN9_CLASSES[label] / f"{i}.png", level)


def test_variant_accuracies_and_bg_gap(tmp_path: Path) -> None:
    levels = {"original": [(0, 0), (1, 1), (2, 2), (3, 5)],         # 3 of 4 right: 75 %
              "mixed_same": [(4, 4), (4, 4), (5, 5), (6, 1), (7, 7)],  # 4 of 5: 80 %
              "mixed_rand": [(4, 4), (4, 0), (5, 0), (6, 6), (7, 0)]}  # 2 of 5: 40 %
    _hand_made(tmp_path, levels)
    predict = in9_predictor(GreyLevelModel(), output_map(9))
    assert evaluate_variant(predict, tmp_path, "original", CPU, batch_size=3, num_workers=0) == (4, 3)
    records, notes = evaluate_in9(GreyLevelModel(), "grey", "grey", tmp_path, tmp_path / "out", set(), num_outputs=9,
                                  device=CPU, batch_size=2, num_workers=0)
    summary = in9_summary(records, "grey")
    assert summary["in9_original_top1"] == 75.0
    assert summary["in9_mixed_same_top1"] == 80.0 and summary["in9_mixed_rand_top1"] == 40.0
    assert summary["bg_gap"] == pytest.approx(40.0)
    assert summary["bgc_top1"] is None and summary["in9_only_fg_top1"] is None
    assert len(notes) == len(VARIANTS) - 3 + 1  # five variants missing + the challenge skipped
    assert any("'only_fg' not found" in n for n in notes) and any("challenge skipped" in n for n in notes)
    assert bg_gap({"mixed_same": 80.0}) is None


def test_1000_class_predictions_are_mapped_by_the_authors_rule(tmp_path: Path) -> None:
    """Grey level g → ImageNet class picked so that the authors' map sends it to IN-9 class g, or to −1."""
    table = json.loads(MAPPING_FILE.read_text())
    to_in1k = {}
    for k in range(9):
        to_in1k[k] = min(int(i) for i, v in table.items() if v == k)
    outside = min(int(i) for i, v in table.items() if v == -1)

    class Mapped(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            level = (x.mean((1, 2, 3)) * 8).round().long()
            cls = torch.tensor([to_in1k[int(g)] if g < 8 else outside for g in level])  # level 8 → outside IN-9
            return nn.functional.one_hot(cls, 1000).float()

    _hand_made(tmp_path, {"original": [(0, 0), (7, 7), (7, 8), (8, 8)]})  # the last two are predicted −1: wrong
    predict = in9_predictor(Mapped(), output_map(1000))
    assert evaluate_variant(predict, tmp_path, "original", CPU, num_workers=0) == (4, 2)


# ---------------------------------------------------------------------------------------------
# Layout errors
# ---------------------------------------------------------------------------------------------

def test_layout_errors(tmp_path: Path, in9_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        present_variants(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    _hand_made(bad, {"original": [(0, 0)]})
    (bad / "original" / "val" / "09_cat").mkdir()
    with pytest.raises(ValueError, match="unknown class folder.*09_cat"):
        evaluate_variant(lambda x: x, bad, "original", CPU)
    sizes = tmp_path / "sizes"
    _hand_made(sizes, {"original": [(0, 0), (1, 1)]})
    _solid(sizes / "original" / "val" / IN9_CLASSES[1] / "1.png", 1, size=9)
    with pytest.raises(ValueError, match="is 9x9 but .* is 8x8"):
        evaluate_variant(lambda x: x, sizes, "original", CPU)
    predict = in9_predictor(tiny_model(9, 0), output_map(9))
    no_mask = tmp_path / "nomask"
    shutil.copytree(in9_root, no_mask)
    next((no_mask / "fg_mask" / "val" / IN9_CLASSES[3]).glob("*.npy")).unlink()
    with pytest.raises(FileNotFoundError, match="has no mask") as err:
        run_challenge(predict, no_mask, tmp_path / "p", device=CPU)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown background order"):
        run_challenge(predict, in9_root, tmp_path / "p", device=CPU, order="random")


# ---------------------------------------------------------------------------------------------
# eval.py robustness --in9
# ---------------------------------------------------------------------------------------------

def _cli_args(in9_root: Path, out: Path) -> list[str]:
    return ["robustness", "--model", "pit_ti", "--weights", "none", "--num-classes", "9", "--img-size", "32",
            "--data", str(in9_root / "original" / "val"), "--class-map", "folder", "--in9", str(in9_root),
            "--in9-challenge-limit", "1", "--workers", "0", "--batch-size", "16", "--device", "cpu", "--no-progress",
            "--attacks", "--out", str(out)]  # --attacks with no name: no evaluation but clean on --data


def test_cli_writes_in9_cells_report_and_plot(in9_root: Path, tmp_path: Path) -> None:
    from tests.cli_helpers import run_cli

    out = tmp_path / "run"
    rc, stdout, stderr = run_cli(_cli_args(in9_root, out))
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    cells = {r["variant"]: r for r in results["records"] if r["dataset"] == "in9"}
    assert set(cells) == set(VARIANTS) | {"bg_challenge"}
    assert all(cells[v]["n"] == 36 for v in VARIANTS) and cells["bg_challenge"]["n"] == 9
    summary = next(iter(results["summary"].values()))
    assert summary["bgc_top1"] == cells["bg_challenge"]["top1"]
    assert summary["bg_gap"] == pytest.approx(cells["mixed_same"]["top1"] - cells["mixed_rand"]["top1"])
    report = (out / "report.md").read_text()
    main_table = next(line for line in report.splitlines() if line.startswith("| Model |"))
    assert "| BGC | BG-gap |" in main_table
    assert "Quick estimate" in report and "first 1 foregrounds" in report and (out / "plots" / "in9.png").is_file()
    rc, stdout, _ = run_cli(_cli_args(in9_root, out))  # a rerun reuses every finished cell
    assert rc == 0 and json.loads((out / "results.json").read_text())["records"] == results["records"]


def test_cli_in9_alone_uses_the_models_1000_class_head(in9_root: Path, tmp_path: Path) -> None:
    """--in9 with no other dataset: the IN-9 cells of the model's own ImageNet head, the clean column "not run"."""
    from tests.cli_helpers import run_cli

    out = tmp_path / "run"
    args = ["robustness", "--model", "pit_ti", "--weights", "none", "--img-size", "32", "--in9", str(in9_root),
            "--in9-challenge-limit", "1", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]
    rc, stdout, stderr = run_cli(args)
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert {r["dataset"] for r in results["records"]} == {"in9"} and "generated" not in stdout
    assert len(results["records"]) == len(VARIANTS) + 1
    assert results["not_run"]["clean_top1"].startswith("not run") and "--data" in results["not_run"]["clean_top1"]
    main_table = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| pit_ti |"))
    assert "not run" in main_table


def test_cli_in9_errors(in9_root: Path, tmp_path: Path) -> None:
    from tests.cli_helpers import assert_one_line_error

    args = _cli_args(in9_root, tmp_path / "o")
    assert_one_line_error([a if a != str(in9_root) else str(tmp_path / "none") for a in args], 2, "--in9")
    without = args[:args.index("--in9")] + args[args.index("--in9") + 2:]
    assert_one_line_error(without, 2, "--in9-challenge-limit needs --in9")
    no_mask = tmp_path / "nomask"
    shutil.copytree(in9_root, no_mask)
    next((no_mask / "fg_mask" / "val" / IN9_CLASSES[5]).glob("*.npy")).unlink()
    assert_one_line_error([a if a != str(in9_root) else str(no_mask) for a in args], 2, "has no mask")
    assert not (tmp_path / "o" / "results.json").exists()  # refused before any evaluation


def test_challenge_progress_is_kept_per_model_identity(in9_root: Path, tmp_path: Path) -> None:
    """Other weights (another identity) never reuse the foregrounds finished by a model."""
    runs = {}
    for seed in (0, 2):
        records, _ = evaluate_in9(tiny_model(9, seed), "tiny", "tiny", in9_root, tmp_path, set(), num_outputs=9,
                                  device=CPU, challenge_limit=1, num_workers=0, identity={"weights": f"seed{seed}"})
        runs[seed] = next(r for r in records if r["variant"] == "bg_challenge")
        vulnerable, total, _ = reference_challenge(tiny_model(9, seed), in9_root, authors_map(9), limit=1)
        assert (runs[seed]["top1_correct"], runs[seed]["n"]) == (total - vulnerable, total)
    assert len(list((tmp_path / "in9").iterdir())) == 2
