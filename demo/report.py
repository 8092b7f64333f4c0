"""The demo's ``report.md``: paper-style tables and PNG plots from the demo's stage results.

Every table here is built from results the suites wrote (the classifiers' logs, the robustness
runner's records and summary, the detectors' COCOeval stats); nothing is recomputed. The report
says on top that the numbers come from generated data, and ends with the commands that run the
same evaluation on ImageNet / COCO with the official checkpoints.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from common.io import atomic_write_text, read_jsonl
from common.tables import fmt, markdown_table
from demo.background import report_lines
from demo.detection import DetectionRecipe
from demo.detection_report import detection_section, detection_summary

ROBUSTNESS_COLUMNS = (("Clean", "clean_top1"), ("Occlusion (centre)", "occlusion_top1"),
                      ("Occlusion (random patch)", "occlusion_random_top1"), ("FGSM", "fgsm_top1"),
                      ("PGD", "pgd_top1"), ("Corruption top-1", "corruption_top1"),
                      ("mCE (AlexNet-norm.)", "mCE"), ("Relative mCE", "relative_mCE"))


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """``common.tables.markdown_table`` as report lines."""
    return markdown_table(header, rows).splitlines()


def model_cost(name: str, kwargs: dict, num_classes: int, img_size: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates incl. attention) of one model at ``img_size``, via ``pit.flops``."""
    import pit
    from pit.flops import count_macs

    model = pit.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs).eval()
    return sum(p.numel() for p in model.parameters()), count_macs(model, (3, img_size, img_size))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, path: Path) -> Path:
    """Legend, tight layout, write the PNG, free the figure."""
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_training_curves(classifiers: dict[str, dict], path: Path) -> Path:
    """Validation top-1 per epoch of each classifier (from its ``log.jsonl``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in classifiers.items():
        log = list(read_jsonl(Path(result["checkpoint"]).parent / "log.jsonl"))
        ax.plot([r["epoch"] + 1 for r in log], [r["top1"] for r in log], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="val top-1 %", title="Classifier training (synthetic set)")
    return _save(fig, ax, path)


def _grouped_bars(values: dict[str, list[float]], ticks: list[str], path: Path, width_in: float, **axes) -> Path:
    """One bar group per tick, one bar per model (``values``: model → a value per tick); ``axes`` → ``ax.set``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width_in, 3.5))
    width = 0.8 / max(1, len(values))
    for i, (label, ys) in enumerate(values.items()):
        ax.bar([j + i * width for j in range(len(ticks))], ys, width, label=label)
    ax.set_xticks([j + width * (len(values) - 1) / 2 for j in range(len(ticks))], ticks, fontsize=8)
    ax.set(**axes)
    return _save(fig, ax, path)


def plot_robustness_bars(summary: dict[str, dict], path: Path) -> Path:
    """Grouped bars: top-1 % of each model on clean, occluded, attacked and corrupted images."""
    cols = [(name, key) for name, key in ROBUSTNESS_COLUMNS if "mCE" not in name]
    values = {label: [s.get(k) or 0.0 for _, k in cols] for label, s in summary.items()}
    return _grouped_bars(values, [n.replace(" (", "\n(") for n, _ in cols], path, 8, ylabel="top-1 %",
                         ylim=(0, 100), title="Robustness (synthetic set)")


def plot_mean_severity(records: list[dict], labels: list[str], path: Path) -> Path:
    """Top-1 % averaged over all corruptions, against severity (0 = clean), one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label in labels:
        clean = [r["top1"] for r in records if r["model"] == label and r["dataset"] == "imagenet" and r["variant"] == "clean"]
        by_sev: dict[int, list[float]] = {}
        for r in records:
            if r["model"] == label and r["dataset"] == "imagenet-c" and r["top1"] is not None:
                by_sev.setdefault(r["severity"], []).append(r["top1"])
        xs = ([0] if clean else []) + sorted(by_sev)
        ys = clean[:1] + [sum(by_sev[s]) / len(by_sev[s]) for s in sorted(by_sev)]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xlabel="severity (0 = clean)", ylabel="top-1 % (mean over corruptions)", title="Common corruptions")
    return _save(fig, ax, path)


def recipe_text(recipe: DetectionRecipe, device: str) -> str:
    """One line describing the detector and its schedule on ``device``, e.g. for the report's setup list."""
    kw = recipe.model_kwargs
    drop = f", lr ×0.1 after epoch {recipe.lr_drop}" if recipe.lr_drop and recipe.lr_drop < recipe.epochs else ""
    return (f"`{recipe.arch}` detector (hidden {kw.get('hidden_dim')}, {kw.get('enc_layers')} encoder / "
            f"{kw.get('dec_layers')} decoder layers, {kw.get('num_queries')} queries), {recipe.epochs} epoch(s) at "
            f"batch {recipe.batch_size}, AdamW lr {recipe.lr:g} (backbone {recipe.lr_backbone:g}){drop}, "
            f"{'DETR augmentation' if recipe.augment else 'no augmentation'}, "
            f"{'autocast (bfloat16 on CPU)' if recipe.uses_amp(device) else 'fp32'}, {len(recipe.seeds)} seed(s) per backbone")


def _setup_lines(config, models, data: dict, device: str, quick: bool) -> list[str]:
    """The report's title, its warnings and the *Setup* list."""
    cls_spec, det_spec = config.classification, config.detection
    n_val = cls_spec.num_classes * cls_spec.val_per_class
    return [
        "# PiT vs DeiT: demo report" + (" (--quick)" if quick else ""), "",
        *(["> **--quick smoke run**: every stage ran on a handful of images for an epoch or two, to check that the "
           "suite works end to end. The numbers below mean nothing; run `python eval.py demo` (no --quick) for "
           "the demo's results.", ""] if quick else []),
        "> **These are demo numbers on generated data**, from tiny models trained for minutes on a CPU. "
        "They show that every stage of the suite runs end to end (data → training → robustness → detection → "
        "report); they are *not* the paper's results and say little about PiT vs DeiT at scale. "
        "The README's *Reproduce the paper* section runs the same evaluation on ImageNet / COCO.", "",
        "## Setup", "",
        f"- Classification data: {cls_spec.num_classes} classes (object shape × texture on textured backgrounds), "
        f"{cls_spec.num_classes * cls_spec.train_per_class} train / {n_val} val images, {cls_spec.img_size} px, "
        f"ImageFolder with wnid-style folders: `{data['classification']}`.",
        f"- Detection data: COCO-format, {det_spec.num_train} train / {det_spec.num_val} val images of "
        f"{det_spec.img_size} px, 1–{det_spec.max_objects} whole objects each from the classification world (radius "
        f"{det_spec.radius[0] * det_spec.img_size:.0f}–{det_spec.radius[1] * det_spec.img_size:.0f} px), 5 shape "
        f"categories with non-contiguous ids: `{data['detection']}`.",
        "- Models: " + ", ".join(f"{label} = `{name}`" + (f" with {kw}" if kw else "") for label, name, kw in models)
        + f", trained from scratch at {config.img_size} px for {config.epochs} epochs (AdamW, cosine schedule, "
        "label smoothing; `python eval.py train-classifier`). "
        + ("Both at full depth and width: the matched-cost pair of the paper's Table 1." if not any(kw for _, _, kw in models)
           else "Depth/width reduced through the kwargs shown, to fit the time budget, keeping the pair's costs matched."),
        f"- Robustness: the 15 ImageNet-C corruptions generated on the fly at severities "
        f"{', '.join(map(str, config.severities))}; centre and random-patch occlusion; FGSM and PGD-{config.pgd_steps} "
        f"at ε = {config.eps * 255:.0f}/255.",
        f"- Detection: {recipe_text(config.detector, device)}; backbones initialised from the classifiers above; "
        "COCOeval (pycocotools). Why this recipe: `demo/detection.py`.",
        f"- Device: {device}; torch {torch.__version__}; {torch.get_num_threads()} threads; {platform.platform()}.", "",
    ]


def _models_section(config, models, classifiers: dict[str, dict], plots: Path) -> list[str]:
    """Section 1: parameters, MACs and val accuracy of the two classifiers, with their training curves."""
    cls_spec = config.classification
    rows = []
    for label, name, kwargs in models:
        c = classifiers[label]
        params, macs = model_cost(name, kwargs, cls_spec.num_classes, config.img_size)
        rows.append([label, f"`{name}`", f"{params / 1e6:.2f}M", f"{macs / 1e6:.1f}M", fmt(c["top1"]), fmt(c["top5"])])
    plot_training_curves(classifiers, plots / "training_curves.png")
    return (["## 1. Models (paper Table 1 style)", ""]
            + _table(["Model", "Name", "Params", f"MACs @{config.img_size}px", "Val top-1", "Val top-5"], rows)
            + ["", "![training curves](plots/training_curves.png)", ""])


def _robustness_section(config, labels: list[str], robustness: dict, plots: Path) -> list[str]:
    """Section 2: the paper-style robustness table and plots."""
    summary = robustness["summary"]
    lines = ["## 2. Robustness (paper Table 6 style, top-1 %)", ""]
    lines += _table(["Model"] + [n for n, _ in ROBUSTNESS_COLUMNS],
                    [[label] + [fmt(summary[label].get(k)) for _, k in ROBUSTNESS_COLUMNS] for label in labels])
    if len(config.severities) < 5:
        lines += ["", f"Only severities {list(config.severities)} were run (--quick): the mCE columns average fewer "
                  "severities than ImageNet-C's protocol."]
    lines += ["", "*Corruption top-1* averages every corruption and severity; *mCE* normalises each corruption's "
              "error by AlexNet's ImageNet-C error, so on this synthetic set it is only a relative score between the "
              "two models (lower is better).", "",
              "Per-corruption and per-severity tables and plots: [robustness/report.md](robustness/report.md).", "",
              "![robustness](plots/robustness.png)", "", "![severity](plots/corruption_severity.png)", "",
              "![per corruption](robustness/plots/accuracy_vs_severity.png)", ""]
    plot_robustness_bars(summary, plots / "robustness.png")
    plot_mean_severity(robustness["records"], labels, plots / "corruption_severity.png")
    return lines


def _coco_c_section(config, coco_c: dict[str, dict]) -> list[str]:
    """Detection under corruption: clean AP, mPC and rPC of each backbone's detector (seed 0)."""
    cells = len(config.coco_c_corruptions) * len(config.coco_c_severities)
    rows = [[label, fmt(100 * r["clean_ap"]), fmt(100 * r["mpc"]), fmt(100 * r["rpc"] if r["rpc"] is not None else None)]
            for label, r in coco_c.items()]
    return (["## Detection under corruption (COCO-C style)", ""]
            + _table(["Backbone", "Clean AP", "mPC", "rPC %"], rows)
            + ["", f"The val split corrupted on the fly at its native size before the detector's resize: "
               f"{', '.join(config.coco_c_corruptions)} at severity {', '.join(map(str, config.coco_c_severities))} "
               f"({cells} cells; COCO-C's protocol is 15 corruptions × 5 severities, `eval.py detection eval "
               "--corruptions all`). mPC = mean AP over the cells, rPC = mPC / clean AP (Michaelis et al. 2019). "
               "Clean AP is the final detector evaluated in fp32; the detection table above is the training run's last "
               "evaluation, under autocast where the recipe used it, so the two can differ slightly. "
               "Per-cell tables: `coco_c/`.", ""])


def _closing_lines(stage_seconds: dict[str, float], wall_seconds: float) -> list[str]:
    """Time per stage and where the raw results are."""
    return (["## Time per stage", ""] + _table(["Stage", "Seconds"], [[n, f"{s:.0f}"] for n, s in stage_seconds.items()])
            + ["", f"Sum of the stages: {sum(stage_seconds.values()):.0f} s. Wall time of this invocation: "
               f"{wall_seconds:.0f} s (finished stages are reused on a re-run).", "",
               "The same evaluation on ImageNet / COCO with the official checkpoints: the README's *Reproduce the "
               "paper* section (nothing is downloaded by the suite).", "",
               "Stage results of this run: `stages.json`; raw robustness records: `robustness/results.json`; "
               "detector checkpoints, logs and COCOeval stats: `detection/<model>-seed<k>/`; machine-readable "
               "numbers: `summary.json`.", ""])


def write_demo_report(out: Path, *, config, models, data: dict, classifiers: dict[str, dict], robustness: dict,
                      backgrounds: list[dict], detection: dict[str, list[dict]], coco_c: dict[str, dict],
                      stage_seconds: dict[str, float], wall_seconds: float, device: str, quick: bool) -> Path:
    """Write ``out/report.md``, ``out/summary.json`` and ``out/plots/*.png``; returns the report path."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    labels = [label for label, _, _ in models]
    lines = _setup_lines(config, models, data, device, quick)
    lines += _models_section(config, models, classifiers, plots)
    lines += _robustness_section(config, labels, robustness, plots)
    lines += report_lines(backgrounds, config.in9_per_class)
    lines += detection_section(detection, config.detector, config.detection, data["detection"], plots, device, quick)
    lines += _coco_c_section(config, coco_c)
    lines += _closing_lines(stage_seconds, wall_seconds)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "summary.json", json.dumps({"classifiers": classifiers, "robustness": robustness["summary"],
                                                        "background_challenge": backgrounds,
                                                        "detection": detection_summary(detection), "coco_c": coco_c,
                                                        "stage_seconds": stage_seconds}, indent=2) + "\n")
    return path
