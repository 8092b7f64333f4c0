"""Side-by-side table (markdown) and AP-vs-epoch plot of several detection run folders."""
from __future__ import annotations

import json
from pathlib import Path

from common.io import atomic_write_text, read_jsonl
from common.rundir import claim

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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


def compare_runs(run_dirs: list[str], out: str | None = None) -> str:
    """Markdown table (arch, backbone, params, GFLOPs at the run's size, FPS, AP…) like the paper's;
    with ``out``, writes ``out/compare.md`` and ``out/compare_ap.png`` (val AP per epoch)."""
    if not run_dirs:
        raise ValueError("no run folders given")
    out_dir = claim(out, "detection-compare", {"runs": [str(Path(d).resolve()) for d in run_dirs]}) if out else None
    runs = [(Path(d), _load(Path(d))) for d in run_dirs]
    lines = ["| run | arch | backbone | params (M) | GFLOPs (size) | FPS | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(COLUMNS)]
    for path, run in runs:
        ev = run["eval"]
        metrics = " | ".join(f"{100 * ev[k]:.1f}" if ev.get(k, -1) >= 0 else "–" for k in COLUMNS)
        size = "×".join(str(s) for s in run.get("gflops_size", []))
        fps = f"{ev['fps']:.1f}" if "fps" in ev else "–"
        lines.append(f"| {path.name} | {run['arch']} | {run['backbone']} | {run['params'] / 1e6:.1f} | "
                     f"{run['gflops']:.2f} ({size}) | {fps} | {metrics} |")
    table = "\n".join(lines) + "\n"
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
