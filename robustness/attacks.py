"""FGSM and PGD (L∞ / L2) adversarial attacks on models that take [0,1] pixel images.

Normalisation belongs inside the model (``pit.NormalizedModel``), so the attack works in pixel
space and the eps-ball is in pixels (eps=1/255 is one grey level). The model runs in eval mode with
its own previous train/eval state and ``requires_grad`` flags restored afterwards; no gradient is
accumulated into parameters (their ``.grad`` stay untouched). Everything runs on the inputs' device.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_EPS_DIV = 1e-10  # guards the L2 gradient normalisation (same constant as torchattacks)
_GRAD_TARGET = 2.0 ** 10  # each image's largest logit gradient after loss scaling (float16: far from 0 and 65504)
_BACKOFF, _RETRIES = 2.0 ** -8, 3  # smaller scales for images whose float16 gradient overflowed


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with frozen parameters; restore both states on exit (also on error)."""
    training = {m: m.training for m in model.modules()}
    requires = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in requires:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in requires.items():
            p.requires_grad_(flag)


def _loss_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """d(loss)/d(x) for images x (B,3,H,W); the loss is summed so each image's gradient is independent
    of the batch; targeted attacks descend the loss of the target labels.

    The cross-entropy is computed in float32, and each image's loss is scaled by a power of two that brings
    its largest logit gradient to ``_GRAD_TARGET`` (the scale is divided out again, exactly): a model that
    runs in float16 (autocast or half weights) then back-propagates gradients that neither underflow to
    zero (sign(0) = 0 would leave pixels unperturbed) nor overflow; in float32 the result is bitwise the
    unscaled gradient. Images whose float16 gradient still overflows are retried at smaller scales.
    """
    with torch.enable_grad():  # also works when called under torch.no_grad()
        x = x.detach().requires_grad_(True)
        raw = model(x)
        logits = raw.float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        with torch.no_grad():  # |d loss_i / d logits| = |softmax - one-hot|, largest entry per image
            peak = (logits.softmax(1) - F.one_hot(labels, logits.shape[1])).abs().amax(1)
            scale = torch.exp2(torch.round(torch.log2(_GRAD_TARGET / peak.clamp_min(1e-30)))).clamp(1, 2.0 ** 100)
        sign = -1.0 if targeted else 1.0
        half = raw.dtype == torch.float16 or (torch.is_autocast_enabled(x.device.type)
                                              and torch.get_autocast_dtype(x.device.type) == torch.float16)
        for attempt in range(_RETRIES + 1):
            last = attempt == _RETRIES or not half
            (grad,) = torch.autograd.grad((losses * scale).sum() * sign, x, retain_graph=not last)
            if not half:
                break
            bad = ~torch.isfinite(grad).flatten(1).all(1)
            if last or not bool(bad.any()):  # float16 only: one host read per attempt
                break
            scale = torch.where(bad, scale * _BACKOFF, scale)
    return grad / scale.view(-1, *([1] * (grad.ndim - 1)))


def _random_start(images: torch.Tensor, eps: float, norm: str,
                  generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """A random offset per image: uniform in the L∞ ball, or uniform radius × random direction in the L2 ball."""
    if generator is not None and not isinstance(generator, torch.Generator):
        if len(generator) != images.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {images.shape[0]} images: give one per image")
        return torch.cat([_random_start(images[i:i + 1], eps, norm, g) for i, g in enumerate(generator)])
    b, kw = images.shape[0], dict(generator=generator, device=images.device, dtype=images.dtype)
    if norm == "Linf":
        return (2 * torch.rand(images.shape, **kw) - 1) * eps
    delta = torch.randn(images.shape, **kw)
    n = delta.flatten(1).norm(p=2, dim=1).view(b, 1, 1, 1)
    r = torch.rand((b, 1, 1, 1), **kw)
    return delta * (r / n * eps)


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
         targeted_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015).

    images (B,3,H,W) float in [0,1]; labels (B,) int64 → adversarial images, same shape, in [0,1] and
    within ``eps`` (L∞) of ``images``. With ``targeted_labels`` the step moves towards those classes.
    """
    with attack_mode(model):
        target = labels if targeted_labels is None else targeted_labels
        grad = _loss_grad(model, images, target, targeted_labels is not None)
        return (images + eps * grad.sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, alpha: float, steps: int,
        random_start: bool = True, norm: str = "Linf",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        targeted_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018), L∞ or L2.

    images (B,3,H,W) float in [0,1]; labels (B,) int64 → adversarial images in [0,1], inside the
    ``eps``-ball of ``images`` in the chosen norm (per image). ``alpha`` is the step size; the random
    start (uniform in the L∞ ball, or uniform radius × random direction in the L2 ball, as torchattacks)
    draws from ``generator`` (on the images' device) for reproducible runs; a sequence of B generators
    gives each image its own start, the one it would get alone, so the result does not depend on the batch.
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"unknown norm {norm!r}: use 'Linf' or 'L2'")
    targeted = targeted_labels is not None
    target = targeted_labels if targeted else labels
    images = images.detach()
    b = images.shape[0]
    with attack_mode(model):
        adv = images.clone()
        if random_start:
            adv = (adv + _random_start(images, eps, norm, generator)).clamp(0, 1)
        for _ in range(steps):
            grad = _loss_grad(model, adv, target, targeted)
            if norm == "Linf":
                adv = adv + alpha * grad.sign()
                delta = (adv - images).clamp(-eps, eps)
            else:
                grad_norm = grad.flatten(1).norm(p=2, dim=1).view(b, 1, 1, 1) + _EPS_DIV
                adv = adv + alpha * grad / grad_norm
                delta = adv - images
                factor = (eps / delta.flatten(1).norm(p=2, dim=1)).clamp(max=1.0)
                delta = delta * factor.view(b, 1, 1, 1)
            adv = (images + delta).clamp(0, 1).detach()
        return adv
