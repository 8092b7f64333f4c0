"""Hungarian matching of predictions to ground truth (DETR), solved by scipy."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``cost_class·C_cls + cost_bbox·L1 + cost_giou·(−GIoU)``.

    ``forward(outputs, targets)``: ``outputs["pred_logits"]`` (B, Q, K+1) softmax logits (DETR,
    last class = no object) or (B, Q, K) sigmoid logits with ``focal=True`` (Deformable DETR's
    focal class cost); ``outputs["pred_boxes"]`` (B, Q, 4) normalised cxcywh; ``targets`` a list
    of B dicts with ``labels`` (n,) int64 in 0..K-1 and ``boxes`` (n, 4) normalised cxcywh.
    Returns per image ``(query_idx, target_idx)`` int64 tensors of length min(Q, n) (empty for an
    image without objects), on the CPU.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(N, K[+1]) logits, (M,) labels → (N, M) classification cost."""
        if not self.focal:
            return -logits.softmax(-1)[:, labels]
        prob = logits.sigmoid()[:, labels]
        a, g = self.focal_alpha, self.focal_gamma
        neg = (1 - a) * prob**g * -(1 - prob + 1e-8).log()
        pos = a * (1 - prob) ** g * -(prob + 1e-8).log()
        return pos - neg

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        batch, queries = outputs["pred_logits"].shape[:2]
        logits = outputs["pred_logits"].flatten(0, 1).float()
        boxes = outputs["pred_boxes"].flatten(0, 1).float()
        labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)
        empty = torch.empty(0, dtype=torch.int64)
        if len(labels) == 0:
            return [(empty, empty) for _ in targets]
        cost = (self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                + self.cost_class * self.class_cost(logits, labels)
                - self.cost_giou * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                                       box_convert(tgt_boxes, "cxcywh", "xyxy")))
        cost = cost.view(batch, queries, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        result = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i].numpy())
            result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return result
