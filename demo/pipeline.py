"""``python eval.py demo``: the whole suite end to end on generated data, PiT against DeiT, with a report.

Stages (each prints a progress line and is skipped on a re-run once finished; the trainers and the
robustness runner also resume inside a stage). The output folder is opened by ``common.run.open_run``:
the same command again resumes it stage by stage (saying which stages were done); other settings are
refused unless ``--overwrite`` (start over: every stage and the runs inside them are redone).

1. generate the synthetic classification ImageFolder and COCO-format detection set (cached);
2. train two tiny classifiers of matched cost, PiT-Ti and DeiT-Ti, at a small image size, one after the other;
3. robustness suite on both: clean, the 15 ImageNet-C corruptions on the fly at 5 severities,
   occlusion, FGSM and PGD (``robustness.runner.run_robustness``);
4. detection suite: a small Deformable DETR on each backbone (and each seed of the recipe; side by side on a
   CPU), started from the classifiers' weights, trained on a detection set from the classifiers' world and
   evaluated with pycocotools on held-out images (``demo.detection``, whose docstring says why
   this recipe);
5. ``OUT/report.md`` with the paper-style tables, PNG plots and the commands for the real datasets.

``--quick`` shrinks every stage (fewer images and epochs) to run in about 3 minutes;
it exists for the tests and a first look, and its numbers mean even less than the default's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from common import synthetic
from common.io import atomic_write_json
from common.run import Run, check_resume_overwrite, open_run, say_resumed
from common.tables import fmt
from common.vocabulary import add_shared_flags
from demo.background import background_rows
from demo.classifier import ClassifierRecipe
from demo.detection import DetectionRecipe

# (report label, pit.create_model name, extra model kwargs): matched-cost pair, as in the paper's Table 1.
DEMO_MODELS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("PiT-Ti", "pit_ti", {}),
    ("DeiT-Ti", "deit_tiny_patch16_224", {}),
)


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of one demo run; its hash keys the finished stages of an output folder."""

    classification: synthetic.ClassificationSpec
    detection: synthetic.DetectionSpec
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    # the robustness suite on this many evenly spaced val images (None: all); 250 halves the stage on a CPU
    robustness_limit: int | None = 250
    # 4/255: at 1/255 and 2/255 the attacks sit in the models' linear regime, where PGD's steps end on FGSM's
    # corner (95 % / 90 % of its pixels) and the two columns agree to an image or two (docs/demo.md, tuning split).
    eps: float = 4 / 255
    pgd_steps: int = 5
    # AutoAttack (standard version) on this many evenly spaced val images per model (0: off); each image the
    # model holds costs all four attacks in full (~50 s for a 64-px PiT-Ti on 2 AVX2 cores)
    autoattack_images: int = 2
    detector: DetectionRecipe = field(default_factory=DetectionRecipe)
    num_workers: int = 1
    in9_per_class: int = 4  # Background Challenge section: generated IN-9-style objects (and backgrounds) per class
    # COCO-C section: a few corruptions at one severity on the detection val split (the full 15 × 5 is
    # `eval.py detection eval --corruptions all`).
    coco_c_corruptions: tuple[str, ...] = ("gaussian_noise", "motion_blur", "fog", "contrast")
    coco_c_severities: tuple[int, ...] = (3,)

    @property
    def img_size(self) -> int:
        """The classifiers' image size, at which they are trained and every classification suite runs."""
        return self.classifier.img_size


# Detection images from the classifiers' world: whole upright textured shapes of 19-34 px radius, 1-3 per 96 px
# image (the placement keeps them apart, so most images hold one or two); why: demo/detection.py.
DEMO_DETECTION = synthetic.DetectionSpec(num_train=1200, num_val=100, img_size=96, max_objects=3,
                                         radius=(0.2, 0.35), cut_by_border=False, upright=True)
DEFAULT_CONFIG = DemoConfig(
    classification=synthetic.ClassificationSpec(num_classes=10, train_per_class=200, val_per_class=50, img_size=64,
                                              upright=True),
    detection=DEMO_DETECTION,
)
QUICK_CONFIG = DemoConfig(
    classification=synthetic.ClassificationSpec(num_classes=10, train_per_class=20, val_per_class=4, img_size=64,
                                              upright=True),
    detection=replace(DEMO_DETECTION, num_train=16, num_val=8), in9_per_class=3, coco_c_corruptions=("fog",),
    classifier=ClassifierRecipe(epochs=2, warmup_epochs=0.5), pgd_steps=2, autoattack_images=2,
    detector=DetectionRecipe(epochs=1, lr_drop=None, seeds=(0,)),
)


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


STAGES = "stages.json"


class StageLog:
    """``OUT/stages.json``: the result and duration of every finished stage of the run opened in ``run``;
    ``total`` stages in all (their messages say "stage k of total")."""

    def __init__(self, run: Run, total: int) -> None:
        self.path = run.path / STAGES
        saved = json.loads(self.path.read_text()) if run.resumed and self.path.exists() else {}
        self.stages: dict[str, dict] = saved.get("stages", {})
        self.total, self.count = total, 0

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Return the saved result of stage ``name``, or run ``fn`` and save what it returns (JSON-able)."""
        self.count += 1
        if name in self.stages:
            _say(f"{name}: already done ({self.stages[name]['seconds']:.0f} s), reusing its results")
            return self.stages[name]["result"]
        _say(f"{name}: starting (stage {self.count} of {self.total})")
        started = time.perf_counter()
        result = fn()
        self._save(name, result, time.perf_counter() - started)
        return result

    def run_side_by_side(self, jobs: list[tuple[str, Callable[[], Any]]], device: str) -> list[Any]:
        """Run the stages of ``jobs`` (name, picklable callable) like :meth:`run`, returning their results in
        order; the unfinished ones run side by side when :func:`side_by_side_processes` allows, each in its own
        process with an equal share of this process's threads, and are saved as each finishes."""
        pending = [(name, fn) for name, fn in jobs if name not in self.stages]
        processes = side_by_side_processes(device, len(pending))
        if processes < 2:
            return [self.run(name, fn) for name, fn in jobs]
        threads = max(1, torch.get_num_threads() // processes)
        for name, _ in jobs:
            self.count += 1
            if name in self.stages:
                _say(f"{name}: already done ({self.stages[name]['seconds']:.0f} s), reusing its results")
        names = ", ".join(name for name, _ in pending)
        _say(f"{names}: starting side by side ({processes} processes of {threads} thread(s); stages up to "
             f"{self.count} of {self.total})")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_timed, fn): name for name, fn in pending}
            for future in as_completed(futures):
                result, seconds = future.result()
                self._save(futures[future], result, seconds, side_by_side=True)
        return [self.stages[name]["result"] for name, _ in jobs]

    def _save(self, name: str, result: Any, seconds: float, side_by_side: bool = False) -> None:
        self.stages[name] = {"result": result, "seconds": seconds, **({"side_by_side": True} if side_by_side else {})}
        atomic_write_json(self.path, {"stages": self.stages})
        _say(f"{name}: done in {seconds:.0f} s")

    def side_by_side(self) -> list[str]:
        """The stages that ran beside others (their seconds overlap)."""
        return [name for name, stage in self.stages.items() if stage.get("side_by_side")]

    def seconds(self) -> dict[str, float]:
        return {name: stage["seconds"] for name, stage in self.stages.items()}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def side_by_side_processes(device: str, stages: int) -> int:
    """How many per-model detection stages run at once: on a CPU, one process per stage up to one per thread (the
    demo's small detectors use two cores poorly: two side by side on one thread each train ~1.3× faster than one
    after the other on two; the classifiers do not gain, so they train in turn — docs/demo.md); on other
    devices one at a time."""
    processes = min(stages, torch.get_num_threads())
    return processes if torch.device(device).type == "cpu" and processes >= 2 else 1


def _config_hash(config: DemoConfig, device: str) -> str:
    payload = json.dumps({"config": asdict(config), "models": DEMO_MODELS, "device": device,
                          "detector_amp": config.detector.uses_amp(device)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _open(out: str | Path, config: DemoConfig, device: str, quick: bool, resume: bool, overwrite: bool) -> Run:
    """The demo's run folder (``common.run.open_run``), keyed by the preset, the device and the config's hash."""
    preset = "custom" if config not in (QUICK_CONFIG, DEFAULT_CONFIG) else "quick" if quick else "default"
    options = {"preset": preset, "device": device, "config": _config_hash(config, device)}
    return open_run(out, "demo", options, files=(STAGES, "report.md", "summary.json"), resume=resume,
                    overwrite=overwrite)


def _refuse_torchrun() -> None:
    """The demo is one CPU process: its stages read and write one folder and take every decision from disk
    alone, so a ``torchrun`` launch (``WORLD_SIZE`` > 1) is refused before anything is touched."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "1"):
        raise ValueError(f"the demo runs as one process, not under torchrun (WORLD_SIZE={world}): run "
                         "`python eval.py demo` without torchrun")


def _stage_count(config: DemoConfig) -> int:
    """data, a classifier per model, robustness, background challenge, a detector per model and seed, COCO-C."""
    return 4 + len(DEMO_MODELS) * (1 + len(config.detector.seeds))


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, device: str | None = None,
             cache: str | Path | None = None, config: DemoConfig | None = None, progress: bool = True,
             resume: bool = False, overwrite: bool = False, workers: int | None = None) -> Path:
    """Run every stage into ``out`` and return the path of ``out/report.md``.

    ``config`` overrides the preset chosen by ``quick``; ``cache`` is the synthetic-data cache
    (default ``$PIT_SUITE_CACHE`` or ``.cache/pit-suite``); ``workers`` replaces the config's DataLoader
    workers; ``resume`` / ``overwrite`` as in ``common.run.open_run`` (``overwrite`` redoes every stage).
    """
    from common.distributed import default_device

    _refuse_torchrun()
    config = config or (QUICK_CONFIG if quick else DEFAULT_CONFIG)
    if workers is not None:
        config = replace(config, num_workers=workers)
    device = str(torch.device(device) if device is not None else default_device())
    run = _open(out, config, device, quick, resume, overwrite)  # before any work
    out = run.path
    stages = StageLog(run, _stage_count(config))
    say_resumed(run, f"{len(stages.stages)} of {stages.total} stages finished")
    started = time.perf_counter()

    env = _Env(device, progress, overwrite)
    data = stages.run("data", lambda: {
        "classification": str(synthetic.make_classification(cache, config.classification)),
        "detection": str(synthetic.make_detection(cache, config.detection)),
    })
    classifiers = {label: stages.run(f"train {label}", partial(
        _train, config, data["classification"], out / "classifiers" / label, name, kwargs, env))
        for label, name, kwargs in DEMO_MODELS}
    robustness = stages.run("robustness", lambda: _robustness(config, data["classification"], classifiers,
                                                              out / "robustness", env))
    backgrounds = stages.run("background challenge", lambda: background_rows(
        classifiers, DEMO_MODELS, num_classes=config.classification.num_classes, img_size=config.img_size,
        per_class=config.in9_per_class, out=out / "backgrounds", cache=cache, device=device,
        upright=config.classification.upright))
    detectors = [(label, seed, name, kwargs) for seed in config.detector.seeds for label, name, kwargs in DEMO_MODELS]
    detected = stages.run_side_by_side([(f"detection {label} seed {seed}", partial(
        _detect, config, data["detection"], classifiers[label]["checkpoint"],
        out / "detection" / f"{label}-seed{seed}", name, kwargs, seed, env))
        for label, seed, name, kwargs in detectors], device)
    detection = {label: [r for (lab, *_), r in zip(detectors, detected) if lab == label] for label, _, _ in DEMO_MODELS}
    coco_c = stages.run("coco-c", lambda: _coco_c(config, data["detection"], detection, out / "coco_c", env))
    _say_numbers(classifiers, detection, coco_c)

    from demo.report import write_demo_report

    report = write_demo_report(out, config=config, models=DEMO_MODELS, data=data, classifiers=classifiers,
                               robustness=robustness, backgrounds=backgrounds, detection=detection, coco_c=coco_c,
                               stage_seconds=stages.seconds(), side_by_side=stages.side_by_side(),
                               wall_seconds=time.perf_counter() - started, device=device, quick=quick)
    _say(f"report written: {report}")
    return report


@dataclass(frozen=True)
class _Env:
    """Where and how the stages run: device, progress bars, and whether they start their runs over."""

    device: str
    progress: bool
    overwrite: bool


def _say_numbers(classifiers: dict[str, dict], detection: dict[str, list[dict]], coco_c: dict[str, dict]) -> None:
    """The report's headline numbers, formatted as the report formats them (``common.tables.fmt``)."""
    from demo.detection import STATS

    for label, result in classifiers.items():
        _say(f"{label}: val top-1 {fmt(result['top1'])}  top-5 {fmt(result['top5'])}")
    for label, runs in detection.items():
        for r in runs:
            _say(f"{label} detector seed {r['seed']}: " + "  ".join(f"{k} {fmt(r.get(k))}" for k in STATS))
    for label, r in coco_c.items():
        rpc = None if r["rpc"] is None else 100 * r["rpc"]
        _say(f"{label} COCO-C: clean AP {fmt(100 * r['clean_ap'])}  mPC {fmt(100 * r['mpc'])}  rPC {fmt(rpc)} %")


def _train(config: DemoConfig, data: str, out: Path, name: str, kwargs: dict, env: _Env) -> dict:
    from classification.train import ClassifierTrainConfig, train_classifier

    result = train_classifier(ClassifierTrainConfig(
        model=name, data=data, out=str(out), model_kwargs=kwargs, workers=config.num_workers, device=env.device,
        progress=env.progress, overwrite=env.overwrite, **config.classifier.train_kwargs()))
    return {k: result[k] for k in ("top1", "top5", "checkpoint")}


def _coco_c(config: DemoConfig, root: str, detection: dict[str, list[dict]], out: Path, env: _Env) -> dict:
    """COCO-C (clean AP, mPC, rPC) of each backbone's first-seed detector on the detection val split."""
    from detection.coco_c import run_coco_c

    checkpoints = [runs[0]["checkpoint"] for runs in detection.values()]
    result = run_coco_c(checkpoints, root, str(out), corruptions=list(config.coco_c_corruptions),
                        severities=list(config.coco_c_severities), seed=0, device=env.device, batch_size=8,
                        num_workers=0, progress=env.progress, labels=list(detection), overwrite=env.overwrite)
    return {label: result["runs"][label] for label in detection}


def _robustness(config: DemoConfig, data: str, classifiers: dict[str, dict], out: Path, env: _Env) -> dict:
    from robustness.runner import ModelSpec, run_robustness

    attacks, limit = autoattack_plan(config)
    num_classes = config.classification.num_classes
    specs = [ModelSpec(name, weights=classifiers[label]["checkpoint"], label=label,
                       model_kwargs={"num_classes": num_classes, "img_size": config.img_size, **kwargs})
             for label, name, kwargs in DEMO_MODELS]
    result = run_robustness(specs, str(Path(data) / "val"), str(out), class_map="folder", img_size=config.img_size,
                            crop_pct=1.0, corrupt_on_the_fly=True, imagenet_c_size=config.img_size, corruptions="all", severities=config.severities,
                            attacks=attacks, attack_limit=limit, eps=config.eps, steps=config.pgd_steps, occlusion=True,
                            limit=config.robustness_limit, batch_size=100, device=env.device,
                            num_workers=config.num_workers, progress=env.progress, overwrite=env.overwrite)
    return {"summary": result["summary"], "records": result["records"], "report": result["report"], "not_run": {}}


def autoattack_plan(config: DemoConfig) -> tuple[tuple[str, ...], int | None]:
    """The robustness stage's attacks and AutoAttack's image count (none when ``autoattack_images`` is 0)."""
    if config.autoattack_images:
        return ("fgsm", "pgd", "autoattack"), config.autoattack_images
    return ("fgsm", "pgd"), None


def _detect(config: DemoConfig, root: str, backbone_weights: str, out: Path, name: str, kwargs: dict, seed: int,
            env: _Env) -> dict:
    """Train and evaluate one detector of the demo's recipe (``demo.detection``); COCO AP in percent, curve, FPS."""
    from demo.detection import train_demo_detector

    result = train_demo_detector(config.detector, root, config.detection.img_size, out, backbone=name,
                                 backbone_weights=backbone_weights, seed=seed, device=env.device,
                                 num_workers=config.num_workers, progress=env.progress, overwrite=env.overwrite,
                                 backbone_kwargs=kwargs)
    return {**result, "seed": seed}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shared_flags(parser, "out", out="runs/demo",
                     out_help="run folder: report.md, plots, checkpoints, results (default: runs/demo)")
    add_shared_flags(parser, "device")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (~3 min on 2 CPU cores): fewer images and epochs, same stages")
    parser.add_argument("--cache", default=None,
                        help="synthetic-data cache folder (default: $PIT_SUITE_CACHE or .cache/pit-suite)")
    add_shared_flags(parser, "workers", "resume", "overwrite", "progress")


def main(args: argparse.Namespace) -> int:
    check_resume_overwrite(args.resume, args.overwrite)
    report = run_demo(args.out, quick=args.quick, device=args.device, cache=args.cache, progress=args.progress,
                      resume=args.resume, overwrite=args.overwrite, workers=args.workers)
    print(f"\nDemo report: {report}\n(open it in a Markdown viewer; plots are next to it)")
    return 0
