"""Summaries, markdown tables and matplotlib plots (Agg backend) of robustness results.

Records are the runner's cells (accuracies in percent). Summary values are percentages: top-1/top-5
accuracies (ReaL: against the re-assessed label lists), shape bias and the shape/texture decision
fractions; ``mCE`` / ``relative_mCE`` are AlexNet-normalised corruption errors ×100 (Hendrycks &
Dietterich 2019, over the 15 ImageNet-C corruptions evaluated at all five severities);
``mean_corruption_error`` is the raw mean top-1 error over every corruption cell evaluated;
``clean_ece`` / ``corruption_ece`` the expected calibration error in percent (clean cell; mean over the
corruption cells evaluated), ``clean_nll`` / ``corruption_nll`` the NLL in nats (``robustness.calibration``).
"""
from __future__ import annotations

import json
from pathlib import Path

from common.io import atomic_write_text
from common.tables import fmt, markdown_table
from robustness import metrics, real_labels, shape_bias
from robustness.background.evaluate import DATASET as IN9
from robustness.background.evaluate import in9_summary
from robustness.background.report import in9_report_lines, plot_in9
from robustness.cells import CellRecord

SUMMARY_KEYS = ("clean_top1", "clean_top5", "mCE", "relative_mCE", "mean_corruption_error", "corruption_top1",
                "fgsm_top1", "pgd_top1", "autoattack_top1", "occlusion_top1", "occlusion_random_top1",
                "imagenet_a_top1", "imagenet_r_top1", "imagenet_v2_top1", "imagenet_sketch_top1", "real_top1", "real_top5",
                "shape_bias", "shape_fraction", "texture_fraction", "clean_ece", "clean_nll", "corruption_ece",
                "corruption_nll")
COLUMNS = (("Clean top-1", "clean_top1"), ("Clean top-5", "clean_top5"), ("Occlusion", "occlusion_top1"),
           ("Random patch", "occlusion_random_top1"), ("IN-A", "imagenet_a_top1"), ("IN-R", "imagenet_r_top1"),
           ("IN-V2", "imagenet_v2_top1"), ("IN-Sketch", "imagenet_sketch_top1"), ("ReaL", "real_top1"),
           ("Shape bias", "shape_bias"),
           ("BGC", "bgc_top1"), ("BG-gap", "bg_gap"), ("FGSM", "fgsm_top1"), ("PGD", "pgd_top1"),
           ("AutoAttack", "autoattack_top1"),
           ("Corruption top-1", "corruption_top1"), ("Mean corruption error (raw)", "mean_corruption_error"),
           ("mCE (AlexNet-norm.)", "mCE"), ("Relative mCE", "relative_mCE"),
           ("Clean ECE", "clean_ece"), ("Corruption ECE", "corruption_ece"))
ECE_NOTE = ("*ECE*: expected calibration error, % (15 equal-width bins of the top softmax probability; Guo et al., "
            "ICML 2017), lower is better; *Corruption ECE* is the mean over the corruption cells evaluated. "
            "NLL per cell and in the summary of results.json.")
DIGITS = 2  # the terminal summary prints the same digits


def _pick(records: list[CellRecord], dataset: str, variant: str = "clean") -> CellRecord | None:
    return next((r for r in records if r.key.dataset == dataset and r.key.variant == variant), None)


def corruption_table(records: list[CellRecord], label: str) -> dict[str, dict[int, float]]:
    """corruption → {severity: top-1 %} for one model."""
    table: dict[str, dict[int, float]] = {}
    for r in records:
        if r.key.model == label and r.key.dataset == "imagenet-c" and r.top1 is not None:
            table.setdefault(r.key.corruption, {})[r.key.severity] = r.top1
    return table


def summarize(records: list[CellRecord], labels: list[str]) -> dict[str, dict]:
    """Per model label: the headline numbers (None where not run); see the module doc for units."""
    return {label: _summary([r for r in records if r.key.model == label], label) for label in labels}


def _summary(mine: list[CellRecord], label: str) -> dict:
    def top1(dataset: str, variant: str = "clean") -> float | None:
        r = _pick(mine, dataset, variant)
        return r.top1 if r else None

    s = dict.fromkeys(SUMMARY_KEYS)
    clean = _pick(mine, "imagenet")
    if clean:
        s["clean_top1"], s["clean_top5"] = clean.top1, clean.top5
    table = corruption_table(mine, label)
    errors = {c: [1 - table[c][k] / 100 for k in sorted(table[c])] for c in table}
    full = {c: e for c, e in errors.items() if sorted(table[c]) == [1, 2, 3, 4, 5]}
    mce = metrics.mean_ce(metrics.corruption_errors(full))
    s["mCE"] = None if mce is None else 100 * mce
    if clean and clean.top1 is not None:
        rmce = metrics.mean_ce(metrics.relative_corruption_errors(full, 1 - clean.top1 / 100))
        s["relative_mCE"] = None if rmce is None else 100 * rmce
    mean_err = metrics.mean_corruption_error(errors)
    if mean_err is not None:
        s["mean_corruption_error"], s["corruption_top1"] = 100 * mean_err, 100 * (1 - mean_err)
    s.update(fgsm_top1=top1("imagenet", "fgsm"), pgd_top1=top1("imagenet", "pgd"),
             autoattack_top1=top1("imagenet", "autoattack"),
             occlusion_top1=top1("imagenet", "occlusion_center"),
             occlusion_random_top1=top1("imagenet", "occlusion_random"),
             imagenet_a_top1=top1("imagenet-a"), imagenet_r_top1=top1("imagenet-r"),
             imagenet_v2_top1=top1("imagenet-v2"), imagenet_sketch_top1=top1("imagenet-sketch"))
    real = _pick(mine, "imagenet", real_labels.VARIANT)
    if real:
        s["real_top1"], s["real_top5"] = real.top1, real.top5
    cue = _pick(mine, shape_bias.DATASET)
    if cue and cue.decisions:
        s.update(shape_bias.summary(cue.n, cue.decisions["shape"], cue.decisions["texture"]))
    s["mCE_corruptions"] = len([c for c in full if c in metrics.ALEXNET_ERRORS])
    s.update(calibration_summary(mine))
    if any(r.key.dataset == IN9 for r in mine):
        s.update(in9_summary([r.to_json() for r in mine], label))
    return s


def calibration_summary(mine: list[CellRecord]) -> dict[str, float | None]:
    """One model's clean ECE (%) / NLL and their means over its ImageNet-C cells (None when a cell lacks them)."""
    clean = _pick(mine, "imagenet")
    corrupted = [r for r in mine if r.key.dataset == "imagenet-c"]

    def mean(values: list[float | None]) -> float | None:
        return sum(values) / len(values) if values and None not in values else None

    return {"clean_ece": clean.ece if clean else None, "clean_nll": clean.nll if clean else None,
            "corruption_ece": mean([r.ece for r in corrupted]), "corruption_nll": mean([r.nll for r in corrupted])}


def provenance(options: dict) -> list[str]:
    """The report's first lines: what data and which weights the numbers come from."""
    lines = [f"**Data:** {options['data_used']}"] if options.get("data_used") else []
    for label, used in (options.get("weights_used") or {}).items():
        lines.append(f"**Weights of {label}:** {used}")
    return ["  \n".join(lines)] if lines else []


def geometry_lines(records: list[CellRecord]) -> list[str]:
    """Which pixels the cells' models saw (``robustness.geometry``): one line per geometry and the sets using it."""
    from robustness.geometry import text

    used: dict[str, set[str]] = {}
    for rec in records:
        described = (rec.options or {}).get("geometry")
        if described:
            used.setdefault(text(described), set()).add(rec.key.dataset)
    if not used:
        return []
    return ["**Pixels the models saw:**  ", *(f"- {', '.join(sorted(sets))}: {line}" for line, sets in used.items()), ""]


def comparison_table(summary: dict[str, dict], not_run: dict[str, str]) -> list[str]:
    """The paper-style table: a row per model, a column per number that was run (or that says "not run")."""
    shown_with = {"shape_bias": "shape_fraction"}  # no shape or texture decision: the column says "–"
    cols = [(t, k) for t, k in COLUMNS if k in not_run
            or any(s.get(shown_with.get(k, k)) is not None for s in summary.values())]
    cols = [(t, k) for t, k in cols if k != "relative_mCE" or any(s.get("mCE") is not None for s in summary.values())]
    rows = [[label, *("not run" if k in not_run else fmt(s.get(k), DIGITS) for _, k in cols)]
            for label, s in summary.items()]
    lines = [markdown_table(["Model", *(t for t, _ in cols)], rows)]
    if any(k.endswith("_ece") for _, k in cols):
        lines += ["", ECE_NOTE]
    reasons = sorted(set(not_run.values()))
    if reasons:
        lines += ["", "*not run*: " + "; ".join(reasons) + "."]
    return lines


def autoattack_note(records: list[CellRecord]) -> list[str]:
    """The note beside the AutoAttack column: its protocol, ball and how many images each model's cell has."""
    mine = [r for r in records if r.key.variant == "autoattack"]
    if not mine:
        return []
    o = mine[0].options or {}
    ball = f"{o.get('norm', 'Linf').replace('inf', '∞')} eps {o.get('eps', 0) * 255:.3g}/255"
    n = ", ".join(f"{r.key.model} {r.n}" for r in mine)
    return ["", f"*AutoAttack*: the standard version (Croce & Hein 2020; APGD-CE, APGD-T and FAB-T with 9 target "
            f"classes, Square with 5,000 queries, each on the images still correctly classified), {ball}; robust "
            f"accuracy on the images per model: {n}" + (f" (--attack-limit {o['attack_limit']}, evenly spaced)"
                                                       if o.get("attack_limit") else "") + "."]


def _corruption_section(records: list[CellRecord], label: str) -> list[str]:
    table = corruption_table(records, label)
    if not table:
        return []
    sevs = sorted({k for row in table.values() for k in row})
    ces = metrics.corruption_errors({c: [1 - row[k] / 100 for k in sorted(row)] for c, row in table.items()
                                     if sorted(row) == [1, 2, 3, 4, 5]})
    rows = [[c, *(fmt(row.get(k), DIGITS) for k in sevs), fmt(sum(row.values()) / len(row), DIGITS),
             fmt(None if ces.get(c) is None else 100 * ces[c], DIGITS)] for c, row in table.items()]
    return ["", f"## {label}: top-1 % per corruption and severity", "",
            markdown_table(["Corruption", *(f"s{k}" for k in sevs), "mean", "CE (AlexNet-norm.)"], rows)]


def markdown_report(records: list[CellRecord], summary: dict[str, dict], options: dict,
                    not_run: dict[str, str] | None = None) -> str:
    """The report: one comparison table (a row per model, like the paper's) + per-corruption tables."""
    lines = ["# Robustness report", "", *provenance(options), "",
             "Accuracies are top-1 % (higher is better). *Mean corruption error (raw)* is the plain top-1 error "
             "averaged over every corruption and severity evaluated; *mCE* and *relative mCE* are normalised by "
             "AlexNet's errors (Hendrycks & Dietterich 2019, ×100, lower is better) over the ImageNet-C "
             "corruptions evaluated at all five severities. Occlusion: centred square of half of each side "
             "(zero fill); random patch: one 25 %-area square. FGSM/PGD: L∞ eps "
             f"{options.get('eps', 0) * 255:.2g}/255, PGD {options.get('steps')} steps of {options.get('alpha', 0) * 255:.3g}/255.",
             "", *geometry_lines(records), *comparison_table(summary, not_run or {}), *autoattack_note(records)]
    partial = {label: s["mCE_corruptions"] for label, s in summary.items() if s.get("mCE") is not None
               and s["mCE_corruptions"] < len(metrics.ALEXNET_ERRORS)}
    if partial:
        lines += ["", f"Note: mCE over only {', '.join(f'{n} ({k})' for k, n in partial.items())} of the 15 "
                  "ImageNet-C corruptions: not comparable with published mCE."]
    for label in summary:
        lines += _corruption_section(records, label)
    lines += shape_bias.report_lines(records, list(summary))
    lines += in9_report_lines([r.to_json() for r in records], list(summary))
    n = sorted({r.n for r in records})
    skipped = sum(r.skipped for r in records)
    attacked = sorted({r.n for r in records if r.key.variant == "autoattack"})
    lines += ["", f"Images per cell: {', '.join(map(str, n))}"
              + (f" (AutoAttack cells: {', '.join(map(str, attacked))})" if attacked else "") + (f" ({skipped} unreadable images skipped over all "
              "cells, see results.json)." if skipped else "."), "", "Options:", "", "```json",
              json.dumps(options, indent=1), "```", ""]
    return "\n".join(lines)


def plot_severity(records: list[CellRecord], labels: list[str], out_dir: Path) -> list[Path]:
    """PNG plots of top-1 vs severity: one subplot per corruption with a line per model
    (``plots/accuracy_vs_severity.png``), and one figure per model with a line per corruption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {label: corruption_table(records, label) for label in labels}
    corruptions = list(dict.fromkeys(c for t in tables.values() for c in t))
    if not corruptions:
        return []
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    ncol = min(5, len(corruptions))
    nrow = -(-len(corruptions) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.6 * nrow), squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, corruptions):
        for label, t in tables.items():
            if c in t:
                sev = sorted(t[c])
                ax.plot(sev, [t[c][k] for k in sev], marker="o", label=label)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("severity")
    for ax in list(axes.flat)[len(corruptions):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("top-1 %")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(plot_dir / "accuracy_vs_severity.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    for label, t in tables.items():
        if not t:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for c, row in t.items():
            sev = sorted(row)
            ax.plot(sev, [row[k] for k in sev], marker="o", label=c)
        ax.set(title=f"{label}: top-1 vs severity", xlabel="severity", ylabel="top-1 %")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
        paths.append(plot_dir / f"severity_{safe}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_report(records: list[CellRecord], summary: dict[str, dict], out_dir: str | Path, options: dict,
                 not_run: dict[str, str] | None = None) -> Path:
    """Write ``report.md`` and the plots into ``out_dir``; returns the report path. ``not_run``: summary key →
    why that column has no number (shown as "not run")."""
    out_dir = Path(out_dir)
    plots = plot_severity(records, list(summary), out_dir)
    plots += [p for p in [plot_in9([r.to_json() for r in records], list(summary), out_dir)] if p]
    text = markdown_report(records, summary, options, not_run)
    if plots:
        text += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    atomic_write_text(out_dir / "report.md", text)
    return out_dir / "report.md"
