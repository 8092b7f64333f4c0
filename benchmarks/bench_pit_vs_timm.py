#!/usr/bin/env python
"""Forward speed of our ``pit_s`` against timm's ``pit_s_224`` (same weights, same run).

    python benchmarks/bench_pit_vs_timm.py                      # CPU, batch 8, 224 px
    python benchmarks/bench_pit_vs_timm.py --device cuda --batch-size 128 --amp

Both models get the same weights (timm's copied into ours through ``checkpoint_filter_fn``),
run in eval mode under ``torch.inference_mode``; each timing is ``common.timing.time_call``
(``torch.utils.benchmark``: median seconds per forward over at least ``--min-time``). Repeats
are interleaved (ours, timm, ours, ...) so machine load hits both alike, and the speed ratio is
the median over the repeats of timm's time / ours in the same repeat (robust to load that
drifts during the run).
Goal: ours ≥ 0.95× timm.
Exits 1 when the goal is missed.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import timm
import torch

import pit
from common.autocast import autocast
from common.timing import time_call


def _time_forward(model: torch.nn.Module, x: torch.Tensor, min_time: float, amp: bool) -> float:
    """Median seconds per forward pass of ``model(x)`` (``time_call``: warm-up, CUDA sync, repeats)."""

    @torch.inference_mode()
    def forward() -> None:
        with autocast(x.device, enabled=amp):
            model(x)

    return time_call(forward, min_run_time=min_time, warmup=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pit_s", help="our PiT name; timm's counterpart is <name>_224")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds timed per model and repeat")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved timed repeats per model")
    parser.add_argument("--amp", action="store_true", help="the suite's autocast policy (bf16; fp16 without bf16)")
    args = parser.parse_args()

    device = torch.device(args.device)
    reference = timm.create_model(f"{args.model}_224").eval().to(device)
    ours = pit.create_model(args.model).to(device)
    ours.load_state_dict(pit.checkpoint_filter_fn(reference.state_dict(), ours))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    with torch.inference_mode():
        max_diff = (ours(x) - reference(x)).abs().max().item()
    for model in (ours, reference):  # warm-up
        _time_forward(model, x, args.min_time, args.amp)
    times: dict[str, list[float]] = {"ours": [], "timm": []}
    for _ in range(args.repeats):
        times["ours"].append(_time_forward(ours, x, args.min_time, args.amp))
        times["timm"].append(_time_forward(reference, x, args.min_time, args.amp))
    ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(t / o for o, t in zip(times["ours"], times["timm"]))
    print(f"device={device} torch={torch.__version__} timm={timm.__version__} threads={torch.get_num_threads()} "
          f"batch={args.batch_size} img={args.img_size} amp={args.amp}")
    print(f"max |ours - timm| logits: {max_diff:.2e}")
    print(f"ours {args.model}: {ips['ours']:.1f} img/s   timm {args.model}_224: {ips['timm']:.1f} img/s   "
          f"ratio {ratio:.3f} (goal >= 0.95)")
    return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
