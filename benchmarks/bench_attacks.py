"""Speed of robustness.attacks (FGSM, PGD L∞/L2) against torchattacks, same model and data, one run.

    python benchmarks/bench_attacks.py                                   # CPU, resnet18 at 64 px
    python benchmarks/bench_attacks.py --model pit_s --img-size 224 --batch-size 64 --device cuda

Both sides attack the same ``pit.NormalizedModel`` (random init) on the same batch; each timing is
``common.timing.time_call`` (``torch.utils.benchmark``, median seconds per attack over at least
``--min-time``, on ``--threads`` threads), and the figure is the best of ``--repeats`` such timings,
taken alternately so load changes hit both alike. Prints a markdown
table with the speed ratio (torchattacks time / ours: ≥1 means ours is no slower) and checks that
the adversarial images agree (random start off).
"""
from __future__ import annotations

import argparse

import torch
import torchattacks

import pit
from common.tables import markdown_table
from common.timing import time_call
from robustness.attacks import fgsm, pgd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="pit.create_model name")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="PGD steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds timed per attack and repeat")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = pit.NormalizedModel(pit.create_model(args.model, num_classes=10)).to(device).eval()
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    eps, steps = 4 / 255, args.steps
    cases = {
        "FGSM": (lambda: fgsm(model, x, y, eps), torchattacks.FGSM(model, eps=eps)),
        f"PGD L∞ ({steps} steps)": (lambda: pgd(model, x, y, eps, eps / 4, steps, random_start=False),
                                    torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=False)),
        f"PGD L2 ({steps} steps)": (lambda: pgd(model, x, y, 0.5, 0.1, steps, random_start=False, norm="L2"),
                                   torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=steps, random_start=False)),
    }
    clock = "s" if device.type == "cuda" else f"s, {args.threads} thread(s)"
    print(f"device {device}, model {args.model}, batch {args.batch_size}, {args.img_size} px, torch {torch.__version__}")
    rows = []
    for name, (ours, ref) in cases.items():
        diff = (ours() - ref(x, y)).abs().max().item()  # also warms up both
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t_ours.append(time_call(ours, min_run_time=args.min_time, warmup=0, num_threads=args.threads))
            t_ref.append(time_call(lambda: ref(x, y), min_run_time=args.min_time, warmup=0, num_threads=args.threads))
        mo, mr = min(t_ours), min(t_ref)
        rows.append([name, f"{mo:.4f}", f"{mr:.4f}", f"{mr / mo:.2f}×", f"{diff:.1e}"])
    print("\n" + markdown_table(["attack", f"ours ({clock})", f"torchattacks ({clock})", "speed ratio", "max abs diff"], rows))


if __name__ == "__main__":
    main()
