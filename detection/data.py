"""COCO-format detection data: pycocotools loading, DETR's augmentation on torchvision
``transforms.v2``, and a collate that pads batches with masks.

Samples are ``(image (3, H, W) float in [0, 1] (not normalised: every detector normalises inside
itself), target)`` with target ``labels`` (n,) contiguous 0..K-1, ``boxes`` (n, 4)
normalised cxcywh w.r.t. the transformed image, ``image_id``, ``orig_size`` (h, w) and ``size``.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from detection.annotations import load_coco
from detection.presets import ImageSizes


def coco_paths(coco_dir: str | os.PathLike) -> dict[str, str]:
    """Standard COCO layout → ``train_ann``, ``train_images``, ``val_ann``, ``val_images``."""
    root = Path(coco_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"COCO folder {root} does not exist")
    return {"train_ann": str(root / "annotations" / "instances_train2017.json"), "train_images": str(root / "train2017"),
            "val_ann": str(root / "annotations" / "instances_val2017.json"), "val_images": str(root / "val2017")}


def get_size(width: int, height: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """The official DETR resize rule → (new height, new width): the short side becomes ``size``
    unless the long side would exceed ``max_size``, in which case the short side becomes
    ``round(max_size · short / long)``; the other side is truncated (``int``), and an image whose
    short side already equals the size is left as it is."""
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class RandomResize(v2.Transform):
    """Resize to :func:`get_size` of a short side drawn from ``sizes`` (official ``RandomResize``)."""

    def __init__(self, sizes: list[int] | tuple[int, ...], max_size: int | None = None) -> None:
        super().__init__()
        self.sizes, self.max_size = list(sizes), max_size

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ())) if len(self.sizes) > 1 else 0]  # test: no RNG draw
        return {"size": list(get_size(width, height, size, self.max_size))}

    def transform(self, inpt, params: dict):
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


class RandomSizeCrop(v2.Transform):
    """Crop a random (h, w) with each side in [min_size, min(max_size, side)] (DETR's RandomSizeCrop)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        return {"top": int(torch.randint(0, height - h + 1, ())), "left": int(torch.randint(0, width - w + 1, ())),
                "height": h, "width": w}

    def transform(self, inpt, params: dict):
        return self._call_kernel(TF.crop, inpt, **params)


class DropEmptyBoxes(v2.Transform):
    """Drop boxes left with zero width or height (after a crop), and their labels, as the official
    ``crop`` does (``x1 > x0 and y1 > y0``, no minimum size)."""

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        image, target = sample
        boxes = target["boxes"]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {**target, "boxes": tv_tensors.wrap(boxes[keep], like=boxes), "labels": target["labels"][keep]}
        return image, target


def resolve_sizes(sizes: ImageSizes | None = None, *, scales: list[int] | None = None, max_size: int | None = None,
                  test_size: int | None = None, img_scale: float = 1.0) -> ImageSizes:
    """``sizes`` (default: the official ones) with the explicitly given sizes replacing its own, all × ``img_scale``."""
    explicit = {"train_scales": tuple(scales or ()), "max_size": max_size, "test_size": test_size}
    sizes = dataclasses.replace(sizes or ImageSizes(), **{k: v for k, v in explicit.items() if v})
    return sizes.scaled(img_scale) if img_scale != 1.0 else sizes


def make_transforms(train: bool, sizes: ImageSizes | None = None, *, scales: list[int] | None = None,
                    max_size: int | None = None, test_size: int | None = None, img_scale: float = 1.0) -> v2.Transform:
    """DETR's recipe on [0, 1] tensors (sizes from ``sizes``, default the official ones; explicit
    ``scales``/``max_size``/``test_size`` replace them; everything is then multiplied by ``img_scale``):
    train = flip, then either :class:`RandomResize` over the scales or resize + random crop + resize,
    empty boxes dropped; test = :func:`get_size` of ``test_size``."""
    sizes = resolve_sizes(sizes, scales=scales, max_size=max_size, test_size=test_size, img_scale=img_scale)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if not train:
        return v2.Compose([*to_tensor, RandomResize([sizes.test_size], sizes.max_size)])
    crop = v2.Compose([RandomResize(sizes.resize_scales), RandomSizeCrop(*sizes.crop_size),
                       RandomResize(sizes.train_scales, sizes.max_size)])
    return v2.Compose([*to_tensor, v2.RandomHorizontalFlip(),
                       v2.RandomChoice([RandomResize(sizes.train_scales, sizes.max_size), crop]), DropEmptyBoxes()])


class CocoDetection(torch.utils.data.Dataset):
    """Any COCO-format set (validated by :func:`detection.annotations.load_coco`). Crowd and degenerate
    boxes are dropped; category ids are mapped to labels (``cat_ids[label]`` = COCO id, ``label_of[coco_id]``
    = label): contiguous 0..K-1, or with ``label_space="coco-ids"`` the category id itself (as the official
    91-row heads). Images missing on disk or empty are left out at start, and an image that fails to decode
    is skipped when read (``None``, dropped by :func:`collate`), each with a warning naming the file; a set
    with no image left is an error."""

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, transforms: v2.Transform | None = None,
                 label_space: str = "contiguous") -> None:
        self.coco = load_coco(ann_file)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found")
        self.ids = _present_images(self.coco, self.image_dir, ann_file)
        ids = sorted(self.coco.getCatIds())
        if label_space not in ("coco-ids", "contiguous"):
            raise ValueError(f"unknown label space {label_space!r}: use coco-ids or contiguous")
        # coco-ids: label = category id (rows without a category stay unused, as in the official 91-row heads)
        self.cat_ids = list(range(ids[-1] + 1)) if label_space == "coco-ids" else ids
        self.label_of = {c: (c if label_space == "coco-ids" else i) for i, c in enumerate(ids)}
        self.category_names = [self.coco.cats[c]["name"] if c in self.coco.cats else "N/A" for c in self.cat_ids]
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict] | None:
        image_id = self.ids[index]
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            warnings.warn(f"skipped unreadable image {path} (id {image_id}): {str(err).splitlines()[0][:100]}",
                          stacklevel=2)
            return None
        return self._sample(image, image_id)

    def _sample(self, image: Image.Image, image_id: int) -> tuple[Tensor, dict]:
        width, height = image.size
        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = box_convert(xywh, "xywh", "xyxy")
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)[keep]
        target = {"boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
                  "labels": labels}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        h, w = image.shape[-2:]
        boxes = box_convert(target["boxes"].as_subclass(torch.Tensor), "xyxy", "cxcywh")
        boxes = boxes / torch.tensor([w, h, w, h], dtype=torch.float32)
        return image.as_subclass(torch.Tensor), {
            "boxes": boxes, "labels": target["labels"], "image_id": image_id,
            "orig_size": torch.tensor([height, width]), "size": torch.tensor([h, w])}


def _present_images(coco, image_dir: Path, ann_file: str | os.PathLike) -> list[int]:
    """Sorted ids of the listed images that exist on disk and are not empty (one warning for the rest)."""
    ids, absent = [], []
    for image_id in sorted(coco.getImgIds()):
        path = image_dir / coco.imgs[image_id]["file_name"]
        try:
            present = path.stat().st_size > 0 and path.is_file()
        except OSError:
            present = False
        (ids if present else absent).append(image_id if present else path.name)
    if absent and not ids:
        raise FileNotFoundError(f"every image listed in {ann_file} is missing on disk or empty in {image_dir} "
                                f"(e.g. {absent[0]}): check --coco / the --*-images folder")
    if absent:
        warnings.warn(f"skipped {len(absent)} of {len(absent) + len(ids)} images listed in {ann_file} that are "
                      f"missing on disk or empty in {image_dir} (e.g. {', '.join(absent[:3])})", stacklevel=3)
    return ids


def collate(batch: list[tuple[Tensor, dict] | None]) -> tuple[Tensor, Tensor, list[dict]] | None:
    """Pad to the largest (H, W) in the batch → images (B, 3, H, W) zero-padded, mask (B, H, W) True = padding.

    Unreadable samples (``None``) are dropped; a batch with none left is ``None``."""
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        return None
    images, targets = zip(*batch)
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    out = images[0].new_zeros(len(images), 3, height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool)
    for k, image in enumerate(images):
        out[k, :, : image.shape[1], : image.shape[2]] = image
        mask[k, : image.shape[1], : image.shape[2]] = False
    return out, mask, list(targets)
