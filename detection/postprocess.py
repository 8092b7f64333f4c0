"""Detector outputs → per-image COCO detections: DETR's best class per query (softmax) and
Deformable DETR's top-k (query, class) pairs (sigmoid), sharing one box-scaling tail."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert


def to_detections(scores: Tensor, labels: Tensor, boxes: Tensor, target_sizes: Tensor) -> list[dict[str, Tensor]]:
    """(B, N) scores/labels and (B, N, 4) normalised cxcywh boxes → per image ``{"scores", "labels",
    "boxes": absolute xywh pixels}`` of an image of ``target_sizes`` (B, 2) = (height, width)."""
    if len(boxes) != len(target_sizes):
        raise ValueError(f"{len(boxes)} predictions but {len(target_sizes)} target sizes")
    height, width = target_sizes.to(torch.float32).unbind(1)
    scale = torch.stack([width, height, width, height], 1)[:, None]
    xywh = box_convert(boxes.float() * scale, "cxcywh", "xywh")
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xywh)]


class PostProcess(nn.Module):
    """DETR: the best non-"no object" class of every query (softmax over (B, Q, K+1) logits).

    ``forward(outputs, target_sizes (B, 2) = (height, width) of the original images)`` → list of
    ``{"scores": (Q,), "labels": (Q,) head rows 0..K-1, "boxes": (Q, 4) absolute xywh pixels}``.
    """

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        scores, labels = F.softmax(outputs["pred_logits"].float(), -1)[..., :-1].max(-1)
        return to_detections(scores, labels, outputs["pred_boxes"], target_sizes)


class PostProcessTopK(nn.Module):
    """Deformable DETR: the top-``num_select`` (query, class) pairs by sigmoid score over (B, Q, K)
    logits; a query may appear with several classes. Same output as :class:`PostProcess`."""

    def __init__(self, num_select: int = 100) -> None:
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        num_classes = logits.shape[-1]
        prob = logits.float().sigmoid().flatten(1)
        scores, flat_idx = prob.topk(min(self.num_select, prob.shape[1]), dim=1)
        query_idx, labels = flat_idx // num_classes, flat_idx % num_classes
        selected = torch.gather(boxes, 1, query_idx[..., None].expand(-1, -1, 4))
        return to_detections(scores, labels, selected, target_sizes)
