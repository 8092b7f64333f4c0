"""The data of ``train-classifier``: train/val loaders over an ImageFolder root, sharded over ``torchrun`` processes."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from classification.data import ImageFolderSet, UnknownClassFolders, build_class_index, make_loader
from classification.data import skip_none_collate
from classification.train_config import ClassifierTrainConfig
from common.distributed import get_rank, get_world_size
from common.interrupt import ignore_sigint
from common.vocabulary import default_workers


def check_data(root: Path) -> None:
    """``root`` must hold ``train/`` and ``val/`` (one line naming what is missing)."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"--data {root}: {split}/ not found; --data must be an ImageFolder root with "
                                    "train/ and val/ class folders (e.g. made by common.synthetic.make_classification)")


def train_transform(img_size: int) -> v2.Compose:
    """PIL image → uint8 (3, S, S): random-resized crop (scale 0.5–1) + horizontal flip."""
    return v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(img_size, scale=(0.5, 1.0), antialias=True),
                       v2.RandomHorizontalFlip()])


def build_loaders(config: ClassifierTrainConfig) -> tuple[DataLoader, DataLoader, list[str]]:
    """Train/val loaders over ``data/train`` and ``data/val`` → uint8 ``(images (b,3,S,S), labels, indices)``
    batches of this process (b = its share of ``batch_size``) and the class-folder names in label order.

    Train: :func:`train_transform`, a ``DistributedSampler`` shuffled by ``(seed, epoch)`` (``set_epoch``)
    that drops the tail, so step k of process r reads images ``r, r+W, ...`` of the global batch k, which
    is the one-process batch k; the loader's generator only seeds its workers. Val: timm's eval transform
    at crop_pct 1 (bicubic resize of the short side to S, centre crop), each process every W-th image
    (``common.distributed.ShardSampler``), with its own generator so that evaluation never draws from the
    global random streams.
    """
    root = Path(config.data)
    check_data(root)
    world, rank = get_world_size(), get_rank()
    batch = config.per_process_batch(world)
    index = build_class_index("folder", root / "train")
    train_set = ImageFolderSet(root / "train", index, config.img_size, 1.0, transform=train_transform(config.img_size))
    try:
        val_set = ImageFolderSet(root / "val", index, config.img_size, 1.0)
    except UnknownClassFolders as err:
        raise ValueError(f"--data {root}: val/ has class folders {err.folders[:5]} that train/ lacks: train/ and "
                         "val/ must hold the same class folders") from None
    if train_set.folders != val_set.folders:
        raise ValueError(f"--data {root}: train/ and val/ have different class folders")
    if len(train_set) < config.batch_size:
        raise ValueError(f"{root / 'train'} has {len(train_set)} images, fewer than one batch of {config.batch_size}: "
                         "lower --batch-size")
    pin = torch.cuda.is_available()
    workers = default_workers(config.workers)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    # Fresh workers every epoch (no persistent workers): their seeds come from the generator reseeded per epoch.
    train_loader = DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True,
                              generator=torch.Generator(), num_workers=workers, pin_memory=pin,
                              collate_fn=skip_none_collate, worker_init_fn=ignore_sigint)
    val_loader = make_loader(val_set, 2 * batch, workers, pin,
                             generator=torch.Generator().manual_seed(config.seed), worker_init_fn=ignore_sigint)
    return train_loader, val_loader, train_set.folders
