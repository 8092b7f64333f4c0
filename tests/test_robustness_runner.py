"""run_robustness end to end on generated folders and a tiny timm model: results, report, resume,
options-changed refusal, the 2-process gloo path, and CLI errors."""
import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from robustness import runner
from robustness.cells import CellKey
from robustness.config import RobustnessConfig
from robustness.runner import ModelSpec, run_robustness
from tests.folder_fixtures import CLASSES
from tests.folder_fixtures import write_folder as write_image_folder

MODEL = ModelSpec("test_convnext", label="tiny", model_kwargs={"num_classes": 3})
FAST = dict(class_map="folder", img_size=32, crop_pct=1.0, batch_size=4, num_workers=0, progress=False, device="cpu")


def write_folder(root: Path, names=CLASSES, per_class=3, seed=0) -> str:
    return str(write_image_folder(root, names, per_class, seed))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rob")
    return {"val": write_folder(root / "val"), "a": write_folder(root / "a", names=CLASSES[:2], per_class=2, seed=1)}


class Interrupted(Exception):
    """Stands in for Ctrl-C / a killed job in the middle of a run."""


def counts(result):
    return {r["key"]: (r["n"], r["top1_correct"], r["top5_correct"]) for r in result["records"]}


def test_end_to_end_resume_and_options_guard(data, tmp_path, monkeypatch):
    kwargs = dict(FAST, imagenet_a=data["a"], attacks=["fgsm"], occlusion=True)
    full = run_robustness([MODEL], data["val"], str(tmp_path / "full"), **kwargs)
    keys = [r["variant"] if r["dataset"] == "imagenet" else r["dataset"] for r in full["records"]]
    assert keys == ["clean", "occlusion_center", "occlusion_random", "fgsm", "imagenet-a"]
    assert all(r["n"] == 9 for r in full["records"][:4]) and full["records"][4]["n"] == 4
    s = full["summary"]["tiny"]
    assert s["clean_top1"] == full["records"][0]["top1"] and s["mCE"] is None and s["imagenet_a_top1"] is not None
    saved = json.loads((tmp_path / "full" / "results.json").read_text())
    assert saved["records"] == full["records"] and saved["options"]["attacks"] == ["fgsm"]
    assert "| tiny |" in Path(full["report"]).read_text()

    # Interrupt after the first pass, then resume: only the missing pass runs, numbers are identical.
    calls = []
    real = runner._evaluate_pass

    def flaky(p, *args, **kw):
        calls.append(p.name)
        if calls == ["clean", "imagenet-a"]:
            raise Interrupted
        return real(p, *args, **kw)

    monkeypatch.setattr(runner, "_evaluate_pass", flaky)
    with pytest.raises(Interrupted):
        run_robustness([MODEL], data["val"], str(tmp_path / "resumed"), **kwargs)
    assert len(list((tmp_path / "resumed" / "cells.jsonl").read_text().splitlines())) == 4
    calls.clear()
    resumed = run_robustness([MODEL], data["val"], str(tmp_path / "resumed"), **kwargs)
    assert calls == ["imagenet-a"]
    assert counts(resumed) == counts(full)

    # Changed options refuse to mix; --overwrite starts afresh.
    with pytest.raises(ValueError, match="other options.*limit.*--overwrite"):
        run_robustness([MODEL], data["val"], str(tmp_path / "resumed"), **dict(kwargs, limit=5))
    fresh = run_robustness([MODEL], data["val"], str(tmp_path / "resumed"), **dict(kwargs, limit=5), overwrite=True)
    assert fresh["records"][0]["n"] == 5


def test_imagenet_c_on_disk_gives_mce(data, tmp_path):
    import shutil

    for sev in range(1, 6):  # "corrupted" copies identical to the clean images: CE = clean error / AlexNet's
        shutil.copytree(data["val"], tmp_path / "c" / "fog" / str(sev))
    result = run_robustness([MODEL], data["val"], str(tmp_path / "out"), **FAST, imagenet_c=str(tmp_path / "c"),
                            corruptions=["fog"])
    s = result["summary"]["tiny"]
    clean_err = 1 - s["clean_top1"] / 100
    assert s["mCE"] == pytest.approx(100 * clean_err / 0.819324)
    assert s["relative_mCE"] == pytest.approx(0.0, abs=1e-9)
    assert s["mean_corruption_error"] == pytest.approx(100 * clean_err)
    assert (tmp_path / "out" / "plots" / "accuracy_vs_severity.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="snow"):
        run_robustness([MODEL], data["val"], str(tmp_path / "out2"), **FAST, imagenet_c=str(tmp_path / "c"),
                       corruptions=["snow"])


def test_corrupt_on_the_fly_is_deterministic(data, tmp_path):
    kwargs = dict(FAST, corrupt_on_the_fly=True, corruptions=["gaussian_noise", "contrast"], severities=[1, 5])
    a = run_robustness([MODEL], data["val"], str(tmp_path / "a"), **kwargs)
    b = run_robustness([MODEL], data["val"], str(tmp_path / "b"), **kwargs)
    assert counts(a) == counts(b) and len(a["records"]) == 5


def _distributed_worker(rank, world, port, val, a_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from common.distributed import cleanup_distributed

    result = run_robustness([MODEL], val, out, **dict(FAST, imagenet_a=a_dir, attacks=["fgsm"], occlusion=True))
    if rank == 0:
        Path(out, "counts.json").write_text(json.dumps(counts(result)))
    cleanup_distributed()


@pytest.mark.distributed
def test_two_gloo_processes_give_the_single_process_totals(data, tmp_path):
    single = run_robustness([MODEL], data["val"], str(tmp_path / "one"),
                            **dict(FAST, imagenet_a=data["a"], attacks=["fgsm"], occlusion=True))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_distributed_worker, args=(2, port, data["val"], data["a"], str(tmp_path / "two")),
                                nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "counts.json").read_text())
    one = {k: list(v) for k, v in counts(single).items()}
    assert two == one  # random patches are drawn per image: the same in one process or two


RANDOM_CELLS = [CellKey("tiny", "imagenet", variant="occlusion_random"), CellKey("tiny", "imagenet", variant="pgd"),
                CellKey("tiny", "imagenet-c", "gaussian_noise", 3), CellKey("tiny", "imagenet-c", "glass_blur", 1)]


@pytest.mark.parametrize("cell", RANDOM_CELLS, ids=lambda c: c.label)
def test_random_draws_are_per_image_not_per_batch(cell):
    """A cell's input for an image is the same whether the image comes in a batch of 5 or in batches of 2."""
    model = runner._build_model(MODEL, torch.device("cpu"), 0, 32)
    images, labels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1])
    config = RobustnessConfig([MODEL], data="x", steps=2, eps=8 / 255)
    ctx = runner.RunContext(config, torch.device("cpu"), store=None)

    def inputs(x, y, indices):
        if cell.dataset == "imagenet-c":
            return runner._corrupted(cell, x, indices, ctx)
        return runner._apply_variant(cell, x, y, model, ctx, indices)

    whole = inputs(images, labels, list(range(5)))
    parts = [inputs(images[i:i + 2], labels[i:i + 2], list(range(i, min(i + 2, 5)))) for i in range(0, 5, 2)]
    assert not torch.equal(whole, images)
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=0)


def test_random_cells_do_not_depend_on_the_batch_size(data, tmp_path):
    kwargs = dict(FAST, occlusion=True, attacks=["pgd"], corrupt_on_the_fly=True, corruptions=["gaussian_noise"],
                  severities=[5], steps=2, eps=8 / 255)
    two = run_robustness([MODEL], data["val"], str(tmp_path / "two"), **dict(kwargs, batch_size=2))
    five = run_robustness([MODEL], data["val"], str(tmp_path / "five"), **dict(kwargs, batch_size=5))
    assert counts(two) == counts(five) and len(two["records"]) == 5


def _eval_main():
    spec = importlib.util.spec_from_file_location("eval_cli", Path(__file__).resolve().parents[1] / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("extra,message", [
    (["--imagenet-c", "x", "--corrupt-on-the-fly"], "exclude each other"),
    (["--corruptions", "fgo"], "did you mean 'fog'"),
    (["--severities", "0-3"], "1..5"),
    (["--weights", "a.pth", "b.pth"], "one path per --model"),
    (["--class-map", "imagenet"], "class_map='folder'"),
])
def test_cli_errors(data, tmp_path, capsys, extra, message):
    argv = ["robustness", "--model", "test_convnext", "--data", data["val"], "--out", str(tmp_path / "o"),
            "--class-map", "folder", "--no-progress", "--device", "cpu"] + extra
    assert _eval_main()(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_runs_and_parses_fractions(data, tmp_path, capsys):
    from robustness.cli import parse_fraction

    assert parse_fraction("1/255") == pytest.approx(1 / 255) and parse_fraction("7/8") == 0.875
    argv = ["robustness", "--model", "test_convnext", "--num-classes", "3", "--data", data["val"], "--out",
            str(tmp_path / "o"), "--class-map", "folder", "--img-size", "32", "--workers", "0", "--no-progress",
            "--device", "cpu", "--attacks", "fgsm", "--eps", "2/255", "--limit", "6"]
    assert _eval_main()(argv) == 0
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["options"]["eps"] == pytest.approx(2 / 255) and saved["records"][0]["n"] == 6


def test_wrong_class_count_is_a_clear_error(data, tmp_path):
    model = ModelSpec("test_convnext", model_kwargs={"num_classes": 2})
    with pytest.raises(ValueError, match="2 outputs.*class index 2"):
        run_robustness([model], data["val"], str(tmp_path / "o"), **FAST)


def test_img_size_reaches_only_models_with_a_fixed_input_size():
    vit = runner._build_model(ModelSpec("test_vit", model_kwargs={"num_classes": 3}), torch.device("cpu"), 0, 32)
    assert tuple(vit.model.patch_embed.img_size) == (32, 32)  # timm: fixed_input_size=True
    cnn = runner._build_model(MODEL, torch.device("cpu"), 0, 32)  # a CNN's constructor takes no img_size
    assert cnn(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_cli_defaults_are_the_config_defaults():
    import argparse

    from robustness import cli
    from robustness.config import RobustnessConfig

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model", "pit_ti"])
    pairs = {"batch_size": "batch_size", "workers": "num_workers", "eps": "eps", "alpha": "alpha", "steps": "steps",
             "seed": "seed", "limit": "limit", "img_size": "img_size", "crop_pct": "crop_pct"}
    assert {a: getattr(args, a) for a in pairs} == {a: getattr(RobustnessConfig, f) for a, f in pairs.items()}


def _lagging_worker(rank, val, c_dir, out):
    from tests.distributed_helpers import lagging_listing

    with lagging_listing(c_dir):  # rank 1's view of the shared disk has no ImageNet-C folder (yet)
        result = run_robustness([MODEL], val, out, **FAST, imagenet_c=c_dir, corruptions=["fog"], severities=[1])
    if rank == 0:
        Path(out, "counts.json").write_text(json.dumps(counts(result)))


@pytest.mark.distributed
def test_rank0_reads_the_disk_for_every_process(data, tmp_path):
    """Rank 1 sees no --imagenet-c folder: the run follows rank 0's listing and gives the one-process counts."""
    import shutil

    from tests.distributed_helpers import spawn

    c_dir = tmp_path / "c"
    shutil.copytree(data["val"], c_dir / "fog" / "1")
    single = run_robustness([MODEL], data["val"], str(tmp_path / "one"), **FAST, imagenet_c=str(c_dir),
                            corruptions=["fog"], severities=[1])
    spawn(_lagging_worker, 2, data["val"], str(c_dir), str(tmp_path / "two"), timeout=180)
    two = json.loads((tmp_path / "two" / "counts.json").read_text())
    assert two == {k: list(v) for k, v in counts(single).items()}
