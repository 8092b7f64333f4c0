"""The typed configuration of a robustness run: what to evaluate, on which data, with which options.

``RobustnessConfig``'s field defaults are the only defaults of ``eval.py robustness`` (the CLI reads
them for its help text). Numbers are checked when the config is built (``ValueError`` with the flag to
fix); paths are checked by ``check_paths`` before the first pass, so a typo is reported at start.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ATTACKS = ("fgsm", "pgd")
OCCLUSIONS = {"occlusion_center": "centred square, half of each side (25% of the area), zero fill",
              "occlusion_random": "one random square patch of 25% of the area, zero fill"}
CLASS_MAPS = ("imagenet", "folder")


@dataclass
class ModelSpec:
    """One model to evaluate: a ``pit.create_model`` name, optional weights file, display label.

    ``pretrained``: use the model's published weights (``weights`` must then be None).
    """

    name: str
    weights: str | None = None
    label: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class RobustnessConfig:
    """Everything one robustness run needs. Sizes in pixels, ``eps``/``alpha`` in [0,1] pixel units.

    ``data`` is the clean validation ImageFolder; ``corruptions`` is 'all', 'extra' or names;
    ``alpha`` None means 2.5·eps/steps; ``img_size``/``crop_pct`` None mean the model's own values.
    ``data_note``/``weights_notes`` say in the report what data and weights a run used.
    """

    models: list[ModelSpec]
    data: str
    out: str
    class_map: str = "imagenet"
    img_size: int | None = None
    crop_pct: float | None = None
    imagenet_c: str | None = None
    corrupt_on_the_fly: bool = False
    imagenet_a: str | None = None
    imagenet_r: str | None = None
    in9: str | None = None
    in9_challenge_limit: int | None = None
    corruptions: list[str] | str = "all"
    severities: list[int] = (1, 2, 3, 4, 5)
    attacks: list[str] = ()
    eps: float = 1 / 255
    alpha: float | None = None
    steps: int = 5
    occlusion: bool = False
    limit: int | None = None
    batch_size: int = 64
    device: str | None = None
    amp: bool = False
    num_workers: int = 4
    seed: int = 0
    progress: bool = True
    overwrite: bool = False
    data_note: str | None = None
    weights_notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.severities = list(self.severities)
        self.attacks = list(self.attacks)
        self.check_options()

    def check_options(self) -> None:
        """Raise ValueError naming the option (and its flag) for any value out of range."""
        if not self.models:
            raise ValueError("no model given: pass --model NAME")
        labels = [m.display for m in self.models]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"model {dupes[0]!r} is given twice: list each --model once, or give the copies "
                             "different --weights files (they are then labelled NAME:FILE-STEM)")
        if self.class_map not in CLASS_MAPS:
            raise ValueError(f"unknown class map {self.class_map!r}: use --class-map imagenet or folder")
        if self.in9_challenge_limit is not None and not self.in9:
            raise ValueError("--in9-challenge-limit needs --in9 DIR (the ImageNet-9 test sets)")
        if self.imagenet_c and self.corrupt_on_the_fly:
            raise ValueError("--imagenet-c and --corrupt-on-the-fly exclude each other: pick one source of corruptions")
        if self.corruptions not in ("all", ["all"]) and not (self.imagenet_c or self.corrupt_on_the_fly):
            raise ValueError("--corruptions needs --imagenet-c DIR or --corrupt-on-the-fly")
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}: choose --attacks from {' '.join(ATTACKS)}")
        bad = [s for s in self.severities if s not in (1, 2, 3, 4, 5)]
        if bad or not self.severities:
            raise ValueError(f"--severities must lie in 1..5, got {self.severities}")
        _check_number("--eps", self.eps, low=0.0, high=1.0, low_open=False)
        if self.alpha is not None:
            _check_number("--alpha", self.alpha, low=0.0, high=1.0, low_open=True)
        _check_number("--crop-pct", self.crop_pct, low=0.0, high=1.0, low_open=True)
        for flag, value, low in (("--img-size", self.img_size, 1), ("--steps", self.steps, 1),
                                 ("--limit", self.limit, 1), ("--batch-size", self.batch_size, 1),
                                 ("--in9-challenge-limit", self.in9_challenge_limit, 1),
                                 ("--workers", self.num_workers, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")

    @property
    def step_size(self) -> float:
        """PGD step size: ``alpha``, else 2.5·eps/steps (Madry et al.)."""
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    @property
    def randomised(self) -> bool:
        """True when some cell draws random numbers (keyed by batch, so the batching matters)."""
        return bool(self.corrupt_on_the_fly or "pgd" in self.attacks or self.occlusion)


def _check_number(flag: str, value: float | None, *, low: float, high: float, low_open: bool) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= high
    ok = ok and (value > low if low_open else value >= low)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{flag} must be a finite number in {interval}, got {value!r}")


def default(name: str) -> Any:
    """The default of ``RobustnessConfig`` field ``name`` (the CLI shows and uses it)."""
    return next(f.default for f in fields(RobustnessConfig) if f.name == name)


def absolute(path: str | os.PathLike | None) -> str | None:
    """``path`` resolved to an absolute string (None stays None)."""
    return str(Path(path).resolve()) if path else None
