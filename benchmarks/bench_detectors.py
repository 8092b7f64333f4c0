"""Forward+backward of our DETR-R50 and Deformable DETR vs the Hugging Face transformers
implementations, in the same run, same input, same frozen layers (ResNet stem + layer1 and every
BatchNorm frozen, as the official code). Goal: ours ≥ 1.0× (run by hand; numbers in docs/detection.md).

    python benchmarks/bench_detectors.py --size 320 480 --batch 2
"""
from __future__ import annotations

import argparse

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from common.tables import markdown_table
from common.timing import time_call
from detection.build import build_detector

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def _hf_model(arch: str, layers: int) -> torch.nn.Module:
    import transformers

    common = dict(use_pretrained_backbone=False, num_labels=91, encoder_layers=layers, decoder_layers=layers)
    if arch == "detr":
        return transformers.DetrForObjectDetection(transformers.DetrConfig(**common))
    return transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**common))


def _step(forward, params: list[torch.Tensor]):
    def run() -> None:
        logits, boxes = forward()
        (logits.float().sum() + boxes.float().sum()).backward()
        for p in params:
            p.grad = None
    return run


def measure(arch: str, size: tuple[int, int], batch: int, layers: int, min_run_time: float) -> tuple[float, float]:
    """Seconds per forward+backward: (ours, transformers)."""
    torch.manual_seed(0)
    ours = build_detector(arch, backbone="resnet50", num_classes=91, enc_layers=layers, dec_layers=layers).train()
    theirs = _hf_model(arch, layers).train()
    for name, p in theirs.named_parameters():  # same frozen set as ours (transformers already freezes the DETR stem)
        if "backbone" in name and not any(f".{s}." in name for s in ("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    images = torch.rand(batch, 3, *size)
    mask = torch.zeros(batch, *size, dtype=torch.bool)
    mask[-1, size[0] * 3 // 4:] = True
    pixels = ((images - MEAN) / STD).masked_fill(mask[:, None], 0.0)

    def ours_forward():
        out = ours(images, mask)
        return out["pred_logits"], out["pred_boxes"]

    def theirs_forward():
        out = theirs(pixel_values=pixels, pixel_mask=(~mask).long())
        return out.logits, out.pred_boxes

    mine = time_call(_step(ours_forward, list(ours.parameters())), min_run_time=min_run_time)
    other = time_call(_step(theirs_forward, list(theirs.parameters())), min_run_time=min_run_time)
    return mine, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["detr", "deformable"])
    parser.add_argument("--size", type=int, nargs=2, default=[320, 480], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers (official: 6)")
    parser.add_argument("--min-run-time", type=float, default=5.0)
    args = parser.parse_args()
    print(f"ResNet-50, {args.size[0]}×{args.size[1]}, batch {args.batch}, forward+backward, CPU, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = []
    for arch in args.archs:
        mine, other = measure(arch, tuple(args.size), args.batch, args.layers, args.min_run_time)
        rows.append([arch, f"{mine:.3f}", f"{other:.3f}", f"{other / mine:.2f}×"])
    print(markdown_table(["detector", "ours (s)", "transformers (s)", "speed-up"], rows))


if __name__ == "__main__":
    main()
