"""``python eval.py robustness``: clean, ImageNet-C/A/R/V2/Sketch, ReaL, shape bias, IN-9, occlusion and FGSM/PGD
evaluation with reports.

    python eval.py robustness --model pit_s     # the paper's table on the built-in generated set: a smoke run
    python eval.py robustness --model pit_s deit_small_patch16_224 resnet50 \\
        --weights pit_s_809.pth deit_small.pth resnet50.pth --data /data/imagenet/val \\
        --imagenet-c /data/imagenet-c --imagenet-a /data/imagenet-a --out runs/rob
    python eval.py robustness --model pit_s --in9 /data/bg_challenge   # IN-9 only, the model's 1000-class head
    torchrun --nproc_per_node=8 eval.py robustness ...   # same command, data sharded over GPUs

What runs: every dataset given is evaluated (--data, --imagenet-c/-a/-r/-v2/-sketch, --imagenet-real,
--cue-conflict, --in9; none given: the built-in generated set). With no evaluation selected, the paper's
table runs on the data given: clean, occlusion,
FGSM and PGD, and the 15 corruptions at severities 1-5 (on the fly from the clean images, or read from
--imagenet-c). Any of --attacks, --occlusion, --corruptions, --corrupt-on-the-fly selects: only what is
given runs besides clean (--attacks with no name: clean only). Run the same command again to resume;
add evaluations or datasets to a finished run and only the new cells are computed.
"""
from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import pit
from common import rundir, synthetic
from common.distributed import cleanup_distributed, init_distributed, is_main_process, main_decides
from common.options import positive_int
from common.tables import fmt
from common.vocabulary import add_shared_flags, parse_severities
from robustness.autoattack import INSTALL
from robustness.config import ATTACKS, DECODERS, NORMS, ModelSpec, RobustnessConfig, default, paper_table
from robustness.plan import marker_options
from robustness.runner import run_robustness
from robustness.store import KIND

GENERATED_LIMIT = 100  # images of the generated set per cell by default: the whole table in a few minutes on a CPU
SELECTIONS = ("--attacks", "--occlusion", "--corruptions", "--corrupt-on-the-fly")


def parse_fraction(text: str) -> float:
    """'1/255', '0.5' or '2' → a finite float (argparse type)."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a finite number or a fraction like 1/255, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction_in(low: float, high: float, low_open: bool, what: str):
    """An argparse type: a number or fraction in [low, high] (or (low, high] when ``low_open``)."""
    def check(text: str) -> float:
        try:
            value = parse_fraction(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (value <= low if low_open else value < low) or value > high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return check


eps_value = _fraction_in(0, math.inf, False, "a finite number >= 0 (pixels in [0,1]), e.g. 1/255")
step_value = _fraction_in(0, 1, True, "a finite number in (0, 1], e.g. 1/255")
crop_value = _fraction_in(0, 1, True, "a fraction in (0, 1], e.g. 0.875")


class _Given(argparse.Action):
    """Store the value and note that the flag was given (``--norm L2`` needs an explicit ``--eps``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    g = parser.add_argument_group("models")
    add_shared_flags(g, "models", "amp")
    g.add_argument("--weights", nargs="+", default=None, metavar="PATH",
                   help="weights file per model, in the same order ('none' for random init); omitted: the "
                        "published weights when available offline, else random init (a banner says which)")
    g.add_argument("--num-classes", type=positive_int, default=None, help="classifier outputs (default: the model's)")
    _add_data_arguments(parser.add_argument_group("data (each set given is evaluated)"))
    g = parser.add_argument_group(f"evaluations (none of {', '.join(SELECTIONS)} given: the paper's table on the "
                                  "data given; any given: only those, besides clean)")
    add_shared_flags(g, "corruptions", "severities")
    g.add_argument("--corrupt-on-the-fly", action="store_true", default=None,
                   help="corrupt the clean --data batches on the device (the default source without --imagenet-c)")
    g.add_argument("--imagenet-c-size", type=positive_int, default=None, metavar="PX",
                   help="the benchmark's crop: --imagenet-c files are centre-cropped to it and on-the-fly corruptions "
                        "are made at it (Resize(PX·256/224) → CenterCrop(PX), as make_imagenet_c.py), the same for "
                        "every model (default 224; the generated set's own 64 px for it)")
    g.add_argument("--imagenet-c-jpeg", action=argparse.BooleanOptionalAction, default=default("imagenet_c_jpeg"),
                   help="on-the-fly corruptions end with ImageNet-C's storage step, a JPEG quality-85 round trip "
                        "(PIL's codec), as the stored set was saved")
    g.add_argument("--attacks", nargs="*", default=None, choices=ATTACKS,
                   help="adversarial attacks: fgsm and pgd (L∞; the paper's table), autoattack (standard AutoAttack, "
                        f"Croce & Hein 2020; needs {INSTALL}); --attacks with no name: no evaluation but clean")
    g.add_argument("--eps", type=eps_value, default=default("eps"), action=_Given,
                   help="attack radius in [0,1] pixels, e.g. 1/255 (L∞); with --norm L2 an L2 radius, required")
    g.add_argument("--norm", choices=NORMS, default=default("norm"),
                   help="AutoAttack's ball (FGSM and PGD are L∞ only)")
    g.add_argument("--attack-limit", type=positive_int, default=default("attack_limit"), metavar="N",
                   help="AutoAttack on N evenly spaced images of the clean set only (RobustBench: 5000 for ImageNet); "
                        "the other cells use every image")
    g.add_argument("--alpha", type=step_value, default=default("alpha"), help="PGD step size (default 2.5*eps/steps)")
    g.add_argument("--steps", type=positive_int, default=default("steps"), help="PGD steps")
    g.add_argument("--occlusion", action="store_true", default=None, help="centred-square and random-patch occlusion")
    g = parser.add_argument_group("run")
    g.add_argument("--models-at-once", type=positive_int, default=default("models_at_once"), metavar="N",
                   help="hold at most N models on the device together (default: all; every group re-reads the images)")
    g.add_argument("--chunk-images", type=positive_int, default=default("chunk_images"), metavar="N",
                   help=f"save a pass's progress every N images; a stopped run resumes after the last saved chunk "
                        f"(default {default('chunk_images')})")
    g.add_argument("--decode", choices=DECODERS, default=default("decode"),
                   help="where JPEG files are decoded: device = torchvision's batched decoder and the resize/crop on "
                        "the run's device (nvJPEG on CUDA), pil = PIL in the loader workers (as timm and the "
                        "benchmarks read images), auto = device on CUDA, else pil (default: auto)")
    add_shared_flags(g, "out", "overwrite", "resume", "device", "seed", "batch_size", "workers", "progress",
                     seed=default("seed"), batch_size=default("batch_size"),
                     out_help="output folder: results.json, cells.jsonl, report.md, plots/ (default: "
                              "runs/robustness-<models>, resumed when it holds the same run)")


def _add_data_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", default=None, metavar="DIR",
                   help="clean validation ImageFolder (<dir>/<wnid>/*.JPEG); no dataset at all given: the built-in "
                        "generated set")
    g.add_argument("--class-map", choices=("imagenet", "folder"), default=None,
                   help="folder names are ImageNet wnids (timm's synset order; the default with real data) or any "
                        "names (sorted → 0..K-1; the default for the generated set)")
    g.add_argument("--imagenet-c", metavar="DIR", help="ImageNet-C on disk: DIR/<corruption>/<severity>/<wnid>/*.JPEG")
    g.add_argument("--imagenet-a", metavar="DIR", help="ImageNet-A folder (the authors' 200 classes; logits masked)")
    g.add_argument("--imagenet-r", metavar="DIR", help="ImageNet-R folder (the authors' 200 classes; logits masked)")
    g.add_argument("--imagenet-v2", metavar="DIR",
                   help="ImageNet-V2 matched-frequency folder (DIR/<class index 0..999>/*.jpeg; label = int(folder))")
    g.add_argument("--imagenet-sketch", metavar="DIR", help="ImageNet-Sketch folder (DIR/<wnid>/*.JPEG, the sketch/ folder)")
    g.add_argument("--imagenet-real", metavar="FILE",
                   help="ReaL labels (real.json) scoring the --data ImageNet val images again: a prediction is right "
                        "when it is any of the image's labels; unlabelled images are left out")
    g.add_argument("--cue-conflict", metavar="DIR",
                   help="Geirhos et al.'s cue-conflict stimuli (DIR/<category>/<shape><n>-<texture><m>.png, 224 px): "
                        "shape bias, as model-vs-human scores it")
    g.add_argument("--in9", metavar="DIR", help="ImageNet-9 backgrounds test sets (DIR/<variant>/val/<class>/, "
                   "DIR/fg_mask/val/<class>/*.npy): variant accuracies, BG-gap and the Background Challenge")
    g.add_argument("--in9-challenge-limit", type=positive_int, default=default("in9_challenge_limit"), metavar="N",
                   help="Background Challenge on the first N foregrounds per class only (a quick estimate)")
    g.add_argument("--img-size", type=positive_int, default=default("img_size"), help="eval image size (default: the model's; the generated set's own 64 px for it)")
    g.add_argument("--crop-pct", type=crop_value, default=default("crop_pct"), help="centre-crop fraction in (0, 1] (default: the model's)")
    g.add_argument("--limit", type=positive_int, default=default("limit"),
                   help=f"evaluate an evenly spread subset of N images per set (generated set: {GENERATED_LIMIT} by default)")


def model_specs(names: list[str], weights: list[str] | None, num_classes: int | None) -> list[ModelSpec]:
    """One ModelSpec per --model; repeated names get labels from their weights files. A model without
    --weights gets ``pit.default_weights``: published weights when available, else random init (a note)."""
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"--weights needs one path per --model ({len(names)}), got {len(weights)} (use 'none' for random init)")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    specs = []
    for name, w in zip(names, weights or [None] * len(names)):
        explicit_none = w is not None and w.lower() == "none"
        w = None if explicit_none else w
        label = f"{name}:{Path(w).stem}" if names.count(name) > 1 and w else None
        pretrained = False
        if w is None and not explicit_none:
            pretrained, banner = pit.default_weights(name)
            rundir.note(f"{name}: {banner}")
        specs.append(ModelSpec(name, weights=w, label=label, model_kwargs=dict(kwargs), pretrained=pretrained))
    return specs


def generated_data(class_map: str | None, num_classes: int | None) -> tuple[str, int, str]:
    """The built-in generated classification set (built and cached on first use): (val folder, classes, note).
    It is evaluated at its own image size (no resize, no crop) on ``GENERATED_LIMIT`` images unless told otherwise."""
    spec = synthetic.ClassificationSpec()
    if class_map == "imagenet":
        raise ValueError("--class-map imagenet needs --data DIR (the generated set's folders are not ImageNet wnids)")
    if num_classes not in (None, spec.num_classes):
        raise ValueError(f"--num-classes {num_classes} needs --data DIR: the built-in generated set has "
                         f"{spec.num_classes} classes")
    root = synthetic.make_classification(None, spec) / "val"
    text = (f"built-in generated classification set ({spec.num_classes} shape×texture classes, "
            f"{spec.num_classes * spec.val_per_class} images of {spec.img_size} px, {root}), not ImageNet; "
            f"by default {GENERATED_LIMIT} of them at {spec.img_size} px (--limit, --img-size)")
    rundir.note(f"no dataset given: evaluating on the {text}; for ImageNet pass --data DIR (e.g. --data /data/imagenet/val)")
    return str(root), spec.num_classes, text


def evaluations(args: argparse.Namespace, has_clean: bool) -> dict:
    """The config's evaluation fields: the paper's table when none is selected, else only the ones given."""
    if all(getattr(args, flag[2:].replace("-", "_")) is None for flag in SELECTIONS):
        chosen = paper_table(has_clean, bool(args.imagenet_c))
        rundir.note(f"no evaluation selected ({', '.join(SELECTIONS)}): running the paper's table on the data given")
    else:
        corrupt = args.corrupt_on_the_fly or (args.corruptions is not None and has_clean and not args.imagenet_c)
        chosen = {"attacks": args.attacks or [], "occlusion": bool(args.occlusion),
                  "corruptions": "all" if args.corruptions is None else args.corruptions,
                  "corrupt_on_the_fly": bool(corrupt)}
    return chosen


def build_config(args: argparse.Namespace) -> dict:
    """The run's ``run_robustness`` keywords from the parsed arguments (defaults: data, weights, --out folder)."""
    data, num_classes, data_note, limit = args.data, args.num_classes, None, args.limit
    class_map, img_size, crop_pct = args.class_map or "imagenet", args.img_size, args.crop_pct
    c_size = args.imagenet_c_size or default("imagenet_c_size")
    if not (data or args.imagenet_c or args.imagenet_a or args.imagenet_r or args.in9 or args.imagenet_v2
            or args.imagenet_sketch or args.cue_conflict):
        if args.imagenet_real:
            raise ValueError("--imagenet-real labels the clean ImageNet val images: pass --data DIR (the val set)")
        data, num_classes, data_note = generated_data(args.class_map, args.num_classes)
        class_map, limit = "folder", limit or GENERATED_LIMIT
        own = synthetic.ClassificationSpec().img_size
        img_size, crop_pct, c_size = img_size or own, crop_pct or 1.0, args.imagenet_c_size or own
    if args.norm == "L2" and not getattr(args, "eps_given", False):
        raise ValueError("--norm L2 needs --eps: the default radius is an L∞ one; give the L2 radius in [0,1] "
                         "pixels over the whole image, e.g. --eps 0.5 (RobustBench's CIFAR-10 L2 radius)")
    fields = dict(
        models=model_specs(args.models, args.weights, num_classes), data=data, out=args.out or "",
        class_map=class_map, img_size=img_size, crop_pct=crop_pct, imagenet_c=args.imagenet_c,
        imagenet_c_size=c_size, imagenet_c_jpeg=args.imagenet_c_jpeg,
        imagenet_a=args.imagenet_a, imagenet_r=args.imagenet_r, in9=args.in9, imagenet_v2=args.imagenet_v2,
        imagenet_sketch=args.imagenet_sketch, imagenet_real=args.imagenet_real, cue_conflict=args.cue_conflict,
        in9_challenge_limit=args.in9_challenge_limit, severities=parse_severities(args.severities),
        eps=args.eps, norm=args.norm, attack_limit=args.attack_limit, alpha=args.alpha, steps=args.steps,
        limit=limit, batch_size=args.batch_size,
        models_at_once=args.models_at_once, chunk_images=args.chunk_images,
        device=args.device, decode=args.decode, amp=args.amp, num_workers=args.workers, seed=args.seed, progress=args.progress,
        overwrite=args.overwrite, resume=args.resume, data_note=data_note, **evaluations(args, bool(data)))
    if not args.out:
        config = RobustnessConfig(**fields)
        names = [m.display for m in config.models]
        fields["out"] = str(rundir.default_out("robustness", names, KIND, marker_options(config)))
    return fields


def main(args: argparse.Namespace) -> int:
    init_distributed(args.device)  # first: the defaults below (data, weights, --out) are read on rank 0
    try:
        fields = main_decides(lambda: build_config(args))
        if is_main_process():
            rundir.announce(fields["out"])
        result = run_robustness(**fields)
        main_process = is_main_process()
    finally:
        cleanup_distributed()
    if main_process:
        for label, s in result["summary"].items():
            shown = ", ".join(f"{k} {fmt(v, 2)}" for k, v in s.items() if isinstance(v, float))
            print(f"{label}: {shown}")
        for reason in sorted(set(result["not_run"].values())):
            print(f"{', '.join(k for k, v in result['not_run'].items() if v == reason)}: {reason}")
        print(f"report: {result['report']}")
        rundir.announce(fields["out"], finished=True)
    return 0
