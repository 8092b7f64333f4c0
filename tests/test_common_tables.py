"""The one markdown table writer and number formatter, read back by a markdown parser's rules."""
from __future__ import annotations

import math

import pytest

from common.tables import fmt, markdown_table


def test_fmt_missing_values() -> None:
    assert fmt(None) == fmt(math.nan) == fmt(math.inf) == "–"
    assert fmt(-100.0, missing_below=0) == "–" and fmt(-1, missing_below=0) == "–"
    assert fmt(12.345, 2) == f"{12.345:.2f}" and fmt(7) == "7"


def test_table_parses_back_into_its_cells() -> None:
    rows = [["pit_s", 80.95, None], ["a|b", 1.0, 2]]
    text = markdown_table(["model", "top-1", "n"], rows, digits=2)
    lines = text.splitlines()
    assert lines[1] == "|:---|---:|---:|"
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]
    assert cells[0] == ["pit_s", "80.95", "–"]
    assert cells[1][0] == "a\\|b" and cells[1][2] == "2"


def test_row_length_checked() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        markdown_table(["a", "b", "c"], [[1, 2]])
