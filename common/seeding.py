"""Per-image random draws: every random number of a result is keyed by the image, not by the batch.

A cell's number (an on-the-fly corruption, a PGD start, a random occlusion) must not depend on the batch
size, the number of processes or the order of work, so each image gets its own generator seeded from
``(seed, cell parts..., image index)`` through a stable hash.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def image_seed(seed: int, *key: object) -> int:
    """A stable 63-bit seed of ``(seed, *key)``, e.g. ``image_seed(0, "fog", 3, 1234)``: the same on every
    process, platform and batch size."""
    text = "/".join(str(part) for part in (seed, *key))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def image_generators(seed: int, keys: Sequence[tuple], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per key, seeded with ``image_seed(seed, *key)``."""
    generators = []
    for key in keys:
        generator = torch.Generator(device=device)
        generator.manual_seed(image_seed(seed, *key))
        generators.append(generator)
    return generators
