"""``python eval.py robustness``: clean, ImageNet-C/A/R, occlusion and FGSM/PGD evaluation with reports.

    python eval.py robustness --model pit_s     # generated data, published or random weights: a smoke run
    python eval.py robustness --model pit_s deit_small_patch16_224 resnet50 \\
        --weights pit_s_809.pth deit_small.pth resnet50.pth --data /data/imagenet/val \\
        --imagenet-c /data/imagenet-c --imagenet-a /data/imagenet-a --attacks fgsm pgd --occlusion --out runs/rob
    torchrun --nproc_per_node=8 eval.py robustness ...   # same command, data sharded over GPUs

Run the same command again to resume; add --attacks, --occlusion, --imagenet-a/-r or corruptions to a
finished run and only the new cells are computed.
"""
from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import pit
from common import rundir, synthetic
from common.distributed import cleanup_distributed, is_main_process
from robustness.config import ModelSpec, RobustnessConfig, default
from robustness.runner import marker_options, run
from robustness.store import KIND

def parse_fraction(text: str) -> float:
    """'1/255', '0.5' or '2' → a finite float (argparse type)."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a finite number or a fraction like 1/255, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounded(parse, low: float, high: float | None, low_open: bool, what: str):
    """An argparse type: ``parse`` then check low < / <= value (<= high)."""
    def check(text: str):
        try:
            value = parse(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return check


positive_int = _bounded(int, 1, None, False, "an integer >= 1")
nonnegative_int = _bounded(int, 0, None, False, "an integer >= 0")
eps_value = _bounded(parse_fraction, 0, 1, False, "a finite number in [0, 1] (pixels in [0,1]), e.g. 1/255")
step_value = _bounded(parse_fraction, 0, 1, True, "a finite number in (0, 1], e.g. 1/255")
crop_value = _bounded(parse_fraction, 0, 1, True, "a fraction in (0, 1], e.g. 0.875")


def parse_severities(values: list[str]) -> list[int]:
    """['1-5'] / ['1', '3', '5'] / ['2-4', '5'] → sorted unique ints, each in 1..5."""
    out: set[int] = set()
    for v in values:
        try:
            lo, _, hi = v.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"bad --severities value {v!r}: use numbers 1-5 or a range like 1-5") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise ValueError(f"--severities must lie in 1..5, got {' '.join(values)}")
    return sorted(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    g = parser.add_argument_group("models")
    g.add_argument("--model", nargs="+", required=True, metavar="NAME",
                   help="one or more pit.create_model names (pit_s, deit_small_patch16_224, resnet50, ...)")
    g.add_argument("--weights", nargs="+", default=None, metavar="PATH",
                   help="weights file per model, in the same order ('none' for random init); omitted: the "
                        "published weights when available offline, else random init (a banner says which)")
    g.add_argument("--num-classes", type=positive_int, default=None, help="classifier outputs (default: the model's)")
    g.add_argument("--amp", action="store_true", help="mixed precision forward passes (common.autocast policy)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="clean validation ImageFolder (<dir>/<wnid>/*.JPEG); omitted: the built-in generated set")
    g.add_argument("--class-map", choices=("imagenet", "folder"), default=None,
                   help="folder names are ImageNet wnids (timm's synset order; the default with --data) or any "
                        "names (sorted → 0..K-1; the default for the generated set)")
    g.add_argument("--imagenet-c", metavar="DIR", help="ImageNet-C on disk: DIR/<corruption>/<severity>/<wnid>/*.JPEG")
    g.add_argument("--corrupt-on-the-fly", action="store_true",
                   help="corrupt the clean --data batches on the device instead of reading ImageNet-C")
    g.add_argument("--imagenet-a", metavar="DIR", help="ImageNet-A folder (the authors' 200 classes; logits masked)")
    g.add_argument("--imagenet-r", metavar="DIR", help="ImageNet-R folder (the authors' 200 classes; logits masked)")
    g.add_argument("--in9", metavar="DIR", help="ImageNet-9 backgrounds test sets (DIR/<variant>/val/<class>/, "
                   "DIR/fg_mask/val/<class>/*.npy): variant accuracies, BG-gap and the Background Challenge")
    g.add_argument("--in9-challenge-limit", type=positive_int, default=default("in9_challenge_limit"), metavar="N",
                   help="Background Challenge on the first N foregrounds per class only (a quick estimate)")
    g.add_argument("--img-size", type=positive_int, default=default("img_size"), help="eval image size (default: the model's)")
    g.add_argument("--crop-pct", type=crop_value, default=default("crop_pct"), help="centre-crop fraction in (0, 1] (default: the model's)")
    g.add_argument("--limit", type=positive_int, default=default("limit"), help="evaluate an evenly spread subset of N images per set")
    g.add_argument("--workers", type=nonnegative_int, default=default("num_workers"), help="DataLoader worker processes")
    g.add_argument("--batch-size", type=positive_int, default=default("batch_size"), help="images per batch (per process)")
    g = parser.add_argument_group("corruptions")
    g.add_argument("--corruptions", nargs="+", default=[default("corruptions")],
                   help="'all' (the 15 ImageNet-C ones), 'extra' (the 4 extra) or corruption names")
    g.add_argument("--severities", nargs="+", default=["1-5"], help="severities: a range '1-5' or values '1 3 5'")
    g = parser.add_argument_group("attacks and occlusion")
    g.add_argument("--attacks", nargs="*", default=[], choices=("fgsm", "pgd"), help="adversarial attacks (L∞)")
    g.add_argument("--eps", type=eps_value, default=default("eps"), help="attack radius in [0,1] pixels, e.g. 1/255")
    g.add_argument("--alpha", type=step_value, default=default("alpha"), help="PGD step size (default 2.5*eps/steps)")
    g.add_argument("--steps", type=positive_int, default=default("steps"), help="PGD steps")
    g.add_argument("--occlusion", action="store_true", help="centred-square and random-patch occlusion")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="output folder: results.json, cells.jsonl, report.md, plots/ "
                                               "(default: runs/robustness-<models>, resumed when it holds the same run)")
    g.add_argument("--overwrite", action="store_true",
                   help="recompute cells that --out holds from other options (other cells are kept)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument("--seed", type=int, default=default("seed"), help="seed of on-the-fly corruptions, PGD starts, random occlusion")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def model_specs(names: list[str], weights: list[str] | None, num_classes: int | None) -> list[ModelSpec]:
    """One ModelSpec per --model; repeated names get labels from their weights files. A model without
    --weights gets ``pit.default_weights``: published weights when available, else random init (a note)."""
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"--weights needs one path per --model ({len(names)}), got {len(weights)} (use 'none' for random init)")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    specs = []
    for name, w in zip(names, weights or [None] * len(names)):
        explicit_none = w is not None and w.lower() == "none"
        w = None if explicit_none else w
        label = f"{name}:{Path(w).stem}" if names.count(name) > 1 and w else None
        pretrained = False
        if w is None and not explicit_none:
            pretrained, banner = pit.default_weights(name)
            rundir.note(f"{name}: {banner}")
        specs.append(ModelSpec(name, weights=w, label=label, model_kwargs=dict(kwargs), pretrained=pretrained))
    return specs


def generated_data(class_map: str | None, num_classes: int | None) -> tuple[str, int, str]:
    """The built-in generated classification set (built and cached on first use): (val folder, classes, note)."""
    spec = synthetic.ClassificationSpec()
    if class_map == "imagenet":
        raise ValueError("--class-map imagenet needs --data DIR (the generated set's folders are not ImageNet wnids)")
    if num_classes not in (None, spec.num_classes):
        raise ValueError(f"--num-classes {num_classes} needs --data DIR: the built-in generated set has "
                         f"{spec.num_classes} classes")
    root = synthetic.make_classification(None, spec) / "val"
    text = (f"built-in generated classification set ({spec.num_classes} shape×texture classes, "
            f"{spec.num_classes * spec.val_per_class} images of {spec.img_size} px, {root}), not ImageNet")
    rundir.note(f"no --data given: evaluating on the {text}; for ImageNet pass --data DIR (e.g. --data /data/imagenet/val)")
    return str(root), spec.num_classes, text


def build_config(args: argparse.Namespace) -> RobustnessConfig:
    """The run's RobustnessConfig from the parsed arguments (defaults: data, weights, --out folder)."""
    data, num_classes, data_note, class_map = args.data, args.num_classes, None, args.class_map or "imagenet"
    if data is None:
        data, num_classes, data_note = generated_data(args.class_map, args.num_classes)
        class_map = "folder"
    config = RobustnessConfig(
        models=model_specs(args.model, args.weights, num_classes), data=data, out=args.out or "",
        class_map=class_map, img_size=args.img_size, crop_pct=args.crop_pct, imagenet_c=args.imagenet_c,
        corrupt_on_the_fly=args.corrupt_on_the_fly, imagenet_a=args.imagenet_a, imagenet_r=args.imagenet_r,
        in9=args.in9, in9_challenge_limit=args.in9_challenge_limit, corruptions=args.corruptions,
        severities=parse_severities(args.severities), attacks=args.attacks,
        eps=args.eps, alpha=args.alpha, steps=args.steps, occlusion=args.occlusion, limit=args.limit,
        batch_size=args.batch_size, device=args.device, amp=args.amp, num_workers=args.workers, seed=args.seed,
        progress=not args.no_progress, overwrite=args.overwrite, data_note=data_note)
    if not args.out:
        names = [m.display for m in config.models]
        config.out = str(rundir.default_out("robustness", names, KIND, marker_options(config)))
    return config


def main(args: argparse.Namespace) -> int:
    config = build_config(args)
    rundir.announce(config.out)
    try:
        result = run(config)
        main_process = is_main_process()
    finally:
        cleanup_distributed()
    if main_process:
        for label, s in result["summary"].items():
            shown = ", ".join(f"{k} {v:.2f}" for k, v in s.items() if isinstance(v, float))
            print(f"{label}: {shown}")
        print(f"report: {result['report']}")
        rundir.announce(config.out, finished=True)
    return 0
