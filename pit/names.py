"""The model names the suite knows: our eight PiT variants plus every name in timm's registry."""
from __future__ import annotations

import difflib

import timm

from pit import pit as _pit  # noqa: F401  (registers our PiT names with timm)

__all__ = ["PIT_NAMES", "check_name"]

PIT_NAMES = (
    "pit_ti", "pit_xs", "pit_s", "pit_b",
    "pit_ti_distilled", "pit_xs_distilled", "pit_s_distilled", "pit_b_distilled",
)


def check_name(name: str) -> None:
    """Raise ``ValueError`` (with close matches) unless ``name`` is a PiT name or a timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models() for names."
    raise ValueError(f"unknown model '{name}': not a PiT name ({', '.join(PIT_NAMES)}) nor a timm model.{hint}")
