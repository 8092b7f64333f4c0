"""pycocotools bbox evaluation with torchvision's update → synchronize → summarize lifecycle, exactly once
under ``torchrun``: every process's detections are gathered on rank 0, which alone runs COCOeval and
hands its numbers to every process."""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from common.distributed import gather_to_main, main_decides

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


class CocoEvaluator:
    """Collects detections (contiguous labels → COCO ids via ``cat_ids``) and scores them with COCOeval.

    After :meth:`synchronize`, rank 0's ``results`` hold every process's detections in the COCO results
    format, sorted by image id (each image's in the detector's order): the same list on any number of
    processes; the other ranks hold none."""

    def __init__(self, coco_gt: COCO, cat_ids: list[int]) -> None:
        self.coco_gt, self.cat_ids = coco_gt, list(cat_ids)
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, predictions: dict[int, dict[str, Tensor]]) -> None:
        """``{image_id: {"scores": (N,), "labels": (N,) contiguous, "boxes": (N, 4) absolute xywh}}``."""
        for image_id, pred in predictions.items():
            self.image_ids.append(int(image_id))
            boxes, scores, labels = (pred[k].detach().float().cpu().tolist() if k != "labels" else pred[k].cpu().tolist()
                                     for k in ("boxes", "scores", "labels"))
            self.results.extend({"image_id": int(image_id), "category_id": self.cat_ids[label], "bbox": box, "score": score}
                                for box, score, label in zip(boxes, scores, labels))

    def synchronize(self) -> None:
        """Every process's detections and image ids on rank 0 (a collective; a no-op on one process)."""
        parts = gather_to_main((self.results, self.image_ids))
        if parts is None:
            self.results, self.image_ids = [], []
            return
        self.results = sorted((r for results, _ in parts for r in results), key=lambda r: r["image_id"])
        self.image_ids = sorted(i for _, ids in parts for i in ids)

    def summarize(self) -> dict:
        """COCOeval on rank 0 over the synchronised detections → ``{"AP", "AP50", ..., "ARl", "stats": [12
        floats], "summary": text}`` on every process (a collective). Raises ValueError on every process when
        no image was scored, or one was scored twice (a loader that pads its shards)."""
        return main_decides(self._score)

    def _score(self) -> dict:
        check_scored_once(self.image_ids)
        return coco_stats(self.coco_gt, self.results, self.image_ids)


def check_scored_once(image_ids: list[int]) -> None:
    """ValueError when no image was scored, or one was scored twice (sorted ``image_ids``: a loader that pads
    its shards)."""
    twice = sorted({i for i, j in zip(image_ids, image_ids[1:]) if i == j})
    if twice:
        raise ValueError(f"images {twice[:5]} were scored more than once: the evaluation loader must give each "
                         "image to one process only (common.distributed.ShardSampler)")
    if not image_ids:
        raise ValueError("every evaluation image was unreadable (see the warnings above): nothing to score")


def coco_stats(coco_gt: COCO, results: list[dict], image_ids: list[int]) -> dict:
    """COCOeval bbox of ``results`` (COCO results format) over ``image_ids`` → ``{"AP", ..., "ARl", "stats":
    [12 floats], "summary": text}`` (all 0 without detections). ``loadRes`` adds keys to the result dicts."""
    if not results:
        stats, text = np.zeros(12), "no detections: every metric is 0\n"
    else:
        with contextlib.redirect_stdout(io.StringIO()) as buffer:
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats, text = evaluator.stats, buffer.getvalue()
    stats = [float(s) for s in stats]
    return {**dict(zip(STAT_NAMES, stats)), "stats": stats, "summary": text}
