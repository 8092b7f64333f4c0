"""The one set loss of DETR and Deformable DETR: Hungarian matching, then class + box losses on
the matched pairs, for the last decoder layer, every auxiliary layer and (two-stage Deformable
DETR) the class-agnostic encoder proposals."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from common.distributed import all_reduce_sum, get_world_size


def weight_dict(num_decoder_layers: int, cls: float = 1.0, bbox: float = 5.0, giou: float = 2.0,
                two_stage: bool = False) -> dict[str, float]:
    """Loss weights for the last decoder layer, the ``num_decoder_layers - 1`` auxiliary ones
    (suffix ``_i``) and, ``two_stage``, the encoder proposals (suffix ``_enc``)."""
    base = {"loss_ce": cls, "loss_bbox": bbox, "loss_giou": giou}
    weights = dict(base)
    for i in range(num_decoder_layers - 1):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    if two_stage:
        weights.update({f"{k}_enc": v for k, v in base.items()})
    return weights


def detr_weight_dict(num_decoder_layers: int, cls: float = 1.0, bbox: float = 5.0, giou: float = 2.0) -> dict[str, float]:
    """DETR's weights (no encoder proposals): see :func:`weight_dict`."""
    return weight_dict(num_decoder_layers, cls, bbox, giou)


class SetCriterion(nn.Module):
    """Set-prediction loss of DETR.

    ``forward(outputs, targets)`` with the model's dict (``pred_logits`` (B, Q, K+1),
    ``pred_boxes`` (B, Q, 4) normalised cxcywh, optional ``aux_outputs``) and targets
    (list of dicts with ``labels`` (n,), ``boxes`` (n, 4) normalised cxcywh) returns
    unweighted losses ``loss_ce``, ``loss_bbox`` (L1), ``loss_giou`` (1 − GIoU), and
    ``cardinality_error`` (logged only), plus ``*_i`` for auxiliary layer i. Box losses are
    averaged over the number of target boxes, summed across processes.

    ``focal=True`` switches classification to sigmoid focal loss over (B, Q, K) logits
    without a no-object class (Deformable DETR), averaged over the number of boxes; with
    ``outputs["enc_outputs"]`` (two-stage) the encoder proposals add ``*_enc`` losses against
    class-agnostic targets (every label 0).
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float], eos_coef: float = 0.1,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, weight_dict
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float) -> dict[str, Tensor]:
        logits = outputs["pred_logits"].float()
        batch_idx, query_idx = _flat_indices(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch_idx, query_idx] = matched
        if self.focal:
            onehot = F.one_hot(classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
            loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum")
            return {"loss_ce": loss / num_boxes}
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight)}

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        if self.focal:
            predicted = (logits.sigmoid().amax(-1) > 0.5).sum(1)
        else:
            predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        counts = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        return {"cardinality_error": F.l1_loss(predicted.float(), counts.float())}

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float) -> dict[str, Tensor]:
        batch_idx, query_idx = _flat_indices(indices)
        src = outputs["pred_boxes"][batch_idx, query_idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        giou = torch.diag(generalized_box_iou(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")))
        return {"loss_bbox": F.l1_loss(src, tgt, reduction="sum") / num_boxes,
                "loss_giou": (1 - giou).sum() / num_boxes}

    def layer_losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        return {**self.loss_labels(outputs, targets, indices, num_boxes),
                **self.loss_boxes(outputs, targets, indices, num_boxes),
                **self.loss_cardinality(outputs, targets)}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        device = outputs["pred_boxes"].device
        num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        num_boxes = max(all_reduce_sum(num_boxes).item() / get_world_size(), 1.0)
        losses = self.layer_losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self.layer_losses(aux, targets, num_boxes).items()})
        if "enc_outputs" in outputs:
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update({f"{k}_enc": v for k, v in self.layer_losses(outputs["enc_outputs"], binary, num_boxes).items()})
        return losses


def _flat_indices(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch_idx, torch.cat([src for src, _ in indices])


def build_set_criterion(*, num_classes: int, focal: bool, set_cost_class: float, set_cost_bbox: float,
                        set_cost_giou: float, cls_loss_coef: float, bbox_loss_coef: float, giou_loss_coef: float,
                        dec_layers: int = 6, aux_loss: bool = True, two_stage: bool = False,
                        eos_coef: float | None = None, focal_alpha: float | None = None,
                        focal_gamma: float = 2.0) -> SetCriterion:
    """A :class:`SetCriterion` with its matcher from explicit numbers (``eos_coef``: the softmax loss's no-object
    weight, required unless ``focal``; ``focal_alpha``/``focal_gamma``: the focal loss's, alpha required with
    ``focal``); the per-arch builders below take them from the presets."""
    from detection.matcher import HungarianMatcher

    needed = "focal_alpha" if focal else "eos_coef"
    if {"focal_alpha": focal_alpha, "eos_coef": eos_coef}[needed] is None:
        raise TypeError(f"build_set_criterion(focal={focal}) needs {needed}")
    eos_coef, focal_alpha = eos_coef or 0.0, focal_alpha or 0.0

    matcher = HungarianMatcher(set_cost_class, set_cost_bbox, set_cost_giou, focal=focal,
                               focal_alpha=focal_alpha, focal_gamma=focal_gamma)
    weights = weight_dict(dec_layers if aux_loss else 1, cls_loss_coef, bbox_loss_coef, giou_loss_coef, two_stage)
    return SetCriterion(num_classes, matcher, weights, eos_coef=eos_coef, focal=focal,
                        focal_alpha=focal_alpha, focal_gamma=focal_gamma)


def _official_numbers(arch: str, loss_kw: dict[str, float]) -> dict[str, float]:
    """The official recipe's matcher costs and loss weights (``detection.presets``), ``loss_kw`` replacing some."""
    from detection.presets import ARCH_DEFAULT, PRESETS

    return {**PRESETS[ARCH_DEFAULT[arch]].criterion_kwargs, **loss_kw}


def build_detr_criterion(*, num_classes: int, dec_layers: int = 6, aux_loss: bool = True, **loss_kw: float) -> SetCriterion:
    """DETR's criterion: softmax CE with a no-object weight; numbers of the ``detr-r50`` preset unless given."""
    return build_set_criterion(num_classes=num_classes, focal=False, dec_layers=dec_layers, aux_loss=aux_loss,
                               **_official_numbers("detr", loss_kw))


def build_deformable_criterion(*, num_classes: int, dec_layers: int = 6, aux_loss: bool = True, two_stage: bool = False,
                               **loss_kw: float) -> SetCriterion:
    """Deformable DETR's criterion: sigmoid focal loss; numbers of the ``deformable`` preset unless given."""
    if "eos_coef" in loss_kw:
        raise TypeError("Deformable DETR's focal loss has no eos_coef (no-object weight)")
    return build_set_criterion(num_classes=num_classes, focal=True, dec_layers=dec_layers, aux_loss=aux_loss,
                               two_stage=two_stage, **_official_numbers("deformable", loss_kw))
