"""``python eval.py bench``: the PiT paper's ImageNet table, measured on this machine.

    python eval.py bench                                   # the paper's seven models, params/GMACs/img/s
    python eval.py bench --models pit_s deit_small_patch16_224 --device cuda --batch-size 128 --amp
    python eval.py bench --models pit_s --weights pit_s_809.pth --data /data/imagenet/val   # + top-1/top-5
    python eval.py bench --out runs/bench                  # also a run folder: results.json, report.md

Per model: exact parameter count, GMACs including attention (``pit.count_macs``), measured
throughput (images/s, eval mode, random input, after warm-up, median of ``torch.utils.benchmark``
blocks over at least ``--min-time`` seconds), and the paper's figures beside
them (FLOPs, params, V100 img/s at batch 128, top-1 of the DeiT-recipe or distilled weights).
With ``--data`` and ``--weights`` it adds top-1/top-5 on an ImageNet-layout folder with the
paper's eval transform (resize 256 bicubic, centre crop 224; ``--crop-pct`` scales it).

``--out DIR`` makes a run folder (``common.run.open_run``): ``results.json`` (rows written as they come)
and ``report.md`` (the table); running again with the same settings reuses the models already measured
there and measures the rest; other settings are refused (``--overwrite`` starts over). ``--json PATH``
writes the rows alone to one file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
from common.io import atomic_write_json, atomic_write_text
from common.progress import Progress
from common.run import Run, check_resume_overwrite, open_run, say_resumed
from common.rundir import announce, check_out_file
from common.tables import fmt, markdown_table
from common.timing import time_call
from common.vocabulary import add_shared_flags, default_workers

KIND = "bench"
RESULTS, REPORT = "results.json", "report.md"

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
    add_shared_flags(models, "models", models=list(PAPER_MODELS))
    models.add_argument("--weights", nargs="+", default=None, metavar="PATH",
                        help="one checkpoint per --models entry, same order (needed for --data)")
    speed = parser.add_argument_group("throughput (--batch-size default: 128 on GPU as in the paper, 8 on CPU)")
    add_shared_flags(speed, "device", "batch_size", "amp")
    speed.add_argument("--img-size", type=positive_int, default=224, help="square input side in pixels")
    speed.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    speed.add_argument("--warmup", type=non_negative_int, default=2, help="untimed forward passes first")
    speed.add_argument("--min-time", type=positive_float, default=1.0, metavar="SECONDS",
                       help="time forward passes for at least this long (torch.utils.benchmark); img/s from the median")
    accuracy = parser.add_argument_group("accuracy (optional)")
    accuracy.add_argument("--data", default=None, metavar="DIR",
                          help="ImageNet val layout folder (DIR/<wnid>/*.JPEG) for top-1/top-5")
    accuracy.add_argument("--crop-pct", type=unit_fraction, default=0.875,
                          help="centre-crop fraction in (0, 1]: resize to img-size/crop-pct first (0.875: 256 -> 224)")
    add_shared_flags(accuracy, "workers", "progress")
    output = parser.add_argument_group("output")
    add_shared_flags(output, "out", "resume", "overwrite",
                     out_help="run folder: results.json, report.md; run again, it reuses the models measured there")
    output.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON to this file")


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
        row.update(evaluate_topk(model, loader, device, args.amp, args.channels_last, desc=name,
                                 progress=getattr(args, "progress", True)))
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
    if (args.resume or args.overwrite) and not args.out:
        raise ValueError(f"{'--resume' if args.resume else '--overwrite'} acts on a run folder: add --out DIR")
    check_resume_overwrite(args.resume, args.overwrite)


def _accuracy_loader(args: argparse.Namespace, device: torch.device) -> DataLoader | None:
    """The ``--data`` loader, or None; a folder that is not an ImageNet val layout is refused in one line."""
    if not args.data:
        return None
    try:
        return imagenet_val_loader(args.data, args.img_size, args.crop_pct, args.batch_size,
                                   default_workers(args.workers), device)
    except UnknownClassFolders as err:
        raise ValueError(f"--data {args.data}: class folders {err.folders[:3]} are not ImageNet wnids; bench scores "
                         "1000-class ImageNet models, so --data must be an ImageNet val layout DIR/<wnid>/*.JPEG "
                         "(e.g. DIR/n01440764/...)") from None


def format_table(rows: list[dict], settings: str) -> str:
    """The rows as a markdown table (the terminal's and the report's), measured columns first, the paper's after."""
    has_acc = any("top1" in r for r in rows)
    header = ["model", "params", "GMACs", "img/s"] + (["top-1", "top-5"] if has_acc else [])
    header += ["paper GMACs", "paper params", "paper img/s", "paper top-1"]
    body = []
    for r in rows:
        cells: list[Any] = [r["model"], f"{r['params']:,}", fmt(r["gmacs"], 2), fmt(r["img_s"], 1)]
        if has_acc:
            cells += [fmt(r.get("top1"), 2), fmt(r.get("top5"), 2)]
        p = r["paper"] or {}
        cells += [str(p.get("gmacs", "–")), f"{p['params_m']}M" if p else "–", str(p.get("img_s", "–")),
                  str(p.get("top1", "–"))]
        body.append(cells)
    return "\n".join([settings, "", markdown_table(header, body), "",
                      "paper img/s: one V100, batch 128; paper top-1: DeiT recipe (distilled variants: +distillation); "
                      "– : not in the paper."])


def _settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What the measured numbers depend on: the run folder's options."""
    return {"device": str(device), "batch_size": args.batch_size, "img_size": args.img_size, "amp": args.amp,
            "channels_last": args.channels_last, "warmup": args.warmup, "min_time": args.min_time,
            "data": str(Path(args.data).resolve()) if args.data else None, "crop_pct": args.crop_pct}


def _open(args: argparse.Namespace, device: torch.device, weights: list) -> tuple[Run | None, dict[tuple, dict]]:
    """The ``--out`` run folder (or None) and the rows it already holds, keyed by (model, weights)."""
    if not args.out:
        return None, {}
    # The models are cells: any list resumes, reusing the rows of the ones measured with these settings.
    run = open_run(args.out, KIND, _settings(args, device), files=(RESULTS, REPORT), resume=args.resume,
                   overwrite=args.overwrite)
    announce(run.path)
    done: dict[tuple, dict] = {}
    if run.resumed and (run.path / RESULTS).is_file():
        done = {(r["model"], r.get("weights")): r for r in json.loads((run.path / RESULTS).read_text())["rows"]}
        wanted = sum((m, w) in done for m, w in zip(args.models, weights))
        say_resumed(run, f"{wanted} of {len(args.models)} models already measured")
    return run, done


def _write(args: argparse.Namespace, run: Run | None, settings: str, rows: list[dict]) -> None:
    """Rows as they come (a long run keeps what it measured): ``--json`` and the run folder's results.json."""
    if args.json:
        atomic_write_json(args.json, {"settings": settings, "rows": rows})
    if run is not None:
        atomic_write_json(run.path / RESULTS, {"settings": settings, "rows": rows})


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device) if args.device else default_device()
    if args.batch_size is None:
        args.batch_size = 128 if device.type == "cuda" else 8
    _check_inputs(args)
    weights = args.weights or [None] * len(args.models)
    run, done = _open(args, device, weights)
    loader = _accuracy_loader(args, device)
    settings = (f"device={device} batch={args.batch_size} img={args.img_size} amp={args.amp} "
                f"channels_last={args.channels_last} torch={torch.__version__} threads={torch.get_num_threads()}")
    rows = []
    reused = sum((name, path) in done for name, path in zip(args.models, weights))
    progress = Progress(len(args.models), unit="model", done=reused, enabled=args.progress, desc="bench")
    for name, path in zip(args.models, weights):
        if (name, path) in done:
            rows.append(done[(name, path)])
            continue
        rows.append({**bench_model(name, args, device, path, loader), "weights": path})
        _write(args, run, settings, rows)
        progress.update(1, label=name)
    progress.close()
    _write(args, run, settings, rows)
    table = format_table(rows, settings)
    print(table)
    if args.json:
        print(f"wrote {args.json}")
    if run is not None:
        atomic_write_text(run.path / REPORT, "# bench: parameters, GMACs and throughput\n\n" + table + "\n")
        announce(run.path, finished=True)
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
