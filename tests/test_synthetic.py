"""Synthetic data: layouts the real loaders read (torchvision ImageFolder, pycocotools), determinism, caching."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from torchvision.datasets import ImageFolder

from common import synthetic

CLS = synthetic.ClassificationSpec(num_classes=10, train_per_class=3, val_per_class=2, img_size=48, seed=1)
DET = synthetic.DetectionSpec(num_train=24, num_val=6, img_size=80, max_objects=4, seed=1)


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory):
    return synthetic.make_classification(tmp_path_factory.mktemp("cache"), CLS)


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    return synthetic.make_detection(tmp_path_factory.mktemp("cache"), DET)


def test_classification_is_an_imagefolder(cls_root):
    for split, per_class in (("train", CLS.train_per_class), ("val", CLS.val_per_class)):
        ds = ImageFolder(str(cls_root / split))
        assert ds.classes == synthetic.class_wnids(CLS.num_classes)
        assert all(c.startswith("n") and len(c) == 9 for c in ds.classes)  # wnid style
        assert np.bincount(ds.targets).tolist() == [per_class] * CLS.num_classes
        image, _ = ds[0]
        assert image.mode == "RGB" and image.size == (CLS.img_size, CLS.img_size)
    names = json.loads((cls_root / "classes.json").read_text())
    assert list(names) == synthetic.class_wnids(CLS.num_classes)
    assert len(set(names.values())) == CLS.num_classes


def test_generation_is_deterministic_and_cached(tmp_path, cls_root):
    again = synthetic.make_classification(tmp_path / "other", CLS)
    first = sorted(cls_root.rglob("*.JPEG"))
    second = sorted(again.rglob("*.JPEG"))
    assert [p.relative_to(cls_root) for p in first] == [p.relative_to(again) for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    mtime = (again / "meta.json").stat().st_mtime_ns
    assert synthetic.make_classification(tmp_path / "other", CLS) == again
    assert (again / "meta.json").stat().st_mtime_ns == mtime  # reused, not rewritten
    changed = synthetic.make_classification(tmp_path / "other", synthetic.ClassificationSpec(
        num_classes=10, train_per_class=3, val_per_class=2, img_size=48, seed=2))
    assert changed != again and changed.parent == again.parent


def test_incomplete_set_is_regenerated(tmp_path):
    root = synthetic.make_classification(tmp_path, synthetic.ClassificationSpec(num_classes=2, train_per_class=1,
                                                                                val_per_class=1, img_size=32))
    (root / "meta.json").unlink()  # as if generation had been interrupted
    (root / "train" / synthetic.class_wnids(2)[0] / "stale.JPEG").write_bytes(b"x")
    again = synthetic.make_classification(tmp_path, synthetic.ClassificationSpec(num_classes=2, train_per_class=1,
                                                                                 val_per_class=1, img_size=32))
    assert again == root and (root / "meta.json").exists()
    assert not (root / "train" / synthetic.class_wnids(2)[0] / "stale.JPEG").exists()


@pytest.mark.parametrize("shape, area", [("circle", math.pi), ("square", 1.6 ** 2), ("triangle", 3 * math.sqrt(3) / 4),
                                          ("cross", 2 * 0.66 * 2 - 0.66 ** 2), ("ring", math.pi * (1 - 0.55 ** 2))])
def test_shape_masks_have_the_analytic_area(shape, area):
    size, radius = 200, 80.0
    u, v = synthetic._local_coords(size, np.array([100.0], np.float32), np.array([100.0], np.float32),
                                   np.array([radius], np.float32), np.array([0.3], np.float32))
    mask = synthetic.shape_masks(np.array([synthetic.SHAPES.index(shape)]), u, v)
    assert mask.sum() / radius ** 2 == pytest.approx(area, rel=0.03)


def test_classes_differ_in_shape_and_texture(cls_root):
    """Same shape, other texture and same texture, other shape are different classes."""
    names = synthetic.class_names(10)
    assert names[0].split()[1] == names[1].split()[1] and names[0].split()[0] != names[1].split()[0]
    assert names[0].split()[0] == names[2].split()[0] and names[0].split()[1] != names[2].split()[1]


def test_detection_is_coco(det_root):
    for split, count in (("train2017", DET.num_train), ("val2017", DET.num_val)):
        coco = COCO(str(det_root / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == list(synthetic.DETECTION_CATEGORY_IDS)
        assert sorted(coco.getCatIds()) != list(range(1, len(synthetic.DETECTION_CATEGORY_IDS) + 1))  # gaps like COCO
        assert len(coco.getImgIds()) == count
        per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
        assert min(per_image) >= 1 and max(per_image) <= DET.max_objects
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(det_root / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (DET.img_size, DET.img_size)
        boxes = np.array([a["bbox"] for a in coco.loadAnns(coco.getAnnIds())])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= DET.img_size).all()
        assert (boxes[:, 1] + boxes[:, 3] <= DET.img_size).all() and (boxes[:, 2:] > 0).all()
    coco = COCO(str(det_root / "annotations" / "instances_train2017.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    boxes = np.array([a["bbox"] for a in anns])
    touches = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 0] + boxes[:, 2] == DET.img_size) | \
              (boxes[:, 1] + boxes[:, 3] == DET.img_size)
    assert touches.any() and not touches.all()
    areas = boxes[:, 2] * boxes[:, 3]
    assert areas.max() / areas.min() > 4  # varied sizes
    assert all(0 < a["area"] <= a["bbox"][2] * a["bbox"][3] for a in anns)


def test_whole_objects_in_a_radius_range(tmp_path):
    """``cut_by_border=False``: only a rotated square's corners (1.13 radii out) can reach the border; box sides
    within the shapes' extents for ``radius``."""
    spec = synthetic.DetectionSpec(num_train=40, num_val=2, img_size=96, max_objects=3, radius=(0.16, 0.3),
                                   cut_by_border=False)
    root = synthetic.make_detection(tmp_path, spec)
    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    boxes = np.array([a["bbox"] for a in anns])
    square = np.array([a["category_id"] == synthetic.DETECTION_CATEGORY_IDS[synthetic.SHAPES.index("square")]
                       for a in anns])
    inside = (boxes[:, :2] > 0).all(1) & (boxes[:, :2] + boxes[:, 2:] < spec.img_size).all(1)
    assert inside[~square].all() and inside[square].mean() > 0.5
    longest = boxes[:, 2:].max(1)  # a shape spans 1.5 (triangle) to 2.26 (square at 45°) radii
    assert (longest <= 2.3 * spec.radius[1] * spec.img_size + 1).all()
    assert (longest >= 1.2 * spec.radius[0] * spec.img_size - 1).all()
    assert longest.max() / longest.min() > 1.4  # still varied sizes


def test_detection_set_has_the_standard_coco_layout(det_root):
    from detection.data import coco_paths

    paths = coco_paths(det_root)
    assert set(paths) == {"train_ann", "train_images", "val_ann", "val_images"}
    assert all(Path(p).exists() for p in paths.values())


def test_bad_parameters_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.make_classification(tmp_path, synthetic.ClassificationSpec(num_classes=11))
    with pytest.raises(ValueError, match="at least 1"):
        synthetic.make_detection(tmp_path, synthetic.DetectionSpec(num_train=0))
    assert not any(tmp_path.glob("detection-*"))  # nothing half-written left behind


@pytest.mark.parametrize("upright", [True, False])
def test_upright_objects_are_not_rotated(tmp_path, upright):
    """``upright=True``: every square is axis-aligned, so it fills its box (area / box area ≈ 1); at random
    angles most squares fill at most ~0.9 of theirs (a square at 45° fills half)."""
    spec = synthetic.DetectionSpec(num_train=80, num_val=1, img_size=96, max_objects=3, radius=(0.2, 0.35),
                                   cut_by_border=False, upright=upright)
    coco = COCO(str(synthetic.make_detection(tmp_path, spec) / "annotations" / "instances_train2017.json"))
    square = synthetic.DETECTION_CATEGORY_IDS[synthetic.SHAPES.index("square")]
    fill = np.array([a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in coco.loadAnns(coco.getAnnIds(catIds=[square]))])
    assert len(fill) >= 5
    if upright:
        assert (fill > 0.95).all(), fill
    else:
        assert (fill < 0.9).mean() > 0.5, fill
