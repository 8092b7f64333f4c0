"""Time all 19 corruptions x 5 severities: corruptions (batched) vs imagecorruptions (per image).

    python benchmarks/bench_corruptions.py [--batch 32] [--ref-images 4] [--device cpu] [--threads 2]

Prints per-corruption seconds per image (ours, reference), the speed-up and the geometric-mean speed-up.
Timings are ``common.timing.time_call`` (``torch.utils.benchmark``: median seconds per call of all five
severities, at least ``--min-time`` seconds for ours; the slow reference is timed over two calls).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.timing import time_call  # noqa: E402
from corruptions import ALL_CORRUPTIONS, corrupt  # noqa: E402
from tests.imagecorruptions_ref import load_reference, reference_corrupt  # noqa: E402


def _photos(n: int, size: int) -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    names = ("astronaut", "chelsea", "coffee", "rocket")
    out = []
    for i in range(n):
        a = getattr(skimage.data, names[i % len(names)])()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append((resize(a, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8))
    return np.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ref-images", type=int, default=4, help="images timed for the (slow) reference")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds timed per corruption (ours)")
    p.add_argument("--names", nargs="*", default=list(ALL_CORRUPTIONS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ref = load_reference()
    photos = _photos(args.batch, args.size)
    x = (torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255).to(args.device)
    g = torch.Generator(device=args.device).manual_seed(0)
    ratios = []
    print(f"{'corruption':20s} {'ours ms/img':>12s} {'ref ms/img':>12s} {'speed-up':>9s}")
    for name in args.names:
        corrupt(x[:2], name, 1, g)  # warm-up (asset loading, kernels)
        ours = time_call(lambda: [corrupt(x, name, s, g) for s in range(1, 6)], min_run_time=args.min_time,
                         warmup=0, num_threads=args.threads) / (5 * len(x))
        theirs = float("nan")
        if ref is not None:
            images = photos[:args.ref_images]
            theirs = time_call(lambda: [reference_corrupt(ref, img, name, s) for s in range(1, 6) for img in images],
                               min_run_time=0.0, warmup=0, num_threads=args.threads) / (5 * len(images))
            ratios.append(theirs / ours)
        print(f"{name:20s} {ours * 1e3:12.2f} {theirs * 1e3:12.2f} {theirs / ours:8.1f}x", flush=True)
    if ratios:
        print(f"geometric-mean speed-up: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.1f}x "
              f"({args.device}, batch {args.batch}, {args.size}px, {args.threads} threads)")


if __name__ == "__main__":
    main()
