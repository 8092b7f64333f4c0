#!/usr/bin/env python
"""The single entry point of the PiT downstream suite.

    python eval.py bench              # the paper's ImageNet table: params, GMACs, img/s (+ top-1 with --data)
    python eval.py robustness ...     # ImageNet-C/A/R, occlusion, FGSM/PGD, mCE reports
    python eval.py detection ...      # DETR / Deformable DETR on COCO: train | eval | compare
    python eval.py train-classifier   # small classification trainer (timm pieces)
    python eval.py demo               # everything end to end on generated data, on a CPU, in minutes

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``main(args) -> int``; this file only parses arguments and dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("classification.bench", "Parameters, GMACs and throughput of models side by side with the PiT paper's table."),
    "robustness": ("robustness.cli", "Robustness evaluation: clean, ImageNet-C/A/R, occlusion, FGSM/PGD; mCE reports."),
    "detection": ("detection.cli", "Object detection on COCO-format data: train, eval, compare backbones."),
    "train-classifier": ("classification.train", "Train a small classifier on an ImageFolder with timm's recipe pieces."),
    "demo": ("demo.pipeline", "Run the whole suite end to end on generated data and write a report."),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="eval.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Import only the module of the command being run (fast start-up, and one broken
        # optional piece cannot take the other commands down).
        if wanted == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].main(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved; run the same command again to resume.", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as err:
        if getattr(args, "debug", False):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
