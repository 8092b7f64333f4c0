"""One markdown table writer and one number formatter for every report and terminal summary.

A number shows the same in the terminal and in a report because both go through :func:`fmt`.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

MISSING = "–"


def fmt(value: float | int | None, digits: int = 1, *, missing: str = MISSING, missing_below: float | None = None) -> str:
    """``value`` with ``digits`` decimals; None, NaN, ±inf and values below ``missing_below`` (e.g. 0 for
    COCO's -1 "no objects of this size") print as ``missing``. Integers print without decimals."""
    if value is None or isinstance(value, bool):
        return missing if value is None else str(value)
    if isinstance(value, int):
        return missing if missing_below is not None and value < missing_below else str(value)
    if not math.isfinite(value) or (missing_below is not None and value < missing_below):
        return missing
    return f"{value:.{digits}f}"


def _cell(value: object, digits: int) -> str:
    text = value if isinstance(value, str) else fmt(value, digits)  # type: ignore[arg-type]
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *, align: str | None = None,
                   digits: int = 1) -> str:
    """A GitHub markdown table. ``rows`` hold strings (kept) or numbers (``fmt(value, digits)``);
    ``align`` is one letter per column (``l``, ``r``, ``c``; default: first column left, the rest right)."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h, digits) for h in header) + " |",
             "|" + "|".join(rule[a] for a in align) + "|"]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)
