"""Typed run configuration of ``detection train``: one dataclass whose field defaults are the only defaults.

The CLI builds a :class:`DetectionTrainConfig` from the flags (a ``--preset`` fills fields first,
explicit flags win); Python callers build one directly. Every value is checked when the config is
made, so a bad number fails before any data is read.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detection.presets import ARCH_DEFAULT, PRESETS

# Fields that describe where and how a run executes, not what it computes: they may change between
# a run and its resumption (another device, more workers, a moved checkpoint).
EXECUTION_FIELDS = ("out", "resume", "overwrite", "device", "num_workers", "progress")


@dataclass
class DetectionTrainConfig:
    """Everything ``train_detector`` needs. Data: COCO-format annotation json + image folder per split.

    ``preset`` names the ``detection.presets`` recipe (None = the official one of ``arch``): its image sizes,
    loss/matcher numbers and detections kept; ``loss_kwargs`` replaces some of those numbers (e.g.
    ``{"cls_loss_coef": 5.0}``). ``label_space`` "coco-ids" makes head rows COCO category ids
    (as the official heads), "contiguous" 0..K-1. Sizes are in pixels before ``img_scale`` (``scales`` =
    training short sides, ``max_size`` = longest side, ``test_size`` = test short side; None = the recipe's). ``resume`` continues a
    run exactly; ``finetune`` starts from a checkpoint's weights with mismatched heads dropped.
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
    arch: str = "detr"
    preset: str | None = None
    label_space: str = "contiguous"
    backbone_weights: str | None = None
    epochs: int = 50
    batch_size: int = 2
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    lr_drop: int | None = None
    scales: list[int] | None = None
    max_size: int | None = None
    test_size: int | None = None
    img_scale: float = 1.0
    amp: bool = False
    accum_steps: int = 1
    device: str | None = None
    num_workers: int = 2
    resume: str | None = None
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
        _at_least(1, epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps,
                  eval_every=self.eval_every)
        _at_least(0, num_workers=self.num_workers)
        _positive(lr=self.lr, img_scale=self.img_scale)
        _at_least(0.0, lr_backbone=self.lr_backbone, weight_decay=self.weight_decay, clip_max_norm=self.clip_max_norm)
        _positive(max_size=self.max_size, test_size=self.test_size, lr_drop=self.lr_drop)
        if self.scales is not None:
            if not self.scales:
                raise ValueError("--scales needs at least one size")
            _positive(scales=min(self.scales))
        if self.label_space not in ("coco-ids", "contiguous"):
            raise ValueError(f"--label-space must be coco-ids or contiguous, got {self.label_space!r}")
        if self.resume and self.finetune:
            raise ValueError("--resume and --finetune are exclusive: resume continues a run, finetune starts a new one")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite are exclusive: resume continues a run, overwrite starts over")
        self._check_loss_kwargs()
        for key in ("num_queries", "hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward"):
            value = self.model_kwargs.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"--model-kwargs {key} must be a whole number ≥ 1, got {value!r}")

    def _check_loss_kwargs(self) -> None:
        """Each ``loss_kwargs`` entry names a loss/matcher number of the run's preset and is a number ≥ 0."""
        preset = self.preset or ARCH_DEFAULT.get(self.arch)
        known = PRESETS[preset].criterion_kwargs if preset in PRESETS else None  # a bad preset is reported by the engine
        unknown = sorted(set(self.loss_kwargs) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f"--loss-kwargs {', '.join(unknown)}: not a loss or matcher number of the {preset} recipe; "
                             f"choose from {', '.join(sorted(known))}")
        for key, value in self.loss_kwargs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--loss-kwargs {key} must be a number ≥ 0, got {value!r}")

    def options(self) -> dict[str, Any]:
        """What the run computes, as plain JSON data (paths absolute): equal options = the same run."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in EXECUTION_FIELDS}
        for key in ("train_ann", "train_images", "val_ann", "val_images", "backbone_weights", "finetune"):
            if options[key] is not None:
                options[key] = str(Path(options[key]).resolve())
        if not options["loss_kwargs"]:  # the preset's own numbers: recorded as runs made before the field existed
            del options["loss_kwargs"]
        return json.loads(json.dumps(options))


def _positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _at_least(bound: float, **values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value >= bound):
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ {bound}, got {value}")
