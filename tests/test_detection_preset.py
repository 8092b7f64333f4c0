"""Presets are the single source of their recipe (docs/detection.md), and image sizes follow the
official DETR ``get_size`` (facebookresearch/detr datasets/transforms.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

import eval as entry
from detection.cli import resolve_train_options
from detection.config import DetectionTrainConfig
from detection.data import RandomResize, RandomSizeCrop, get_size, make_transforms
from detection.presets import PRESETS, get_preset


def _train_args(*extra: str):
    parser, _ = entry.build_parser(["detection"])
    return parser.parse_args(["detection", "train", "--backbone", "pit_s", "--coco", "c", "--out", "o", *extra])


def _walk(t):
    yield t
    for child in getattr(t, "transforms", []):
        yield from _walk(child)


def _official_get_size(image_size, size, max_size=None):
    """Transcription of the official ``get_size_with_aspect_ratio`` ((w, h) → (h, w))."""
    w, h = image_size
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return (oh, ow)


# (width, height) of COCO-like images: landscape, portrait, square, very wide (max_size binds), tiny
IMAGE_SIZES = [(640, 480), (480, 640), (500, 500), (640, 427), (427, 640), (1333, 800), (2000, 500), (500, 2000),
               (333, 500), (612, 612), (640, 360), (800, 1333), (100, 37), (999, 1000)]


@pytest.mark.parametrize("width,height", IMAGE_SIZES)
def test_get_size_equals_the_official_rule(width, height):
    for size in (*range(480, 801, 32), 400, 500, 600, 240, 800):
        for max_size in (1333, 667, None):
            assert get_size(width, height, size, max_size) == _official_get_size((width, height), size, max_size)
    assert get_size(2000, 500, 800, 1333) == (333, 1332)  # max_size binds: round(1333·500/2000) = 333, int(333·4)


def test_test_transform_resizes_to_the_official_size():
    image = Image.new("RGB", (2000, 500))
    out = make_transforms(False)(image)
    assert tuple(out.shape[-2:]) == _official_get_size((2000, 500), 800, 1333)
    out = make_transforms(False, get_preset("paper").sizes)(Image.new("RGB", (640, 427)))
    assert tuple(out.shape[-2:]) == _official_get_size((640, 427), 400, 667)


def test_paper_preset_gives_the_halved_scales_of_the_paper():
    options, _ = resolve_train_options(_train_args("--preset", "paper"))
    sizes = get_preset(options["preset"]).sizes
    train = list(_walk(make_transforms(True, sizes)))
    resizes = [t for t in train if isinstance(t, RandomResize)]
    assert sorted(resizes[0].sizes, reverse=True) == [400 - 16 * i for i in range(11)] and resizes[0].max_size == 667
    assert resizes[1].sizes == [200, 250, 300]
    crop = next(t for t in train if isinstance(t, RandomSizeCrop))
    assert (crop.min_size, crop.max_size) == (192, 300)
    test = next(t for t in _walk(make_transforms(False, sizes)) if isinstance(t, RandomResize))
    assert test.sizes == [400] and test.max_size == 667


@pytest.mark.parametrize("name,arch,epochs,lr_drop,lr,queries", [
    ("detr-r50", "detr", 300, 200, 1e-4, 100), ("deformable", "deformable", 50, 40, 2e-4, 300),
    ("deformable-refine", "deformable", 50, 40, 2e-4, 300), ("deformable-two-stage", "deformable", 50, 40, 2e-4, 300),
    ("paper", "deformable", 50, 40, 2e-4, 300)])
def test_official_recipes(name, arch, epochs, lr_drop, lr, queries):
    """Numbers from the official main.py defaults / READMEs."""
    options, model_kwargs = resolve_train_options(_train_args("--preset", name))
    assert (options["arch"], options["epochs"], options["lr_drop"], options["lr"]) == (arch, epochs, lr_drop, lr)
    assert options["lr_backbone"] == lr / 10 and options["clip_max_norm"] == 0.1 and options["weight_decay"] == 1e-4
    assert model_kwargs["num_queries"] == queries
    assert options["label_space"] == ("contiguous" if name == "paper" else "coco-ids")
    kw = get_preset(name).model_kwargs
    assert (kw.get("with_box_refine", False), kw.get("two_stage", False)) == (name != "deformable" and "deformable" in name
                                                                             and name != "paper", name.endswith("two-stage"))
    loss = get_preset(name).criterion_kwargs
    costs = (loss["set_cost_class"], loss["set_cost_bbox"], loss["set_cost_giou"])
    assert costs == ((1.0, 5.0, 2.0) if arch == "detr" else (2.0, 5.0, 2.0))


def test_every_preset_field_reaches_the_builders():
    """Model and loss keywords are accepted by the builders (nothing silently dropped)."""
    from detection.build import build_criterion, build_detector

    for name, preset in PRESETS.items():
        kw = {**preset.model_kwargs, "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 1,
              "dim_feedforward": 32, "num_queries": 5}
        model = build_detector(preset.arch, backbone="pit_ti", num_classes=3, **kw)
        criterion = build_criterion(preset.arch, num_classes=3, model_kwargs=kw, **preset.criterion_kwargs)
        assert criterion.matcher.cost_class == preset.criterion_kwargs["set_cost_class"]
        if preset.arch == "deformable":
            low = next(g for g in model.param_groups(1.0, 0.1) if g["name"] == "sampling_offsets_reference_points")
            assert low["lr"] == preset.model_kwargs["lr_linear_proj_mult"]
        assert dataclasses.fields(preset)  # frozen record


def test_explicit_flags_override_the_preset_and_conflicts_are_refused():
    options, model_kwargs = resolve_train_options(
        _train_args("--preset", "paper", "--epochs", "3", "--model-kwargs", '{"num_queries": 50}'))
    assert options["epochs"] == 3 and options["lr"] == 2e-4 and model_kwargs["num_queries"] == 50
    with pytest.raises(ValueError, match="deformable recipe"):
        resolve_train_options(_train_args("--preset", "paper", "--arch", "detr"))
    options, _ = resolve_train_options(_train_args())
    assert options["arch"] == "detr" and options["lr"] == 1e-4 and options["epochs"] == 300
    options, _ = resolve_train_options(_train_args("--arch", "deformable", "--label-space", "contiguous"))
    assert options["preset"] == "deformable" and options["lr"] == 2e-4 and options["label_space"] == "contiguous"


def test_crop_drops_boxes_left_empty():
    from torchvision import tv_tensors

    from detection.data import DropEmptyBoxes

    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 9], [2, 2, 3, 3]]), format="XYXY",
                                     canvas_size=(20, 20))
    _, target = DropEmptyBoxes()(torch.zeros(3, 20, 20), {"boxes": boxes, "labels": torch.tensor([1, 2, 3])})
    assert target["labels"].tolist() == [1, 3]  # zero width dropped; a 1-px box kept (official: x1 > x0)


def test_loss_kwargs_replace_only_the_named_preset_numbers():
    """--loss-kwargs reaches the criterion (loss weight of every decoder layer); the rest stays the preset's."""
    from detection.build import build_criterion
    from detection.engine import _loss_kwargs

    options, model_kwargs = resolve_train_options(
        _train_args("--preset", "deformable", "--loss-kwargs", '{"cls_loss_coef": 5, "set_cost_class": 3}'))
    assert options["loss_kwargs"] == {"cls_loss_coef": 5, "set_cost_class": 3}
    config = DetectionTrainConfig(backbone="pit_ti", train_ann="a.json", train_images="a", val_ann="b.json", val_images="b",
                                  out="o", arch="deformable", preset="deformable", loss_kwargs=options["loss_kwargs"])
    loss = _loss_kwargs(config, get_preset("deformable"))
    assert loss == {**get_preset("deformable").criterion_kwargs, "cls_loss_coef": 5, "set_cost_class": 3}
    criterion = build_criterion("deformable", num_classes=3, model_kwargs={"dec_layers": 2}, **loss)
    assert criterion.matcher.cost_class == 3 and criterion.matcher.cost_bbox == 5.0
    assert criterion.weight_dict["loss_ce"] == criterion.weight_dict["loss_ce_0"] == 5
    assert criterion.weight_dict["loss_bbox"] == 5.0


def test_loss_kwargs_are_recorded_in_the_options_only_when_given():
    """A run that keeps the preset's loss numbers records no ``loss_kwargs`` in its options (runs recorded
    without the field resume with the same options); a run that changes them records the change."""
    paths = dict(train_ann="a.json", train_images="a", val_ann="b.json", val_images="b", out="o")
    assert "loss_kwargs" not in DetectionTrainConfig(backbone="pit_ti", **paths).options()
    changed = DetectionTrainConfig(backbone="pit_ti", **paths, loss_kwargs={"cls_loss_coef": 5.0}).options()
    assert changed["loss_kwargs"] == {"cls_loss_coef": 5.0}


def test_unknown_loss_kwargs_are_refused_when_the_config_is_made():
    """Before any data is read: the name is not one of the preset's numbers, and the message lists them."""
    paths = dict(train_ann="a.json", train_images="a", val_ann="b.json", val_images="b", out="o")
    with pytest.raises(ValueError, match="cls_los_coef.*choose from.*cls_loss_coef"):
        DetectionTrainConfig(backbone="pit_ti", arch="deformable", **paths, loss_kwargs={"cls_los_coef": 5.0})
    with pytest.raises(ValueError, match="focal_alpha"):  # a Deformable DETR number is not DETR's
        DetectionTrainConfig(backbone="pit_ti", arch="detr", **paths, loss_kwargs={"focal_alpha": 0.5})
