"""Typed run configuration of ``detection train``: the recipe is resolved from its preset once, here.

Every recipe field left None (epochs, lr drop, lr, batch size, sizes, label space, loss numbers, ...)
takes the value of ``preset`` (default: the official recipe of ``arch``, DETR's without either) when the
config is made, so the CLI (which passes only the flags given) and a Python caller of
``DetectionTrainConfig(...)`` get the same recipe; the engine reads the resolved fields only. Every value
is checked when the config is made, so a bad number fails before any data is read.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.run import changed_options, check_resume_overwrite
from common.vocabulary import default_workers
from detection.presets import ARCH_DEFAULT, LABEL_SPACES, PRESETS, ImageSizes, Preset

# Fields that describe where and how a run executes, not what it computes: they may change between
# a run and its resumption (another device, more workers, a moved checkpoint).
EXECUTION_FIELDS = ("out", "resume", "resume_from", "overwrite", "device", "num_workers", "progress")
# Fields that a None leaves to the recipe (``detection.presets.Preset`` has each of them).
RECIPE_FIELDS = ("epochs", "lr_drop", "lr", "lr_backbone", "batch_size", "weight_decay", "clip_max_norm",
                 "label_space", "num_select")


@dataclass
class DetectionTrainConfig:
    """Everything ``train_detector`` needs. Data: COCO-format annotation json + image folder per split.

    ``preset`` names the ``detection.presets`` recipe (None = the official one of ``arch``); every field
    listed in :data:`RECIPE_FIELDS`, the sizes (``scales`` = training short sides, ``max_size`` = longest
    side, ``test_size`` = test short side, in pixels before ``img_scale``) and ``num_select`` (detections
    kept) left None take the recipe's value; ``model_kwargs`` / ``loss_kwargs`` replace some of the
    recipe's model keywords / matcher costs and loss weights (e.g. ``{"cls_loss_coef": 5.0}``).
    ``label_space`` "coco-ids" makes head rows COCO category ids (as the official heads), "contiguous"
    0..K-1. ``resume`` continues the run in ``out`` also when only its schedule changed (more epochs);
    ``resume_from`` continues from that checkpoint file; ``finetune`` starts from a checkpoint's weights
    with mismatched heads dropped. ``num_workers`` None = ``common.vocabulary.default_workers()``.
    ``augment=False`` trains on the test transform (overfitting checks). ``data_note``/``weights_note``
    record what data and weights the run used (written at the top of ``run.json``, ``log.jsonl`` and
    ``eval.json``).
    """

    backbone: str
    train_ann: str
    train_images: str
    val_ann: str
    val_images: str
    out: str
    arch: str | None = None
    preset: str | None = None
    label_space: str | None = None
    backbone_weights: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_backbone: float | None = None
    weight_decay: float | None = None
    clip_max_norm: float | None = None
    lr_drop: int | None = None
    scales: list[int] | None = None
    max_size: int | None = None
    test_size: int | None = None
    num_select: int | None = None
    img_scale: float = 1.0
    amp: bool = False
    accum_steps: int = 1
    device: str | None = None
    num_workers: int | None = None
    resume: bool = False
    resume_from: str | None = None
    overwrite: bool = False
    seed: int = 42
    eval_every: int = 1
    progress: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_kwargs: dict[str, float] = field(default_factory=dict)
    finetune: str | None = None
    augment: bool = True
    gflops_size: tuple[int, int] | None = None
    data_note: str = ""
    weights_note: str = ""

    def __post_init__(self) -> None:
        recipe = self._resolve()
        _at_least(1, epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps,
                  eval_every=self.eval_every, num_select=self.num_select)
        _at_least(0, num_workers=self.num_workers)
        _positive(lr=self.lr, img_scale=self.img_scale)
        _at_least(0.0, lr_backbone=self.lr_backbone, weight_decay=self.weight_decay, clip_max_norm=self.clip_max_norm)
        _positive(max_size=self.max_size, test_size=self.test_size, lr_drop=self.lr_drop)
        if not self.scales:
            raise ValueError("--scales needs at least one size")
        _positive(scales=min(self.scales))
        if self.label_space not in LABEL_SPACES:
            raise ValueError(f"--label-space must be coco-ids or contiguous, got {self.label_space!r}")
        if self.resume_from and self.finetune:
            raise ValueError("--resume and --finetune are exclusive: resume continues a run, finetune starts a new one")
        check_resume_overwrite(bool(self.resume or self.resume_from), self.overwrite)
        self._check_loss_kwargs(recipe)
        for key in ("num_queries", "hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward"):
            value = self.model_kwargs.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"--model-kwargs {key} must be a whole number ≥ 1, got {value!r}")

    def _resolve(self) -> Preset:
        """Fill every field left None from the recipe, once: ``preset``, else the official one of ``arch``
        (DETR's without either); ``model_kwargs`` / ``loss_kwargs`` replace some of the recipe's numbers."""
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset}: no such recipe; choose from {', '.join(sorted(PRESETS))}")
        if self.arch is not None and self.arch not in ARCH_DEFAULT:
            raise ValueError(f"--arch {self.arch}: no such detector; choose from {', '.join(sorted(ARCH_DEFAULT))}")
        name = self.preset or ARCH_DEFAULT[self.arch or "detr"]
        recipe = PRESETS[name]
        if self.arch not in (None, recipe.arch):
            raise ValueError(f"--preset {name} is a {recipe.arch} recipe: drop --arch {self.arch} or use --arch {recipe.arch}")
        self.arch, self.preset = recipe.arch, name
        for key in RECIPE_FIELDS:
            if getattr(self, key) is None:
                setattr(self, key, getattr(recipe, key))
        self.scales = list(self.scales) if self.scales is not None else list(recipe.sizes.train_scales)
        self.max_size = self.max_size or recipe.sizes.max_size
        self.test_size = self.test_size or recipe.sizes.test_size
        self.model_kwargs = {**recipe.model_kwargs, **self.model_kwargs}
        self.loss_kwargs = {**recipe.criterion_kwargs, **self.loss_kwargs}
        self.num_workers = default_workers(self.num_workers)
        return recipe

    def _check_loss_kwargs(self, recipe: Preset) -> None:
        """Each ``loss_kwargs`` entry names a loss/matcher number of the run's preset and is a number ≥ 0."""
        unknown = sorted(set(self.loss_kwargs) - set(recipe.criterion_kwargs))
        if unknown:
            raise ValueError(f"--loss-kwargs {', '.join(unknown)}: not a loss or matcher number of the {self.preset} "
                             f"recipe; choose from {', '.join(sorted(recipe.criterion_kwargs))}")
        for key, value in self.loss_kwargs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--loss-kwargs {key} must be a number ≥ 0, got {value!r}")

    def image_sizes(self) -> ImageSizes:
        """The run's image sizes: the recipe's crop schedule with this config's scales / max / test size,
        all × ``img_scale``."""
        sizes = dataclasses.replace(PRESETS[self.preset].sizes, train_scales=tuple(self.scales),
                                    max_size=self.max_size, test_size=self.test_size)
        return sizes.scaled(self.img_scale) if self.img_scale != 1.0 else sizes

    def recipe_line(self) -> str:
        """What the run trains with, in one line (printed at the start of ``detection train``)."""
        lr_drop = f"lr ×0.1 after epoch {self.lr_drop}" if self.lr_drop < self.epochs else "no lr drop"
        return (f"recipe {self.preset}: {self.arch}, {self.epochs} epochs, {lr_drop}, lr {self.lr:g} "
                f"(backbone {self.lr_backbone:g}), batch {self.batch_size} per process, short sides "
                f"{_span(self.scales)} (max {self.max_size}, test {self.test_size})"
                + (f" × {self.img_scale:g}" if self.img_scale != 1.0 else "") + f", labels {self.label_space}")

    def options(self) -> dict[str, Any]:
        """What the run computes, as plain JSON data (paths absolute): equal options = the same run."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in EXECUTION_FIELDS}
        for key in ("train_ann", "train_images", "val_ann", "val_images", "backbone_weights", "finetune"):
            if options[key] is not None:
                options[key] = str(Path(options[key]).resolve())
        return json.loads(json.dumps(options))

    @classmethod
    def resolved_options(cls, options: dict[str, Any]) -> dict[str, Any] | None:
        """The options a run recorded, with every field it left unset resolved as today (None when they no
        longer make a config): how a folder written before a recipe field existed is recognised."""
        names = {f.name for f in dataclasses.fields(cls)} - set(EXECUTION_FIELDS)
        try:
            return cls(**{k: v for k, v in options.items() if k in names}, out="").options()
        except (TypeError, ValueError):
            return None


def same_run(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether recorded options ``old`` describe the run of ``new`` once resolved (``common.run`` compatible)."""
    return DetectionTrainConfig.resolved_options(old) == new


def more_epochs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the run of ``old`` can be continued as ``new``: only the schedule (epochs, lr drop) differs."""
    old = DetectionTrainConfig.resolved_options(old) or old
    return set(changed_options(old, new)) <= {"epochs", "lr_drop"}


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{min(values)}..{max(values)} ({len(values)} sizes)"


def _positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _at_least(bound: float, **values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value >= bound):
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ {bound}, got {value}")
