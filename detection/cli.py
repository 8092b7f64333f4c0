"""``python eval.py detection train|eval|convert|compare``: COCO detection with any backbone.

    python eval.py detection train --backbone pit_s --backbone-weights pit_s_809.pth --coco /data/coco \
        --epochs 50 --batch-size 2 --out runs/pit_s
    torchrun --nproc_per_node 8 eval.py detection train ...      # DDP, batch size per process
    python eval.py detection eval --checkpoint runs/pit_s/checkpoint.pth --coco /data/coco --out runs/pit_s
    python eval.py detection eval --checkpoint detr-r50-e632da11.pth --coco /data/coco --out runs/detr_r50
    python eval.py detection convert r50_deformable_detr-checkpoint.pth deformable_suite.pth
    python eval.py detection compare --runs runs/pit_s runs/deit_s runs/r50 --out runs/compare
"""
from __future__ import annotations

import argparse
import json

from detection.build import ARCHS
from detection.presets import ARCH_DEFAULT, LABEL_SPACES, PRESETS, get_preset

OPTIMISER_FIELDS = ("epochs", "batch_size", "lr", "lr_backbone", "weight_decay", "clip_max_norm", "lr_drop", "label_space")


def resolve_train_options(args: argparse.Namespace) -> tuple[dict, dict]:
    """Training keywords and model keywords from the flags, then the ``--preset`` (default: the official
    recipe of ``--arch``, DETR's without either), in that order."""
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-kwargs is not valid JSON: {exc}") from exc
    name = args.preset or ARCH_DEFAULT[args.arch or "detr"]
    preset = get_preset(name)
    if args.arch not in (None, preset.arch):
        raise ValueError(f"--preset {name} is a {preset.arch} recipe: drop --arch {args.arch} or use --arch {preset.arch}")
    options = {"arch": preset.arch, "preset": name, "img_scale": 1.0,
               **{k: getattr(preset, k) for k in OPTIMISER_FIELDS}}
    for key in options:
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    return options, {**preset.model_kwargs, **model_kwargs}


def _data_args(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data (either --coco or the explicit paths)")
    g.add_argument("--coco", help="COCO root with train2017/, val2017/, annotations/instances_{train,val}2017.json")
    if train:
        g.add_argument("--train-ann", help="training annotation json (COCO format)")
        g.add_argument("--train-images", help="training image folder")
    g.add_argument("--val-ann", help="validation annotation json (COCO format)")
    g.add_argument("--val-images", help="validation image folder")


def _convert_args(sub) -> None:
    v = sub.add_parser("convert", help="write a suite checkpoint from an official DETR / Deformable DETR .pth "
                                       "or a Hugging Face folder")
    v.add_argument("src", help="official .pth, Hugging Face save_pretrained folder, or suite checkpoint")
    v.add_argument("dst", help="suite checkpoint to write")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a detector (resumable; torchrun for DDP)")
    t.add_argument("--backbone", required=True, help="pit_s, deit_small_patch16_224, resnet50, or any timm name")
    t.add_argument("--backbone-weights", help="local backbone checkpoint (PiT .pth, timm, DeiT, safetensors)")
    t.add_argument("--arch", choices=sorted(ARCHS), help="detector head (default: detr; deformable with --preset)")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="a published recipe (docs/detection.md): detr-r50, deformable, deformable-refine, "
                        "deformable-two-stage, paper (the PiT paper's half-resolution Deformable DETR); default: "
                        "the official recipe of --arch; flags given explicitly override it")
    t.add_argument("--label-space", choices=LABEL_SPACES,
                   help="head rows: coco-ids (row = category id, as the official heads; default of the official "
                        "presets) or contiguous (0..K-1, for custom datasets)")
    _data_args(t, train=True)
    t.add_argument("--out", required=True, help="run folder (run.json, log.jsonl, checkpoint.pth, eval.json)")
    o = t.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="default: the preset's (DETR 300, Deformable DETR 50)")
    o.add_argument("--batch-size", type=int, help="per process (default 2)")
    o.add_argument("--lr", type=float, help="default: the preset's (DETR 1e-4, Deformable DETR 2e-4)")
    o.add_argument("--lr-backbone", type=float, help="default: the preset's (DETR 1e-5, Deformable DETR 2e-5)")
    o.add_argument("--weight-decay", type=float, help="default 1e-4")
    o.add_argument("--clip-max-norm", type=float, help="gradient-norm clip, 0 = off (default 0.1)")
    o.add_argument("--lr-drop", type=int, help="epoch at which lr is multiplied by 0.1 (default: the preset's, DETR 200, Deformable DETR 40)")
    o.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    o.add_argument("--amp", action="store_true", help="mixed precision (bf16 where supported, else fp16); GPU only")
    s = t.add_argument_group("image sizes")
    s.add_argument("--scales", type=int, nargs="+", help="training short sides (default 480..800 step 32)")
    s.add_argument("--max-size", type=int, help="longest side (default 1333)")
    s.add_argument("--test-size", type=int, help="test short side (default 800)")
    s.add_argument("--img-scale", type=float, help="multiply every size by this, e.g. 0.5 for small machines (default 1)")
    m = t.add_argument_group("model")
    m.add_argument("--model-kwargs", default="{}", help='JSON of model keywords, e.g. \'{"hidden_dim": 128, "num_queries": 50}\'')
    r = t.add_argument_group("run")
    r.add_argument("--resume", help="checkpoint of this run to continue exactly")
    r.add_argument("--finetune", help="detector to start from (any --checkpoint format of eval, e.g. an official "
                                           "DETR .pth); a class head of another size is re-initialised with a warning")
    r.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    r.add_argument("--num-workers", type=int, default=2)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    r.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="COCO bbox mAP, FPS and visualisations of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a suite checkpoint, an official DETR / Deformable DETR .pth, "
                                                        "or a Hugging Face save_pretrained folder")
    _data_args(e, train=False)
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--num-workers", type=int, default=2)
    e.add_argument("--device")
    e.add_argument("--save-vis", type=int, default=0, metavar="N", help="draw predictions vs ground truth on N images")
    e.add_argument("--no-progress", action="store_true")

    _convert_args(sub)
    c = sub.add_parser("compare", help="markdown table + plot of several run folders")
    c.add_argument("--runs", nargs="+", required=True)
    c.add_argument("--out", help="folder for compare.md and compare_ap.png")


def _paths(args: argparse.Namespace, train: bool) -> dict[str, str]:
    from detection.data import coco_paths

    keys = (["train_ann", "train_images"] if train else []) + ["val_ann", "val_images"]
    explicit = {k: getattr(args, k) for k in keys}
    if args.coco:
        if any(explicit.values()):
            raise ValueError("give either --coco or the explicit --*-ann/--*-images paths, not both")
        return {k: v for k, v in coco_paths(args.coco).items() if k in keys}
    missing = [f"--{k.replace('_', '-')}" for k, v in explicit.items() if not v]
    if missing:
        raise ValueError(f"no data given: pass --coco DIR or {' '.join(missing)}")
    return explicit


def main(args: argparse.Namespace) -> int:
    if args.action == "compare":
        from detection.compare import compare_runs

        print(compare_runs(args.runs, args.out))
        return 0
    if args.action == "convert":
        from detection.official import convert_detector

        print(convert_detector(args.src, args.dst))
        return 0
    from detection.engine import evaluate_checkpoint, train_detector

    if args.action == "eval":
        evaluate_checkpoint(args.checkpoint, **_paths(args, train=False), out=args.out, device=args.device,
                            batch_size=args.batch_size, num_workers=args.num_workers, save_vis=args.save_vis,
                            progress=not args.no_progress)
        return 0
    options, model_kwargs = resolve_train_options(args)
    train_detector(backbone=args.backbone, **_paths(args, train=True), out=args.out,
                   backbone_weights=args.backbone_weights, scales=args.scales, max_size=args.max_size,
                   test_size=args.test_size, **options, amp=args.amp, accum_steps=args.accum_steps, device=args.device,
                   num_workers=args.num_workers, resume=args.resume, seed=args.seed, eval_every=args.eval_every,
                   progress=not args.no_progress, model_kwargs=model_kwargs, finetune=args.finetune)
    return 0
