"""Detector images/s per backbone at one input size, all in the same run (run by hand).

    python benchmarks/bench_detection.py --size 320 480 --batch 2            # CPU, reduced size
    python benchmarks/bench_detection.py --size 800 1216 --batch 4 --device cuda --amp  # GPU

Full-size DETR (hidden 256, 6+6 layers, 100 queries) over each backbone, inference
(forward + post-processing) on a batch of random [0, 1] images with a padding mask.
"""
from __future__ import annotations

import argparse

import torch

from common.autocast import autocast
from common.tables import markdown_table
from common.timing import time_call
from detection.build import build_detector, build_postprocessor


def measure(arch: str, backbone: str, size: tuple[int, int], batch: int, min_run_time: float, device: str, amp: bool) -> dict:
    torch.manual_seed(0)
    model = build_detector(arch, backbone=backbone, num_classes=80).to(device).eval()
    post = build_postprocessor(arch)
    images = torch.rand(batch, 3, *size, device=device)
    mask = torch.zeros(batch, *size, dtype=torch.bool, device=device)
    sizes = torch.tensor([size] * batch, device=device)

    def step() -> None:
        with torch.no_grad(), autocast(device, amp):
            post(model(images, mask), sizes)

    seconds = time_call(step, min_run_time=min_run_time)
    return {"backbone": backbone, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "img_per_s": batch / seconds, "latency_ms": 1000 * seconds / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["pit_s", "deit_small_patch16_224", "resnet50"])
    parser.add_argument("--arch", default="detr")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 480], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timed calls per backbone")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="autocast with the suite's dtype (common.autocast)")
    args = parser.parse_args()
    print(f"{args.arch}, {args.size[0]}×{args.size[1]}, batch {args.batch}, {args.device}{', bf16' if args.amp else ''}",
          flush=True)
    rows = []
    for name in args.backbones:
        r = measure(args.arch, name, tuple(args.size), args.batch, args.min_run_time, args.device, args.amp)
        rows.append([r["backbone"], f"{r['params_M']:.1f}", f"{r['img_per_s']:.2f}", f"{r['latency_ms']:.0f}"])
    print(markdown_table(["backbone", "params (M)", "img/s", "latency (ms/img)"], rows))


if __name__ == "__main__":
    main()
