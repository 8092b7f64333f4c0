"""``python eval.py demo --quick`` end to end: every stage runs and the report's tables hold numbers in range."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import eval as eval_cli
from demo.detection import STATS
from demo.pipeline import DEMO_MODELS, QUICK_CONFIG

pytestmark = pytest.mark.slow


def _tables(report: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables of the report keyed by the ``## `` heading above them, as lists of {column: cell}."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in report.splitlines():
        if line.startswith("## "):
            heading, header = line[3:], None
        elif line.startswith("|") and header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif re.fullmatch(r"\|[-:|]+\|", line):  # the alignment row
            continue
        elif line.startswith("|"):
            tables.setdefault(heading, []).append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
        else:
            header = None if not line.startswith("|") else header
    return tables


def _number(cell: str) -> float:
    """A table cell's number: ``12.3``, ``4.55M``, or the mean of ``12.3 ± 0.4``."""
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)(?:M| ± \d+(?:\.\d+)?)?", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("demo"), tmp_path_factory.mktemp("cache")
    argv = ["demo", "--quick", "--out", str(out), "--cache", str(cache), "--device", "cpu", "--no-progress"]
    assert eval_cli.main(argv) == 0
    return out, argv


def test_quick_demo_report_tables_are_filled_and_in_range(demo_run):
    out, _ = demo_run
    report = (out / "report.md").read_text()
    assert "demo numbers on generated data" in report
    assert report.splitlines()[2].startswith("> **--quick smoke run**")  # said at the top, before any number
    assert "*Reproduce the paper*" in report  # the real-data commands live in the README, once
    tables = _tables(report)
    labels = [label for label, _, _ in DEMO_MODELS]
    headings = [line[3:] for line in report.splitlines() if line.startswith("## ")]
    assert [h.split(".")[0] for h in headings] == [str(k) for k in range(1, len(headings) + 1)]  # numbered 1, 2, ...
    models = next(rows for head, rows in tables.items() if head.startswith("2. Models"))
    robust = next(rows for head, rows in tables.items() if head.startswith("3. Robustness"))
    detect = next(rows for head, rows in tables.items() if head.startswith("5. Detection"))
    for rows in (models, robust, detect[:len(labels)]):
        assert [next(iter(r.values())) for r in rows] == labels
    per_seed = detect[len(labels):]  # the per-seed table follows the mean table under the same heading
    assert [(r["Backbone"], r["Seed"]) for r in per_seed] == [(label, "0") for label in labels]
    for row in models:
        assert 1 < _number(row["Params"]) < 10  # tiny models, millions of parameters
        assert 1 < _number(row["MACs @64px"]) < 1000  # millions of multiply-adds at 64 px
        assert 0 <= _number(row["Val top-1"]) <= _number(row["Val top-5"]) <= 100
    for row in robust:
        assert {"FGSM", "PGD", "AutoAttack", "Clean ECE", "Corruption ECE"} <= set(row)
        for column, cell in list(row.items())[1:]:
            if column == "AutoAttack" and cell == "not run":  # torchattacks (an optional extra) not installed
                continue
            value = _number(cell)  # relative mCE may be < 0: a near-chance model can err less when corrupted
            assert column == "Relative mCE" or (value >= 0 and (value <= 100 or column.startswith("mCE"))), (column, cell)
        # PGD's random start may turn one of the 40 val images of a near-chance --quick model right
        one_image = 100 / (QUICK_CONFIG.classification.num_classes * QUICK_CONFIG.classification.val_per_class)
        assert _number(row["PGD"]) <= _number(row["Clean"]) + one_image + 1e-6
    for row in detect[:len(labels)]:
        assert 0 <= _number(row["AP"]) <= _number(row["AP50"]) <= 100 and _number(row["AP75"]) <= _number(row["AP50"])
        assert _number(row["FPS"]) > 0
        for column in ("APs", "APm", "APl"):  # "–": no val object of that COCO size bucket (COCOeval's -1)
            assert row[column] == "–" or 0 <= _number(row[column]) <= 100, (column, row[column])
    for plot in ("training_curves", "robustness", "corruption_severity", "detection_curves", "detection_examples"):
        assert (out / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "one seed per backbone" in report and "not measured against seed-to-seed variation" in report
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["robustness"]) == set(labels) == set(summary["detection"])
    for label, row in zip(labels, detect):
        seed0 = summary["detection"][label]["seeds"]["0"]
        assert f"{seed0['AP']:.1f}" == row["AP"] and summary["detection"][label]["over_seeds"]["AP"]["spread"] == 0
        assert [c["epoch"] for c in seed0["curve"]] == [1]
    assert "## 6. Detection under corruption (COCO-C style)" in report
    assert "cannot be compared with the paper's mCE" in report and "--imagenet-v2" in report
    for label in labels:  # mPC / rPC recomputed from the per-cell records COCO-C wrote
        result = summary["coco_c"][label]
        cells = json.loads((Path(result["out"]) / "coco_c.json").read_text())
        assert result["clean_ap"] == cells["clean_ap"] and result["mpc"] == cells["mpc"]


def test_rerun_reuses_finished_stages(demo_run, capsys):
    out, argv = demo_run
    before = (out / "stages.json").read_text()
    assert eval_cli.main(argv) == 0
    printed = capsys.readouterr().out
    stages = len(json.loads(before)["stages"])
    assert printed.count("already done") == stages and f"resuming {out}: {stages} of {stages} stages finished" in printed
    assert str(out / "report.md") in printed
    assert json.loads((out / "stages.json").read_text()) == json.loads(before)
    tables = _tables((out / "report.md").read_text())
    models = next(rows for head, rows in tables.items() if head.startswith("2. Models"))
    detect = next(rows for head, rows in tables.items() if head.startswith("5. Detection"))
    coco_c = tables["6. Detection under corruption (COCO-C style)"]
    for label, m, d, c in zip([label for label, _, _ in DEMO_MODELS], models, detect, coco_c):  # terminal = report
        assert f"{label}: val top-1 {m['Val top-1']}  top-5 {m['Val top-5']}" in printed
        assert f"{label} detector seed 0: " + "  ".join(f"{k} {d[k]}" for k in STATS) in printed
        assert f"{label} COCO-C: clean AP {c['Clean AP']}  mPC {c['mPC']}  rPC {c['rPC %']} %" in printed


def test_output_folder_of_another_configuration_is_refused(demo_run, capsys):
    out, argv = demo_run
    before = (out / "stages.json").read_text()
    assert eval_cli.main([a for a in argv if a != "--quick"]) == 2  # the default preset into the --quick run's folder
    err = capsys.readouterr().err
    assert "holds a demo run with other options (config, preset differ)" in err and "--overwrite" in err
    assert (out / "stages.json").read_text() == before
