"""``python eval.py robustness``: clean, ImageNet-C/A/R, occlusion and FGSM/PGD evaluation with reports.

    python eval.py robustness --model pit_s deit_small_patch16_224 resnet50 \\
        --weights pit_s_809.pth deit_small.pth resnet50.pth --data /data/imagenet/val \\
        --imagenet-c /data/imagenet-c --imagenet-a /data/imagenet-a --attacks fgsm pgd --occlusion --out runs/rob
    torchrun --nproc_per_node=8 eval.py robustness ...   # same command, data sharded over GPUs
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from robustness.runner import ModelSpec, run_robustness
from common.distributed import cleanup_distributed, is_main_process


def parse_fraction(text: str) -> float:
    """'1/255', '0.5' or '2' → float (argparse type)."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 1/255, got {text!r}") from None


def parse_severities(values: list[str]) -> list[int]:
    """['1-5'] / ['1', '3', '5'] / ['2-4', '5'] → sorted unique ints, each in 1..5."""
    out: set[int] = set()
    for v in values:
        try:
            lo, _, hi = v.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"bad severity {v!r}: use numbers 1-5 or a range like 1-5") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise ValueError(f"severities must lie in 1..5, got {values}")
    return sorted(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    g = parser.add_argument_group("models")
    g.add_argument("--model", nargs="+", required=True, metavar="NAME",
                   help="one or more pit.create_model names (pit_s, deit_small_patch16_224, resnet50, ...)")
    g.add_argument("--weights", nargs="+", default=None, metavar="PATH",
                   help="weights file per model, in the same order ('none' for random init); omit for all random")
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's, 1000)")
    g.add_argument("--amp", action="store_true", help="mixed precision forward passes (fp16 on CUDA, bf16 on CPU)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="clean validation ImageFolder (<dir>/<wnid>/*.JPEG)")
    g.add_argument("--class-map", choices=("imagenet", "folder"), default="imagenet",
                   help="folder names are ImageNet wnids (timm's synset order) or any names (sorted → 0..K-1)")
    g.add_argument("--imagenet-c", metavar="DIR", help="ImageNet-C on disk: DIR/<corruption>/<severity>/<wnid>/*.JPEG")
    g.add_argument("--corrupt-on-the-fly", action="store_true",
                   help="corrupt the clean --data batches on the device instead of reading ImageNet-C")
    g.add_argument("--imagenet-a", metavar="DIR", help="ImageNet-A folder (200 classes; logits masked)")
    g.add_argument("--imagenet-r", metavar="DIR", help="ImageNet-R folder (200 classes; logits masked)")
    g.add_argument("--img-size", type=int, default=None, help="eval image size (default: the model's)")
    g.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction (default: the model's)")
    g.add_argument("--limit", type=int, default=None, help="evaluate an evenly spread subset of N images per set")
    g.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    g.add_argument("--batch-size", type=int, default=64, help="images per batch (per process)")
    g = parser.add_argument_group("corruptions")
    g.add_argument("--corruptions", nargs="+", default=["all"],
                   help="'all' (the 15 ImageNet-C ones), 'extra' (the 4 extra) or corruption names")
    g.add_argument("--severities", nargs="+", default=["1-5"], help="severities: a range '1-5' or values '1 3 5'")
    g = parser.add_argument_group("attacks and occlusion")
    g.add_argument("--attacks", nargs="*", default=[], choices=("fgsm", "pgd"), help="adversarial attacks (L∞)")
    g.add_argument("--eps", type=parse_fraction, default=1 / 255, help="attack radius in [0,1] pixels, e.g. 1/255")
    g.add_argument("--alpha", type=parse_fraction, default=None, help="PGD step size (default 2.5*eps/steps)")
    g.add_argument("--steps", type=int, default=5, help="PGD steps")
    g.add_argument("--occlusion", action="store_true", help="centred-square and random-patch occlusion")
    g = parser.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder: results.json, cells.jsonl, report.md, plots/")
    g.add_argument("--overwrite", action="store_true", help="discard results already in --out")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument("--seed", type=int, default=0, help="seed of on-the-fly corruptions, PGD starts, random occlusion")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def model_specs(names: list[str], weights: list[str] | None, num_classes: int | None) -> list[ModelSpec]:
    """One ModelSpec per --model; repeated names get labels from their weights files."""
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"--weights needs one path per --model ({len(names)}), got {len(weights)} (use 'none' for random init)")
    weights = [None if w is None or w.lower() == "none" else w for w in (weights or [None] * len(names))]
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    specs = []
    for name, w in zip(names, weights):
        label = f"{name}:{Path(w).stem}" if names.count(name) > 1 and w else None
        specs.append(ModelSpec(name, weights=w, label=label, model_kwargs=dict(kwargs)))
    return specs


def main(args: argparse.Namespace) -> int:
    if args.imagenet_c and args.corrupt_on_the_fly:
        raise ValueError("--imagenet-c and --corrupt-on-the-fly exclude each other: pick one source of corruptions")
    if args.corruptions != ["all"] and not (args.imagenet_c or args.corrupt_on_the_fly):
        raise ValueError("--corruptions needs --imagenet-c DIR or --corrupt-on-the-fly")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    try:
        result = run_robustness(
            model_specs(args.model, args.weights, args.num_classes), args.data, args.out,
            class_map=args.class_map, img_size=args.img_size, crop_pct=args.crop_pct, imagenet_c=args.imagenet_c,
            corrupt_on_the_fly=args.corrupt_on_the_fly, imagenet_a=args.imagenet_a, imagenet_r=args.imagenet_r,
            corruptions=args.corruptions, severities=parse_severities(args.severities), attacks=args.attacks,
            eps=args.eps, alpha=args.alpha, steps=args.steps, occlusion=args.occlusion, limit=args.limit,
            batch_size=args.batch_size, device=args.device, amp=args.amp, num_workers=args.workers, seed=args.seed,
            progress=not args.no_progress, overwrite=args.overwrite)
        main_process = is_main_process()
    finally:
        cleanup_distributed()
    if main_process:
        for label, s in result["summary"].items():
            shown = ", ".join(f"{k} {v:.2f}" for k, v in s.items() if isinstance(v, float))
            print(f"{label}: {shown}")
        print(f"report: {result['report']}")
    return 0
