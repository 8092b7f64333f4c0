"""A generated set in the ImageNet-9 (Background Challenge) layout, with exactly known foreground masks.

Built from the shapes and textures of :mod:`common.synthetic` (same drawing functions): IN-9 class k
is the synthetic classification class k (texture k % 2 on shape k // 2), so a classifier trained on
``make_classification`` reads these images. For every image we draw a background and an object, so
each variant is exact rather than segmented (Xiao et al. 2021 use GrabCut masks and tiling):

* ``original``: the object on its background; ``fg_mask``: the object's (H, W) bool mask (``.npy``);
* ``only_fg``: the object on black; ``no_fg``: the background with the object's pixels black;
* ``only_bg_b``: the background with the object's bounding box black; ``only_bg_t``: the background alone;
* ``mixed_same`` / ``mixed_rand`` / ``mixed_next``: the object on the background of another image of the
  same class / of a random image / of an image of the next class (k + 1 mod 9).

Backgrounds may hold a smaller *distractor* object of another class (``distractor_rate``), which is
what makes some backgrounds adversarial. Layout: ``<root>/<variant>/val/<class folder>/<k>_<i>.png``
(lossless PNG) and ``<root>/fg_mask/val/<class folder>/<k>_<i>.npy``; the set is cached like
:mod:`common.synthetic`'s.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common import synthetic

# The release's class folders (IN-9 class index = position) and variants, which the IN-9 loader expects.
IN9_FOLDERS = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
               "06_musical instrument", "07_primate", "08_fish")
IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")


@dataclass(frozen=True)
class BackgroundsSpec:
    """Parameters of the generated IN-9-style set (``per_class`` images in each of the 9 classes);
    ``variants``: the variant folders written (``fg_mask`` is always written)."""

    per_class: int = 8
    img_size: int = 64
    distractor_rate: float = 0.5
    seed: int = 0
    variants: tuple[str, ...] = IN9_VARIANTS
    upright: bool = False  # as ``ClassificationSpec.upright``: the classifiers' world


def _objects(rng: np.random.Generator, labels: np.ndarray, size: int, scale: tuple[float, float], upright: bool):
    """Masks bool (B,H,W) and texture patterns bool (B,H,W) of objects of ``labels`` (at angle 0 if ``upright``)."""
    batch = len(labels)
    radius = rng.uniform(*scale, batch).astype(np.float32) * size
    cx, cy = rng.uniform(0.0, 1.0, (2, batch)).astype(np.float32) * (size - 2 * radius) + radius
    u, v = synthetic._local_coords(size, cx, cy, radius, synthetic.draw_angles(rng, batch, upright))
    masks = synthetic.shape_masks(labels // 2, u, v)
    patterns = synthetic.texture_patterns(labels % 2, u, v, rng.uniform(1.5, 2.2, batch).astype(np.float32))
    return masks, patterns


def _bbox_masks(masks: np.ndarray) -> np.ndarray:
    """bool (B,H,W): the bounding box of each (non-empty) mask."""
    rows, cols = masks.any(2), masks.any(1)
    def span(a: np.ndarray) -> np.ndarray:
        idx = np.arange(a.shape[1])
        first = np.where(a, idx, a.shape[1]).min(1)
        last = np.where(a, idx, -1).max(1)
        return (idx[None] >= first[:, None]) & (idx[None] <= last[:, None])
    return span(rows)[:, :, None] & span(cols)[:, None, :]


def draw_in9_world(spec: BackgroundsSpec) -> dict[str, np.ndarray]:
    """Every variant as uint8 (N,H,W,3) arrays plus ``labels`` (N,) and ``fg_mask`` bool (N,H,W), N = 9·per_class."""
    unknown = sorted(set(spec.variants) - set(IN9_VARIANTS))
    if unknown:
        raise ValueError(f"unknown IN-9 variant(s) {unknown}: choose from {IN9_VARIANTS}")
    if spec.per_class < 2:
        raise ValueError(f"per_class must be at least 2 (mixed_same needs another image of the class), got {spec.per_class}")
    rng = np.random.default_rng([spec.seed, 9])
    n, size = 9 * spec.per_class, spec.img_size
    labels = np.repeat(np.arange(9), spec.per_class)
    backgrounds = synthetic.textured_backgrounds(rng, n, size)
    distractor = (labels + rng.integers(1, 9, n)) % 9
    d_masks, d_patterns = _objects(rng, distractor, size, (0.12, 0.2), spec.upright)
    d_masks &= (rng.uniform(size=n) < spec.distractor_rate)[:, None, None]
    synthetic.paint_objects(backgrounds, d_masks, d_patterns, rng)
    masks, patterns = _objects(rng, labels, size, (0.28, 0.42), spec.upright)
    objects = np.zeros_like(backgrounds)
    synthetic.paint_objects(objects, masks, patterns, rng)
    same = np.array([rng.choice(np.flatnonzero((labels == labels[i]) & (np.arange(n) != i))) for i in range(n)])
    nxt = np.array([rng.choice(np.flatnonzero(labels == (labels[i] + 1) % 9)) for i in range(n)])
    rand = rng.integers(0, n, n)
    paste = lambda bg: np.where(masks[..., None], objects, bg)  # noqa: E731
    variants = {"original": paste(backgrounds), "only_fg": objects,
                "no_fg": np.where(masks[..., None], 0.0, backgrounds),
                "only_bg_b": np.where(_bbox_masks(masks)[..., None], 0.0, backgrounds), "only_bg_t": backgrounds,
                "mixed_same": paste(backgrounds[same]), "mixed_rand": paste(backgrounds[rand]),
                "mixed_next": paste(backgrounds[nxt])}
    out = {k: (np.clip(v, 0, 1) * 255.0 + 0.5).astype(np.uint8) for k, v in variants.items()}
    return {**out, "labels": labels, "fg_mask": masks}


def make_in9_style(cache: str | os.PathLike | None = None, spec: BackgroundsSpec | None = None) -> Path:
    """Generate (or reuse) the IN-9-style set; returns its root (``<root>/<variant>/val/<class>/``)."""
    spec = spec or BackgroundsSpec()

    def build(root: Path) -> None:
        world = draw_in9_world(spec)
        names = [f"{k}_{i:04d}" for i, k in enumerate(world["labels"])]
        for variant, images in world.items():
            if variant not in spec.variants and variant != "fg_mask":
                continue
            for name, label, item in zip(names, world["labels"], images):
                folder = root / variant / "val" / IN9_FOLDERS[label]
                folder.mkdir(parents=True, exist_ok=True)
                if variant == "fg_mask":
                    np.save(folder / f"{name}.npy", item)
                else:
                    Image.fromarray(item, mode="RGB").save(folder / f"{name}.png")

    return synthetic._cached_or_build("in9-style", spec, cache, build)
