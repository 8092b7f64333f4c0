"""`detection train --preset paper` resolves to the PiT paper's Deformable DETR recipe (docs/deformable.md)."""
from __future__ import annotations

import inspect

import pytest
from torchvision.transforms import v2

import eval as entry
from detection.cli import resolve_train_options
from detection.data import RandomSizeCrop, make_transforms
from detection.deformable import build_deformable_criterion, build_deformable_detector
from detection.deformable.presets import get_preset


def _train_args(*extra: str):
    parser, _ = entry.build_parser(["detection"])
    return parser.parse_args(["detection", "train", "--backbone", "pit_s", "--coco", "c", "--out", "o", *extra])


def _walk(t):
    yield t
    for child in getattr(t, "transforms", []):
        yield from _walk(child)


def test_paper_preset_gives_the_halved_scales_of_the_paper():
    options, _ = resolve_train_options(_train_args("--preset", "paper"))
    preset = get_preset("paper")
    train = list(_walk(make_transforms(True, img_scale=options["img_scale"])))
    sizes = [t for t in train if isinstance(t, v2.RandomShortestSize)]
    assert [400 - 16 * i for i in range(11)] == sorted(preset["train_scales"], reverse=True)
    assert sorted(sizes[0].min_size) == sorted(preset["train_scales"]) and sizes[0].max_size == 667
    assert sorted(sizes[1].min_size) == preset["random_resize_scales"]
    crop = next(t for t in train if isinstance(t, RandomSizeCrop))
    assert (crop.min_size, crop.max_size) == tuple(preset["random_crop_size"])
    test = next(t for t in _walk(make_transforms(False, img_scale=options["img_scale"])) if isinstance(t, v2.Resize))
    assert list(test.size) == [preset["test_scale"]] and test.max_size == preset["test_max_size"]


def test_paper_preset_optimiser_model_and_loss_settings():
    options, model_kwargs = resolve_train_options(_train_args("--preset", "paper"))
    assert options["arch"] == "deformable"
    assert (options["lr"], options["lr_backbone"], options["epochs"], options["lr_drop"]) == (2e-4, 2e-5, 50, 40)
    assert model_kwargs["num_queries"] == 300 and model_kwargs["dim_feedforward"] == 1024
    # The criterion is built with its defaults: they must be the preset's costs and weights.
    defaults = {k: p.default for k, p in inspect.signature(build_deformable_criterion).parameters.items()}
    for key, value in get_preset("paper")["criterion_kwargs"].items():
        assert defaults[key] == value, key
    accepted = inspect.signature(build_deformable_detector).parameters
    assert set(model_kwargs) <= set(accepted)


def test_explicit_flags_override_the_preset_and_conflicts_are_refused():
    options, model_kwargs = resolve_train_options(
        _train_args("--preset", "paper", "--epochs", "3", "--model-kwargs", '{"num_queries": 50}'))
    assert options["epochs"] == 3 and options["lr"] == 2e-4 and model_kwargs["num_queries"] == 50
    with pytest.raises(ValueError, match="Deformable DETR recipe"):
        resolve_train_options(_train_args("--preset", "paper", "--arch", "detr"))
    options, _ = resolve_train_options(_train_args())
    assert options["arch"] == "detr" and options["lr"] == 1e-4 and options["img_scale"] == 1.0
