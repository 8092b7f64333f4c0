"""``python eval.py detection train|eval|convert|compare``: COCO detection with any backbone.

    python eval.py detection train --backbone pit_s --backbone-weights pit_s_809.pth --coco /data/coco \
        --epochs 50 --batch-size 2 --out runs/pit_s
    torchrun --nproc_per_node 8 eval.py detection train ...      # DDP, batch size per process
    python eval.py detection eval --checkpoint runs/pit_s/checkpoint.pth --coco /data/coco --out runs/pit_s
    python eval.py detection eval --checkpoint detr-r50-e632da11.pth --coco /data/coco --out runs/detr_r50
    python eval.py detection convert r50_deformable_detr-checkpoint.pth deformable_suite.pth
    python eval.py detection compare --runs runs/pit_s runs/deit_s runs/r50 --out runs/compare
    python eval.py detection eval --checkpoint A.pth B.pth --coco /data/coco --corruptions all --out runs/coco_c  # COCO-C
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from common.options import non_negative_float, non_negative_int, positive_float, positive_int
from common.rundir import announce, default_out, note
from common.synthetic import DetectionSpec
from pit import default_weights
from pit.hub import cached_pretrained_file
from detection.build import ARCHS
from detection.config import DetectionTrainConfig
from detection.presets import ARCH_DEFAULT, LABEL_SPACES, PRESETS, get_preset

OPTIMISER_FIELDS = ("epochs", "batch_size", "lr", "lr_backbone", "weight_decay", "clip_max_norm", "lr_drop", "label_space")
BUILTIN_DATA = DetectionSpec()  # the generated set used when no --coco / paths are given


def _json_object(flag: str, text: str, example: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object such as '{example}', got {text}")
    return value


def resolve_train_options(args: argparse.Namespace) -> tuple[dict, dict]:
    """Training keywords and model keywords from the flags, then the ``--preset`` (default: the official
    recipe of ``--arch``, DETR's without either), in that order."""
    model_kwargs = _json_object("--model-kwargs", args.model_kwargs, '{"num_queries": 50}')
    loss_kwargs = _json_object("--loss-kwargs", args.loss_kwargs, '{"cls_loss_coef": 5}')
    name = args.preset or ARCH_DEFAULT[args.arch or "detr"]
    preset = get_preset(name)
    if args.arch not in (None, preset.arch):
        raise ValueError(f"--preset {name} is a {preset.arch} recipe: drop --arch {args.arch} or use --arch {preset.arch}")
    options = {"arch": preset.arch, "preset": name, "img_scale": 1.0,
               **{k: getattr(preset, k) for k in OPTIMISER_FIELDS}}
    for key in options:
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    return {**options, "loss_kwargs": loss_kwargs}, {**preset.model_kwargs, **model_kwargs}


POSITIVE_INT, NON_NEGATIVE_INT = positive_int, non_negative_int
POSITIVE, NON_NEGATIVE = positive_float, non_negative_float


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
    """``detection train``'s run group: resume / overwrite / fine-tune, device, workers, seed, evaluation."""
    r = t.add_argument_group("run")
    r.add_argument("--resume", help="checkpoint to continue exactly (the same command on the same --out resumes by itself)")
    r.add_argument("--overwrite", action="store_true", help="start the run in --out over, discarding its checkpoint")
    r.add_argument("--finetune", help="detector to start from (any --checkpoint format of eval, e.g. an official "
                                      "DETR .pth); a class head of another size is re-initialised with a warning")
    r.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    r.add_argument("--num-workers", type=NON_NEGATIVE_INT)
    r.add_argument("--seed", type=int)
    r.add_argument("--eval-every", type=POSITIVE_INT, help="evaluate every N epochs (and after the last; default 1)")
    r.add_argument("--no-progress", action="store_true")


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
    t.add_argument("--out", help="run folder (run.json, log.jsonl, checkpoint.pth, eval.json); default "
                                 "runs/detection-train-BACKBONE, resumed when it holds the same run")
    o = t.add_argument_group("optimisation")
    o.add_argument("--epochs", type=POSITIVE_INT, help="default: the preset's (DETR 300, Deformable DETR 50)")
    o.add_argument("--batch-size", type=POSITIVE_INT, help="per process (default 2)")
    o.add_argument("--lr", type=POSITIVE, help="default: the preset's (DETR 1e-4, Deformable DETR 2e-4)")
    o.add_argument("--lr-backbone", type=NON_NEGATIVE, help="default: the preset's (DETR 1e-5, Deformable DETR 2e-5)")
    o.add_argument("--weight-decay", type=NON_NEGATIVE, help="default 1e-4")
    o.add_argument("--clip-max-norm", type=NON_NEGATIVE, help="gradient-norm clip, 0 = off (default 0.1)")
    o.add_argument("--lr-drop", type=POSITIVE_INT,
                   help="epoch at which lr is multiplied by 0.1 (default: the preset's, DETR 200, Deformable DETR 40)")
    o.add_argument("--accum-steps", type=POSITIVE_INT, help="gradient accumulation steps (default 1)")
    o.add_argument("--amp", action="store_true", help="mixed precision with the suite's policy (common.autocast)")
    s = t.add_argument_group("image sizes")
    s.add_argument("--scales", type=POSITIVE_INT, nargs="+", help="training short sides (default 480..800 step 32)")
    s.add_argument("--max-size", type=POSITIVE_INT, help="longest side (default 1333)")
    s.add_argument("--test-size", type=POSITIVE_INT, help="test short side (default 800)")
    s.add_argument("--img-scale", type=POSITIVE, help="multiply every size by this, e.g. 0.5 for small machines (default 1)")
    m = t.add_argument_group("model")
    m.add_argument("--model-kwargs", default="{}", help='JSON of model keywords, e.g. \'{"hidden_dim": 128, "num_queries": 50}\'')
    m.add_argument("--loss-kwargs", default="{}",
                   help='JSON replacing some of the preset\'s matcher costs / loss weights, e.g. \'{"cls_loss_coef": 5}\'')
    _run_args(t)

    e = sub.add_parser("eval", help="COCO bbox mAP, FPS and visualisations of a checkpoint; COCO-C with --corruptions")
    e.add_argument("--checkpoint", required=True, nargs="+",
                   help="a suite checkpoint, an official DETR / Deformable DETR .pth, or a Hugging Face save_pretrained "
                        "folder (several with --corruptions: one mPC/rPC comparison table)")
    _data_args(e, train=False)
    e.add_argument("--out", help="folder for eval.json and vis/ (default runs/detection-eval-RUN)")
    e.add_argument("--batch-size", type=POSITIVE_INT, default=2)
    e.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=2)
    e.add_argument("--device")
    e.add_argument("--save-vis", type=NON_NEGATIVE_INT, default=0, metavar="N",
                   help="draw predictions vs ground truth on N images")
    e.add_argument("--no-progress", action="store_true")
    cc = e.add_argument_group("COCO-C (docs/detection.md): clean + every corruption x severity cell, mPC and rPC")
    cc.add_argument("--corruptions", help="'all' (the 15 ImageNet-C corruptions) or names, e.g. fog,snow")
    cc.add_argument("--severities", help="e.g. 1-5 (default) or 1,3,5")
    cc.add_argument("--seed", type=int, help="corruption seed (per image and cell; default 0)")

    _convert_args(sub)
    c = sub.add_parser("compare", help="markdown table + plot of several run folders")
    c.add_argument("--runs", nargs="+", required=True)
    c.add_argument("--out", help="folder for compare.md and compare_ap.png")


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

    root = synthetic.make_detection(spec=BUILTIN_DATA)
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


def train_config(args: argparse.Namespace) -> DetectionTrainConfig:
    """The typed config of ``detection train`` from its flags (preset, then flags; unset = field defaults)."""
    options, model_kwargs = resolve_train_options(args)
    paths, data_note, builtin_size = _data(args, train=True)
    sizes = {"scales": args.scales, "max_size": args.max_size, "test_size": args.test_size}
    if builtin_size and not any(sizes.values()):  # the generated set's own size, not COCO's 800 px
        sizes = {"scales": [builtin_size - 16, builtin_size, builtin_size + 16], "max_size": 2 * builtin_size,
                 "test_size": builtin_size}
    weights, weights_note = _backbone_weights(args)
    run = {k: getattr(args, k) for k in ("accum_steps", "num_workers", "seed", "eval_every") if getattr(args, k) is not None}
    config = DetectionTrainConfig(backbone=args.backbone, **paths, out=args.out or "", backbone_weights=weights,
                                  **options, **sizes, **run, amp=args.amp, device=args.device, resume=args.resume,
                                  overwrite=args.overwrite, progress=not args.no_progress, model_kwargs=model_kwargs,
                                  finetune=args.finetune, data_note=data_note, weights_note=weights_note)
    if not args.out:
        from detection.resume import TRAIN_KIND

        out = default_out("detection-train", [args.backbone], TRAIN_KIND, config.options())
        config = dataclasses.replace(config, out=str(out))
    return config


def _eval_out(args: argparse.Namespace) -> str:
    if args.out:
        return args.out
    from detection.resume import EVAL_KIND

    checkpoint = Path(args.checkpoint[0])
    return str(default_out("detection-eval", [checkpoint.parent.name or checkpoint.stem], EVAL_KIND,
                           {"checkpoint": str(checkpoint.resolve())}))


def _coco_c(args: argparse.Namespace) -> int:
    """``detection eval --corruptions``: COCO-C of one or several checkpoints (``detection.coco_c``)."""
    from detection.coco_c import KIND, parse_corruptions, parse_severities, run_coco_c

    names, severities, seed = parse_corruptions(args.corruptions), parse_severities(args.severities or "1-5"), args.seed or 0
    paths, _, _ = _data(args, train=False)
    out = args.out or str(default_out("detection-coco-c", [Path(c).parent.name or Path(c).stem for c in args.checkpoint],
                                      KIND, {"checkpoints": [str(Path(c).resolve()) for c in args.checkpoint], "seed": seed}))
    run_coco_c(args.checkpoint, None, out, names, severities, seed, args.device, **paths, batch_size=args.batch_size,
               num_workers=args.num_workers, progress=not args.no_progress)
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
    if args.action == "compare":
        from detection.compare import compare_runs

        print(compare_runs(args.runs, args.out))
        return 0
    if args.action == "convert":
        from detection.load import convert_detector

        print(convert_detector(args.src, args.dst))
        return 0
    from detection.engine import evaluate_checkpoint, train_detector

    if args.action == "eval" and args.corruptions:
        return _coco_c(args)
    if args.action == "eval":
        if args.severities or args.seed is not None:
            raise ValueError("--severities and --seed choose COCO-C cells: add --corruptions all (or names)")
        if len(args.checkpoint) > 1:
            raise ValueError("several --checkpoint values need --corruptions (a COCO-C comparison); "
                             "to compare clean runs use: detection compare --runs")
        out = _eval_out(args)
        from detection.resume import claim_eval_out

        announce(claim_eval_out(out, args.checkpoint[0]))
        paths, data_note, _ = _data(args, train=False)
        evaluate_checkpoint(args.checkpoint[0], **paths, out=out, device=args.device, batch_size=args.batch_size,
                            num_workers=args.num_workers, save_vis=args.save_vis, progress=not args.no_progress,
                            data_note=data_note)
        return 0
    train_detector(train_config(args))
    return 0
