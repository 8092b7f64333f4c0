"""Deformable DETR predictions → per-image detections in absolute COCO boxes."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


class PostProcessDeformable(nn.Module):
    """Top-``num_select`` (query, class) pairs by sigmoid score, as Deformable DETR does; a
    query may therefore appear with several classes.

    ``forward(outputs, target_sizes)``: ``outputs["pred_logits"]`` (B, Q, K) logits,
    ``outputs["pred_boxes"]`` (B, Q, 4) normalised cxcywh; ``target_sizes`` (B, 2) (height,
    width) of the original images. Returns per image ``{"scores": (N,), "labels": (N,) in
    0..K-1, "boxes": (N, 4) absolute (x, y, w, h) pixels of the original image}``.
    """

    def __init__(self, num_select: int = 100) -> None:
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes):
            raise ValueError(f"{len(logits)} predictions but {len(target_sizes)} target sizes")
        num_classes = logits.shape[-1]
        prob = logits.sigmoid().flatten(1)
        scores, flat_idx = prob.topk(min(self.num_select, prob.shape[1]), dim=1)
        query_idx, labels = flat_idx // num_classes, flat_idx % num_classes
        selected = torch.gather(boxes, 1, query_idx[..., None].expand(-1, -1, 4))
        height, width = target_sizes.to(boxes.dtype).unbind(1)
        scale = torch.stack([width, height, width, height], 1)[:, None]
        xywh = box_convert(selected * scale, "cxcywh", "xywh")
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xywh)]
