"""A tiny generated COCO-format dataset for detection tests (an importable helper function, not a fixture).

Images show filled rectangles/ellipses/triangles (one category each, with non-contiguous COCO
ids 2, 5, 9) on a noisy background; annotations include a crowd box and a degenerate
(zero-width) box, which loaders must drop, and one image has no objects. The standard layout
is written: ``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``
(both splits hold the same images, so a model can be scored on what it overfits; the
degenerate box is in the training split only, as COCOeval cannot match a zero-area box).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 2, "name": "rectangle"}, {"id": 5, "name": "ellipse"}, {"id": 9, "name": "triangle"}]


def _draw(draw: ImageDraw.ImageDraw, cat_id: int, box: list[float], color: tuple[int, int, int]) -> None:
    x, y, w, h = box
    if cat_id == 2:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
    elif cat_id == 5:
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=color)
    else:
        draw.polygon([(x, y + h - 1), (x + w - 1, y + h - 1), (x + (w - 1) / 2, y)], fill=color)


def make_tiny_coco(root: str | os.PathLike, num_images: int = 8, size: tuple[int, int] = (96, 128), seed: int = 0,
                   max_objects: int = 3) -> dict[str, str]:
    """Write the dataset under ``root``; ``size`` = (height, width) of image 0 (others vary by ±16 px).

    Returns ``{"root", "train_ann", "train_images", "val_ann", "val_images"}`` (``root`` works with ``--coco``).
    Image ``num_images - 1`` has no objects; image 0 also carries a crowd box (and, in train, a degenerate box).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        height, width = (size if i == 0 else (size[0] + int(rng.integers(-1, 2)) * 16, size[1] + int(rng.integers(-1, 2)) * 16))
        background = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        picture = Image.fromarray(background)
        draw = ImageDraw.Draw(picture)
        count = 0 if i == num_images - 1 else int(rng.integers(1, max_objects + 1))
        for _ in range(count):
            w, h = int(rng.integers(width // 5, width // 2)), int(rng.integers(height // 5, height // 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]["id"]
            color = tuple(int(c) for c in rng.integers(120, 256, 3))
            _draw(draw, cat, [x, y, w, h], color)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                                "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0})
        if i == 0:
            annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 2,
                                "bbox": [0, 0, width / 2, height / 2], "area": width * height / 4, "iscrowd": 1})
            annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 5,
                                "bbox": [10, 10, 0, 20], "area": 0.0, "iscrowd": 0, "degenerate": True})
        name = f"{i + 1:012d}.jpg"
        for split in ("train2017", "val2017"):
            picture.save(root / split / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
    paths = {"root": str(root)}
    for split in ("train", "val"):
        # COCOeval cannot match a zero-area box, so only the training split carries it
        kept = [a for a in annotations if split == "train" or not a.get("degenerate")]
        ann = root / "annotations" / f"instances_{split}2017.json"
        ann.write_text(json.dumps({"images": images, "annotations": kept, "categories": CATEGORIES}))
        paths[f"{split}_ann"], paths[f"{split}_images"] = str(ann), str(root / f"{split}2017")
    return paths

