"""``python eval.py bench``: the PiT paper's ImageNet table, measured on this machine.

    python eval.py bench                                   # the paper's seven models, params/GMACs/img/s
    python eval.py bench --models pit_s deit_small_patch16_224 --device cuda --batch-size 128 --amp
    python eval.py bench --models pit_s --weights pit_s_809.pth --data /data/imagenet/val   # + top-1/top-5
    python eval.py bench --json bench.json                 # also write the rows as JSON

Per model: exact parameter count, GMACs including attention (``pit.count_macs``), measured
throughput (images/s, eval mode, random input, after warm-up, median of ``torch.utils.benchmark``
blocks over at least ``--min-time`` seconds), and the paper's figures beside
them (FLOPs, params, V100 img/s at batch 128, top-1 of the DeiT-recipe or distilled weights).
With ``--data`` and ``--weights`` it adds top-1/top-5 on an ImageNet-layout folder with the
paper's eval transform (resize 256 bicubic, centre crop 224; ``--crop-pct`` scales it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

import pit
from classification.data import UnknownClassFolders
from classification.evaluate import evaluate_topk, imagenet_val_loader
from common.options import non_negative_int, positive_float, positive_int, unit_fraction
from common.autocast import autocast
from common.distributed import default_device
from common.io import atomic_write_json
from common.rundir import check_out_file
from common.timing import time_call

PAPER_MODELS = (
    "deit_tiny_patch16_224", "pit_ti", "pit_xs", "deit_small_patch16_224", "pit_s", "deit_base_patch16_224", "pit_b",
)
# Heo et al. 2021, Table 3 / official README: GMACs, params (M), V100 img/s @ batch 128,
# top-1 with the DeiT recipe; the distilled variants carry the "+Distill" top-1.
PAPER = {
    "deit_tiny_patch16_224": dict(gmacs=1.3, params_m=5.7, img_s=2564, top1=72.2),
    "pit_ti": dict(gmacs=0.71, params_m=4.9, img_s=3030, top1=73.0),
    "pit_xs": dict(gmacs=1.4, params_m=10.6, img_s=2128, top1=78.1),
    "deit_small_patch16_224": dict(gmacs=4.6, params_m=22.1, img_s=980, top1=79.8),
    "pit_s": dict(gmacs=2.9, params_m=23.5, img_s=1266, top1=80.9),
    "deit_base_patch16_224": dict(gmacs=17.6, params_m=86.6, img_s=303, top1=81.8),
    "pit_b": dict(gmacs=12.5, params_m=73.8, img_s=348, top1=82.0),
    "deit_tiny_distilled_patch16_224": dict(gmacs=1.3, params_m=5.7, img_s=2564, top1=74.5),
    "pit_ti_distilled": dict(gmacs=0.71, params_m=4.9, img_s=3030, top1=74.6),
    "pit_xs_distilled": dict(gmacs=1.4, params_m=10.6, img_s=2128, top1=79.1),
    "deit_small_distilled_patch16_224": dict(gmacs=4.6, params_m=22.1, img_s=980, top1=81.2),
    "pit_s_distilled": dict(gmacs=2.9, params_m=23.5, img_s=1266, top1=81.9),
    "deit_base_distilled_patch16_224": dict(gmacs=17.6, params_m=86.6, img_s=303, top1=83.4),
    "pit_b_distilled": dict(gmacs=12.5, params_m=73.8, img_s=348, top1=84.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--models", nargs="+", default=list(PAPER_MODELS), metavar="NAME",
                        help="PiT names (pit_s, pit_b_distilled, ...) or any timm name; default: the paper's seven")
    models.add_argument("--weights", nargs="+", default=None, metavar="PATH",
                        help="one checkpoint per --models entry, same order (needed for --data)")
    speed = parser.add_argument_group("throughput")
    speed.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    speed.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per forward (default: 128 on GPU as in the paper, 8 on CPU)")
    speed.add_argument("--img-size", type=positive_int, default=224, help="square input side in pixels")
    speed.add_argument("--amp", action="store_true",
                       help="mixed precision with the suite's policy (bf16; fp16 on GPUs without bf16)")
    speed.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    speed.add_argument("--warmup", type=non_negative_int, default=2, help="untimed forward passes first")
    speed.add_argument("--min-time", type=positive_float, default=1.0, metavar="SECONDS",
                       help="time forward passes for at least this long (torch.utils.benchmark); img/s from the median")
    accuracy = parser.add_argument_group("accuracy (optional)")
    accuracy.add_argument("--data", default=None, metavar="DIR",
                          help="ImageNet val layout folder (DIR/<wnid>/*.JPEG) for top-1/top-5")
    accuracy.add_argument("--crop-pct", type=unit_fraction, default=0.875,
                          help="centre-crop fraction in (0, 1]: resize to img-size/crop-pct first (0.875: 256 -> 224)")
    accuracy.add_argument("--workers", type=non_negative_int, default=2, help="data-loading processes")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")


def measure_throughput(
    model: nn.Module,
    batch_size: int,
    img_size: int | tuple[int, int],
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    warmup: int = 2,
    min_time: float = 1.0,
) -> float:
    """Images per second of ``model`` (eval mode) on random ``(batch_size, 3, H, W)`` input on ``device``:
    ``batch_size`` over the median seconds per forward (``common.timing.time_call``)."""
    if batch_size < 1:
        raise ValueError(f"need --batch-size >= 1, got {batch_size}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.eval()
    x = torch.rand(batch_size, 3, h, w, device=device).contiguous(memory_format=memory_format)

    @torch.inference_mode()
    def forward() -> None:
        with autocast(device, enabled=amp):
            model(x)

    return batch_size / time_call(forward, min_run_time=min_time, warmup=warmup)


def _build(name: str, weights: str | None, img_size: int) -> nn.Module:
    """``name`` as a [0, 1]-pixel model (normalising inside itself), at ``img_size`` where the grid is fixed."""
    cfg = timm.models.get_pretrained_cfg(name)
    fixed = bool(getattr(cfg, "fixed_input_size", False))  # ViT/DeiT: the grid is set at construction
    model = pit.create_model(name, weights=weights, img_size=img_size if fixed and img_size != 224 else None)
    return pit.NormalizedModel(model)


def bench_model(name: str, args: argparse.Namespace, device: torch.device, weights: str | None,
                loader: DataLoader | None = None) -> dict:
    """One table row: measured figures (+ top-1/top-5 over ``loader``), plus the paper's under ``paper``."""
    model = _build(name, weights, args.img_size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    row = {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": pit.count_macs(model, (3, args.img_size, args.img_size)) / 1e9,
        "img_s": measure_throughput(model, args.batch_size, args.img_size, device, args.amp, args.channels_last,
                                    args.warmup, args.min_time),
        "paper": PAPER.get(name),
    }
    if loader is not None:
        row.update(evaluate_topk(model, loader, device, args.amp, args.channels_last, desc=name))
    return row


def _check_inputs(args: argparse.Namespace) -> None:
    """Every name, path and output checked before the first model is timed."""
    for name in args.models:
        if not timm.is_model(name):
            pit.create_model(name)  # raises the one-line unknown-model error with close names
    if args.weights is not None and len(args.weights) != len(args.models):
        raise ValueError(f"--weights needs one file per --models entry: got {len(args.weights)} files "
                         f"for {len(args.models)} models ({' '.join(args.models)})")
    for path in args.weights or []:
        if Path(path).is_dir():
            raise IsADirectoryError(f"--weights {path} is a folder: pass the checkpoint file inside it")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--weights {path} does not exist")
    if args.data and args.weights is None:
        raise ValueError("top-1 on --data needs trained weights: pass --weights PATH (one per model)")
    if args.json:
        check_out_file(args.json, flag="--json")


def _accuracy_loader(args: argparse.Namespace, device: torch.device) -> DataLoader | None:
    """The ``--data`` loader, or None; a folder that is not an ImageNet val layout is refused in one line."""
    if not args.data:
        return None
    try:
        return imagenet_val_loader(args.data, args.img_size, args.crop_pct, args.batch_size, args.workers, device)
    except UnknownClassFolders as err:
        raise ValueError(f"--data {args.data}: class folders {err.folders[:3]} are not ImageNet wnids; bench scores "
                         "1000-class ImageNet models, so --data must be an ImageNet val layout DIR/<wnid>/*.JPEG "
                         "(e.g. DIR/n01440764/...)") from None


def format_table(rows: list[dict], settings: str) -> str:
    """The rows as a fixed-width text table, measured columns first, the paper's after ``|``."""
    has_acc = any("top1" in r for r in rows)
    head = f"{'model':<34}{'params':>12}{'GMACs':>8}{'img/s':>10}"
    head += f"{'top-1':>8}{'top-5':>8}" if has_acc else ""
    head += f"  | paper: {'GMACs':>6}{'params':>8}{'img/s':>7}{'top-1':>7}"
    lines = [settings, head, "-" * len(head)]
    for r in rows:
        line = f"{r['model']:<34}{r['params']:>12,}{r['gmacs']:>8.2f}{r['img_s']:>10.1f}"
        if has_acc:
            line += f"{r['top1']:>8.2f}{r['top5']:>8.2f}" if "top1" in r else f"{'':>16}"
        p = r["paper"]
        line += (f"  |        {p['gmacs']:>6}{p['params_m']:>7}M{p['img_s']:>7}{p['top1']:>7}" if p
                 else "  |        (not in the paper)")
        lines.append(line)
    lines.append("paper img/s: one V100, batch 128; paper top-1: DeiT recipe (distilled variants: +distillation).")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device) if args.device else default_device()
    if args.batch_size is None:
        args.batch_size = 128 if device.type == "cuda" else 8
    _check_inputs(args)
    loader = _accuracy_loader(args, device)
    weights = args.weights or [None] * len(args.models)
    settings = (f"device={device} batch={args.batch_size} img={args.img_size} amp={args.amp} "
                f"channels_last={args.channels_last} torch={torch.__version__} threads={torch.get_num_threads()}")
    rows = []
    for name, path in zip(args.models, weights):
        rows.append(bench_model(name, args, device, path, loader))
        if args.json:  # results as they come: a long run keeps what it measured
            atomic_write_json(args.json, {"settings": settings, "rows": rows})
    print(format_table(rows, settings))
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
