"""One vocabulary for every command: each flag that two commands share is defined and parsed here once.

``add_shared_flags(parser, "corruptions", "severities", "workers", ...)`` gives a command the shared
flags with one spelling, one type and one help text; ``parse_corruptions`` / ``parse_severities`` read
the values the same way everywhere (space- or comma-separated names, ``all``, ``extra``; ``1-5``,
``1 3 5``, ``1,3,5``). ``SHARED_FLAGS`` is the table of what each one means (docs/cli.md).
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Any, Sequence

import corruptions
from common.options import non_negative_int, positive_int

SHARED_FLAGS: dict[str, str] = {
    "--model / --models": "one or more model names (pit_s, deit_small_patch16_224, resnet50, any timm name)",
    "--corruptions": "corruption names, space- or comma-separated; `all` = the 15 ImageNet-C ones, `extra` = the 4 extra",
    "--severities": "severities 1..5: a range `1-5`, or values `1 3 5` / `1,3,5`",
    "--seed": "seed of every random draw, drawn per image: no number depends on --batch-size or the process count",
    "--device": "cpu, cuda, cuda:1, mps (default: the best available)",
    "--amp": "mixed-precision forward passes with the suite's autocast policy (bfloat16 where native)",
    "--batch-size": "images per batch, per process",
    "--workers / --num-workers": "DataLoader worker processes (default: at most 4, never more than the cores)",
    "--out": "the run folder; run the same command again and it resumes there",
    "--overwrite": "replace what --out holds that was computed with other options (start a training run over)",
    "--resume": "continue the run in --out, also after a change the command can continue (more epochs, new cells); "
                "refused when --out holds no run",
    "--no-progress": "no progress bars",
}


def parse_corruptions(values: str | Sequence[str] | None, *, default: str = "all") -> tuple[str, ...]:
    """Names from ``"fog,snow"``, ``["fog", "snow"]``, ``"all"`` (the 15), ``"extra"`` (the 4), in order, once each.

    Unknown names raise ``ValueError`` with the closest valid name ("did you mean ...?")."""
    parts = [default] if values is None else [values] if isinstance(values, str) else list(values)
    words = [w for part in parts for w in str(part).replace(",", " ").split()]
    if not words:
        raise ValueError("--corruptions is empty: give names such as fog,snow, or all / extra")
    names: list[str] = []
    for word in words:
        if word == "all":
            names += corruptions.CORRUPTIONS
        elif word == "extra":
            names += corruptions.EXTRA_CORRUPTIONS
        elif word in corruptions.ALL_CORRUPTIONS:
            names.append(word)
        else:
            close = difflib.get_close_matches(word, [*corruptions.ALL_CORRUPTIONS, "all", "extra"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--corruptions: unknown corruption {word!r}{hint}; choose all, extra or from "
                             f"{', '.join(corruptions.ALL_CORRUPTIONS)}")
    return tuple(dict.fromkeys(names))


def parse_severities(values: str | int | Sequence[str | int] | None, *, default: str = "1-5") -> tuple[int, ...]:
    """``"1-5"``, ``"1 3 5"``, ``"1,3,5"``, ``["2-4", "5"]`` or ints → sorted unique severities in 1..5."""
    parts = [default] if values is None else [values] if isinstance(values, (str, int)) else list(values)
    text = " ".join(str(p) for p in parts)
    found: set[int] = set()
    try:
        for word in text.replace(",", " ").split():
            lo, _, hi = word.partition("-")
            found.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--severities {text!r}: use a range like 1-5 or values like 1 3 5 / 1,3,5") from None
    if not found or min(found) < 1 or max(found) > 5:
        raise ValueError(f"--severities {text!r}: severities lie in 1..5, e.g. 1-5 or 1,3,5")
    return tuple(sorted(found))


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(requested: int | None = None) -> int:
    """``requested`` when given, else at most 4 DataLoader workers and never more than the cores minus one
    (the main process needs a core too)."""
    if requested is not None:
        return requested
    return max(0, min(4, usable_cores() - 1))


def _flag_specs(defaults: dict[str, Any]) -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    """name → (option strings, add_argument keywords) of every shared flag."""
    d = defaults.get
    return {
        "models": (("--model", "--models"), dict(dest="models", nargs="+", metavar="NAME", required=d("models") is None,
                                                  default=d("models"), help=SHARED_FLAGS["--model / --models"])),
        "corruptions": (("--corruptions",), dict(nargs="+", metavar="NAME", default=d("corruptions"),
                                                 help=SHARED_FLAGS["--corruptions"])),
        "severities": (("--severities",), dict(nargs="+", metavar="S", default=d("severities"),
                                               help=SHARED_FLAGS["--severities"] + f" (default {d('severities') or '1-5'})")),
        "seed": (("--seed",), dict(type=int, default=d("seed"), help=SHARED_FLAGS["--seed"] + f" (default {d('seed', 0)})")),
        "device": (("--device",), dict(default=d("device"), help=SHARED_FLAGS["--device"])),
        "amp": (("--amp",), dict(action="store_true", help=SHARED_FLAGS["--amp"])),
        "batch_size": (("--batch-size",), dict(type=positive_int, default=d("batch_size"),
                                               help=(d("batch_size_help") or SHARED_FLAGS["--batch-size"])
                                               + _default_text(d("batch_size")))),
        "workers": (("--workers", "--num-workers"), dict(dest="workers", type=non_negative_int, default=d("workers"),
                                                         help=SHARED_FLAGS["--workers / --num-workers"])),
        "out": (("--out",), dict(default=d("out"), metavar="DIR", help=d("out_help") or SHARED_FLAGS["--out"])),
        "overwrite": (("--overwrite",), dict(action="store_true", help=SHARED_FLAGS["--overwrite"])),
        "resume": (("--resume",), dict(action="store_true", help=SHARED_FLAGS["--resume"])),
        "progress": (("--no-progress",), dict(dest="progress", action="store_false", help=SHARED_FLAGS["--no-progress"])),
    }


def _default_text(value: Any) -> str:
    return "" if value is None else f" (default {value})"


def add_shared_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, **defaults: Any) -> None:
    """Add the named shared flags to ``parser`` (or an argument group) with their one spelling and meaning.

    ``defaults`` sets a command's default per flag name (``batch_size=64``); ``out_help`` replaces the
    ``--out`` help text (to name the files a command writes), ``batch_size_help`` the ``--batch-size`` one
    (``train-classifier``'s is the global batch). ``models`` is required unless given a default."""
    specs = _flag_specs(defaults)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise KeyError(f"no shared flag named {unknown[0]!r}; known: {', '.join(specs)}")
    for name in names:
        option_strings, kwargs = specs[name]
        parser.add_argument(*option_strings, **kwargs)
