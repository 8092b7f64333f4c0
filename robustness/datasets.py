"""Robustness datasets on top of ``classification.data``: ImageNet-C on disk
(``<root>/<corruption>/<severity>/<wnid>/*.JPEG``), the fixed 200-class lists of ImageNet-A/R, and the
one DataLoader (one worker pool) that serves every pass of a run.

The loader reads *keys* ``(path, label, index, geometries)`` (``robustness.geometry``) that the main process hands it
pass after pass, so the worker processes start once per run and stay (persistent workers): no worker
pool is forked per pass, which is what made some Ctrl-C go unnoticed.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import default_loader

from classification.data import class_folders
from common.distributed import get_rank, get_world_size
from common.interrupt import ignore_sigint
from robustness.decoding import read_encoded
from robustness.geometry import Geometry

SUBSETS = ("imagenet-a", "imagenet-r")
Key = tuple[str, int, int, tuple[Geometry, ...]]  # (path, label, index in the pass, the views wanted of it)


def imagenet_c_root(root: str | os.PathLike, corruption: str, severity: int) -> Path:
    """``<root>/<corruption>/<severity>``, with an error naming what exists when it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--imagenet-c folder {root} does not exist")
    path = root / corruption / str(severity)
    if not path.is_dir():
        present = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise FileNotFoundError(f"ImageNet-C: missing {path} (expected <root>/<corruption>/<severity>/<wnid>/*.JPEG; "
                                f"corruptions present: {present or 'none'})")
    return path


def subset_wnids(subset: str) -> list[str]:
    """The dataset authors' fixed 200 wnids of ``"imagenet-a"`` or ``"imagenet-r"`` (timm's copy of them)."""
    if subset not in SUBSETS:
        raise KeyError(f"unknown ImageNet subset {subset!r}: choose from {SUBSETS}")
    text = (resources.files("timm.data") / "_info" / f"{subset.replace('-', '_')}_synsets.txt").read_text()
    return text.split()


def check_subset_folders(root: str | os.PathLike, subset: str) -> list[str]:
    """Compare ``root``'s class folders with the subset's 200 wnids: an extra folder is an error (ValueError,
    one line); returns the missing wnids (their images are absent, the mask still has all 200)."""
    flag = f"--{subset}"
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag} folder {root} does not exist")
    wnids = subset_wnids(subset)
    folders = class_folders(root)
    extra = sorted(set(folders) - set(wnids))
    if extra:
        raise ValueError(f"{flag} {root} has {len(extra)} class folder(s) outside the 200 {subset} classes "
                         f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): point {flag} at the "
                         f"{subset} folder itself, or remove the extra folders")
    return sorted(set(wnids) - set(folders))


def class_mask(classes: list[int], num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Bool (num_classes,) mask, True for ``classes`` (indices ≥ num_classes ignored); None when all are in."""
    classes = sorted({c for c in classes if c < num_classes})
    if len(classes) == num_classes:
        return None
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.tensor(classes, dtype=torch.long, device=device)] = True
    return mask


def input_fingerprint(root: str | os.PathLike, paths: list[str]) -> str:
    """A short hash of the image files of a pass (paths relative to ``root``): changes when one is added or removed."""
    digest = hashlib.sha256("\n".join(os.path.relpath(p, root) for p in paths).encode())
    return digest.hexdigest()[:16]


def file_state(path: str | os.PathLike) -> list[int] | None:
    """[size, mtime_ns] of a file, or None when it is gone: tells whether a skipped image was replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class KeyedImages(Dataset):
    """Decodes a key ``(path, label, index, geometries)`` → ``((uint8 (3,S,S) per geometry), label, index)``
    like ``ImageFolderSet`` (torchvision's loader: PIL → RGB, decoded once, then each geometry's transform:
    one view per model eval geometry and the benchmark's), or None for an unreadable file (reported,
    skipped by ``views_collate``). ``encoded``: the file as ``robustness.decoding.read_encoded`` gives it
    instead (a JPEG's bytes, decoded later on the device)."""

    def __init__(self, encoded: bool = False) -> None:
        self.encoded = encoded
        self._transforms: dict[Geometry, object] = {}

    def __len__(self) -> int:  # keys come from the batch sampler; the length is never used
        return 0

    def __getitem__(self, key: Key) -> tuple[torch.Tensor | tuple[torch.Tensor, ...], int, int] | None:
        path, label, index, geometries = key
        try:
            if self.encoded:
                return read_encoded(path), label, index
            image = default_loader(path)
            return tuple(self._transform(g)(image) for g in geometries), label, index
        except (OSError, ValueError, SyntaxError, RuntimeError) as err:
            warnings.warn(f"skipping unreadable image {path}: {err}", RuntimeWarning, stacklevel=2)
            return None

    def _transform(self, geometry: Geometry):
        transform = self._transforms.get(geometry)
        if transform is None:
            transform = self._transforms[geometry] = geometry.transform()
        return transform


def views_collate(batch: list) -> tuple[tuple[torch.Tensor, ...] | list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Stack ``KeyedImages`` items view by view, dropping unreadable ones → ((uint8 (B,3,S_v,S_v) per view),
    int64 labels (B,), int64 indices (B,)); an all-unreadable batch has B = 0 and no views. Encoded items
    (files of different sizes) stay a list of B tensors."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return (), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    views, labels, indices = zip(*batch)
    stacked = list(views) if isinstance(views[0], torch.Tensor) else tuple(torch.stack(v) for v in zip(*views))
    return stacked, torch.tensor(labels), torch.tensor(indices)


class PassBatches(Sampler):
    """Batches of the current pass's keys for this process: rank r of W reads items r, r+W, r+2W, ...
    (no padding, so counts summed over processes are exact). ``start(keys)`` points it at a new pass."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.keys: list[Key] = []

    def start(self, keys: list[Key]) -> None:
        self.keys = keys[get_rank()::get_world_size()]

    def __iter__(self):
        for i in range(0, len(self.keys), self.batch_size):
            yield self.keys[i:i + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.keys) / self.batch_size)


def pass_loader(batch_size: int, num_workers: int, pin_memory: bool, encoded: bool = False
                ) -> tuple[DataLoader, PassBatches]:
    """The run's one loader and its batch sampler: call ``batches.start(keys)`` then iterate the loader.
    ``encoded``: items are the files' bytes, decoded on the device (``robustness.decoding``).

    The worker processes start here, once, with SIGINT held during the forks: a Ctrl-C that lands in a
    fork is otherwise swallowed by an at-fork hook ("Exception ignored in _releaseLock"); held, it is
    delivered right after, as a KeyboardInterrupt. The workers keep SIGINT blocked: the main process
    handles Ctrl-C and shuts them down.
    """
    batches = PassBatches(batch_size)
    loader = DataLoader(KeyedImages(encoded), batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                        collate_fn=views_collate, persistent_workers=num_workers > 0,
                        worker_init_fn=ignore_sigint if num_workers > 0 else None)
    if num_workers > 0:
        with _sigint_held():
            iter(loader)  # no keys yet: starts the persistent workers and returns at once
    return loader, batches


def close_loader(loader: DataLoader | None) -> None:
    """Stop the loader's worker processes now and wait for them (also after Ctrl-C), so none outlives the run."""
    iterator = getattr(loader, "_iterator", None)  # the persistent workers' iterator (torch keeps it there)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


@contextlib.contextmanager
def _sigint_held():
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
