"""Parse-time checks for numeric command-line options (argparse ``type=``): a bad value stops argparse with
one line (exit 2). Shared by every command."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _checked(kind: type, accept: Callable[[float], bool], requirement: str, doc: str) -> Callable[[str], int | float]:
    """An argparse type: ``kind(text)``, finite, and ``accept(value)``, else one line naming ``requirement``."""
    def parse(text: str) -> int | float:
        value = _number(text, kind)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    parse.__name__, parse.__doc__ = kind.__name__, doc  # argparse names the type in its messages
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer", "An integer ≥ 1.")
non_negative_int = _checked(int, lambda v: v >= 0, "0 or more", "An integer ≥ 0.")
positive_float = _checked(float, lambda v: v > 0, "greater than 0", "A finite number > 0.")
non_negative_float = _checked(float, lambda v: v >= 0, "0 or more", "A finite number ≥ 0.")
unit_fraction = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]", "A number in (0, 1] (e.g. ``--crop-pct``).")
open_fraction = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)",
                         "A number in [0, 1) (e.g. label smoothing, an EMA decay).")
