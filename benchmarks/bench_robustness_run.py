"""What a multi-model robustness run costs besides its forward passes: the runner of this checkout against
another checkout's (the loop order before the shared passes), in one invocation (run by hand).

    git worktree add /tmp/before <commit before the shared passes>
    python benchmarks/bench_robustness_run.py --before /tmp/before --images 48
    python benchmarks/bench_robustness_run.py --images 200 --device cuda        # this checkout only

A generated ImageNet-like folder (JPEG quality 90 at ``--size``, 500×375 by default, 10 wnid folders) is
evaluated by three models (pit_ti, deit_tiny_patch16_224, resnet18; random init: the cost does not depend on
the weights) on clean + the 15 ImageNet-C corruptions × 5 severities on the fly, with one loader process
(``--workers 0``) so that the counters see every call: JPEG decodes (the loader's ``default_loader``, or
``robustness.decoding.decode_views`` for files decoded on the device, the default on CUDA),
corrupted images (``corruptions.corrupt``), and the images and seconds inside the models' forward passes (a
timing wrapper around each model). Each runner runs in its own subprocess (its own imports); the rows print as a
table and, with ``--json``, as JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("pit_ti", "deit_tiny_patch16_224", "resnet18")


def make_folder(root: Path, images: int, size: tuple[int, int]) -> Path:
    """``images`` smooth random JPEGs of ``size`` (w, h) spread over 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"n{9000000 + i % 10:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(folder / f"{i:05d}.JPEG", quality=90)
    return root


def measure(data: str, out: str, device: str, batch_size: int) -> dict:
    """One run of this interpreter's runner, with its decodes, corruptions and forward seconds counted."""
    import torch
    from torch import nn

    import corruptions
    from robustness import datasets, runner

    tally = {"decodes": 0, "corrupted_images": 0, "forwarded_images": 0, "forward_s": 0.0}
    decode, corrupt, build = datasets.default_loader, corruptions.corrupt, runner._build_model

    def counting_decode(path):
        tally["decodes"] += 1
        return decode(path)

    def counting_corrupt(images, *args, **kwargs):
        tally["corrupted_images"] += images.shape[0]
        return corrupt(images, *args, **kwargs)

    class Timed(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            y = self.inner(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            tally["forward_s"] += time.perf_counter() - start
            tally["forwarded_images"] += x.shape[0]
            return y

    datasets.default_loader = counting_decode
    try:  # files decoded on the device (--decode device, the default on CUDA) are counted there
        from robustness import decoding

        decode_views = decoding.decode_views

        def counting_views(items, *args, **kwargs):
            tally["decodes"] += len(items)
            return decode_views(items, *args, **kwargs)

        decoding.decode_views = counting_views
    except ImportError:  # a checkout from before device decoding
        pass
    corruptions.corrupt = counting_corrupt
    runner._build_model = lambda *a, **k: Timed(build(*a, **k))
    specs = [runner.ModelSpec(name, model_kwargs={"num_classes": 10}) for name in MODELS]
    start = time.perf_counter()
    runner.run_robustness(specs, data, out, class_map="folder", corrupt_on_the_fly=True, corruptions="all",
                          severities="1-5", batch_size=batch_size, num_workers=0, progress=False, device=device)
    wall = time.perf_counter() - start
    return {**tally, "wall_s": wall, "outside_forward_s": wall - tally["forward_s"], "runner": runner.__file__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--before", default=None, metavar="DIR", help="a checkout with the previous runner")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.device, args.batch_size)))
        return 0
    here = Path(__file__).resolve().parents[1]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_folder(Path(tmp) / "val", args.images, tuple(args.size))
        for label, checkout in (("before", args.before), ("this checkout", str(here))):
            if checkout is None:
                continue
            cmd = [sys.executable, str(here / "benchmarks" / "bench_robustness_run.py"), "--one", str(data),
                   str(Path(tmp) / label.replace(" ", "-")), "--device", args.device, "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True,
                                  env={**__import__("os").environ, "PYTHONPATH": checkout})
            if proc.returncode:
                raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
            rows[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    cells = 1 + 15 * 5
    print(f"{args.images} images of {args.size[0]}×{args.size[1]}, {len(MODELS)} models, {cells} cells each, "
          f"device {args.device}\n")
    print("| runner | JPEG decodes | corrupted images | images forwarded | wall (s) | forward (s) | outside forward (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['decodes']} | {r['corrupted_images']} | {r['forwarded_images']} | {r['wall_s']:.1f} | "
              f"{r['forward_s']:.1f} | {r['outside_forward_s']:.1f} |")
    if len(rows) == 2:
        before, now = rows["before"], rows["this checkout"]
        print(f"\nspeed-up {before['wall_s'] / now['wall_s']:.2f}× (wall), "
              f"{before['outside_forward_s'] / max(now['outside_forward_s'], 1e-9):.2f}× (outside the forward passes)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
