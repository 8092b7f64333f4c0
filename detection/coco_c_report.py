"""COCO-C results as markdown (clean AP, mPC, rPC, corruption × severity AP table), a plot of AP vs
severity per corruption, and a comparison table of several detectors. AP values come in [0, 1] and
are shown in % like the benchmark paper."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from common.io import atomic_write_text
from common.tables import fmt, markdown_table
from detection.coco_c_cells import CellKey, cell_ap

PLOT_FILE = "coco_c_ap.png"


def pct(value: float | None) -> str:
    """An AP in [0, 1] as a percentage with one decimal; "–" when missing or COCO's -1 (no such objects)."""
    return fmt(None if value is None else 100 * value, missing_below=0)


def cell_table(result: dict, names: Sequence[str], severities: Sequence[int]) -> str:
    """Markdown: one row per corruption, one column per severity, and the corruption's mean AP."""
    ap = cell_ap(result["cells"])
    per = result.get("corruption_ap") or {}
    rows = [[name, *(pct(ap.get(CellKey(name, s))) for s in severities), pct(per.get(name))] for name in names]
    return markdown_table(["corruption", *(f"s{s}" for s in severities), "mean"], rows) + "\n"


def write_report(out: str | Path, result: dict, names: Sequence[str], severities: Sequence[int]) -> None:
    """``out/report.md`` and ``out/coco_c_ap.png`` of one checkpoint's COCO-C result."""
    out = Path(out)
    cells = len(names) * len(severities)
    head = [f"# COCO-C: {result.get('label') or result['checkpoint']}", "", f"checkpoint `{result['checkpoint']}`", "",
            f"clean AP **{pct(result.get('clean_ap'))}** · mPC **{pct(result.get('mpc'))}** · "
            f"rPC **{pct(result.get('rpc'))} %** (mPC over {cells} cells: {len(names)} corruptions × severities "
            f"{', '.join(map(str, severities))}; the benchmark's mPC uses all 15 × 5), seed {result['options']['seed']}.",
            "", "AP (%) per corruption and severity:", ""]
    atomic_write_text(out / "report.md", "\n".join(head) + "\n" + cell_table(result, names, severities) +
                      f"\n![AP vs severity]({PLOT_FILE})\n")
    plot_ap(out / PLOT_FILE, result, names, severities)


def plot_ap(path: Path, result: dict, names: Sequence[str], severities: Sequence[int]) -> None:
    """AP vs severity, one line per corruption, the clean AP as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = cell_ap(result["cells"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab20").colors
    for k, name in enumerate(names):
        ax.plot(severities, [100 * ap.get(CellKey(name, s), float("nan")) for s in severities], marker="os^Dv"[k % 5],
                color=colors[k % len(colors)], label=name)
    if result.get("clean_ap") is not None:
        ax.axhline(100 * result["clean_ap"], color="black", linestyle="--", label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("AP (%)")
    ax.set_xticks(list(severities))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_table(runs: dict[str, dict], names: Sequence[str], severities: Sequence[int]) -> str:
    """Markdown: clean AP, mPC, rPC and mean AP per corruption, one row per detector (named by its run)."""
    rows = [[tag, pct(run.get("clean_ap")), pct(run.get("mpc")), pct(run.get("rpc")),
             *(pct((run.get("corruption_ap") or {}).get(n)) for n in names)] for tag, run in runs.items()]
    table = markdown_table(["detector", "clean AP", "mPC", "rPC (%)", *names], rows)
    return f"COCO-C over {len(names)} corruptions × severities {', '.join(map(str, severities))}\n\n{table}\n"
