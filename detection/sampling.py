"""What each training step reads, independent of where a run was stopped: per-sample augmentation seeds and
a sampler that starts an epoch part-way.

A run stopped after ``k`` steps of an epoch and resumed must read exactly the images, and draw exactly
the augmentations, of an uninterrupted run. Hence:

* :class:`EpochSeeded` draws each sample's augmentation from its own generator seeded with
  ``common.seeding.image_seed(seed, epoch, index)``: the same whichever DataLoader worker reads it and
  however many samples were read before (the global RNG is left untouched);
* :class:`ResumableSampler` is ``DistributedSampler`` (the same order for a given seed and epoch)
  that can skip the samples of the steps already taken.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, DistributedSampler

from common.seeding import image_seed


class EpochSeeded(Dataset):
    """``dataset[index]`` drawn with the torch generator seeded from ``(seed, epoch, index)`` (see the module
    docstring); ``set_epoch`` before each epoch's DataLoader iterator is made (workers copy the dataset)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(self.seed, "train", self.epoch, index))
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can start after its first ``start`` samples (of this process)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
