"""FGSM / PGD: parity with torchattacks (the reference), eps-ball and range, model state and gradients."""
import pytest
import torch
from torch import nn

import pit
from robustness.attacks import attack_mode, fgsm, pgd

torchattacks = pytest.importorskip("torchattacks")


def tiny_model(seed: int = 0) -> nn.Module:
    """A small CNN with BatchNorm and Dropout (train/eval matters), taking [0,1] pixels."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 10))
    model = pit.NormalizedModel(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with torch.no_grad():  # non-trivial BatchNorm statistics so eval differs from train
        model.train()(torch.rand(64, 3, 16, 16))
    return model.eval()


@pytest.fixture(scope="module")
def data():
    model = tiny_model()
    images = torch.rand(2048, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(1)  # clean accuracy 100%: attacks decide the robust accuracy
    return model, images, labels


def test_fgsm_matches_torchattacks(data):
    model, x, y = data
    ours = fgsm(model, x[:64], y[:64], 4 / 255)
    ref = torchattacks.FGSM(model, eps=4 / 255)(x[:64], y[:64])
    assert (ours - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("norm,cls,eps,alpha", [("Linf", "PGD", 4 / 255, 1 / 255), ("L2", "PGDL2", 0.5, 0.1)])
def test_pgd_without_random_start_matches_torchattacks(data, norm, cls, eps, alpha):
    model, x, y = data
    ours = pgd(model, x[:64], y[:64], eps, alpha, 5, random_start=False, norm=norm)
    ref = getattr(torchattacks, cls)(model, eps=eps, alpha=alpha, steps=5, random_start=False)(x[:64], y[:64])
    assert (ours - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("norm,cls,eps,alpha", [("Linf", "PGD", 1 / 255, 0.25 / 255), ("L2", "PGDL2", 0.1, 0.025)])
def test_pgd_random_start_robust_accuracy_matches_torchattacks(data, norm, cls, eps, alpha):
    model, x, y = data
    torch.manual_seed(0)
    ref = getattr(torchattacks, cls)(model, eps=eps, alpha=alpha, steps=5, random_start=True)(x, y)
    ours = pgd(model, x, y, eps, alpha, 5, norm=norm, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acc_ref = (model(ref).argmax(1) == y).float().mean().item() * 100
        acc_ours = (model(ours).argmax(1) == y).float().mean().item() * 100
    assert 5 < acc_ref < 95, "the attack strength should leave a non-trivial robust accuracy"
    assert abs(acc_ours - acc_ref) <= 1.0


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_stays_in_range_and_ball(data, norm):
    model, x, y = data
    eps = 8 / 255 if norm == "Linf" else 1.0
    adv = pgd(model, x[:32], y[:32], eps, eps / 2, 3, norm=norm, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x[:32].shape and adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x[:32]).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    again = pgd(model, x[:32], y[:32], eps, eps / 2, 3, norm=norm, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)


def test_model_state_and_parameter_grads_untouched(data):
    model, x, y = data
    model.train()
    model.model[1].eval()  # a mixed state must come back exactly
    frozen = model.model[0].weight
    frozen.requires_grad_(False)
    before = {n: m.training for n, m in model.named_modules()}
    fgsm(model, x[:8], y[:8], 1 / 255)
    pgd(model, x[:8], y[:8], 1 / 255, 0.5 / 255, 2)
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())
    assert not frozen.requires_grad and model.model[6].weight.requires_grad
    with pytest.raises(RuntimeError), attack_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert {n: m.training for n, m in model.named_modules()} == before
    frozen.requires_grad_(True)
    model.eval()


def test_targeted_attack_moves_towards_target(data):
    model, x, y = data
    target = (y[:64] + 1) % 10
    adv = pgd(model, x[:64], y[:64], 16 / 255, 2 / 255, 10, targeted_labels=target)
    with torch.no_grad():
        hit_adv = (model(adv).argmax(1) == target).float().mean()
        hit_clean = (model(x[:64]).argmax(1) == target).float().mean()
    assert hit_adv > hit_clean
    ref = torchattacks.FGSM(model, eps=4 / 255)
    ref.set_mode_targeted_by_label(quiet=True)
    ours = fgsm(model, x[:64], y[:64], 4 / 255, targeted_labels=target)
    assert (ours - ref(x[:64], target)).abs().max() <= 1e-5


def test_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        pgd(tiny_model(), torch.rand(1, 3, 8, 8), torch.tensor([0]), 0.1, 0.1, 1, norm="L1")


class _Confident(torch.nn.Module):
    """A linear classifier with sharp logits: its float16 backward underflows without loss scaling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * 100.0


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_float16_autocast_perturbs_where_float32_does(attack):
    """Under float16 autocast the perturbation signs equal float32's wherever float32's input gradient is
    non-zero beyond float16's rounding of the forward pass (|g| above 1 % of the image's mean |g|; here
    1 of 3,072 components is a near-cancellation below that); without loss scaling, float16's gradient
    underflows to 0 and pixels stay put."""
    from robustness import attacks

    model = _Confident().eval()
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = model(images).argmax(1)  # correctly classified with p(label) ≈ 1: tiny logit gradients
    grad32 = attacks._loss_grad(model, images, labels, False)
    typical = grad32.abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    moving = grad32.abs() > 0.01 * typical  # where float32 perturbs, clear of float16's rounding
    assert moving.float().mean() > 0.98
    with torch.autocast("cpu", dtype=torch.float16):
        grad16 = attacks._loss_grad(model, images, labels, False)
        naive = torch.autograd.grad(torch.nn.functional.cross_entropy(
            model(images.requires_grad_(True)).float(), labels, reduction="sum"), images)[0]
    assert (naive.sign() != grad32.sign())[moving].float().mean() > 0.1  # the failure this guards against
    assert torch.equal(grad16.sign()[moving], grad32.sign()[moving])
    eps = 1 / 255
    run = (lambda: attacks.fgsm(model, images.detach(), labels, eps)) if attack == "fgsm" else \
        (lambda: attacks.pgd(model, images.detach(), labels, eps, eps / 4, 1, random_start=False))
    adv32 = run()
    with torch.autocast("cpu", dtype=torch.float16):
        adv16 = run()
    assert torch.equal(adv16[moving], adv32[moving])
