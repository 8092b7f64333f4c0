"""pycocotools bbox evaluation with torchvision's update → synchronize → accumulate → summarize lifecycle."""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from common.distributed import all_gather_objects

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


class CocoEvaluator:
    """Collects detections (contiguous labels → COCO ids via ``cat_ids``) and scores them with COCOeval."""

    def __init__(self, coco_gt: COCO, cat_ids: list[int]) -> None:
        self.coco_gt, self.cat_ids = coco_gt, list(cat_ids)
        self.results: list[dict] = []
        self.image_ids: list[int] = []
        self.stats: np.ndarray | None = None

    def update(self, predictions: dict[int, dict[str, Tensor]]) -> None:
        """``{image_id: {"scores": (N,), "labels": (N,) contiguous, "boxes": (N, 4) absolute xywh}}``."""
        for image_id, pred in predictions.items():
            self.image_ids.append(int(image_id))
            boxes, scores, labels = (pred[k].detach().float().cpu().tolist() if k != "labels" else pred[k].cpu().tolist()
                                     for k in ("boxes", "scores", "labels"))
            self.results.extend({"image_id": int(image_id), "category_id": self.cat_ids[label], "bbox": box, "score": score}
                                for box, score, label in zip(boxes, scores, labels))

    def synchronize(self) -> None:
        """Gather every process's detections (a no-op on one process)."""
        self.results = [r for part in all_gather_objects(self.results) for r in part]
        self.image_ids = sorted({i for part in all_gather_objects(self.image_ids) for i in part})

    def summarize(self) -> dict:
        """Accumulate + summarise → ``{"AP", "AP50", ..., "ARl", "stats": [12 floats], "summary": text}``."""
        if not self.results:
            self.stats, text = np.zeros(12), "no detections: every metric is 0\n"
        else:
            with contextlib.redirect_stdout(io.StringIO()) as buffer:
                coco_dt = self.coco_gt.loadRes(self.results)
                evaluator = COCOeval(self.coco_gt, coco_dt, "bbox")
                evaluator.params.imgIds = self.image_ids or sorted(self.coco_gt.getImgIds())
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            self.stats, text = evaluator.stats, buffer.getvalue()
        stats = [float(s) for s in self.stats]
        return {**dict(zip(STAT_NAMES, stats)), "stats": stats, "summary": text}
