"""Parity of robustness.autoattack with the authors' AutoAttack (fra31/auto-attack, packaged on PyPI as
``pyautoattack`` 0.2.0): the same model, images, radius and seed through both, ``version='standard'``.

The issue's criterion: per-image robust outcomes agree on >= 99 % of the images and robust accuracy is
within 0.5 points; the clean-correct images (the ones attacked) are the same set.

The model is built so that every attack of the ensemble has images only it can fool, otherwise parity
would only cover APGD-CE: a small conv net trained briefly on synthetic 16 px images, whose input goes
either (images with mean > 0.5) through an 8-level quantisation, whose gradient is zero (the gradient
attacks fail and Square, the black-box one, fools them), or through logits scaled x40, where the
cross-entropy gradient underflows on confident images (APGD-CE fails, APGD-T's scale-free DLR loss
fools them). The setup asserts that APGD-CE, APGD-T and Square each fool images in the reference.

Cost: with robust images left, each implementation runs FAB-T's 9 x 100 steps and Square's 5,000
queries whatever the batch size (~15 s each on one thread), so 100 images cost about what 50 would;
L2 and 200 images are the ``slow`` tests. Square alone (300 queries) is also compared image for image.
"""
import pytest
import torch
from torch import nn

from robustness import autoattack as aa

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("torchattacks")
pyautoattack = pytest.importorskip("pyautoattack")

SIZE = 16
LEVELS = 8  # the quantised path: round(x * 8) / 8
LOGIT_SCALE = 40.0
REFERENCE_ATTACKS = {"apgd": "apgd-ce", "apgd_targeted": "apgd-t", "fab": "fab-t", "square": "square"}


class TwoPaths(nn.Module):
    """Zero-gradient quantised input for the brighter images, x40 logits for the others."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantised = (x.mean((1, 2, 3)) > 0.5)[:, None]
        return torch.where(quantised, self.net(torch.round(x * LEVELS) / LEVELS), LOGIT_SCALE * self.net(x))


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes: a fixed random pattern per class at weight 0.18 over uniform noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.18 * patterns[y] + 0.82 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    return x, y


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """200 Adam steps on 2,000 synthetic images: ~90 % clean accuracy, margins of every size."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * (SIZE // 4) ** 2, 10))
    x, y = synthetic(2000, seed=1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = TwoPaths(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int):
    """The authors' standard AutoAttack, one batch: (robust (B,) bool, images each attack received)."""
    attack = pyautoattack.AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, device="cpu")
    assert attack.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert attack.apgd_targeted.n_target_classes == 9 and attack.fab.n_target_classes == 9
    assert attack.apgd.n_iter == attack.apgd_targeted.n_iter == attack.fab.n_iter == 100
    assert attack.square.n_queries == 5000 and attack.apgd.n_restarts == 1
    received: dict[str, list[torch.Tensor]] = {}
    for field, name in REFERENCE_ATTACKS.items():
        component = getattr(attack, field)

        def spied(images, labels, _perturb=component.perturb, _name=name):
            received.setdefault(_name, []).append(images.clone())
            return _perturb(images, labels)

        component.perturb = spied
    x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    return robust, {name: torch.cat(batches) for name, batches in received.items()}


def _parity(model: nn.Module, n: int, norm: str, eps: float) -> None:
    x, y = synthetic(n, seed=2)
    ours = aa.autoattack(model, x, y, eps, norm, seed=0)
    robust, received = reference(model, x, y, norm, eps, seed=0)

    attacked = received["apgd-ce"]  # the reference attacks exactly its clean-correct images, in order
    assert torch.equal(attacked, x[ours.clean_correct])
    clean = len(attacked)
    ref_survivors = [clean] + [len(received[name]) for name in ("apgd-t", "fab-t", "square")] + [int(robust.sum())]
    detail = f"ours {ours.survivors} reference {ref_survivors} (robust after each attack)"
    assert 0 < ref_survivors[-1] < clean < n, detail  # a borderline mix: some fooled, some robust, some wrong
    assert ref_survivors[0] > ref_survivors[1] > ref_survivors[2], detail  # APGD-CE and APGD-T each fool images
    assert ref_survivors[3] > ref_survivors[4], detail  # and Square fools what the gradient attacks cannot

    agreement = (ours.robust == robust).float().mean().item()
    gap = abs(ours.robust.float().mean().item() - robust.float().mean().item()) * 100
    assert agreement >= 0.99, f"per-image agreement {agreement:.1%}; {detail}"
    assert gap <= 0.5, f"robust accuracy differs by {gap:.2f} points; {detail}"


def test_linf_parity_with_the_authors_autoattack(model):
    _parity(model, 100, "Linf", 4 / 255)


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.25)])
def test_parity_on_200_images(model, norm, eps):
    _parity(model, 200, norm, eps)


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.25)])
def test_square_alone_matches_the_authors_square_image_for_image(model, norm, eps):
    """Square's search (300 queries, same seed) gives the authors' images: torchattacks' L2 step did not."""
    torchattacks = pytest.importorskip("torchattacks")
    from pyautoattack.square import SquareAttack

    x, y = synthetic(100, seed=2)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    ours = aa._square_class(torchattacks)(model, norm=norm, eps=eps, n_queries=300, n_restarts=1, p_init=0.8,
                                           loss="margin", resc_schedule=False, seed=0)(x, y)
    theirs = SquareAttack(model, norm=norm, eps=eps, n_queries=300, n_restarts=1, p_init=0.8, loss="margin",
                          resc_schedule=False, seed=0, device="cpu").perturb(x, y)
    with torch.no_grad():
        fooled = model(theirs).argmax(1) != y
    assert 0 < int(fooled.sum()) < len(y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
