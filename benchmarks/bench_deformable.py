"""Memory and images/s of DETR vs Deformable DETR over pit_s / deit_small_patch16_224 / resnet50.

Each (arch, backbone) runs in its own subprocess so that peak memory is its own: on CUDA the
peak allocated memory of the timed passes, on CPU the growth of the process's peak RSS over
the RSS after building the model (activations + workspace, not weights). Both heads use their
papers' default sizes (DETR: 6+6 layers, FFN 2048, 100 queries; Deformable DETR: 6+6 layers,
FFN 1024, 4 levels × 4 points, 300 queries), randomly initialised, inference or one training
step (forward + backward) per iteration.

``--attention lean reference`` runs Deformable DETR twice: the default (sampling that recomputes its
samples in backward; encoder layers that recompute everything after the sampling in backward) and the
suite before that (plain-autograd sampling, ``ms_deform_attn_reference``, keeping every sample; encoder
layers keeping every activation), switched for that subprocess only.

    python benchmarks/bench_deformable.py                      # GPU at 800×1216 if available
    python benchmarks/bench_deformable.py --size 320 --min-run-time 3 # CPU at a reduced size
    python benchmarks/bench_deformable.py --train --archs deformable --backbones pit_s \
        --attention lean reference --size 800 1333             # lean vs plain-autograd training memory
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from common.tables import markdown_table
from common.timing import time_call

BACKBONES = ("pit_s", "deit_small_patch16_224", "resnet50")
ARCHS = ("detr", "deformable")
ATTENTIONS = ("lean", "reference")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _use_attention(attention: str) -> None:
    """Make every Deformable DETR of this process train with ``attention`` (``ATTENTIONS``)."""
    from detection.deformable import ms_deform_attn as msda
    from detection.deformable.transformer import DeformableEncoderLayer

    if attention == "reference":
        msda.ms_deform_attn_pytorch = msda.ms_deform_attn_reference
        DeformableEncoderLayer.recompute_in_backward = False


def measure(arch: str, backbone: str, height: int, width: int, batch: int, min_run_time: float, train: bool,
            device: str, attention: str = "lean") -> dict:
    """Build one detector and time passes (``common.timing.time_call``) on a (batch, 3, height, width) batch."""
    from detection.build import build_detector

    _use_attention(attention)

    torch.manual_seed(0)
    model = build_detector(arch=arch, backbone=backbone, num_classes=91).to(device)
    model.train(train)
    images = torch.rand(batch, 3, height, width, device=device)  # [0, 1]: the detector normalises
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)

    def step() -> None:
        if train:
            out = model(images, mask)
            loss = out["pred_logits"].float().mean() + out["pred_boxes"].float().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(images, mask)

    base_rss = _current_rss_mib()  # after building: the growth is activations + workspace
    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = time_call(step, min_run_time=min_run_time, warmup=0)
    if device.startswith("cuda"):
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory = max(_peak_rss_mib() - base_rss, 0.0)
    return {
        "arch": arch, "backbone": backbone, "attention": attention if arch == "deformable" else "-", "size": [height, width], "batch": batch, "mode": "train" if train else "infer",
        "device": device, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "images_per_s": batch / seconds, "seconds_per_pass": seconds, "peak_memory_mib": memory,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=None,
                        help="input H [W] (default 800 1216 on GPU, 320 480 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 2 on GPU, 1 on CPU)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds of timed passes (default 5 on GPU, 3 on CPU)")
    parser.add_argument("--train", action="store_true", help="time forward+backward instead of inference")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--attention", nargs="+", default=["lean"], choices=ATTENTIONS,
                        help="Deformable DETR training path(s): lean (default: samples and the encoder's post-sampling "
                             "activations recomputed in backward), reference (plain autograd, keeps them: the suite before)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--one", nargs=3, metavar=("ARCH", "BACKBONE", "ATTENTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = args.size or ([800, 1216] if cuda else [320, 480])
    height, width = size[0], size[-1]
    batch = args.batch or (2 if cuda else 1)
    min_run_time = args.min_run_time or (5.0 if cuda else 3.0)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], height, width, batch, min_run_time, args.train, device,
                                 args.one[2])))
        return 0
    rows = []
    runs = [(arch, backbone, attention) for backbone in args.backbones for arch in args.archs
            for attention in (args.attention if arch == "deformable" else ["lean"])]
    for arch, backbone, attention in runs:
        cmd = [sys.executable, __file__, "--one", arch, backbone, attention, "--size", str(height), str(width),
               "--batch", str(batch), "--min-run-time", str(min_run_time)] + (["--train"] if args.train else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{arch}/{backbone}/{attention} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"device {device}, input {height}×{width}, batch {batch}, ≥{min_run_time:g} s timed, {'train' if args.train else 'inference'}\n")
    print(markdown_table(["backbone", "head", "attention", "params (M)", "images/s", "s/pass", "peak memory (MiB)"],
                         [[r["backbone"], r["arch"], r["attention"], f"{r['params_m']:.1f}", f"{r['images_per_s']:.2f}",
                           f"{r['seconds_per_pass']:.2f}", f"{r['peak_memory_mib']:.0f}"] for r in rows],
                         align="lllrrrr"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
