"""Standard AutoAttack (robustness.autoattack) and its robustness-suite cell: only clean-correct images are
attacked, the ensemble is at least as strong as each of its attacks alone (torchattacks, run separately),
perturbations stay in the eps-ball and in [0,1], float32 under autocast, the CLI cell on --attack-limit
evenly spaced images, its reuse on a rerun, and the errors for bad --norm / --eps / missing torchattacks."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustness import autoattack as aa
from robustness.config import RobustnessConfig
from robustness.runner import ModelSpec
from tests.folder_fixtures import write_folder

pytestmark = pytest.mark.usefixtures("one_thread")
torchattacks = pytest.importorskip("torchattacks")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 10)).eval()


@pytest.fixture(scope="module")
def batch():
    """Six 16 px images labelled with the net's own predictions, except image 0 (clean-wrong)."""
    model = tiny_net()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10
    return model, x, y


def in_ball(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> bool:
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    return bool((size <= eps * (1 + 1e-5)).all()) and adv.min() >= 0 and adv.max() <= 1


def alone(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, int]:
    """Robust images of each standard component run alone on ``x`` (the authors' settings, straight from torchattacks)."""
    attacks = {"apgd-ce": torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
               "apgd-t": torchattacks.APGDT(model, eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0),
               "fab-t": torchattacks.FAB(model, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=10,
                                         seed=0),
               "square": torchattacks.Square(model, eps=eps, n_queries=5000, p_init=0.8, resc_schedule=False, seed=0)}
    out = {}
    for name, attack in attacks.items():
        adv = attack(x, y)
        assert in_ball(adv, x, eps, "Linf"), name
        with torch.no_grad():
            out[name] = int((model(adv).argmax(1) == y).sum())
    return out


def test_only_clean_correct_images_are_attacked_and_the_ensemble_beats_each_attack(batch, monkeypatch):
    model, x, y = batch
    eps = 2 / 255
    seen: dict[str, list[torch.Tensor]] = {}
    real = aa.standard_components

    def spied(*args, **kwargs):
        def spy(name, attack):
            def run(images, labels):
                seen.setdefault(name, []).append(images.clone())
                return attack(images, labels)
            return name, run
        return [spy(n, a) for n, a in real(*args, **kwargs)]

    monkeypatch.setattr(aa, "standard_components", spied)
    state = torch.random.get_rng_state()
    result = aa.autoattack(model, x, y, eps, "Linf", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks' reseeding does not leak

    assert result.clean_correct.tolist() == [False] + [True] * 5 and result.survivors[0] == 5
    assert torch.equal(seen["apgd-ce"][0], x[1:])  # exactly the clean-correct images, in order
    attacked = torch.cat([b for batches in seen.values() for b in batches])
    assert not (attacked == x[0]).flatten(1).all(1).any()  # the clean-wrong image never reaches an attack
    assert not result.robust[0] and torch.equal(result.adv[0], x[0])

    with torch.no_grad():
        pred = model(result.adv).argmax(1)
    assert torch.equal(result.robust, pred == y)  # robust = still correct on the returned images
    assert torch.equal(result.adv[result.robust], x[result.robust])  # survivors keep their clean image
    assert in_ball(result.adv, x, eps, "Linf")
    robust = int(result.robust.sum())
    separately = alone(model, x[1:], y[1:], eps)
    assert 0 < robust < 5  # a case where the attacks matter: some images fooled, some not
    assert robust <= min(separately.values()), separately
    assert result.survivors[-1] == robust and result.survivors == sorted(result.survivors, reverse=True)


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.2)])
def test_perturbations_stay_in_the_ball_and_in_range_and_amp_is_ignored(batch, norm, eps):
    model, x, y = batch
    result = aa.autoattack(model, x, y, eps, norm, seed=3)
    assert in_ball(result.adv, x, eps, norm) and not result.robust.any()
    fooled = ~result.robust & result.clean_correct
    assert (result.adv[fooled] != x[fooled]).flatten(1).any(1).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --amp: the attack still runs in float32
        again = aa.autoattack(model, x, y, eps, norm, seed=3)
    assert torch.equal(again.adv, result.adv) and again.adv.dtype == torch.float32


def test_bad_options_and_missing_torchattacks_are_clear_errors(batch, monkeypatch):
    model, x, y = batch
    with pytest.raises(ValueError, match="--norm Linf or --norm L2"):
        aa.autoattack(model, x, y, 4 / 255, "L1")
    with pytest.raises(ValueError, match="--eps"):
        aa.autoattack(model, x, y, None)
    spec = [ModelSpec("test_convnext")]
    for kwargs, message in [(dict(norm="Linf2"), "unknown norm 'Linf2'"),
                            (dict(eps=None), "--eps is missing"),
                            (dict(eps=0.0), "AutoAttack needs a radius > 0"),
                            (dict(norm="L2", attacks=["pgd", "autoattack"]), "--norm L2 applies to AutoAttack only"),
                            (dict(attacks=["pgd"], attack_limit=5), "--attack-limit sets AutoAttack's images"),
                            (dict(eps=2.0), r"--eps must be a finite number in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            RobustnessConfig(spec, data="x", **{"attacks": ["autoattack"], **kwargs})
    assert RobustnessConfig(spec, data="x", attacks=["autoattack"], norm="L2", eps=3.0).eps == 3.0
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"pip install torchattacks==3\.5\.1"):
        aa.require_torchattacks()


def _eval_main():
    spec = importlib.util.spec_from_file_location("eval_cli", Path(__file__).resolve().parents[1] / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_cell_on_attack_limit_images_and_rerun_reuses_it(tmp_path, monkeypatch, capsys):
    val = write_folder(tmp_path / "val", per_class=3)  # 9 images
    out = tmp_path / "out"
    argv = ["robustness", "--model", "test_convnext", "--num-classes", "4", "--weights", "none", "--data", str(val),
            "--class-map", "folder", "--img-size", "32", "--workers", "0", "--no-progress", "--device", "cpu",
            "--batch-size", "4", "--attacks", "autoattack", "--eps", "8/255", "--attack-limit", "4", "--out", str(out)]
    attacked: list[int] = []
    real_seed = aa.batch_seed
    monkeypatch.setattr(aa, "batch_seed", lambda seed, key, indices: attacked.extend(indices) or real_seed(seed, key, indices))
    main = _eval_main()
    assert main(argv) == 0
    assert sorted(attacked) == [0, 2, 4, 6]  # 4 evenly spaced images of 9: i * 9 // 4
    saved = json.loads((out / "results.json").read_text())
    cells = {r["variant"]: r for r in saved["records"]}
    assert cells["clean"]["n"] == 9 and cells["autoattack"]["n"] == 4
    assert cells["autoattack"]["options"]["attack_limit"] == 4 and cells["autoattack"]["options"]["norm"] == "Linf"
    assert saved["summary"]["test_convnext"]["autoattack_top1"] == cells["autoattack"]["top1"]
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Model"))
    assert "| AutoAttack |" in header
    assert "L∞ eps 8/255" in report and "test_convnext 4 (--attack-limit 4, evenly spaced)" in report
    assert "(AutoAttack cells: 4)" in report

    def no_attack(*args, **kwargs):
        raise AssertionError("a finished AutoAttack cell was recomputed")

    monkeypatch.setattr(aa, "autoattack", no_attack)
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["records"] == saved["records"]

    capsys.readouterr()
    no_eps = [a for a in argv if a not in ("--eps", "8/255")]
    assert main(no_eps + ["--norm", "L2"]) == 2
    assert "--norm L2 needs --eps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--norm", "L1"])
    assert "invalid choice: 'L1'" in capsys.readouterr().err
