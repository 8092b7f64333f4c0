"""COCO-C cells as typed records: a frozen :class:`CellKey` per (corruption, severity) with one string form,
and the summary (clean AP, mPC, rPC, mean AP per corruption) of a list of cell records.

A cell record (one line of ``coco_c.json``'s ``cells``) is ``{"corruption", "severity", "AP", ...}`` with AP
in [0, 1]; the clean cell is ``("clean", 0)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

CLEAN = "clean"


@dataclass(frozen=True, order=True)
class CellKey:
    """One COCO-C cell: ``CellKey("fog", 3)``, or the clean cell ``CellKey("clean", 0)``; ``str`` = ``"fog/3"``
    / ``"clean"`` (the one string form, in lines and logs)."""

    corruption: str
    severity: int = 0

    def __str__(self) -> str:
        return self.corruption if self.corruption == CLEAN else f"{self.corruption}/{self.severity}"

    @classmethod
    def of(cls, record: dict) -> "CellKey":
        """The key of a cell record of ``coco_c.json`` (``{"corruption", "severity", "AP", ...}``)."""
        return cls(record["corruption"], int(record["severity"]))


CLEAN_CELL = CellKey(CLEAN, 0)


def cell_keys(names: Sequence[str], severities: Sequence[int]) -> list[CellKey]:
    """The clean cell, then every (corruption, severity) cell, in report order."""
    return [CLEAN_CELL] + [CellKey(n, s) for n in names for s in severities]


def cell_ap(cells: Sequence[dict]) -> dict[CellKey, float]:
    """AP (in [0, 1]) of each cell record, by key."""
    return {CellKey.of(c): c["AP"] for c in cells}


def summarize_cells(cells: Sequence[dict], names: Sequence[str], severities: Sequence[int]) -> dict:
    """Clean AP, mPC (mean AP over the names × severities cells), rPC = mPC / clean AP and the mean AP
    per corruption, from per-cell records ``{"corruption", "severity", "AP", ...}`` (AP in [0, 1])."""
    ap = cell_ap(cells)
    clean = ap.get(CLEAN_CELL)
    grid = cell_keys(names, severities)[1:]
    if clean is None or any(cell not in ap for cell in grid):
        return {"complete": False}
    per = {n: sum(ap[CellKey(n, s)] for s in severities) / len(severities) for n in names}
    mpc = sum(ap[cell] for cell in grid) / len(grid)
    return {"complete": True, "clean_ap": clean, "mpc": mpc, "rpc": mpc / clean if clean > 0 else 0.0,
            "corruption_ap": per, "cells_in_mpc": len(grid)}
