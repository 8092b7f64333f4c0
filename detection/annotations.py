"""Reading a COCO-format annotation file a user hands us, with one clear line for every defect.

Checks, in order: the file exists and is JSON; it holds an object with ``images``, ``annotations`` and
``categories`` lists; every image has an ``id`` and a relative ``file_name`` that stays inside the image
folder (no absolute paths, no ``..`` escaping it); every annotation names a known category and has a
``bbox`` ``[x, y, w, h]`` of four finite numbers (annotations of unlisted images are ignored, as
pycocotools does). Boxes of zero size, or lying wholly outside their image, are dropped with one
warning that counts them; a file in which every box is invalid, or that has no box other than crowd
boxes, is an error (there is nothing to learn or to score).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Validated ``pycocotools`` index of ``ann_file`` (invalid boxes dropped, see the module docstring)."""
    data = _read_json(Path(ann_file))
    _check_layout(data, ann_file)
    if not data["images"]:
        raise ValueError(f"{ann_file} lists no images: the dataset is empty")
    image_sizes = {img["id"]: (img.get("width"), img.get("height")) for img in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    listed = [a for a in data["annotations"] if _check_annotation(a, ann_file, image_sizes, cat_ids)]
    kept = [a for a in listed if _box_is_valid(a["bbox"], image_sizes[a["image_id"]])]
    dropped = len(listed) - len(kept)
    if dropped and not kept:
        raise ValueError(f"every box in {ann_file} ({dropped}) has zero size or lies outside its image: "
                         "check the bbox format ([x, y, width, height] in pixels)")
    if dropped:
        warnings.warn(f"dropped {dropped} of {len(listed)} boxes in {ann_file} with zero size or "
                      "outside their image", stacklevel=2)
    if not any(not a.get("iscrowd", 0) for a in kept):
        raise ValueError(f"{ann_file} has no annotated boxes (none, or only crowd boxes): there is nothing to "
                         "train on or score; give an annotation file with boxes")
    coco = COCO()
    coco.dataset = {**data, "annotations": kept}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _read_json(path: Path) -> Any:
    if not path.is_file():
        if path.is_dir():
            raise IsADirectoryError(f"annotation file {path} is a folder: give the .json file")
        raise FileNotFoundError(f"annotation file {path} not found (pass --coco DIR with annotations/, "
                                "or --train-ann/--val-ann)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"annotation file {path} is not valid JSON (line {err.lineno} column {err.colno}: "
                         f"{err.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"annotation file {path} is not JSON text (binary data): give a COCO .json file") from None


def _check_layout(data: Any, ann_file: str | os.PathLike) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {ann_file} holds a JSON {type(data).__name__}, expected a COCO object "
                         'with "images", "annotations" and "categories"')
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f'annotation file {ann_file} has no "{key}" list (COCO format: "images", '
                             '"annotations", "categories")')
    if not data["categories"]:
        raise ValueError(f"annotation file {ann_file} has no categories")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise ValueError(f'annotation file {ann_file}: category {cat!r} needs an integer "id" and a "name"')
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise ValueError(f'annotation file {ann_file}: image entry {str(img)[:80]} needs "id" and "file_name"')
        _check_file_name(img["file_name"], ann_file)


def _check_file_name(name: str, ann_file: str | os.PathLike) -> None:
    """Refuse names that would read outside the image folder (absolute, or escaping it with ``..``)."""
    normal = os.path.normpath(name)
    if os.path.isabs(name) or normal == os.pardir or normal.startswith(os.pardir + os.sep) or not name:
        raise ValueError(f"annotation file {ann_file}: image file_name {name!r} points outside the image folder "
                         "(absolute path or '..'): file names must be relative to the image folder")


def _check_annotation(ann: Any, ann_file: str | os.PathLike, image_sizes: dict, cat_ids: set[int]) -> bool:
    """Raise on a malformed annotation; False for one whose image is not listed (pycocotools ignores those)."""
    if not isinstance(ann, dict):
        raise ValueError(f"annotation file {ann_file}: annotation {str(ann)[:80]} is not an object")
    if ann.get("image_id") not in image_sizes:
        return False
    name = f"annotation id {ann.get('id')}"
    if ann.get("category_id") not in cat_ids:
        raise ValueError(f"annotation file {ann_file}: {name} has category id {ann.get('category_id')}, which is "
                         f"not in \"categories\" ({sorted(cat_ids)})")
    box = ann.get("bbox")
    if box is None:
        raise ValueError(f'annotation file {ann_file}: {name} has no "bbox" ([x, y, width, height] in pixels)')
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        raise ValueError(f"annotation file {ann_file}: {name} has bbox {str(box)[:60]}, expected four finite numbers "
                         "[x, y, width, height]")
    return True


def _box_is_valid(box: list[float], size: tuple[Any, Any]) -> bool:
    """Positive width and height, and (when the image size is known) overlapping the image."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return False
    width, height = size
    if isinstance(width, (int, float)) and isinstance(height, (int, float)):
        return x < width and y < height and x + w > 0 and y + h > 0
    return True
