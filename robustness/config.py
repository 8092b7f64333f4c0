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
from typing import Any, Sequence

from common.vocabulary import default_workers, parse_corruptions, parse_severities

ATTACKS = ("fgsm", "pgd", "autoattack")
PAPER_ATTACKS = ("fgsm", "pgd")  # the paper's table; AutoAttack is asked for by name
NORMS = ("Linf", "L2")
OCCLUSIONS = {"occlusion_center": "centred square, half of each side (25% of the area), zero fill",
              "occlusion_random": "one random square patch of 25% of the area, zero fill"}
CLASS_MAPS = ("imagenet", "folder")
DECODERS = ("auto", "pil", "device")


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

    ``data`` is the clean validation ImageFolder (None: no clean set; then only the other sets given are
    evaluated, and the cells that need clean images are reported "not run"); ``imagenet_real`` the ReaL
    labels file scoring it again (``robustness.real_labels``); ``imagenet_v2``, ``imagenet_sketch`` and
    ``cue_conflict`` the folders of ImageNet-V2, ImageNet-Sketch and the cue-conflict stimuli
    (``robustness.test_sets``, ``robustness.shape_bias``). ``corruptions`` is 'all',
    'extra' or names (``common.vocabulary.parse_corruptions``), run when ``imagenet_c`` or
    ``corrupt_on_the_fly`` gives them a source; ``severities`` anything ``parse_severities`` reads;
    ``imagenet_c_size`` is the benchmark's crop (ImageNet-C: 224), at which stored files are read and
    on-the-fly corruptions are made, with ``imagenet_c_jpeg`` the JPEG-85 storage step of the stored set
    (``robustness.geometry``); ``alpha`` None means 2.5·eps/steps; ``img_size``/``crop_pct`` None mean the
    model's own values; ``norm`` is AutoAttack's ball (FGSM/PGD are L∞ only); ``attack_limit`` runs AutoAttack
    on that many evenly spaced images of the clean pass (None: all); ``num_workers`` None means
    ``common.vocabulary.default_workers()``; ``models_at_once`` caps how many models are held on the device
    together (None: all; each group of models re-reads the data); a pass saves its progress every
    ``chunk_images`` images (a stopped run resumes after the last saved chunk). ``decode``: where JPEG files
    are decoded ("pil": the loader's workers, "device": ``robustness.decoding``, "auto": device on CUDA).
    ``data_note`` says in the report
    what data a run used. Random draws are keyed per image by ``seed`` (``common.seeding``).
    """

    models: list[ModelSpec]
    data: str | None = None
    out: str = ""
    class_map: str = "imagenet"
    img_size: int | None = None
    crop_pct: float | None = None
    imagenet_c: str | None = None
    corrupt_on_the_fly: bool = False
    imagenet_c_size: int = 224
    imagenet_c_jpeg: bool = True
    imagenet_a: str | None = None
    imagenet_r: str | None = None
    imagenet_v2: str | None = None
    imagenet_sketch: str | None = None
    imagenet_real: str | None = None
    cue_conflict: str | None = None
    in9: str | None = None
    in9_challenge_limit: int | None = None
    corruptions: Sequence[str] | str = "all"
    severities: Sequence[int | str] | str = "1-5"
    attacks: Sequence[str] = ()
    eps: float = 1 / 255
    norm: str = "Linf"
    attack_limit: int | None = None
    alpha: float | None = None
    steps: int = 5
    occlusion: bool = False
    limit: int | None = None
    batch_size: int = 64
    models_at_once: int | None = None
    chunk_images: int = 2000
    device: str | None = None
    decode: str = "auto"
    amp: bool = False
    num_workers: int | None = None
    seed: int = 0
    progress: bool = True
    overwrite: bool = False
    resume: bool = False
    data_note: str | None = None

    def __post_init__(self) -> None:
        self.models = list(self.models)
        self.attacks = list(self.attacks)
        self.check_options()
        self.severities = list(parse_severities(self.severities))
        self.corruptions = list(parse_corruptions(self.corruptions))

    def check_options(self) -> None:
        """Raise ValueError naming the option (and its flag) for any value out of range."""
        if not self.models:
            raise ValueError("no model given: pass --model NAME")
        labels = [m.display for m in self.models]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"model {dupes[0]!r} is given twice: list each --model once, or give the copies "
                             "different --weights files (they are then labelled NAME:FILE-STEM)")
        if self.decode not in DECODERS:
            raise ValueError(f"unknown decoder {self.decode!r}: use --decode {' / '.join(DECODERS)}")
        if self.class_map not in CLASS_MAPS:
            raise ValueError(f"unknown class map {self.class_map!r}: use --class-map imagenet or folder")
        if not (self.data or self.imagenet_c or self.imagenet_a or self.imagenet_r or self.in9 or self.imagenet_v2
                or self.imagenet_sketch or self.cue_conflict):
            raise ValueError("no dataset given: pass --data DIR (clean images) and/or --imagenet-c/-a/-r/-v2/-sketch, "
                             "--cue-conflict or --in9 DIR")
        if self.imagenet_real and not self.data:
            raise ValueError("--imagenet-real labels the clean ImageNet val images: pass --data DIR (the val set) "
                             "or drop --imagenet-real")
        if self.class_map == "folder" and not self.data:
            raise ValueError("--class-map folder numbers the class folders of --data: pass --data DIR, or use "
                             "--class-map imagenet (wnid folders)")
        if self.in9_challenge_limit is not None and not self.in9:
            raise ValueError("--in9-challenge-limit needs --in9 DIR (the ImageNet-9 test sets)")
        self._check_sources()
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}: choose --attacks from {' '.join(ATTACKS)}")
        self._check_attack_norm()
        if self.alpha is not None:
            _check_number("--alpha", self.alpha, low=0.0, high=1.0, low_open=True)
        _check_number("--crop-pct", self.crop_pct, low=0.0, high=1.0, low_open=True)
        for flag, value, low in (("--img-size", self.img_size, 1), ("--imagenet-c-size", self.imagenet_c_size, 1),
                                 ("--steps", self.steps, 1),
                                 ("--limit", self.limit, 1), ("--attack-limit", self.attack_limit, 1),
                                 ("--batch-size", self.batch_size, 1),
                                 ("--in9-challenge-limit", self.in9_challenge_limit, 1),
                                 ("--workers", self.num_workers, 0), ("--models-at-once", self.models_at_once, 1),
                                 ("--chunk-images", self.chunk_images, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")

    def _check_attack_norm(self) -> None:
        """``eps`` is an L∞ radius in [0, 1], or with ``--norm L2`` (AutoAttack only) any L2 radius."""
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: use --norm Linf or --norm L2")
        if self.eps is None:
            raise ValueError("--eps is missing: pass the attack radius in [0,1] pixels, e.g. --eps 4/255")
        if self.norm == "L2":
            others = [a for a in self.attacks if a != "autoattack"]
            if others:
                raise ValueError(f"--norm L2 applies to AutoAttack only ({' and '.join(others)} run in L∞): use "
                                 "--attacks autoattack alone with --norm L2, or --norm Linf")
            _check_number("--eps", self.eps, low=0.0, high=math.inf, low_open=False)
        else:
            _check_number("--eps", self.eps, low=0.0, high=1.0, low_open=False)
        if "autoattack" in self.attacks and not self.eps > 0:
            raise ValueError("AutoAttack needs a radius > 0: pass --eps, e.g. --eps 4/255")
        if self.attack_limit is not None and "autoattack" not in self.attacks:
            raise ValueError("--attack-limit sets AutoAttack's images: add --attacks autoattack, or drop --attack-limit")

    def _check_sources(self) -> None:
        """Corruptions need a source; occlusion, attacks and on-the-fly corruptions need clean images."""
        if self.imagenet_c and self.corrupt_on_the_fly:
            raise ValueError("--imagenet-c and --corrupt-on-the-fly exclude each other: pick one source of corruptions")
        explicit = not (isinstance(self.corruptions, str) and self.corruptions == "all") and list(self.corruptions) != ["all"]
        if explicit and not (self.imagenet_c or self.corrupt_on_the_fly):
            raise ValueError("--corruptions needs --imagenet-c DIR or clean images to corrupt on the fly (--data DIR)")
        if not self.data:
            needs = [flag for flag, on in (("--attacks", self.attacks), ("--occlusion", self.occlusion),
                                           ("--corrupt-on-the-fly", self.corrupt_on_the_fly)) if on]
            if needs:
                raise ValueError(f"{needs[0]} needs clean images: pass --data DIR (or drop {needs[0]})")

    @property
    def step_size(self) -> float:
        """PGD step size: ``alpha``, else 2.5·eps/steps (Madry et al.)."""
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    @property
    def workers(self) -> int:
        """DataLoader workers: ``num_workers``, else ``default_workers()`` (never more than the cores)."""
        return default_workers(self.num_workers)


def paper_table(has_clean: bool, imagenet_c: bool) -> dict[str, Any]:
    """The evaluations of the paper's robustness table on the data a run has (``eval.py robustness`` with no
    evaluation selected): occlusion, FGSM/PGD and the 15 corruptions on the fly need clean images;
    with ``--imagenet-c`` the corruptions are read from it instead."""
    return {"attacks": list(PAPER_ATTACKS) if has_clean else [], "occlusion": has_clean, "corruptions": "all",
            "corrupt_on_the_fly": has_clean and not imagenet_c}


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
