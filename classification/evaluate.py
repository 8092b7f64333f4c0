"""ImageNet-style top-1/top-5 evaluation on a folder in the ImageNet val layout.

``DIR/<wnid>/*.JPEG`` where each ``wnid`` (``n01440764``, ...) is an ImageNet-1k synset; the
class index is the synset's position in ImageNet-1k (timm's ``ImageNetInfo``), so a folder
holding only some classes is still scored against 1000-way logits. The paper's eval transform
is resize 256 (bicubic) + centre crop 224, i.e. ``crop_pct = 224/256 = 0.875``. Loading is the
shared data layer's (``classification.data``): decoded once to uint8, unreadable images reported
and skipped, scaled to [0, 1] on the device. Models take [0, 1] pixels and normalise inside
themselves (``pit.NormalizedModel``).
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from classification.data import ImageFolderSet, build_class_index, make_loader, to_float
from classification.metrics import topk_correct
from common.autocast import autocast
from common.distributed import all_reduce_sum

__all__ = ["imagenet_val_set", "imagenet_val_loader", "evaluate_topk"]


def imagenet_val_set(root: str | os.PathLike, img_size: int = 224, crop_pct: float = 0.875,
                     limit: int | None = None) -> ImageFolderSet:
    """The ``root/<wnid>/*`` images labelled with ImageNet-1k indices; clear errors for other layouts."""
    return ImageFolderSet(root, build_class_index("imagenet", root), img_size, crop_pct, limit=limit)


def imagenet_val_loader(root: str | os.PathLike, img_size: int, crop_pct: float, batch_size: int,
                        workers: int, device: torch.device) -> DataLoader:
    """Ordered loader of uint8 ``(images, labels, indices)`` batches over :func:`imagenet_val_set`."""
    return make_loader(imagenet_val_set(root, img_size, crop_pct), batch_size, workers, device.type == "cuda")


@torch.inference_mode()
def evaluate_topk(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    amp: bool = False,
    channels_last: bool = False,
    desc: str = "eval",
    progress: bool = True,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (in %) and mean cross-entropy of ``model`` over uint8 ``(images, labels, _)`` batches.

    ``model`` takes [0, 1] pixels (B,3,H,W) and returns (B, K) logits; images are scaled to [0, 1] on
    the device, ``amp`` uses the suite's autocast policy. The model's train/eval mode is restored.
    Under ``torchrun`` each process reads its shard (``make_loader``) and the counts are summed over the
    processes, so every process returns the one-process numbers. Returns ``{"top1", "top5", "loss",
    "images"}``; an empty set (no readable image) is a ValueError.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, summed loss, images
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        if not len(targets):
            continue
        images = to_float(images, device).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, enabled=amp):
            logits = model(images)
        sums[:2] += topk_correct(logits, targets)
        sums[2] += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        sums[3] += targets.numel()
    model.train(was_training)
    top1, top5, loss, seen = all_reduce_sum(sums).tolist()
    if seen == 0:
        where = getattr(loader.dataset, "root", "the evaluation set")
        raise ValueError(f"{where}: no readable image to evaluate (every image was skipped or the set is empty)")
    return {"top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen, "loss": loss / seen, "images": int(seen)}
