"""ImageNet-style top-1/top-5 evaluation on a folder in the ImageNet val layout.

``DIR/<wnid>/*.JPEG`` where each ``wnid`` (``n01440764``, ...) is an ImageNet-1k synset; the
class index is the synset's position in ImageNet-1k (timm's ``ImageNetInfo``), so a folder
holding only some classes is still scored against 1000-way logits. The paper's eval transform
is resize 256 (bicubic) + centre crop 224, i.e. ``crop_pct = 224/256 = 0.875``. Loading is the
robustness suite's (``robustness.datasets``): decoded once to uint8, unreadable images reported
and skipped, normalised on the device.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from classification.data import ImageFolderSet, build_class_index, make_loader, to_float

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
    mean: Sequence[float],
    std: Sequence[float],
    amp: bool = False,
    channels_last: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1/top-5 accuracy (in %) of ``model`` (normalised input) over uint8 ``(images, labels, _)`` batches.

    Images are scaled to [0, 1] and normalised with ``mean``/``std`` on the device; counts stay there.
    Returns ``{"top1", "top5", "images"}``.
    """
    device = torch.device(device)
    model.eval()
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    correct = torch.zeros(2, dtype=torch.long, device=device)
    seen = 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets, _ in tqdm(loader, desc=desc, unit="batch", leave=False):
        if not len(targets):
            continue
        images = ((to_float(images, device) - mean_t) / std_t).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            logits = model(images)
        k = min(5, logits.shape[-1])
        hits = logits.topk(k, dim=-1).indices == targets[:, None]
        correct += torch.stack((hits[:, 0].sum(), hits.any(dim=-1).sum()))
        seen += targets.numel()
    if seen == 0:
        raise ValueError("the evaluation set is empty (no readable images)")
    top1, top5 = (100.0 * correct.double() / seen).tolist()
    return {"top1": top1, "top5": top5, "images": seen}
