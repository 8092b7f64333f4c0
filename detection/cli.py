"""``python eval.py detection train|eval|convert|compare``: COCO detection with any backbone.

    python eval.py detection train --backbone pit_s --backbone-weights pit_s_809.pth --coco /data/coco \
        --epochs 50 --batch-size 2 --out runs/pit_s
    torchrun --nproc_per_node 8 eval.py detection train ...      # DDP, batch size per process
    python eval.py detection eval --checkpoint runs/pit_s/checkpoint.pth --coco /data/coco --out runs/pit_s-eval
    python eval.py detection eval --checkpoint detr-r50-e632da11.pth --coco /data/coco --out runs/detr_r50
    python eval.py detection convert r50_deformable_detr-checkpoint.pth deformable_suite.pth
    python eval.py detection compare --runs runs/pit_s runs/deit_s runs/r50 --out runs/compare
    python eval.py detection eval --checkpoint A.pth B.pth --coco /data/coco --corruptions all --out runs/coco_c  # COCO-C
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Callable

from common.distributed import init_distributed, main_decides
from common.options import non_negative_float, non_negative_int, positive_float, positive_int
from common.rundir import default_out, note
from common.synthetic import DetectionSpec
from common.vocabulary import SHARED_FLAGS, add_shared_flags, parse_corruptions, parse_severities
from pit import default_weights
from pit.hub import cached_pretrained_file
from detection.build import ARCHS
from detection.config import DetectionTrainConfig
from detection.presets import ARCH_DEFAULT, LABEL_SPACES, PRESETS, Preset

POSITIVE_INT, NON_NEGATIVE_INT = positive_int, non_negative_int
POSITIVE, NON_NEGATIVE = positive_float, non_negative_float

BUILTIN_DATA = DetectionSpec()  # the generated set used when no --coco / paths are given
# Flags passed to DetectionTrainConfig under their own name when given (unset = the recipe's / the field default).
CONFIG_FLAGS = ("arch", "preset", "label_space", "epochs", "batch_size", "lr", "lr_backbone", "weight_decay",
                "clip_max_norm", "lr_drop", "scales", "max_size", "test_size", "img_scale", "accum_steps", "seed",
                "eval_every", "device", "finetune")


def _json_object(flag: str, text: str, example: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object such as '{example}', got {text}")
    return value


def preset_values(read: Callable[[Preset], object]) -> str:
    """``read(preset)`` of every preset, equal values grouped: ``"300 (detr-r50); 50 (deformable, ...)"``."""
    groups: dict[str, list[str]] = {}
    for name, preset in PRESETS.items():
        value = read(preset)
        groups.setdefault(f"{value:g}" if isinstance(value, float) else str(value), []).append(name)
    if len(groups) == 1:
        return f"{next(iter(groups))} (every preset)"
    return "; ".join(f"{value} ({', '.join(names)})" for value, names in groups.items())


def _recipe_help(read: Callable[[Preset], object], what: str = "") -> str:
    return f"{what}default: the preset's, " + preset_values(read)


def _data_args(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data (--coco, or the explicit paths; neither = the built-in generated set)")
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


def _run_args(t: argparse.ArgumentParser) -> None:
    """``detection train``'s run group: the shared flags, fine-tuning and evaluation."""
    r = t.add_argument_group("run")
    add_shared_flags(r, "overwrite", "device", "workers", "progress")
    add_shared_flags(r, "seed", seed=42)
    r.add_argument("--resume", nargs="?", const=True, default=False, metavar="FILE",
                   help=SHARED_FLAGS["--resume"] + "; with FILE: continue from that checkpoint")
    r.add_argument("--finetune", help="detector to start from (any --checkpoint format of eval, e.g. an official "
                                      "DETR .pth); a class head of another size is re-initialised with a warning")
    r.add_argument("--eval-every", type=POSITIVE_INT, help="evaluate every N epochs (and after the last; default 1)")


def _optimisation_args(t: argparse.ArgumentParser) -> None:
    o = t.add_argument_group("optimisation (unset = the preset's value)")
    o.add_argument("--epochs", type=POSITIVE_INT, help=_recipe_help(lambda p: p.epochs))
    o.add_argument("--batch-size", type=POSITIVE_INT, help=_recipe_help(lambda p: p.batch_size, "per process; "))
    o.add_argument("--lr", type=POSITIVE, help=_recipe_help(lambda p: p.lr))
    o.add_argument("--lr-backbone", type=NON_NEGATIVE, help=_recipe_help(lambda p: p.lr_backbone))
    o.add_argument("--weight-decay", type=NON_NEGATIVE, help=_recipe_help(lambda p: p.weight_decay))
    o.add_argument("--clip-max-norm", type=NON_NEGATIVE, help=_recipe_help(lambda p: p.clip_max_norm, "gradient-norm clip, 0 = off; "))
    o.add_argument("--lr-drop", type=POSITIVE_INT,
                   help=_recipe_help(lambda p: p.lr_drop, "epoch after which lr is multiplied by 0.1; "))
    o.add_argument("--accum-steps", type=POSITIVE_INT, help="gradient accumulation steps (default 1)")
    add_shared_flags(o, "amp")
    s = t.add_argument_group("image sizes (unset = the preset's)")
    s.add_argument("--scales", type=POSITIVE_INT, nargs="+",
                   help=_recipe_help(lambda p: _span(p.sizes.train_scales), "training short sides; "))
    s.add_argument("--max-size", type=POSITIVE_INT, help=_recipe_help(lambda p: p.sizes.max_size, "longest side; "))
    s.add_argument("--test-size", type=POSITIVE_INT, help=_recipe_help(lambda p: p.sizes.test_size, "test short side; "))
    s.add_argument("--img-scale", type=POSITIVE, help="multiply every size by this, e.g. 0.5 for small machines (default 1)")


def _span(values: tuple[int, ...]) -> str:
    return f"{min(values)}..{max(values)}" if len(values) > 1 else str(values[0])


def _train_args(sub) -> None:
    t = sub.add_parser("train", help="train a detector (resumable; torchrun for DDP)")
    t.add_argument("--backbone", required=True, help="pit_s, deit_small_patch16_224, resnet50, or any timm name")
    t.add_argument("--backbone-weights", help="local backbone checkpoint (PiT .pth, timm, DeiT, safetensors)")
    t.add_argument("--arch", choices=sorted(ARCHS),
                   help="detector head; default: the --preset's, else detr (recipe: "
                        + ", ".join(f"--arch {a} = {p}" for a, p in ARCH_DEFAULT.items()) + ")")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="a published recipe (docs/detection.md): " + ", ".join(PRESETS) + "; default: the official "
                        "recipe of --arch; flags given explicitly override it")
    t.add_argument("--label-space", choices=LABEL_SPACES,
                   help="head rows: coco-ids (row = category id, as the official heads) or contiguous (0..K-1); "
                        + _recipe_help(lambda p: p.label_space))
    _data_args(t, train=True)
    add_shared_flags(t, "out", out_help="run folder (run.json, log.jsonl, checkpoint.pth, eval.json); default "
                                        "runs/detection-train-BACKBONE; the same command again resumes it")
    _optimisation_args(t)
    m = t.add_argument_group("model")
    m.add_argument("--model-kwargs", default="{}", help='JSON of model keywords replacing the preset\'s, e.g. '
                                                        '\'{"hidden_dim": 128, "num_queries": 50}\'')
    m.add_argument("--loss-kwargs", default="{}",
                   help='JSON replacing some of the preset\'s matcher costs / loss weights, e.g. \'{"cls_loss_coef": 5}\'')
    _run_args(t)


def _eval_args(sub) -> None:
    e = sub.add_parser("eval", help="COCO bbox mAP, FPS and visualisations of a checkpoint; COCO-C with --corruptions")
    e.add_argument("--checkpoint", required=True, nargs="+",
                   help="a suite checkpoint, an official DETR / Deformable DETR .pth, or a Hugging Face save_pretrained "
                        "folder (several with --corruptions: one mPC/rPC comparison table)")
    e.add_argument("--label", nargs="+", metavar="NAME",
                   help="a name per --checkpoint in tables and lines (default: its run folder's name, else its file stem)")
    _data_args(e, train=False)
    add_shared_flags(e, "out", out_help="folder for eval.json and vis/ (COCO-C: coco_c.json, report.md); default "
                                        "runs/detection-eval-RUN; the same command again resumes it")
    add_shared_flags(e, "overwrite", "resume", "device", "amp", "workers", "progress")
    add_shared_flags(e, "batch_size", batch_size=2)
    e.add_argument("--save-vis", type=NON_NEGATIVE_INT, default=0, metavar="N",
                   help="draw predictions vs ground truth on N images")
    cc = e.add_argument_group("COCO-C (docs/detection.md): clean + every corruption x severity cell, mPC and rPC")
    add_shared_flags(cc, "corruptions", "severities", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _train_args(sub)
    _eval_args(sub)
    _convert_args(sub)
    c = sub.add_parser("compare", help="markdown table + plot of several run folders")
    c.add_argument("--runs", nargs="+", required=True)
    add_shared_flags(c, "out", out_help="folder for compare.md and compare_ap.png")


def _data(args: argparse.Namespace, train: bool) -> tuple[dict[str, str], str, int | None]:
    """(paths, what the data is, image size of the built-in set or None) from --coco / explicit paths / nothing."""
    from detection.data import coco_paths

    keys = (["train_ann", "train_images"] if train else []) + ["val_ann", "val_images"]
    explicit = {k: getattr(args, k) for k in keys}
    if args.coco:
        if any(explicit.values()):
            raise ValueError("give either --coco or the explicit --*-ann/--*-images paths, not both")
        return {k: v for k, v in coco_paths(args.coco).items() if k in keys}, f"COCO-format data in {args.coco}", None
    if any(explicit.values()):
        missing = [f"--{k.replace('_', '-')}" for k, v in explicit.items() if not v]
        if missing:
            raise ValueError(f"incomplete data paths: pass {' '.join(missing)} too, or --coco DIR")
        return explicit, f"annotations {', '.join(explicit[k] for k in keys if k.endswith('_ann'))}", None
    return _builtin_data(keys)


def _builtin_data(keys: list[str]) -> tuple[dict[str, str], str, int]:
    from common import synthetic
    from detection.data import coco_paths

    root = main_decides(lambda: synthetic.make_detection(spec=BUILTIN_DATA))  # one process generates it
    paths = {k: v for k, v in coco_paths(root).items() if k in keys}
    text = (f"built-in generated COCO-format set ({BUILTIN_DATA.num_train} train / {BUILTIN_DATA.num_val} val "
            f"shapes images, {BUILTIN_DATA.img_size} px, cached in {root})")
    note(f"no --coco given: using the {text}; for COCO pass --coco DIR")
    return paths, text, BUILTIN_DATA.img_size


def _backbone_weights(args: argparse.Namespace) -> tuple[str | None, str]:
    """(--backbone-weights, or the published file in the local hub cache, or None; what the weights are)."""
    if args.backbone_weights:
        return args.backbone_weights, f"backbone weights {args.backbone_weights}"
    use, banner = default_weights(args.backbone)
    cached = cached_pretrained_file(args.backbone) if use else None
    if cached is None:  # reachable but not cached: the detector loads local files only
        banner = (f"no --backbone-weights given: random {args.backbone} backbone initialisation, AP will be near 0; "
                  "pass --backbone-weights FILE")
    note(banner)
    return (str(cached) if cached else None), banner


def _resume(args: argparse.Namespace) -> dict:
    """``--resume`` (continue the run in --out) or ``--resume FILE`` (continue from that checkpoint)."""
    if isinstance(args.resume, str):
        note(f"--resume {args.resume}: continuing from that checkpoint (the same command on the same --out "
             "resumes by itself; plain --resume also allows more epochs)")
        return {"resume_from": args.resume}
    return {"resume": args.resume}


def train_config(args: argparse.Namespace) -> DetectionTrainConfig:
    """The typed config of ``detection train`` from the flags given (the config resolves the rest from
    ``--preset``, default the official recipe of ``--arch``)."""
    model_kwargs = _json_object("--model-kwargs", args.model_kwargs, '{"num_queries": 50}')
    loss_kwargs = _json_object("--loss-kwargs", args.loss_kwargs, '{"cls_loss_coef": 5}')
    given = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    paths, data_note, builtin_size = _data(args, train=True)
    if builtin_size and not any(k in given for k in ("scales", "max_size", "test_size")):
        given.update(scales=[builtin_size - 16, builtin_size, builtin_size + 16], max_size=2 * builtin_size,
                     test_size=builtin_size)  # the generated set's own size, not COCO's 800 px
    weights, weights_note = _backbone_weights(args)
    config = DetectionTrainConfig(backbone=args.backbone, **paths, out=args.out or "", backbone_weights=weights,
                                  **given, **_resume(args), amp=args.amp, num_workers=args.workers,
                                  overwrite=args.overwrite, progress=args.progress, model_kwargs=model_kwargs,
                                  loss_kwargs=loss_kwargs, data_note=data_note, weights_note=weights_note)
    if not args.preset:
        note(f"no --preset given: the official recipe of --arch {config.arch}, {config.preset}")
    if not args.out:
        from detection.engine import TRAIN_KIND

        out = main_decides(lambda: default_out("detection-train", [args.backbone], TRAIN_KIND, config.options()))
        config = dataclasses.replace(config, out=str(out))
    return config


def _eval_out(args: argparse.Namespace, options: dict) -> str:
    if args.out:
        return args.out
    from detection.engine import EVAL_KIND
    from detection.coco_c import run_name

    return str(main_decides(lambda: default_out("detection-eval", [run_name(args.checkpoint[0])], EVAL_KIND, options)))


def _coco_c(args: argparse.Namespace) -> int:
    """``detection eval --corruptions``: COCO-C of one or several checkpoints (``detection.coco_c``)."""
    from detection.coco_c import KIND, coco_c_options, run_coco_c, run_names

    names, severities = parse_corruptions(args.corruptions), parse_severities(args.severities)
    seed = 0 if args.seed is None else args.seed
    paths, _, _ = _data(args, train=False)
    labels = main_decides(lambda: run_names(args.checkpoint, args.label))
    out = args.out or str(main_decides(lambda: default_out("detection-coco-c", labels, KIND,
                                                           coco_c_options(args.checkpoint, seed))))
    run_coco_c(args.checkpoint, None, out, names, severities, seed, args.device, **paths, batch_size=args.batch_size,
               num_workers=args.workers, progress=args.progress, labels=labels, amp=args.amp,
               resume=args.resume, overwrite=args.overwrite)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from detection.engine import evaluate_checkpoint, eval_options

    if args.severities or args.seed is not None:
        raise ValueError("--severities and --seed choose COCO-C cells: add --corruptions all (or names)")
    if len(args.checkpoint) > 1:
        raise ValueError("several --checkpoint values need --corruptions (a COCO-C comparison); "
                         "to compare clean runs use: detection compare --runs")
    paths, data_note, _ = _data(args, train=False)
    out = _eval_out(args, eval_options(args.checkpoint[0], paths["val_ann"], paths["val_images"]))
    evaluate_checkpoint(args.checkpoint[0], **paths, out=out, device=args.device, batch_size=args.batch_size,
                        num_workers=args.workers, save_vis=args.save_vis, progress=args.progress, amp=args.amp,
                        data_note=data_note, resume=args.resume, overwrite=args.overwrite)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the action; under torchrun the process group is torn down on the way out, error or not (a
    process that exits with gloo's threads still alive can abort with "terminate called ...")."""
    from common.distributed import cleanup_distributed

    try:
        return _dispatch(args)
    finally:
        cleanup_distributed()


def _dispatch(args: argparse.Namespace) -> int:
    if args.action in ("train", "eval"):  # joined first: rank 0 makes every choice read from the disk for all
        init_distributed(args.device)
    if args.action == "compare":
        from detection.compare import compare_runs

        print(compare_runs(args.runs, args.out))
        return 0
    if args.action == "convert":
        from detection.load import convert_detector

        print(convert_detector(args.src, args.dst))
        return 0
    if args.action == "eval":
        if args.label and len(args.label) != len(args.checkpoint):
            raise ValueError(f"--label gives {len(args.label)} names for {len(args.checkpoint)} --checkpoint values: "
                             "give one per checkpoint")
        return _coco_c(args) if args.corruptions else _evaluate(args)
    from detection.engine import train_detector

    train_detector(train_config(args))
    return 0
