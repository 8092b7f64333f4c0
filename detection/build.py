"""Architecture registry: ``--arch detr|deformable`` → detector, criterion, post-processor.

Every detector takes ``(images (B, 3, H, W) normalised, mask (B, H, W) True = padding)`` and
returns ``pred_logits``/``pred_boxes`` (normalised cxcywh)/``aux_outputs``; every criterion
returns a dict of losses and has ``weight_dict``; every post-processor maps
``(outputs, target_sizes (B, 2) = (h, w))`` to per-image ``scores``/``labels``/``boxes`` (abs xywh).
"""
from __future__ import annotations

from typing import Callable

from torch import nn


def _detr() -> tuple[Callable, Callable, Callable]:
    from detection.criterion import build_detr_criterion
    from detection.detr import PostProcess, build_detr

    return build_detr, build_detr_criterion, PostProcess


def _deformable() -> tuple[Callable, Callable, Callable]:
    try:
        from detection.deformable import PostProcessDeformable, build_deformable_criterion, build_deformable_detector
    except ImportError as exc:
        raise ValueError(f"--arch deformable is unavailable: detection.deformable failed to import ({exc})") from exc
    return build_deformable_detector, build_deformable_criterion, PostProcessDeformable


ARCHS: dict[str, Callable[[], tuple[Callable, Callable, Callable]]] = {"detr": _detr, "deformable": _deformable}


def _arch(arch: str) -> tuple[Callable, Callable, Callable]:
    if arch not in ARCHS:
        raise KeyError(f"unknown detector architecture {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]()


def build_detector(arch: str, *, backbone: str, num_classes: int, **model_kwargs) -> nn.Module:
    return _arch(arch)[0](backbone=backbone, num_classes=num_classes, **model_kwargs)


def build_criterion(arch: str, *, num_classes: int, **kw) -> nn.Module:
    """``kw`` may hold model kwargs too: only those the criterion builder accepts are passed (e.g. dec_layers)."""
    import inspect

    builder = _arch(arch)[1]
    accepted = inspect.signature(builder).parameters
    return builder(num_classes=num_classes, **{k: v for k, v in kw.items() if k in accepted})


def build_postprocessor(arch: str) -> nn.Module:
    return _arch(arch)[2]()
