"""The training objective of ``train-classifier``: label smoothing or Mixup/CutMix, and DeiT hard distillation.

Built from timm's pieces (``timm.data.Mixup``, ``SoftTargetCrossEntropy``, ``LabelSmoothingCrossEntropy``);
``DistillationLoss`` is DeiT's hard distillation: ``½·base(cls_head, y) + ½·CE(dist_head, argmax teacher)``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.nn import functional as F

import pit


class DistillationLoss(nn.Module):
    """DeiT hard distillation: ½·base(cls_logits, targets) + ½·CE(dist_logits, argmax teacher(images))."""

    def __init__(self, base: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.teacher = teacher.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, tuple):
            raise ValueError("distillation needs a two-head model (e.g. pit_ti_distilled, deit_tiny_distilled_patch16_224)")
        cls_logits, dist_logits = outputs
        with torch.no_grad():
            teacher_labels = self.teacher(images).argmax(dim=1)
        return 0.5 * self.base(cls_logits, targets) + 0.5 * F.cross_entropy(dist_logits, teacher_labels)


def build_objective(num_classes: int, device: torch.device, *, mixup: float = 0.0, cutmix: float = 0.0,
                    label_smoothing: float = 0.0, teacher: str | None = None, teacher_weights: str | None = None,
                    teacher_kwargs: dict[str, Any] | None = None, img_size: int | None = None
                    ) -> tuple[Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor], Mixup | None]:
    """(loss(images, outputs, targets), Mixup or None) for a recipe: Mixup/CutMix alphas (0 = off; soft-target
    CE), else label smoothing, else CE; with ``teacher`` (a [0, 1]-pixel model built by ``pit``), DeiT hard
    distillation. ``outputs`` is the model's logits, or a (cls, dist) pair from a two-head model."""
    mix = None
    if mixup > 0 or cutmix > 0:
        mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)
        base: nn.Module = SoftTargetCrossEntropy()
    elif label_smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    else:
        base = nn.CrossEntropyLoss()
    if teacher is not None:
        model = pit.create_pixel_model(teacher, weights=teacher_weights, num_classes=num_classes, img_size=img_size,
                                       **(teacher_kwargs or {}))
        return DistillationLoss(base, model.to(device)), mix

    def loss(images: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, tuple):  # a two-head model trained without a teacher: both heads on the labels
            return sum(base(o, targets) for o in outputs) / len(outputs)
        return base(outputs, targets)

    return loss, mix
