"""The Background Challenge: our batched, exact search vs the authors' loop, on one generated IN-9-style set.

    python benchmarks/bench_background_challenge.py [--per-class 40] [--img-size 32] [--batch 256] [--threads 1]

A tiny CNN is trained for a few seconds on another generated set (``original`` + ``mixed_rand`` images),
so that, like a real classifier, it recognises most foregrounds and is fooled by some backgrounds.
Then the challenge runs with the authors' loop (tests/background_reference.py: one foreground at a time,
backgrounds in file order, batches of 32) and with ours (adaptive, file and shuffled background order);
every answer must be the same. Prints robust/total, forward passes, composites evaluated, wall and
process CPU seconds (CPU time is the stable number on a shared machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.synthetic_backgrounds import BackgroundsSpec, draw_in9_world, make_in9_style  # noqa: E402
from robustness.background import evaluate_variant, in9_predictor, output_map, run_challenge  # noqa: E402
from tests.background_reference import reference_challenge  # noqa: E402


def tiny_cnn() -> nn.Module:
    """Three conv-BN-ReLU-maxpool blocks, global pooling, 9 logits."""
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 64)):
        layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 9))


def train_tiny(spec: BackgroundsSpec, steps: int, seed: int) -> nn.Module:
    """The tiny CNN trained on ``original`` + ``mixed_rand`` of a set drawn with another seed."""
    world = draw_in9_world(spec)
    images = np.concatenate([world["original"], world["mixed_rand"]])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.concatenate([world["labels"], world["labels"]])).long()
    torch.manual_seed(seed)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=40, help="foregrounds (and backgrounds) per class")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256, help="composites per forward pass (ours)")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="generated-data cache (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        root = make_in9_style(cache, BackgroundsSpec(per_class=args.per_class, img_size=args.img_size, seed=0))
        model = train_tiny(BackgroundsSpec(per_class=4 * args.per_class, img_size=args.img_size, seed=1),
                           args.train_steps, seed=0)
        predict = in9_predictor(model, output_map(9))
        accuracy = {v: evaluate_variant(predict, root, v, torch.device("cpu"), num_workers=0)
                    for v in ("original", "only_bg_t", "mixed_same", "mixed_rand")}
        t0, c0 = time.perf_counter(), time.process_time()
        vulnerable, total, ref_passes = reference_challenge(model, root, lambda k: k)
        ref_seconds, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{args.per_class * 9} foregrounds x {args.per_class * 9} backgrounds, {args.img_size}px, "
              f"{args.threads} threads; model top-1 " + ", ".join(f"{v} {100 * c / n:.0f}%" for v, (n, c) in accuracy.items()))
        print(f"{'run':28s} {'robust':>9s} {'passes':>7s} {'composites':>11s} {'wall s':>7s} {'CPU s':>7s} "
              f"{'passes vs ref':>14s}")
        print(f"{'authors loop (batch 32)':28s} {total - vulnerable:4d}/{total:<4d} {ref_passes:7d} "
              f"{'<= ' + str(ref_passes * 32):>11s} {ref_seconds:7.2f} {ref_cpu:7.2f} {'1.0x':>14s}")
        for order in ("adaptive", "file", "shuffled"):
            t0, c0 = time.perf_counter(), time.process_time()
            r = run_challenge(predict, root, Path(tmp) / order, device=torch.device("cpu"), batch_size=args.batch,
                              order=order)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert (r.robust, r.total) == (total - vulnerable, total), f"{order}: {r} differs from the authors' loop"
            print(f"{'ours, ' + order + f' (batch {args.batch})':28s} {r.robust:4d}/{r.total:<4d} {r.forward_passes:7d} "
                  f"{r.images:11d} {seconds:7.2f} {cpu:7.2f} {ref_passes / r.forward_passes:13.1f}x", flush=True)
        print("same answer in every run")


if __name__ == "__main__":
    main()
