"""On-the-fly COCO-C cost per image vs the detector's own inference cost, in one run (run by hand).

    python benchmarks/bench_coco_c.py --img-scale 0.5 --severity 3                 # CPU, halved COCO sizes
    python benchmarks/bench_coco_c.py --device cuda                                # GPU, full size

Two COCO-sized uint8 images at native size (480×640 and 427×640, two common val2017 sizes) are
corrupted with ``detection.coco_c.corrupt_native`` (corrupt + uint8 quantisation, one generator per
image) at one severity for each of the 15 corruptions; the detector (full-size DETR over ``--backbone``)
runs forward + post-processing on the same two images after the test resize (short side 800 × scale,
long ≤ 1333 × scale), padded into one batch, timed before and after the corruptions (the faster of the
two is the reference, so a load change during the run can only overstate the share). Both are timed
with ``common.timing.time_call``.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch
from torchvision.transforms.v2 import functional as TF

import corruptions
from common.seeding import image_seed
from common.tables import markdown_table
from common.timing import time_call
from detection.build import build_detector, build_postprocessor
from detection.coco_c import corrupt_native
from detection.data import collate, make_transforms

SIZES = ((480, 640), (427, 640))


def detector_step(images: list[torch.Tensor], backbone: str, arch: str, img_scale: float,
                  device: str) -> Callable[[], None]:
    """One call = the detector's forward + post-processing on ``images`` after the test resize, as one batch."""
    resize = make_transforms(False, img_scale=img_scale).transforms[-1]
    batch, mask, _ = collate([(resize(TF.to_dtype(im, torch.float32, scale=True)), {}) for im in images])
    batch, mask = batch.to(device), mask.to(device)
    sizes = torch.tensor(SIZES, device=device)
    model = build_detector(arch, backbone=backbone, num_classes=91).to(device).eval()
    post = build_postprocessor(arch)

    def step() -> None:
        with torch.no_grad():
            post(model(batch, mask), sizes)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def corruption_seconds(images: list[torch.Tensor], name: str, severity: int) -> float:
    """Seconds per image of ``corrupt_native`` (corruption + quantisation) at native size."""
    seeds = [image_seed(0, name, severity, i) for i in range(len(images))]

    def step() -> None:
        corrupt_native(images, name, severity, seeds)
        if images[0].is_cuda:
            torch.cuda.synchronize()

    return time_call(step, min_run_time=0.5) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="pit_s")
    parser.add_argument("--arch", default="detr")
    parser.add_argument("--img-scale", type=float, default=1.0, help="detector test-size scale (0.5: short side 400)")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, *hw), dtype=torch.uint8, device=args.device) for hw in SIZES]
    step = detector_step(images, args.backbone, args.arch, args.img_scale, args.device)
    before = time_call(step, min_run_time=2.0) / len(images)
    seconds = {name: corruption_seconds(images, name, args.severity) for name in corruptions.CORRUPTIONS}
    after = time_call(step, min_run_time=2.0) / len(images)
    infer = min(before, after)  # the faster of the two: a conservative share on a machine whose load varies
    print(f"{args.arch} {args.backbone}, test size ×{args.img_scale}, {args.device}, threads {torch.get_num_threads()}: "
          f"inference {1000 * before:.0f} ms/img before the corruptions, {1000 * after:.0f} after; shares use the "
          f"faster")
    mean = sum(seconds.values()) / len(seconds)
    rows = [[name, 1000 * value, 100 * value / infer] for name, value in seconds.items()]
    print(markdown_table([f"corruption (severity {args.severity})", "ms/img", "% of inference"],
                         rows + [["**mean over the 15**", 1000 * mean, 100 * mean / infer]]))


if __name__ == "__main__":
    main()
