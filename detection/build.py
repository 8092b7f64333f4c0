"""Architecture registry: ``--arch detr|deformable`` → an :class:`Architecture` record (detector,
criterion and post-processor builders).

Every detector takes ``(images (B, 3, H, W) in [0, 1], mask (B, H, W) True = padding)`` and
returns ``pred_logits``/``pred_boxes`` (normalised cxcywh)/``aux_outputs``; every criterion
returns a dict of losses and has ``weight_dict``; every post-processor maps
``(outputs, target_sizes (B, 2) = (h, w))`` to per-image ``scores``/``labels``/``boxes`` (abs xywh).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """One detector family: ``build_model(backbone=, num_classes=, **model_kwargs)``,
    ``build_criterion(num_classes=, dec_layers=, aux_loss=, [two_stage=,] **loss_kwargs)``,
    ``build_postprocessor(num_select)``; ``structure_keys``: the model keywords the criterion needs."""

    name: str
    build_model: Callable[..., nn.Module]
    build_criterion: Callable[..., nn.Module]
    build_postprocessor: Callable[[int], nn.Module]
    structure_keys: tuple[str, ...]


def _detr() -> Architecture:
    from detection.criterion import build_detr_criterion
    from detection.detr import build_detr
    from detection.postprocess import PostProcess

    return Architecture("detr", build_detr, build_detr_criterion, lambda num_select: PostProcess(),
                        ("dec_layers", "aux_loss"))


def _deformable() -> Architecture:
    try:
        from detection.criterion import build_deformable_criterion
        from detection.deformable.model import build_deformable_detector
        from detection.postprocess import PostProcessTopK
    except ImportError as exc:
        raise ValueError(f"--arch deformable is unavailable: detection.deformable failed to import ({exc})") from exc
    return Architecture("deformable", build_deformable_detector, build_deformable_criterion, PostProcessTopK,
                        ("dec_layers", "aux_loss", "two_stage"))


def check_detector_args(num_classes: int, hidden_dim: int, nheads: int, num_queries: int) -> None:
    """The argument checks shared by every detector builder (DETR and Deformable DETR)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
    if num_queries < 1:
        raise ValueError(f"num_queries must be ≥ 1, got {num_queries}")
    if hidden_dim % 2 or hidden_dim % nheads:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be even and divisible by nheads ({nheads})")


ARCHS: dict[str, Callable[[], Architecture]] = {"detr": _detr, "deformable": _deformable}


def get_architecture(arch: str) -> Architecture:
    if arch not in ARCHS:
        raise KeyError(f"unknown detector architecture {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]()


def build_detector(arch: str, *, backbone: str, num_classes: int, **model_kwargs) -> nn.Module:
    return get_architecture(arch).build_model(backbone=backbone, num_classes=num_classes, **model_kwargs)


def build_criterion(arch: str, *, num_classes: int, model_kwargs: dict | None = None, **loss_kwargs) -> nn.Module:
    """The architecture's criterion; ``model_kwargs`` supplies the structure it must follow (decoder
    layers, aux loss, two-stage), ``loss_kwargs`` the matcher costs and loss weights."""
    spec = get_architecture(arch)
    structure = {k: v for k, v in (model_kwargs or {}).items() if k in spec.structure_keys}
    return spec.build_criterion(num_classes=num_classes, **structure, **loss_kwargs)


def build_postprocessor(arch: str, num_select: int = 100) -> nn.Module:
    return get_architecture(arch).build_postprocessor(num_select)
