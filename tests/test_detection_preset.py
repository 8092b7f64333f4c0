"""Presets are the single source of their recipe (docs/detection.md), and image sizes follow the
official DETR ``get_size`` (facebookresearch/detr datasets/transforms.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

import eval as entry
from detection.cli import preset_values, train_config
from detection.config import DetectionTrainConfig, more_epochs, same_run
from detection.data import RandomResize, RandomSizeCrop, get_size, make_transforms
from detection.presets import PRESETS, get_preset

PATHS = dict(train_ann="a.json", train_images="a", val_ann="b.json", val_images="b")


def _train_args(*extra: str):
    parser, _ = entry.build_parser(["detection"])
    return parser.parse_args(["detection", "train", "--backbone", "pit_s", "--backbone-weights", "w.pth",
                              *(f"--{k.replace('_', '-')}={v}" for k, v in PATHS.items()), "--out", "o", *extra])


def _cli(*extra: str) -> DetectionTrainConfig:
    return train_config(_train_args(*extra))


def _python(**kwargs) -> DetectionTrainConfig:
    return DetectionTrainConfig(backbone="pit_s", backbone_weights="w.pth", **PATHS, out="o", **kwargs)


def _recipe(config: DetectionTrainConfig) -> dict:
    """What a run computes, less the notes on where its data and weights came from."""
    return {k: v for k, v in config.options().items() if k not in ("data_note", "weights_note")}


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
    sizes = _cli("--preset", "paper").image_sizes()
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
    config = _cli("--preset", name)
    assert (config.arch, config.epochs, config.lr_drop, config.lr) == (arch, epochs, lr_drop, lr)
    assert config.lr_backbone == lr / 10 and config.clip_max_norm == 0.1 and config.weight_decay == 1e-4
    assert config.model_kwargs["num_queries"] == queries
    assert config.label_space == ("contiguous" if name == "paper" else "coco-ids")
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
    config = _cli("--preset", "paper", "--epochs", "3", "--model-kwargs", '{"num_queries": 50}')
    assert config.epochs == 3 and config.lr == 2e-4 and config.model_kwargs["num_queries"] == 50
    assert config.model_kwargs["dim_feedforward"] == 1024  # the rest of the model stays the preset's
    with pytest.raises(ValueError, match="deformable recipe"):
        _cli("--preset", "paper", "--arch", "detr")
    config = _cli()
    assert (config.arch, config.preset, config.lr, config.epochs) == ("detr", "detr-r50", 1e-4, 300)
    config = _cli("--arch", "deformable", "--label-space", "contiguous")
    assert config.preset == "deformable" and config.lr == 2e-4 and config.label_space == "contiguous"


@pytest.mark.parametrize("flags,fields", [
    ([], {}), (["--arch", "deformable"], {"arch": "deformable"}),
    *[(["--preset", name], {"preset": name}) for name in PRESETS],
    (["--preset", "paper", "--epochs", "3", "--lr-drop", "2", "--scales", "96", "--model-kwargs", '{"num_queries": 5}',
      "--loss-kwargs", '{"cls_loss_coef": 5}'],
     {"preset": "paper", "epochs": 3, "lr_drop": 2, "scales": [96], "model_kwargs": {"num_queries": 5},
      "loss_kwargs": {"cls_loss_coef": 5}})])
def test_the_cli_and_python_get_the_same_recipe(flags, fields):
    """``detection train FLAGS`` and ``DetectionTrainConfig(**the same fields)`` resolve every unset field from
    the same preset: equal options, equal image sizes (the engine reads nothing else)."""
    cli, python = _cli(*flags), _python(**fields)
    assert _recipe(cli) == _recipe(python)
    assert cli.image_sizes() == python.image_sizes()
    preset = PRESETS[python.preset]
    if not fields.get("epochs"):
        assert (python.epochs, python.lr_drop, python.batch_size, python.num_select) == (
            preset.epochs, preset.lr_drop, preset.batch_size, preset.num_select)
        assert python.loss_kwargs == preset.criterion_kwargs and python.label_space == preset.label_space
        assert python.image_sizes() == preset.sizes


def test_a_resolved_config_resolves_to_itself():
    config = _python(preset="deformable-refine", epochs=7)
    again = dataclasses.replace(config, out="elsewhere")
    assert again.options() == config.options()


def test_runs_recorded_before_the_recipe_was_resolved_still_resume():
    """Options recorded with recipe fields left unset (sizes None, no loss numbers, no num_select) describe the
    same run once resolved; only a longer schedule can be continued with --resume."""
    new = _cli().options()
    old = {k: v for k, v in new.items() if k not in ("loss_kwargs", "num_select")}
    old.update(scales=None, max_size=None, test_size=None)
    assert same_run(old, new)
    assert not same_run({**old, "lr": 3e-4}, new)
    longer = _cli("--epochs", "400").options()
    assert more_epochs(old, longer) and not more_epochs(old, _cli("--lr", "3e-4").options())


def test_help_texts_quote_the_presets():
    """The defaults quoted in --help are read from the presets, so they cannot drift from them."""
    text = preset_values(lambda p: p.epochs)
    for name, preset in PRESETS.items():
        assert name in text and str(preset.epochs) in text


def test_train_help_quotes_every_preset_epochs(capsys):
    with pytest.raises(SystemExit):
        entry.main(["detection", "train", "-h"])
    shown = " ".join(capsys.readouterr().out.split())
    assert " ".join(preset_values(lambda p: p.epochs).split()) in shown
    assert " ".join(preset_values(lambda p: p.lr_drop).split()) in shown


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

    config = _cli("--preset", "deformable", "--loss-kwargs", '{"cls_loss_coef": 5, "set_cost_class": 3}')
    loss = config.loss_kwargs
    assert loss == {**get_preset("deformable").criterion_kwargs, "cls_loss_coef": 5, "set_cost_class": 3}
    criterion = build_criterion("deformable", num_classes=3, model_kwargs={"dec_layers": 2}, **loss)
    assert criterion.matcher.cost_class == 3 and criterion.matcher.cost_bbox == 5.0
    assert criterion.weight_dict["loss_ce"] == criterion.weight_dict["loss_ce_0"] == 5
    assert criterion.weight_dict["loss_bbox"] == 5.0


def test_unknown_loss_kwargs_are_refused_when_the_config_is_made():
    """Before any data is read: the name is not one of the preset's numbers, and the message lists them."""
    paths = dict(train_ann="a.json", train_images="a", val_ann="b.json", val_images="b", out="o")
    with pytest.raises(ValueError, match="cls_los_coef.*choose from.*cls_loss_coef"):
        DetectionTrainConfig(backbone="pit_ti", arch="deformable", **paths, loss_kwargs={"cls_los_coef": 5.0})
    with pytest.raises(ValueError, match="focal_alpha"):  # a Deformable DETR number is not DETR's
        DetectionTrainConfig(backbone="pit_ti", arch="detr", **paths, loss_kwargs={"focal_alpha": 0.5})
