"""COCO-format detection data: pycocotools loading, DETR's augmentation on torchvision
``transforms.v2``, and a collate that pads batches with masks.

Samples are ``(image (3, H, W) float in [0, 1] (NOT normalised: the engine normalises with the
backbone's mean/std), target)`` with target ``labels`` (n,) contiguous 0..K-1, ``boxes`` (n, 4)
normalised cxcywh w.r.t. the transformed image, ``image_id``, ``orig_size`` (h, w) and ``size``.
"""
from __future__ import annotations

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

DEFAULT_SCALES = list(range(480, 801, 32))


def coco_paths(coco_dir: str | os.PathLike) -> dict[str, str]:
    """Standard COCO layout → ``train_ann``, ``train_images``, ``val_ann``, ``val_images``."""
    root = Path(coco_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"COCO folder {root} does not exist")
    return {"train_ann": str(root / "annotations" / "instances_train2017.json"), "train_images": str(root / "train2017"),
            "val_ann": str(root / "annotations" / "instances_val2017.json"), "val_images": str(root / "val2017")}


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
        return TF.crop(inpt, **params)


def make_transforms(train: bool, scales: list[int] | None = None, max_size: int | None = None,
                    test_size: int | None = None, img_scale: float = 1.0) -> v2.Transform:
    """DETR's recipe: train = flip, then either a multi-scale resize of the short side (``scales``,
    long side ≤ ``max_size``) or resize 400/500/600 + random crop 384–600 + multi-scale resize;
    test = short side ``test_size`` (long ≤ ``max_size``). All sizes are multiplied by ``img_scale``."""
    scaled = lambda v: max(int(v * img_scale + 0.5), 8)  # noqa: E731  (round half up: 1333 * 0.5 -> 667)
    scales = [scaled(s) for s in (scales or DEFAULT_SCALES)]
    max_size = scaled(max_size or 1333)
    test_size = scaled(test_size or 800)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if not train:
        return v2.Compose([*to_tensor, v2.Resize(test_size, max_size=max_size)])
    crop = v2.Compose([v2.RandomShortestSize([scaled(s) for s in (400, 500, 600)]), RandomSizeCrop(scaled(384), scaled(600)),
                       v2.RandomShortestSize(scales, max_size=max_size)])
    return v2.Compose([*to_tensor, v2.RandomHorizontalFlip(),
                       v2.RandomChoice([v2.RandomShortestSize(scales, max_size=max_size), crop]),
                       v2.SanitizeBoundingBoxes(min_size=1.0)])


class CocoDetection(torch.utils.data.Dataset):
    """Any COCO-format set (validated by :func:`detection.annotations.load_coco`). Crowd and degenerate
    boxes are dropped; category ids map to contiguous labels (``cat_ids[label]`` = COCO id,
    ``label_of[coco_id]`` = label). Images missing on disk or empty are left out at start, and an image
    that fails to decode is skipped when read (``None``, dropped by :func:`collate`), each with a warning
    naming the file; a set with no image left is an error."""

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, transforms: v2.Transform | None = None) -> None:
        self.coco = load_coco(ann_file)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found")
        self.ids = _present_images(self.coco, self.image_dir, ann_file)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i for i, c in enumerate(self.cat_ids)}
        self.category_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
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
