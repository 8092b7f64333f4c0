"""Draw predictions (red, with scores) against ground truth (green) as PNGs."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes

from detection.data import CocoDetection


def save_visualizations(dataset: CocoDetection, predictions: dict[int, dict], out_dir: str | Path, count: int,
                        score_threshold: float = 0.5) -> list[Path]:
    """For the first ``count`` predicted images: original image, GT boxes, predictions with score ≥ threshold.

    ``predictions``: ``{image_id: {"scores", "labels" (contiguous), "boxes" (abs xywh, original size)}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    transforms, dataset.transforms = dataset.transforms, None
    written = []
    try:
        for index, image_id in enumerate(dataset.ids):
            if len(written) >= count:
                break
            if image_id not in predictions:
                continue
            sample = dataset[index]
            if sample is None:  # unreadable: the dataset warned
                continue
            image, target = sample
            h, w = image.shape[-2:]
            canvas = (image * 255).to(torch.uint8)
            gt = box_convert(target["boxes"] * torch.tensor([w, h, w, h]), "cxcywh", "xyxy")
            if len(gt):
                canvas = draw_bounding_boxes(canvas, gt, colors="lime", width=2)
            pred = predictions[image_id]
            keep = pred["scores"] >= score_threshold
            names = [f"{dataset.category_names[l]} {s:.2f}" for l, s in zip(pred["labels"][keep].tolist(), pred["scores"][keep].tolist())]
            if names:
                canvas = draw_bounding_boxes(canvas, box_convert(pred["boxes"][keep], "xywh", "xyxy"), labels=names,
                                             colors="red", width=1)
            path = out_dir / f"{image_id}.png"
            Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(path)
            written.append(path)
    finally:
        dataset.transforms = transforms
    return written
