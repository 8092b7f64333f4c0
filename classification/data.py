"""Image-folder classification data: ImageNet-style ``<root>/<class>/<image>`` sets.

Class indices come from timm's ImageNet synsets (``class_map="imagenet"``) or from the sorted folder
names of the clean set (``class_map="folder"``, for custom or generated sets). ``ImageFolderSet`` is
``torchvision.datasets.ImageFolder`` with the class index supplied by the caller: images are decoded
once with PIL, converted to RGB, resized and centre-cropped like timm's eval transform (or passed
through a training transform) and returned as uint8 (3,H,W) tensors; batches are turned into float
[0,1] on the device by ``to_float``. An unreadable image is reported and skipped. The trainer and the
robustness suite (ImageNet-C/A/R) read their images through this one class.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from timm.data import ImageNetInfo
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode, v2

from common.distributed import ShardSampler, is_distributed



class UnknownClassFolders(ValueError):
    """Class folders that are not in the class index (``folders``: their names)."""

    def __init__(self, root: Path, folders: list[str], hint: str) -> None:
        shown = f"{folders[:5]}{'...' if len(folders) > 5 else ''}"
        super().__init__(f"{root}: unknown class folder(s) {shown}; {hint}")
        self.folders = folders


def class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted class-folder names under ``root``; clear errors for a missing or folder-less root."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise ValueError(f"{root} has no class folders: expected an ImageFolder layout <root>/<class>/<image>")
    return names


def build_class_index(class_map: str, clean_root: str | os.PathLike) -> dict[str, int]:
    """Folder name → class index: timm's 1000 ImageNet wnids, or the clean set's sorted folders."""
    if class_map == "imagenet":
        return {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
    if class_map == "folder":
        return {name: i for i, name in enumerate(class_folders(clean_root))}
    raise ValueError(f"unknown class_map {class_map!r}: use 'imagenet' or 'folder'")


def eval_transform(img_size: int, crop_pct: float) -> v2.Compose:
    """timm's eval transform on a PIL image: resize the short side to floor(img_size / crop_pct)
    (bicubic), centre-crop img_size, → uint8 (3, img_size, img_size)."""
    return v2.Compose([
        v2.Resize(math.floor(img_size / crop_pct), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
        v2.PILToTensor(),
    ])


class ImageFolderSet(ImageFolder):
    """``torchvision.datasets.ImageFolder`` over ``root/<class>/*`` labelled through ``class_index``.

    ``limit`` keeps an evenly spaced subset (spread over the classes). ``samples`` are
    ``(path, class index)``; ``classes`` is the sorted list of class indices of the folders present
    (for ImageNet-A/R, 200 classes, logits are masked to these) and ``folders`` their names.
    ``transform`` (PIL RGB image → uint8 (3,S,S)) replaces the eval transform, e.g. for training.
    Items are ``(uint8 image (3,S,S), label, index)``, or ``None`` for an unreadable file (with a warning).
    """

    def __init__(self, root: str | os.PathLike, class_index: dict[str, int], img_size: int, crop_pct: float,
                 limit: int | None = None, *, transform: Callable | None = None) -> None:
        self._class_index = class_index
        super().__init__(str(root), transform=transform or eval_transform(img_size, crop_pct), allow_empty=True)
        self.root = Path(root)
        if not self.samples:
            raise ValueError(f"{self.root}: no images found (extensions {', '.join(IMG_EXTENSIONS)})")
        if limit is not None and limit < len(self.samples):
            if limit <= 0:
                raise ValueError(f"limit must be positive, got {limit}")
            self.samples = [self.samples[i * len(self.samples) // limit] for i in range(limit)]
        self.imgs = self.samples
        self.targets = [label for _, label in self.samples]
        self.folders = self.classes
        self.classes = sorted(set(self.class_to_idx.values()))

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """The class folders of ``directory`` and their indices in the class index given to the constructor."""
        folders = class_folders(directory)
        unknown = [f for f in folders if f not in self._class_index]
        if unknown:
            imagenet = len(self._class_index) == 1000 and "n01440764" in self._class_index
            hint = ("folder names must be ImageNet wnids (e.g. n01440764); for a custom set use "
                    "class_map='folder' (--class-map folder)" if imagenet
                    else "every class folder must also exist in the clean --data set")
            raise UnknownClassFolders(Path(directory), unknown, hint)
        return folders, {f: self._class_index[f] for f in folders}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        path, label = self.samples[index]
        try:
            return self.transform(self.loader(path)), label, index
        except (OSError, ValueError, SyntaxError) as err:
            warnings.warn(f"skipping unreadable image {path}: {err}", RuntimeWarning, stacklevel=2)
            return None

def skip_none_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (image, label, index) items, dropping unreadable ones → uint8 (B,3,S,S), int64 (B,), int64 (B,)."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    images, labels, indices = zip(*batch)
    return torch.stack(images), torch.tensor(labels), torch.tensor(indices)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool,
                generator: torch.Generator | None = None, worker_init_fn: Callable[[int], None] | None = None
                ) -> DataLoader:
    """Ordered loader over this process's shard (all images when not distributed); ``generator`` (optional)
    seeds the workers instead of the global random stream; ``worker_init_fn`` runs in each worker."""
    sampler = ShardSampler(dataset) if is_distributed() else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, collate_fn=skip_none_collate, persistent_workers=False,
                      generator=generator, worker_init_fn=worker_init_fn)


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) batch → float32 [0,1] on ``device`` (converted after the transfer)."""
    return images.to(device, non_blocking=True).float().div_(255)


