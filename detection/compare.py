"""Side-by-side table (markdown) and AP-vs-epoch plot of several detection run folders."""
from __future__ import annotations

import json
from pathlib import Path

from common.io import atomic_write_text, read_jsonl
from common.run import open_run
from common.tables import fmt, markdown_table

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
FILES = ("compare.md", "compare_ap.png")


def _load(run_dir: Path) -> dict:
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a detection run folder (no run.json)")
    try:
        run = json.loads(run_file.read_text())
    except ValueError:
        raise ValueError(f"{run_file} is corrupt (not JSON): run `detection train` for {run_dir} again") from None
    eval_file = run_dir / "eval.json"
    run["eval"] = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
    run["log"] = list(read_jsonl(run_dir / "log.jsonl")) if (run_dir / "log.jsonl").is_file() else []
    return run


def _row(path: Path, run: dict) -> list[str]:
    ev = run["eval"]
    size = "×".join(str(s) for s in run.get("gflops_size", []))
    return [path.name, run["arch"], run["backbone"], fmt(run["params"] / 1e6), f"{fmt(run['gflops'], 2)} ({size})",
            fmt(ev.get("fps")), *(fmt(100 * ev[k] if k in ev else None, missing_below=0) for k in COLUMNS)]


def compare_runs(run_dirs: list[str], out: str | None = None) -> str:
    """Markdown table (arch, backbone, params, GFLOPs at the run's size, FPS, AP…) like the paper's;
    with ``out``, writes ``out/compare.md`` and ``out/compare_ap.png`` (val AP per epoch), rewritten when
    the command runs again."""
    if not run_dirs:
        raise ValueError("no run folders given")
    options = {"runs": [str(Path(d).resolve()) for d in run_dirs]}
    out_dir = open_run(out, "detection-compare", options, files=FILES, compatible=lambda old, new: True).path if out else None
    runs = [(Path(d), _load(Path(d))) for d in run_dirs]
    header = ["run", "arch", "backbone", "params (M)", "GFLOPs (size)", "FPS", *COLUMNS]
    table = markdown_table(header, [_row(path, run) for path, run in runs], align="lll" + "r" * (len(header) - 3)) + "\n"
    if out_dir is not None:
        atomic_write_text(out_dir / "compare.md", table)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for path, run in runs:
            points = [(r["epoch"], 100 * r["AP"]) for r in run["log"] if "AP" in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{path.name} ({run['backbone']})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val AP")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "compare_ap.png", dpi=120)
        plt.close(fig)
    return table
