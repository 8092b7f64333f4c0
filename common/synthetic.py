"""Deterministic synthetic datasets in the standard on-disk layouts, generated once and cached.

Two sets, so the suites' real loaders are exercised without ImageNet or COCO on disk:

* **classification** — an ImageFolder (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) whose
  classes are the product of an object *shape* and the object's *texture* (e.g. "striped
  circle" vs "checkered circle" vs "striped triangle"), drawn in a random colour on a random
  textured background, at a random position, size and rotation. Neither shape nor texture
  alone identifies the class, and colour carries no information.
* **detection** — a COCO-format set (``train2017/``, ``val2017/``,
  ``annotations/instances_{train,val}2017.json``) with 1–``max_objects`` shapes per image,
  varied sizes, some cut by the image border; category ids are non-contiguous like COCO's.

Each set lives in ``<cache>/<kind>-<hash>/`` where the hash covers the generator version and
every parameter, so changed parameters regenerate and unchanged ones reuse the files. A set
is written into a temporary folder and renamed into place, so an interrupted generation never
leaves a half-written set behind. Drawing is vectorised over whole batches with numpy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.io import atomic_write_json

GENERATOR_VERSION = 3  # bump whenever the drawing changes: cached sets are keyed by it
SHAPES = ("circle", "square", "triangle", "cross", "ring")
TEXTURES = ("stripes", "checker")
DETECTION_CATEGORY_IDS = (1, 3, 7, 12, 18)  # non-contiguous on purpose, like COCO's 1..90 with gaps
DEFAULT_CACHE = Path(os.environ.get("PIT_SUITE_CACHE", ".cache/pit-suite"))


@dataclass(frozen=True)
class ClassificationSpec:
    """Parameters of the synthetic classification set (``num_classes`` ≤ shapes × textures = 10)."""

    num_classes: int = 10
    train_per_class: int = 200
    val_per_class: int = 50
    img_size: int = 64
    seed: int = 0
    upright: bool = False  # True: every shape at angle 0 (stripes horizontal); False: at a uniformly random angle


@dataclass(frozen=True)
class DetectionSpec:
    """Parameters of the synthetic COCO-format detection set.

    ``radius``: (min, max) object radius as a fraction of ``img_size`` (a circle's radius; the
    other shapes fit in the same circle but a rotated square, whose corners reach 1.13 radii).
    ``cut_by_border``: object centres anywhere in the image, so some objects are cut by the
    border; ``False`` keeps centres a radius away from it, so objects are whole (but for a
    rotated square's corners).
    """

    num_train: int = 256
    num_val: int = 64
    img_size: int = 128
    max_objects: int = 4
    seed: int = 0
    radius: tuple[float, float] = (0.06, 0.45)
    cut_by_border: bool = True
    upright: bool = False  # True: every object at angle 0, as ``ClassificationSpec.upright``


def class_wnids(num_classes: int) -> list[str]:
    """WordNet-id-style folder names (``n9xxxxxxx``, never a real ImageNet synset), in class order."""
    return [f"n9{i:07d}" for i in range(num_classes)]


def class_names(num_classes: int) -> list[str]:
    """Human-readable names, e.g. ``"striped circle"``; class k = shape k // 2, texture k % 2."""
    if not 2 <= num_classes <= len(SHAPES) * len(TEXTURES):
        raise ValueError(f"num_classes must be between 2 and {len(SHAPES) * len(TEXTURES)}, got {num_classes}")
    return [f"{TEXTURES[k % 2]} {SHAPES[k // 2]}" for k in range(num_classes)]


# ---------------------------------------------------------------------------------------------
# Vectorised drawing: every function takes per-image parameters as (B,) arrays and returns
# (B, H, W) masks or (B, H, W, 3) float images in [0, 1].
# ---------------------------------------------------------------------------------------------

def draw_angles(rng: np.random.Generator, count: int, upright: bool) -> np.ndarray:
    """(count,) float32 object angles, uniform in [0, 2π); all 0 if ``upright``. The angles are drawn either way, so
    the random stream, and every later parameter drawn from it, is the same for both worlds."""
    return rng.uniform(0, 2 * np.pi, count).astype(np.float32) * (0.0 if upright else 1.0)


def _local_coords(size: int, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray):
    """Pixel-centre coordinates rotated by ``angle`` about (cx, cy) and divided by ``radius``: (B, H, W) each."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    x = grid[None, None, :] - cx[:, None, None]
    y = grid[None, :, None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    return (cos * x + sin * y) / r, (-sin * x + cos * y) / r


def shape_masks(shape_idx: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean (B, H, W) masks of shape ``SHAPES[shape_idx[b]]`` in normalised local coordinates (u, v)."""
    rr = np.sqrt(u * u + v * v)
    tri = (v < 0.5) & (np.sqrt(3.0) * u - v < 1.0) & (-np.sqrt(3.0) * u - v < 1.0)
    candidates = np.stack([
        rr < 1.0,
        np.maximum(np.abs(u), np.abs(v)) < 0.8,
        tri,
        ((np.abs(u) < 0.33) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.33) & (np.abs(u) < 1.0)),
        (rr < 1.0) & (rr > 0.55),
    ])  # (S, B, H, W)
    return np.take_along_axis(candidates, shape_idx[None, :, None, None], axis=0)[0]


def texture_patterns(texture_idx: np.ndarray, u: np.ndarray, v: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Boolean (B, H, W) on/off pattern: stripes along u, or a checkerboard, ``freq`` cycles per radius."""
    f = freq[:, None, None] * np.pi
    stripes = np.sin(f * u) > 0
    checker = (np.sin(f * u) * np.sin(f * v)) > 0
    return np.where(texture_idx[:, None, None] == 0, stripes, checker)


def textured_backgrounds(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """(B, H, W, 3) float backgrounds in [0, 1]: random low-frequency colour waves plus pixel noise."""
    grid = np.arange(size, dtype=np.float32) / size
    out = rng.uniform(0.2, 0.8, (batch, 1, 1, 3)).astype(np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(-6, 6, (2, batch, 1, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1, 3)).astype(np.float32)
        amp = rng.uniform(0.03, 0.1, (batch, 1, 1, 3)).astype(np.float32)
        out = out + amp * np.sin(2 * np.pi * (fx * grid[None, None, :, None] + fy * grid[None, :, None, None]) + phase)
    out = out + rng.normal(0, 0.04, (batch, size, size, 3)).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def paint_objects(canvas: np.ndarray, mask: np.ndarray, pattern: np.ndarray, rng: np.random.Generator) -> None:
    """Paint (B, H, W) ``mask`` into ``canvas`` (B, H, W, 3) in place: a random colour, darkened where ``pattern`` is off."""
    batch = canvas.shape[0]
    colour = rng.uniform(0.0, 1.0, (batch, 1, 1, 3)).astype(np.float32)
    dark = colour * rng.uniform(0.1, 0.4, (batch, 1, 1, 1)).astype(np.float32)
    fill = np.where(pattern[..., None], colour, dark)
    np.copyto(canvas, fill, where=mask[..., None])


def draw_classification_batch(rng: np.random.Generator, labels: np.ndarray, size: int,
                              upright: bool = False) -> np.ndarray:
    """(B, H, W, 3) uint8 images of the given class labels (class k = texture k % 2 on shape k // 2);
    ``upright``: every shape at angle 0 (the angles are still drawn, so the other parameters do not change)."""
    batch = len(labels)
    radius = rng.uniform(0.28, 0.42, batch).astype(np.float32) * size
    cx, cy = (rng.uniform(0.0, 1.0, (2, batch)).astype(np.float32) * (size - 2 * radius) + radius)
    u, v = _local_coords(size, cx, cy, radius, draw_angles(rng, batch, upright))
    mask = shape_masks(labels // 2, u, v)
    pattern = texture_patterns(labels % 2, u, v, rng.uniform(1.5, 2.2, batch).astype(np.float32))
    images = textured_backgrounds(rng, batch, size)
    paint_objects(images, mask, pattern, rng)
    return (images * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Cache handling
# ---------------------------------------------------------------------------------------------

def _spec_hash(kind: str, spec) -> str:
    payload = json.dumps({"kind": kind, "version": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _cached_or_build(kind: str, spec, cache: str | os.PathLike | None, build) -> Path:
    """Return ``<cache>/<kind>-<hash>``, building it with ``build(tmp_dir)`` first if it is not complete."""
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    final = cache / f"{kind}-{_spec_hash(kind, spec)}"
    if (final / "meta.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{kind}-"))
    try:
        build(tmp)
        atomic_write_json(tmp / "meta.json", {"kind": kind, "version": GENERATOR_VERSION, **asdict(spec)})
        if final.exists():  # a stale incomplete folder (no meta.json)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array, mode="RGB").save(path, format="JPEG", quality=95)


def make_classification(cache: str | os.PathLike | None = None, spec: ClassificationSpec | None = None,
                        chunk: int = 256) -> Path:
    """Generate (or reuse) the classification ImageFolder; returns its root (with ``train/`` and ``val/``).

    Also writes ``classes.json`` (wnid → name, in label order). Labels are balanced and the
    images deterministic in ``spec.seed``; train and val use different random streams.
    """
    spec = spec or ClassificationSpec()
    names = class_names(spec.num_classes)
    wnids = class_wnids(spec.num_classes)

    def build(root: Path) -> None:
        for split, per_class, stream in (("train", spec.train_per_class, 0), ("val", spec.val_per_class, 1)):
            if per_class < 1:
                raise ValueError(f"{split}_per_class must be at least 1, got {per_class}")
            rng = np.random.default_rng([spec.seed, stream])
            labels = np.repeat(np.arange(spec.num_classes), per_class)
            for wnid in wnids:
                (root / split / wnid).mkdir(parents=True)
            for start in range(0, len(labels), chunk):
                batch_labels = labels[start:start + chunk]
                images = draw_classification_batch(rng, batch_labels, spec.img_size, spec.upright)
                for offset, (label, image) in enumerate(zip(batch_labels, images)):
                    index = start + offset
                    _save_jpeg(image, root / split / wnids[label] / f"{wnids[label]}_{index:06d}.JPEG")
        atomic_write_json(root / "classes.json", dict(zip(wnids, names)))

    return _cached_or_build("classification", spec, cache, build)


def _draw_detection_image(rng: np.random.Generator, spec: DetectionSpec) -> tuple[np.ndarray, list[dict]]:
    """One (H, W, 3) uint8 image and its annotations (``bbox`` absolute xywh, ``category_id``, ``area``)."""
    size = spec.img_size
    count = int(rng.integers(1, spec.max_objects + 1))
    # Propose several candidates at once and keep those that do not overlap the ones already kept.
    proposals = 4 * count
    radius = (rng.uniform(*spec.radius, proposals) * size).astype(np.float32)
    centre = rng.uniform(0.0, 1.0, (2, proposals)).astype(np.float32) * size  # may leave the image: cut by the border
    if not spec.cut_by_border:
        centre = centre * (1.0 - 2.0 * radius / size) + radius
    kept: list[int] = []
    for i in range(proposals):
        if len(kept) == count:
            break
        if all(np.hypot(*(centre[:, i] - centre[:, j])) > 0.9 * (radius[i] + radius[j]) for j in kept):
            kept.append(i)
    idx = np.array(kept)
    n = len(idx)
    shape = rng.integers(0, len(DETECTION_CATEGORY_IDS), n)
    u, v = _local_coords(size, centre[0, idx], centre[1, idx], radius[idx], draw_angles(rng, n, spec.upright))
    masks = shape_masks(shape, u, v)
    patterns = texture_patterns(rng.integers(0, 2, n), u, v, rng.uniform(1.5, 3.0, n).astype(np.float32))
    canvas = textured_backgrounds(rng, 1, size)
    objects = np.broadcast_to(canvas, (n, size, size, 3)).copy()
    paint_objects(objects, masks, patterns, rng)
    canvas = canvas[0]
    annotations = []
    for k in range(n):
        np.copyto(canvas, objects[k], where=masks[k][..., None])
        ys, xs = np.nonzero(masks[k])
        if len(xs) < 4:
            continue
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        annotations.append({"category_id": DETECTION_CATEGORY_IDS[shape[k]], "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "area": float(masks[k].sum()), "iscrowd": 0})
    return (canvas * 255.0 + 0.5).astype(np.uint8), annotations


def make_detection(cache: str | os.PathLike | None = None, spec: DetectionSpec | None = None) -> Path:
    """Generate (or reuse) the COCO-format detection set; returns its root.

    Layout: ``train2017/*.jpg``, ``val2017/*.jpg``, ``annotations/instances_{train,val}2017.json``
    (boxes absolute ``[x, y, w, h]`` of the visible object, ``area`` = object pixel count,
    categories ``DETECTION_CATEGORY_IDS`` named after ``SHAPES``).
    """
    spec = spec or DetectionSpec()
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(DETECTION_CATEGORY_IDS, SHAPES)]

    def build(root: Path) -> None:
        (root / "annotations").mkdir()
        for split, count, stream in (("train2017", spec.num_train, 0), ("val2017", spec.num_val, 1)):
            if count < 1:
                raise ValueError(f"the detection {split} split needs at least 1 image, got {count}")
            (root / split).mkdir()
            rng = np.random.default_rng([spec.seed, 100 + stream])
            images, annotations = [], []
            for image_id in range(1, count + 1):
                pixels, anns = _draw_detection_image(rng, spec)
                file_name = f"{image_id:012d}.jpg"
                _save_jpeg(pixels, root / split / file_name)
                images.append({"id": image_id, "file_name": file_name, "width": spec.img_size, "height": spec.img_size})
                for ann in anns:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            atomic_write_json(root / "annotations" / f"instances_{split}.json",
                              {"info": {"description": "pit-suite synthetic shapes", "version": GENERATOR_VERSION},
                               "images": images, "annotations": annotations, "categories": categories})

    return _cached_or_build("detection", spec, cache, build)
