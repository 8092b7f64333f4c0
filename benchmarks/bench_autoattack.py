"""Cost of standard AutoAttack per image against PGD-5, same model and images, one run.

    python benchmarks/bench_autoattack.py                               # CPU, pit_ti at 64 px, 8 images
    python benchmarks/bench_autoattack.py --model pit_s --img-size 224 --images 64 --device cuda

The model is a randomly initialised ``pit.NormalizedModel`` and the images are labelled with its own
predictions, so every image is clean-correct and attacked. Three AutoAttack figures:

- ``--eps`` (4/255): the ensemble as it runs on a non-robust model: nearly every image falls to
  APGD-CE, so the later attacks have little left to do (the cost on standard models);
- every image robust (eps 1e-6: nothing is fooled): each of the four attacks runs on every image,
  the most the ensemble can cost (a robust model approaches this), with the cost of each attack.

PGD-5 (``robustness.attacks.pgd``, the suite's PGD cell) is the best of ``--repeats`` calls; the
AutoAttack runs are long, so each is timed once. On a CPU the clock is the process's CPU time on
``--threads`` threads (wall time on a machine shared with other jobs says little); on a GPU it is wall
time with CUDA synchronisation. Prints a markdown table: seconds per image and the ratio to PGD-5.
"""
from __future__ import annotations

import argparse
import time

import torch

import pit
from common.tables import markdown_table
from robustness import autoattack as aa
from robustness.attacks import attack_mode, pgd

TINY_EPS = 1e-6  # no image is fooled: every attack of the ensemble runs on every image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pit_ti", help="pit.create_model name")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--images", type=int, default=8, help="images, attacked as one batch")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--eps", type=float, default=4 / 255, help="L∞ radius of the realistic run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5, help="PGD-5 calls timed (the best counts)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = pit.NormalizedModel(pit.create_model(args.model, num_classes=args.num_classes)).to(device).eval()
    x = torch.rand(args.images, 3, args.img_size, args.img_size, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    n = args.images
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return (clock() - start) / n, out

    gen = [torch.Generator(device=device).manual_seed(i) for i in range(n)]
    t_pgd = min(timed(lambda: pgd(model, x, y, args.eps, 2.5 * args.eps / 5, 5, generator=gen))[0]
                for _ in range(args.repeats + 1))  # the first call warms up

    rows = [["PGD-5 (the suite's PGD cell)", f"{t_pgd:.4f}", "1", ""]]
    t_real, real = timed(lambda: aa.autoattack(model, x, y, args.eps, seed=0))
    rows.append([f"AutoAttack, eps {args.eps * 255:.3g}/255", f"{t_real:.4f}", f"{t_real / t_pgd:.0f}",
                 f"robust after each attack: {real.survivors}"])
    t_all, every = timed(lambda: aa.autoattack(model, x, y, TINY_EPS, seed=0))
    assert every.survivors == [n] * 5, every.survivors
    rows.append(["AutoAttack, every image robust (upper bound)", f"{t_all:.4f}", f"{t_all / t_pgd:.0f}", ""])
    with attack_mode(model):
        for name, attack in aa.standard_components(model, "Linf", TINY_EPS, args.num_classes, 0, device):
            with torch.enable_grad():
                t, _ = timed(lambda: attack(x, y))
            rows.append([f"  {name} alone, on every image", f"{t:.4f}", f"{t / t_pgd:.0f}", ""])
    unit = "wall s/image" if cuda else f"CPU s/image, {args.threads} thread(s)"
    print(f"device {device}, model {args.model} (random init, {args.num_classes} classes), {n} images of "
          f"{args.img_size} px in one batch, torch {torch.__version__}")
    print("\n" + markdown_table(["attack", unit, "× PGD-5", "note"], rows))


if __name__ == "__main__":
    main()
