"""The IN-9 part of the robustness report: a table of variant accuracies, BG-gap and the challenge, and a plot."""
from __future__ import annotations

from pathlib import Path

from common.tables import fmt, markdown_table
from robustness.background import layout
from robustness.background.evaluate import CHALLENGE, DATASET, in9_summary


def in9_report_lines(records: list[dict], labels: list[str]) -> list[str]:
    """Markdown lines of the IN-9 section (empty when no IN-9 cell was run)."""
    mine = [r for r in records if r["dataset"] == DATASET]
    if not mine:
        return []
    variants = [v for v in layout.VARIANTS if any(r["variant"] == v for r in mine)]
    rows, limits = [], set()
    for label in labels:
        s = in9_summary(mine, label)
        challenge = next((r for r in mine if r["model"] == label and r["variant"] == CHALLENGE), None)
        extra = ["–", "–"]
        if challenge:
            c = challenge["challenge"]
            lo, hi = c["reference_passes_min"], c["reference_passes_max"]
            extra = [f"{challenge['top1_correct']}/{challenge['n']}",
                     f"{c['forward_passes']} ({lo}{'' if lo == hi else f'–{hi}'})"]
            limits.add(c.get("limit_per_class"))
        rows.append([label, *(fmt(s[f"in9_{v}_top1"], 2) for v in variants), fmt(s["bg_gap"], 2),
                     fmt(s["bgc_top1"], 2), *extra])
    header = ["Model", *variants, "BG-gap", "BGC", "BGC foregrounds", "forward passes (authors' loop)"]
    lines = ["", "## ImageNet-9 backgrounds (Xiao et al. 2021): top-1 %", "", markdown_table(header, rows)]
    lines += ["", "Top-1 after mapping the model's classes to IN-9 (the authors' in_to_in9.json; classes outside "
              "IN-9 are wrong). BG-gap = mixed_same − mixed_rand (points). BGC: share of foregrounds classified "
              "right on every only_bg_t background (exact; forward passes of our batched search, in brackets the "
              "authors' one-foreground loop's count or its bounds)."]
    limits.discard(None)
    if limits:
        lines += ["", f"**Quick estimate**: the challenge ran on only the first {', '.join(map(str, sorted(limits)))} "
                  "foregrounds of each class (--in9-challenge-limit), not the full 4,050: not comparable with "
                  "published BGC numbers."]
    return lines


def plot_in9(records: list[dict], labels: list[str], out_dir: Path) -> Path | None:
    """``plots/in9.png``: grouped bars of each model's IN-9 variant accuracies and BGC (None without IN-9 cells)."""
    mine = [r for r in records if r["dataset"] == DATASET and r["top1"] is not None]
    if not mine:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = [v for v in (*layout.VARIANTS, CHALLENGE) if any(r["variant"] == v for r in mine)]
    fig, ax = plt.subplots(figsize=(1.1 * len(ticks) + 2, 3.6))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = {r["variant"]: r["top1"] for r in mine if r["model"] == label}
        ax.bar([t + i * width for t in range(len(ticks))], [values.get(v, 0.0) for v in ticks], width, label=label)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(ticks))], [t.replace("bg_challenge", "BGC") for t in ticks],
                  rotation=30, fontsize=8)
    ax.set(ylabel="top-1 %", title="ImageNet-9 backgrounds", ylim=(0, 100))
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "plots" / "in9.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
