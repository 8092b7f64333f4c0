"""ImageNet-style top-1/top-5 evaluation on a folder in the ImageNet val layout.

``DIR/<wnid>/*.JPEG`` where each ``wnid`` (``n01440764``, ...) is an ImageNet-1k synset; the
class index is the synset's position in ImageNet-1k (timm's ``ImageNetInfo``), so a folder
holding only some classes is still scored against 1000-way logits. The paper's eval transform
is resize 256 (bicubic) + centre crop 224, i.e. ``crop_pct = 224/256 = 0.875``.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from timm.data import ImageNetInfo, create_transform
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from tqdm import tqdm

__all__ = ["ImageNetFolder", "eval_transform", "evaluate_topk"]


class ImageNetFolder(ImageFolder):
    """``torchvision`` ImageFolder whose targets are ImageNet-1k indices of the wnid folders.

    Raises ``ValueError`` when a folder is not an ImageNet-1k wnid or there are no class folders.
    """

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        wnids = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        if not wnids:
            raise ValueError(f"{directory} has no class folders: expected ImageNet val layout DIR/<wnid>/*.JPEG")
        index = {name: i for i, name in enumerate(ImageNetInfo().label_names())}
        unknown = [w for w in wnids if w not in index]
        if unknown:
            raise ValueError(
                f"{directory}: {len(unknown)} folders are not ImageNet-1k wnids (e.g. {', '.join(unknown[:3])}); "
                "expected folders named like n01440764"
            )
        return wnids, {w: index[w] for w in wnids}


def eval_transform(
    img_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable:
    """PIL image -> ``(3, img_size, img_size)`` tensor: bicubic resize to ``img_size / crop_pct``, centre crop.

    With ``mean``/``std`` the tensor is normalised; without, it stays in [0, 1] (for pixel models).
    """
    if mean is None or std is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return create_transform(
        input_size=(3, img_size, img_size), is_training=False, interpolation="bicubic", crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    )


@torch.inference_mode()
def evaluate_topk(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    amp: bool = False,
    channels_last: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1/top-5 accuracy (in %) of ``model`` over ``loader`` of ``(images, ImageNet indices)``.

    Counts stay on the device; returns ``{"top1", "top5", "images"}``.
    """
    device = torch.device(device)
    model.eval()
    correct = torch.zeros(2, dtype=torch.long, device=device)
    seen = 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            logits = model(images)
        k = min(5, logits.shape[-1])
        hits = logits.topk(k, dim=-1).indices == targets[:, None]
        correct += torch.stack((hits[:, 0].sum(), hits.any(dim=-1).sum()))
        seen += targets.numel()
    if seen == 0:
        raise ValueError("the evaluation set is empty")
    top1, top5 = (100.0 * correct.double() / seen).tolist()
    return {"top1": top1, "top5": top5, "images": seen}
