"""Deformable DETR's set loss: Hungarian matching, sigmoid focal loss over all queries × classes
(no no-object class), L1 and GIoU on matched boxes, for the final layer, every auxiliary
decoder layer and (two-stage) the class-agnostic encoder proposals."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from common.distributed import all_reduce_sum, get_world_size


def _matched_indices(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


class DeformableSetCriterion(nn.Module):
    """Focal + L1 + GIoU set loss.

    Args:
        num_classes: K (labels 0..K-1).
        matcher: callable ``(outputs, targets) -> [(query_idx, target_idx), ...]`` per image,
            with a focal-style class cost for sigmoid logits.
        weight_dict: loss name → weight, including ``_{i}`` (aux layer i) and ``_enc`` suffixes.
        focal_alpha, focal_gamma: focal-loss parameters (0.25, 2).

    ``forward(outputs, targets)``: ``outputs`` as returned by :class:`DeformableDETR`
    (``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalised cxcywh); ``targets`` a list
    of dicts with ``labels`` (n,) long and ``boxes`` (n, 4) normalised cxcywh. Returns
    unweighted losses (``loss_ce``, ``loss_bbox``, ``loss_giou`` and suffixed variants) plus
    ``cardinality_error`` (logged only); the total is ``Σ weight_dict[k]·losses[k]``.
    """

    def __init__(
        self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float],
        focal_alpha: float = 0.25, focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, weight_dict
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def _num_boxes(self, targets: list[dict], device: torch.device) -> float:
        total = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        return max(all_reduce_sum(total).item() / get_world_size(), 1.0)

    def _losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch_idx, query_idx = _matched_indices(indices)
        onehot = torch.zeros_like(logits)
        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(logits.device)
        onehot[batch_idx, query_idx, matched_labels] = 1.0
        loss_ce = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
        src_boxes = boxes[batch_idx, query_idx]
        tgt_boxes = torch.cat([t["boxes"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(boxes)
        loss_bbox = (src_boxes - tgt_boxes).abs().sum()
        loss_giou = generalized_box_iou_loss(
            box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"), reduction="sum"
        )
        with torch.no_grad():
            predicted = (logits.sigmoid().amax(-1) > 0.5).sum(1).float()
            counts = torch.tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        return {
            "loss_ce": loss_ce / num_boxes,
            "loss_bbox": loss_bbox / num_boxes,
            "loss_giou": loss_giou / num_boxes,
            "cardinality_error": (predicted - counts).abs().mean(),
        }

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes).items()})
        if "enc_outputs" in outputs:
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update({f"{k}_enc": v for k, v in self._losses(outputs["enc_outputs"], binary, num_boxes).items()})
        return losses


def deformable_weight_dict(
    num_decoder_layers: int, two_stage: bool, cls_loss_coef: float = 2.0, bbox_loss_coef: float = 5.0,
    giou_loss_coef: float = 2.0,
) -> dict[str, float]:
    """Deformable DETR's loss weights (focal 2, L1 5, GIoU 2) for the final layer, the
    ``num_decoder_layers - 1`` auxiliary layers and (two-stage) the encoder proposals."""
    base = {"loss_ce": cls_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    weights = dict(base)
    for i in range(num_decoder_layers - 1):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    if two_stage:
        weights.update({f"{k}_enc": v for k, v in base.items()})
    return weights


def build_deformable_criterion(
    *, num_classes: int, dec_layers: int = 6, two_stage: bool = False, aux_loss: bool = True,
    set_cost_class: float = 2.0, set_cost_bbox: float = 5.0, set_cost_giou: float = 2.0,
    cls_loss_coef: float = 2.0, bbox_loss_coef: float = 5.0, giou_loss_coef: float = 2.0,
    focal_alpha: float = 0.25, focal_gamma: float = 2.0,
) -> DeformableSetCriterion:
    """Deformable DETR's criterion: ``detection.matcher.HungarianMatcher`` with the focal class
    cost (class 2 / L1 5 / GIoU 2) and loss weights focal 2 / L1 5 / GIoU 2, for
    ``dec_layers`` decoder outputs (aux ones only if ``aux_loss``) and the two-stage proposals."""
    from detection.matcher import HungarianMatcher

    matcher = HungarianMatcher(
        cost_class=set_cost_class, cost_bbox=set_cost_bbox, cost_giou=set_cost_giou,
        focal=True, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
    )
    weights = deformable_weight_dict(
        dec_layers if aux_loss else 1, two_stage, cls_loss_coef, bbox_loss_coef, giou_loss_coef
    )
    return DeformableSetCriterion(num_classes, matcher, weights, focal_alpha, focal_gamma)
