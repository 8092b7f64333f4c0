"""``python eval.py demo``: the whole suite end to end on generated data, PiT against DeiT, with a report.

Stages (each prints a progress line and is skipped on a re-run once finished; the trainers and the
robustness runner also resume inside a stage):

1. generate the synthetic classification ImageFolder and COCO-format detection set (cached);
2. train two tiny classifiers of matched cost, PiT-Ti and DeiT-Ti, at a small image size;
3. robustness suite on both: clean, the 15 ImageNet-C corruptions on the fly at 5 severities,
   occlusion, FGSM and PGD (``robustness.runner.run_robustness``);
4. detection suite: a detector on each backbone, started from the classifiers' weights, trained
   briefly and evaluated with pycocotools (``detection.engine.train_detector``);
5. ``OUT/report.md`` with the paper-style tables, PNG plots and the commands for the real datasets.

``--quick`` shrinks every stage (fewer images and epochs) to run in about 3 minutes;
it exists for the tests and a first look, and its numbers mean even less than the default's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from common import synthetic
from common.io import atomic_write_json
from demo.background import background_rows

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
    img_size: int = 64
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    robustness_limit: int | None = None
    eps: float = 1 / 255
    pgd_steps: int = 5
    det_epochs: int = 4
    det_batch_size: int = 4
    det_arch: str = "deformable"
    det_model_kwargs: dict = field(default_factory=dict)
    num_workers: int = 1
    in9_per_class: int = 4  # Background Challenge section: generated IN-9-style objects (and backgrounds) per class


DEFAULT_CONFIG = DemoConfig(
    classification=synthetic.ClassificationSpec(num_classes=10, train_per_class=200, val_per_class=50, img_size=64),
    detection=synthetic.DetectionSpec(num_train=128, num_val=32, img_size=128, max_objects=3),
)
QUICK_CONFIG = DemoConfig(
    classification=synthetic.ClassificationSpec(num_classes=10, train_per_class=20, val_per_class=4, img_size=64),
    detection=synthetic.DetectionSpec(num_train=12, num_val=6, img_size=128, max_objects=3),
    epochs=2, batch_size=32, pgd_steps=2, det_epochs=1, det_batch_size=4, in9_per_class=3,
)
# A small detector so that a few CPU epochs do something: fewer/lighter layers and queries than DETR's.
DEMO_DETECTOR_KWARGS = {"hidden_dim": 128, "num_queries": 30, "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 256}


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class StageLog:
    """``OUT/stages.json``: the result and duration of every finished stage, keyed by the config hash."""

    def __init__(self, path: Path, config_hash: str) -> None:
        self.path = path
        self.config_hash = config_hash
        saved = json.loads(path.read_text()) if path.exists() else {}
        if saved.get("stages") and saved.get("config") != config_hash:
            raise ValueError(f"{path.parent} holds a demo run with other settings (--quick, --device or another "
                             "version of the demo): use another --out folder, or delete it to start over")
        self.stages: dict[str, dict] = saved.get("stages", {})

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Return the saved result of stage ``name``, or run ``fn`` and save what it returns (JSON-able)."""
        if name in self.stages:
            _say(f"{name}: already done ({self.stages[name]['seconds']:.0f} s), reusing its results")
            return self.stages[name]["result"]
        _say(f"{name}: starting")
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        self.stages[name] = {"result": result, "seconds": seconds}
        atomic_write_json(self.path, {"config": self.config_hash, "stages": self.stages})
        _say(f"{name}: done in {seconds:.0f} s")
        return result

    def seconds(self) -> dict[str, float]:
        return {name: stage["seconds"] for name, stage in self.stages.items()}


def _config_hash(config: DemoConfig, device: str) -> str:
    payload = json.dumps({"config": asdict(config), "models": DEMO_MODELS, "device": device}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, device: str | None = None,
             cache: str | Path | None = None, config: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run every stage into ``out`` and return the path of ``out/report.md``.

    ``config`` overrides the preset chosen by ``quick``; ``cache`` is the synthetic-data cache
    (default ``$PIT_SUITE_CACHE`` or ``.cache/pit-suite``).
    """
    from common.distributed import default_device

    config = config or (QUICK_CONFIG if quick else DEFAULT_CONFIG)
    device = str(torch.device(device) if device is not None else default_device())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = StageLog(out / "stages.json", _config_hash(config, device))
    started = time.perf_counter()

    data = stages.run("data", lambda: {
        "classification": str(synthetic.make_classification(cache, config.classification)),
        "detection": str(synthetic.make_detection(cache, config.detection)),
    })
    classifiers = {label: stages.run(f"train {label}", lambda label=label, name=name, kwargs=kwargs: _train(
        config, data["classification"], out / "classifiers" / label, name, kwargs, device, progress))
        for label, name, kwargs in DEMO_MODELS}
    robustness = stages.run("robustness", lambda: _robustness(config, data["classification"], classifiers,
                                                              out / "robustness", device, progress))
    backgrounds = stages.run("background challenge", lambda: background_rows(
        classifiers, DEMO_MODELS, num_classes=config.classification.num_classes, img_size=config.img_size,
        per_class=config.in9_per_class, out=out / "backgrounds", cache=cache, device=device))
    detection = {label: stages.run(f"detection {label}", lambda label=label, name=name: _detect(
        config, data["detection"], classifiers[label]["checkpoint"], out / "detection" / label, name, device,
        progress)) for label, name, _ in DEMO_MODELS}

    from demo.report import write_demo_report

    report = write_demo_report(out, config=config, models=DEMO_MODELS, data=data, classifiers=classifiers,
                               robustness=robustness, backgrounds=backgrounds, detection=detection,
                               stage_seconds=stages.seconds(),
                               wall_seconds=time.perf_counter() - started, device=device, quick=quick)
    _say(f"report written: {report}")
    return report


def _train(config: DemoConfig, data: str, out: Path, name: str, kwargs: dict, device: str, progress: bool) -> dict:
    from classification.train import ClassifierTrainConfig, train_classifier

    result = train_classifier(ClassifierTrainConfig(
        model=name, data=data, out=str(out), epochs=config.epochs, batch_size=config.batch_size,
        img_size=config.img_size, lr=config.lr, warmup_epochs=min(1.0, config.epochs / 4), model_kwargs=kwargs,
        num_workers=config.num_workers, device=device, progress=progress))
    return {k: result[k] for k in ("top1", "top5", "checkpoint")}


def _robustness(config: DemoConfig, data: str, classifiers: dict[str, dict], out: Path, device: str,
                progress: bool) -> dict:
    from robustness.runner import ModelSpec, run_robustness

    num_classes = config.classification.num_classes
    specs = [ModelSpec(name, weights=classifiers[label]["checkpoint"], label=label,
                       model_kwargs={"num_classes": num_classes, "img_size": config.img_size, **kwargs})
             for label, name, kwargs in DEMO_MODELS]
    result = run_robustness(specs, str(Path(data) / "val"), str(out), class_map="folder", img_size=config.img_size,
                            crop_pct=1.0, corrupt_on_the_fly=True, corruptions="all", severities=config.severities,
                            attacks=("fgsm", "pgd"), eps=config.eps, steps=config.pgd_steps, occlusion=True,
                            limit=config.robustness_limit, batch_size=100, device=device,
                            num_workers=config.num_workers, progress=progress)
    return {"summary": result["summary"], "records": result["records"], "report": result["report"]}


def _detect(config: DemoConfig, root: str, backbone_weights: str, out: Path, name: str, device: str,
            progress: bool) -> dict:
    """Train and evaluate one detector; returns COCO AP/AR in percent (None where COCOeval gives -1) and FPS."""
    from detection.coco_eval import STAT_NAMES
    from detection.config import DetectionTrainConfig
    from detection.engine import train_detector

    size = config.detection.img_size
    checkpoint = out / "checkpoint.pth"
    stats = train_detector(DetectionTrainConfig(
        backbone=name, backbone_weights=backbone_weights, **synthetic.detection_paths(root), out=str(out),
        arch=config.det_arch, epochs=config.det_epochs, batch_size=config.det_batch_size, lr=2e-4, lr_backbone=1e-4,
        scales=[size - 16, size, size + 16], max_size=2 * size, test_size=size, device=device,
        num_workers=config.num_workers, resume=str(checkpoint) if checkpoint.exists() else None, progress=progress,
        model_kwargs={**DEMO_DETECTOR_KWARGS, **config.det_model_kwargs}))
    result = {k: (100.0 * stats[k] if stats[k] >= 0 else None) for k in STAT_NAMES}
    return {**result, "fps": stats["fps"], "checkpoint": str(checkpoint)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (report.md, plots, checkpoints, results)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (~3 min on 2 CPU cores): fewer images and epochs, same stages")
    parser.add_argument("--cache", default=None,
                        help="synthetic-data cache folder (default: $PIT_SUITE_CACHE or .cache/pit-suite)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (stage messages stay)")


def main(args: argparse.Namespace) -> int:
    report = run_demo(args.out, quick=args.quick, device=args.device, cache=args.cache, progress=not args.no_progress)
    print(f"\nDemo report: {report}\n(open it in a Markdown viewer; plots are next to it)")
    return 0
