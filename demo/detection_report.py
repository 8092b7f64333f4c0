"""The detection section of the demo report: table over seeds, training curves, example predictions, wording.

Inputs are the results of :func:`demo.detection.train_demo_detector` per backbone label and seed;
nothing here trains. The wording is derived from the numbers: two backbones whose AP ranges over
the seeds overlap are called indistinguishable on this set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.tables import fmt, markdown_table
from demo.detection import RECIPE_WHY, STATS, DetectionRecipe, seed_summary

SCORE_THRESHOLD = 0.3  # predictions drawn in the example figure (Deformable DETR's sigmoid scores)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cell(stat: dict[str, float | None]) -> str:
    """``mean ± half-range`` over seeds ("–" where COCOeval had no object of that size)."""
    if stat["mean"] is None:
        return fmt(None)
    return fmt(stat["mean"]) + (f" ± {fmt(stat['spread'] / 2)}" if stat["spread"] else "")


def compare_backbones(summaries: dict[str, dict[str, dict]], seeds: int) -> str:
    """One sentence on AP between the backbones that claims no more than the seed ranges show."""
    (a, sa), (b, sb) = list(summaries.items())[:2]
    ap_a, ap_b = sa["AP"], sb["AP"]
    if ap_a["mean"] is None or ap_b["mean"] is None:
        return "No AP to compare."
    if seeds < 2:
        return (f"{a} {ap_a['mean']:.1f} vs {b} {ap_b['mean']:.1f} AP from one seed each: the difference is not "
                "measured against seed-to-seed variation, so it shows no ranking of the backbones.")
    if ap_a["min"] <= ap_b["max"] and ap_b["min"] <= ap_a["max"]:
        return (f"{a} and {b} are indistinguishable here: their AP ranges over {seeds} seeds overlap "
                f"({ap_a['min']:.1f}–{ap_a['max']:.1f} vs {ap_b['min']:.1f}–{ap_b['max']:.1f}).")
    hi, lo = (a, b) if ap_a["mean"] > ap_b["mean"] else (b, a)
    return (f"{hi} is ahead of {lo} on every seed here (AP {_range(summaries[hi]['AP'])} vs "
            f"{_range(summaries[lo]['AP'])} over {seeds} seeds); {seeds} seeds on a generated set is a small sample, "
            "so this says nothing about the backbones at COCO scale.")


def _range(stat: dict) -> str:
    return f"{stat['min']:.1f}–{stat['max']:.1f}"


def plot_detection_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Training loss and val AP per epoch, one colour per backbone, one line style per seed."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, (loss_ax, ap_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for colour, (label, seed_runs) in zip(("tab:blue", "tab:orange", "tab:green"), runs.items()):
        for style, run in zip(("-", "--", ":"), seed_runs):
            curve = run["curve"]
            name = f"{label} seed {run['seed']}"
            loss_ax.plot([c["epoch"] for c in curve], [c["loss"] for c in curve], style, marker=".", color=colour,
                         label=name)
            evaluated = [c for c in curve if c["AP"] is not None]
            ap_ax.plot([c["epoch"] for c in evaluated], [c["AP"] for c in evaluated], style, marker="o",
                       color=colour, label=name)
    loss_ax.set(xlabel="epoch", ylabel="train loss (weighted sum)", title="Detector training loss")
    ap_ax.set(xlabel="epoch", ylabel="val AP %", title="Val AP (COCOeval)", ylim=(0, 100))
    for ax in (loss_ax, ap_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ap_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside the data
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def predict_examples(checkpoint: str, data_root: str | Path, img_size: int, count: int) -> list[dict[str, Any]]:
    """The first ``count`` val images with ground truth and the detector's predictions.

    Returns per image ``image`` (H, W, 3) float in [0, 1], ``gt``/``pred`` boxes (n, 4) absolute
    xyxy pixels, ``gt_labels``/``pred_labels`` category names, ``scores`` (predictions with score
    ≥ ``SCORE_THRESHOLD``).
    """
    from detection.data import CocoDetection, coco_paths, collate, make_transforms
    from detection.load import load_detector
    from torchvision.ops import box_convert

    loaded = load_detector(checkpoint)
    paths = coco_paths(data_root)
    dataset = CocoDetection(paths["val_ann"], paths["val_images"],
                            make_transforms(False, scales=[img_size], max_size=2 * img_size, test_size=img_size))
    images, mask, targets = collate([dataset[i] for i in range(min(count, len(dataset)))])
    sizes = torch.stack([t["orig_size"] for t in targets])
    with torch.no_grad():
        results = loaded.postprocessor(loaded.model(images, mask), sizes)
    names = dataset.category_names
    examples = []
    for image, target, result in zip(images, targets, results):
        h, w = target["size"].tolist()
        keep = result["scores"] >= SCORE_THRESHOLD
        examples.append({
            "image": image[:, :h, :w].permute(1, 2, 0).numpy(),
            "gt": box_convert(target["boxes"] * torch.tensor([w, h, w, h]), "cxcywh", "xyxy").numpy(),
            "gt_labels": [names[i] for i in target["labels"].tolist()],
            "pred": box_convert(result["boxes"][keep], "xywh", "xyxy").numpy(),
            "pred_labels": [names[i] for i in result["labels"][keep].tolist()],
            "scores": result["scores"][keep].tolist()})
    return examples


def plot_detection_examples(examples: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """One row per backbone, one column per val image: ground truth green, predictions red with scores."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    count = max(len(v) for v in examples.values())
    fig, axes = plt.subplots(len(examples), count, figsize=(2.4 * count, 2.6 * len(examples)), squeeze=False)
    for row, (label, items) in zip(axes, examples.items()):
        for ax, item in zip(row, items):
            ax.imshow(item["image"])
            for (x0, y0, x1, y1), name in zip(item["gt"], item["gt_labels"]):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=2))
            for (x0, y0, x1, y1), name, score in zip(item["pred"], item["pred_labels"], item["scores"]):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", linewidth=1, linestyle="--"))
                ax.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=6, va="bottom",
                        bbox={"facecolor": "red", "alpha": 0.6, "pad": 1, "linewidth": 0})
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(label)
    fig.suptitle(f"Val images: ground truth (green), predictions with score ≥ {SCORE_THRESHOLD} (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def detection_summary(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Machine-readable detection results: per backbone ``seeds`` (per-seed stats) and ``over_seeds`` (mean/min/max/spread)."""
    return {label: {"seeds": {str(r["seed"]): {**{k: r.get(k) for k in (*STATS, "fps")}, "curve": r["curve"]} for r in seed_runs},
                    "over_seeds": seed_summary(seed_runs)} for label, seed_runs in runs.items()}


def detection_section(runs: dict[str, list[dict]], recipe: DetectionRecipe, spec, data_root: str, plots: Path,
                      device: str, quick: bool, number: int) -> list[str]:
    """Markdown lines of the report's detection section (section ``number``); writes ``detection_curves.png``
    and ``detection_examples.png`` into ``plots``."""
    seeds = min(len(r) for r in runs.values())
    summaries = {label: seed_summary(seed_runs) for label, seed_runs in runs.items()}
    lines = [f"## {number}. Detection (paper Table 5 style, COCO AP %)", "", RECIPE_WHY, ""]
    lines += markdown_table(["Backbone"] + list(STATS) + ["FPS"],
                            [[label] + [_cell(summaries[label][k]) for k in STATS]
                             + [fmt(sum(r["fps"] for r in seed_runs) / len(seed_runs))]
                             for label, seed_runs in runs.items()]).splitlines()
    seed_note = (f"mean ± half the range over {seeds} seeds (per-seed numbers below)" if seeds > 1 else
                 "one seed per backbone (the budget allowed no second one): no spread measured")
    lines += ["", f"AP in percent from pycocotools' COCOeval on the {spec.num_val} val images, held out from "
              f"training (the recipe was chosen on a separate tuning set); {seed_note}; – where no val object falls in that COCO size bucket. FPS: whole "
              f"detector incl. post-processing, batch {recipe.batch_size}, on {device}.", "",
              "**" + compare_backbones(summaries, seeds) + "**", ""]
    if quick:
        lines += ["*--quick: the detectors trained for a fraction of the recipe; these numbers are a smoke test.*", ""]
    lines += ["Per seed:", ""]
    lines += markdown_table(["Backbone", "Seed"] + list(STATS),
                            [[label, str(r["seed"])] + [fmt(r.get(k)) for k in STATS]
                             for label, seed_runs in runs.items() for r in seed_runs]).splitlines()
    lines += ["", "![detection curves](plots/detection_curves.png)", ""]
    plot_detection_curves(runs, plots / "detection_curves.png")
    examples = {label: predict_examples(seed_runs[0]["checkpoint"], data_root, spec.img_size, 4)
                for label, seed_runs in runs.items()}
    plot_detection_examples(examples, plots / "detection_examples.png")
    lines += [f"Example val predictions (seed {next(iter(runs.values()))[0]['seed']} of each backbone):", "",
              "![detection examples](plots/detection_examples.png)", ""]
    return lines
