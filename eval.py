#!/usr/bin/env python
"""The single entry point of the PiT downstream suite.

    python eval.py bench              # the paper's ImageNet table: params, GMACs, img/s (+ top-1 with --data)
    python eval.py robustness ...     # ImageNet-C/A/R, occlusion, FGSM/PGD, mCE reports
    python eval.py detection ...      # DETR / Deformable DETR on COCO: train | eval | compare
    python eval.py train-classifier   # small classification trainer (timm pieces)
    python eval.py demo               # everything end to end on generated data, on a CPU, in minutes

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``main(args) -> int``; this file only parses arguments and dispatches. Errors end with one line and an
exit code: 2 for bad input (a path, a file, an option), 1 for runtime faults (a full disk, a failing
device), 130 for Ctrl-C; ``--debug`` shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from typing import NoReturn, Sequence

MENU = """usage: python eval.py COMMAND [options]     (python eval.py COMMAND -h for every option)

  demo              everything end to end on generated data, on a CPU, in minutes
                      python eval.py demo
  robustness        clean, ImageNet-C/A/R, occlusion, FGSM/PGD, background challenge
                      python eval.py robustness --model pit_s
  detection         DETR / Deformable DETR on COCO: train | eval | convert | compare
                      python eval.py detection train --backbone pit_s
  bench             the paper's ImageNet table: params, GMACs, img/s (+ top-1 with --data)
                      python eval.py bench --models pit_s deit_small_patch16_224
  train-classifier  train a small classifier on an ImageFolder with timm's recipe pieces
                      python eval.py train-classifier --model pit_ti --data DIR

Without a dataset each command runs on the built-in generated data and says so."""

BAD_INPUT = (ValueError, KeyError, LookupError, FileNotFoundError, FileExistsError, IsADirectoryError,
             NotADirectoryError, PermissionError)

COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("classification.bench", "Parameters, GMACs and throughput of models side by side with the PiT paper's table."),
    "robustness": ("robustness.cli", "Robustness evaluation: clean, ImageNet-C/A/R, occlusion, FGSM/PGD; mCE reports."),
    "detection": ("detection.cli", "Object detection on COCO-format data: train, eval, compare backbones."),
    "train-classifier": ("classification.train", "Train a small classifier on an ImageFolder with timm's recipe pieces."),
    "demo": ("demo.pipeline", "Run the whole suite end to end on generated data and write a report."),
}


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the nearest flag or command ("did you mean --models?")."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # for the hints of ``error``
        return super().parse_known_args(args, namespace)

    def _chain(self, given: list[str]) -> list[argparse.ArgumentParser]:
        """This parser and the subcommand parsers that ``given`` selects, outermost first."""
        chain: list[argparse.ArgumentParser] = [self]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                picked = next((i for i, word in enumerate(given) if word in action.choices), None)
                if picked is not None:
                    sub = action.choices[given[picked]]
                    chain += sub._chain(given[picked + 1:]) if isinstance(sub, Parser) else [sub]
        return chain

    def _hint(self, message: str) -> str:
        """" (did you mean ...?)" for each unknown flag given and for an invalid choice; "" when none is close."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            close = _closest(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
            return f" (did you mean '{close}'?)" if close else ""
        given = getattr(self, "_given", [])
        options = [o for p in self._chain(given) for o in p._option_string_actions]
        unknown = [w.split("=")[0] for w in given if w.startswith("--")]
        unknown = [w for w in unknown if not any(o.startswith(w) for o in options)]
        close = [f"{w} -> {c}" if len(unknown) > 1 else c for w in unknown if (c := _closest(w, options))]
        return f" (did you mean {', '.join(close)}?)" if close else ""

    def error(self, message: str) -> NoReturn:
        chain = self._chain(getattr(self, "_given", []))
        prog = chain[-1].prog
        self.exit(2, f"{prog}: error: {message}{self._hint(message)}; python {prog} -h lists every option\n")


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = Parser(
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
        print(MENU)
        return 0
    try:
        return int(modules[args.command].main(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved; run the same command again to resume.", file=sys.stderr)
        return 130
    except (*BAD_INPUT, OSError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
        if isinstance(err, OSError) and err.strerror and err.filename and str(err.filename) not in str(message):
            message = f"{err.filename}: {err.strerror}"
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2 if isinstance(err, BAD_INPUT) else 1


if __name__ == "__main__":
    sys.exit(main())
