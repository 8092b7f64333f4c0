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
from demo.classifier import CLASSIFIER_WHY, ClassifierRecipe
from demo.detection import DetectionRecipe
from demo.detection_report import detection_section, detection_summary

ROBUSTNESS_COLUMNS = (("Clean", "clean_top1"), ("Occlusion (centre)", "occlusion_top1"),
                      ("Occlusion (random patch)", "occlusion_random_top1"), ("FGSM", "fgsm_top1"),
                      ("PGD", "pgd_top1"), ("AutoAttack", "autoattack_top1"), ("Corruption top-1", "corruption_top1"),
                      ("mCE (AlexNet-norm.)", "mCE"), ("Relative mCE", "relative_mCE"), ("Clean ECE", "clean_ece"),
                      ("Corruption ECE", "corruption_ece"))
ACCURACY_COLUMNS = tuple((n, k) for n, k in ROBUSTNESS_COLUMNS if k.endswith("_top1"))  # the bar plot's


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


def chance_line(ax, chance: float) -> None:
    """A dashed grey line at chance accuracy (percent), labelled in the legend."""
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.0f} %)")


def _save(fig, ax, path: Path) -> Path:
    """Legend outside the axes (right of them, so it covers no data), write the PNG, free the figure."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_training_curves(classifiers: dict[str, dict], chance: float, path: Path) -> Path:
    """Validation top-1 per epoch of each classifier (from its ``log.jsonl``), with the chance line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in classifiers.items():
        log = list(read_jsonl(Path(result["checkpoint"]).parent / "log.jsonl"))
        ax.plot([r["epoch"] + 1 for r in log], [r["top1"] for r in log], marker="o", label=label)
    chance_line(ax, chance)
    ax.set(xlabel="epoch", ylabel="val top-1 %", title="Classifier training (synthetic set)", ylim=(0, 100))
    return _save(fig, ax, path)


def _grouped_bars(values: dict[str, list[float]], ticks: list[str], path: Path, width_in: float, chance: float,
                  **axes) -> Path:
    """One bar group per tick, one bar per model (``values``: model → a value per tick), a chance line;
    ``axes`` → ``ax.set``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width_in, 3.5))
    width = 0.8 / max(1, len(values))
    for i, (label, ys) in enumerate(values.items()):
        ax.bar([j + i * width for j in range(len(ticks))], ys, width, label=label)
    ax.set_xticks([j + width * (len(values) - 1) / 2 for j in range(len(ticks))], ticks, fontsize=8)
    chance_line(ax, chance)
    ax.set(**axes)
    return _save(fig, ax, path)


def plot_robustness_bars(summary: dict[str, dict], chance: float, path: Path) -> Path:
    """Grouped bars: top-1 % of each model on clean, occluded, attacked and corrupted images (the columns run)."""
    cols = [(name, key) for name, key in ACCURACY_COLUMNS if any(s.get(key) is not None for s in summary.values())]
    values = {label: [s.get(k) or 0.0 for _, k in cols] for label, s in summary.items()}
    return _grouped_bars(values, [n.replace(" (", "\n(") for n, _ in cols], path, 8, chance, ylabel="top-1 %",
                         ylim=(0, 100), title="Robustness (synthetic set)")


def plot_mean_severity(records: list[dict], labels: list[str], chance: float, path: Path) -> Path:
    """Top-1 % averaged over all corruptions, against severity (0 = clean), one line per model, a chance line."""
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
    chance_line(ax, chance)
    ax.set(xlabel="severity (0 = clean)", ylabel="top-1 % (mean over corruptions)", title="Common corruptions",
           ylim=(0, 100))
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
    """The report's title, its warnings and section 1, *Setup*."""
    cls_spec, det_spec, rec = config.classification, config.detection, config.classifier
    n_val = cls_spec.num_classes * cls_spec.val_per_class
    attacks = f"FGSM and PGD-{config.pgd_steps} at ε = {config.eps * 255:g}/255" + (
        f"; AutoAttack (standard) on {config.autoattack_images} images per model" if config.autoattack_images else "")
    return [
        "# PiT vs DeiT: demo report" + (" (--quick)" if quick else ""), "",
        *(["> **--quick smoke run**: every stage ran on a handful of images for an epoch or two, to check that the "
           "suite works end to end. The numbers below mean nothing; run `python eval.py demo` (no --quick) for "
           "the demo's results.", ""] if quick else []),
        "> **These are demo numbers on generated data**, from tiny models trained for minutes on a CPU. "
        "They show that every stage of the suite runs end to end (data → training → robustness → detection → "
        "report); they are *not* the paper's results and say little about PiT vs DeiT at scale. "
        "The README's *Reproduce the paper* section runs the same evaluation on ImageNet / COCO.", "",
        "## 1. Setup", "",
        f"- Classification data: {cls_spec.num_classes} classes (object shape × texture on textured backgrounds), "
        f"{cls_spec.num_classes * cls_spec.train_per_class} train / {n_val} val images, {cls_spec.img_size} px, "
        f"ImageFolder with wnid-style folders: `{data['classification']}`.",
        f"- Detection data: COCO-format, {det_spec.num_train} train / {det_spec.num_val} val images of "
        f"{det_spec.img_size} px, 1–{det_spec.max_objects} whole objects each from the classification world (radius "
        f"{det_spec.radius[0] * det_spec.img_size:.0f}–{det_spec.radius[1] * det_spec.img_size:.0f} px), 5 shape "
        f"categories with non-contiguous ids: `{data['detection']}`.",
        "- Models: " + ", ".join(f"{label} = `{name}`" + (f" with {kw}" if kw else "") for label, name, kw in models)
        + f", trained from scratch with one recipe for both: {classifier_text(rec)} "
        "(`python eval.py train-classifier`). "
        + ("Both at full depth and width: the matched-cost pair of the paper's Table 1." if not any(kw for _, _, kw in models)
           else "Depth/width reduced through the kwargs shown, to fit the time budget, keeping the pair's costs matched."),
        f"- Robustness: the 15 ImageNet-C corruptions generated on the fly at severities "
        f"{', '.join(map(str, config.severities))}; centre and random-patch occlusion; {attacks}.",
        f"- Detection: {recipe_text(config.detector, device)}; backbones initialised from the classifiers above; "
        "COCOeval (pycocotools). Why this recipe: `demo/detection.py`.",
        f"- Device: {device}; torch {torch.__version__}; {torch.get_num_threads()} threads; {platform.platform()}.", "",
    ]


def classifier_text(recipe: ClassifierRecipe) -> str:
    """One line describing the classifiers' recipe."""
    return (f"{recipe.img_size} px, {recipe.epochs} epochs at batch {recipe.batch_size}, AdamW lr {recipe.lr:g} "
            f"(cosine, {recipe.warmup_epochs:g} warm-up epoch(s)), label smoothing 0.1, random-resized crop and flip, "
            "fp32, one seed per model")


def _models_section(config, models, classifiers: dict[str, dict], plots: Path) -> list[str]:
    """Section 2: parameters, MACs and val accuracy of the two classifiers, their recipe and training curves."""
    cls_spec = config.classification
    rows = []
    for label, name, kwargs in models:
        c = classifiers[label]
        params, macs = model_cost(name, kwargs, cls_spec.num_classes, config.img_size)
        rows.append([label, f"`{name}`", f"{params / 1e6:.2f}M", f"{macs / 1e6:.1f}M", fmt(c["top1"]), fmt(c["top5"])])
    plot_training_curves(classifiers, 100 / cls_spec.num_classes, plots / "training_curves.png")
    n_val = cls_spec.num_classes * cls_spec.val_per_class
    return (["## 2. Models (paper Table 1 style)", "", CLASSIFIER_WHY, ""]
            + _table(["Model", "Name", "Params", f"MACs @{config.img_size}px", "Val top-1", "Val top-5"], rows)
            + ["", f"Val top-1/top-5 in percent on the {n_val} held-out val images (chance: "
               f"{100 / cls_spec.num_classes:.0f} % top-1); MACs: multiply-accumulates of one forward pass, "
               "attention included. One training seed per model: the budget holds no second one, so the difference "
               "between the two rows is not measured against seed-to-seed variation and makes no ranking claim.", "",
               "![training curves](plots/training_curves.png)", ""])


def robustness_notes(config, summary: dict[str, dict], not_run: dict[str, str], n_images: int) -> list[str]:
    """What each less obvious column of the robustness table measures, in a newcomer's words."""
    alpha = 2.5 * config.eps / config.pgd_steps
    lines = [f"Top-1 % on the {n_images} val images unless said otherwise (one image = {100 / n_images:.1f} points).",
             "",
             "- *Occlusion*: a black square covering 25 % of the image, in the centre or at a random place.",
             f"- *FGSM*: every pixel moved by ε = {config.eps * 255:g}/255 (of the 0–255 range) in the direction that "
             f"raises the model's loss, in one step. *PGD*: {config.pgd_steps} smaller steps of {alpha * 255:.2g}/255 "
             "from a random point in the same ε-box, each re-aimed at the loss: the stronger, iterative attack, so "
             "its accuracy is normally below FGSM's; ε was chosen on the tuning split so that the two differ "
             "(docs/demo.md)."]
    if config.autoattack_images:
        lines.append(f"- *AutoAttack*: the standard AutoAttack (four attacks one after another, each on the images "
                     f"the earlier ones did not fool) at the same ε on {config.autoattack_images} evenly spaced "
                     f"val images per model (one image = {100 / config.autoattack_images:.0f} points, so only "
                     "large gaps mean anything). On the same images it is the strongest attack of the table (its "
                     "accuracy is at most PGD's); on so few images it cannot be compared with the PGD column, which "
                     "counts all the images above. Each image a model still classifies right after the first attack "
                     "costs all four attacks in full, which is why the demo runs so few.")
    lines += ["- *Corruption top-1*: the mean over the 15 ImageNet-C corruptions and their severities.",
              "- *mCE*: each corruption's error divided by AlexNet's error on the same ImageNet-C corruption, "
              "averaged (×100, lower is better). AlexNet was never run on this generated set, so the column cannot "
              "be compared with the paper's mCE: read it only as a relative score between the two models. *Relative "
              "mCE* does the same with the drop from clean error.",
              "- *Clean ECE* / *Corruption ECE*: expected calibration error in %: how far the model's confidence is "
              "from its accuracy (15 bins of the top softmax probability; lower is better), on clean images and "
              "averaged over the corruption cells; NLL per cell in robustness/results.json."]
    return lines


def _robustness_section(config, labels: list[str], robustness: dict, plots: Path) -> list[str]:
    """Section 3: the paper-style robustness table, what its columns mean, and plots."""
    summary, not_run = robustness["summary"], robustness.get("not_run", {})
    cols = [(n, k) for n, k in ROBUSTNESS_COLUMNS if k in not_run or any(summary[l].get(k) is not None for l in labels)]
    lines = ["## 3. Robustness (paper Table 6 style)", ""]
    lines += _table(["Model"] + [n for n, _ in cols],
                    [[label] + ["not run" if k in not_run else fmt(summary[label].get(k)) for _, k in cols]
                     for label in labels])
    n_images = next(r["n"] for r in robustness["records"] if r["dataset"] == "imagenet" and r["variant"] == "clean")
    lines += ["", *robustness_notes(config, summary, not_run, n_images)]
    if len(config.severities) < 5:
        lines += ["", f"Only severities {list(config.severities)} were run (--quick): the mCE columns average fewer "
                  "severities than ImageNet-C's protocol."]
    chance = 100 / config.classification.num_classes
    lines += ["", "Per-corruption and per-severity tables and plots: [robustness/report.md](robustness/report.md).", "",
              "![robustness](plots/robustness.png)", "", "![severity](plots/corruption_severity.png)", ""]
    plot_robustness_bars(summary, chance, plots / "robustness.png")
    plot_mean_severity(robustness["records"], labels, chance, plots / "corruption_severity.png")
    return lines


def real_data_lines(number: int) -> list[str]:
    """The sets generated data cannot stand in for, and the command that runs them."""
    return [f"## {number}. Not in this demo: ImageNet-V2, ImageNet-Sketch, ReaL labels, shape bias", "",
            "These measure shifts of real photographs (a re-collected val set, sketches, re-assessed labels, "
            "style-transferred cue-conflict images) that a generated shapes world cannot carry. With the sets on disk "
            "in their published layouts (docs/robustness.md, *ImageNet-V2, ImageNet-Sketch, ReaL and shape bias*):", "",
            "```bash",
            "python eval.py robustness --model pit_ti deit_tiny_patch16_224 --weights pit_ti_730.pth deit_tiny.pth \\",
            "    --data /data/imagenet/val --imagenet-real /data/real.json \\",
            "    --imagenet-v2 /data/imagenetv2-matched-frequency-format-val --imagenet-sketch /data/sketch \\",
            "    --cue-conflict /data/cue-conflict --out runs/robustness-sets",
            "```", ""]


def _coco_c_section(config, coco_c: dict[str, dict], number: int) -> list[str]:
    """Detection under corruption: clean AP, mPC and rPC of each backbone's detector (seed 0)."""
    cells = len(config.coco_c_corruptions) * len(config.coco_c_severities)
    rows = [[label, fmt(100 * r["clean_ap"]), fmt(100 * r["mpc"]), fmt(100 * r["rpc"] if r["rpc"] is not None else None)]
            for label, r in coco_c.items()]
    return ([f"## {number}. Detection under corruption (COCO-C style)", ""]
            + _table(["Backbone", "Clean AP", "mPC", "rPC %"], rows)
            + ["", f"The val split corrupted on the fly at its native size before the detector's resize: "
               f"{', '.join(config.coco_c_corruptions)} at severity {', '.join(map(str, config.coco_c_severities))} "
               f"({cells} cells; COCO-C's protocol is 15 corruptions × 5 severities, `eval.py detection eval "
               "--corruptions all`). mPC = mean AP over the cells, rPC = mPC / clean AP (Michaelis et al. 2019). "
               "Clean AP is the final detector evaluated in fp32; the detection table above is the training run's last "
               "evaluation, under autocast where the recipe used it, so the two can differ slightly. "
               "Per-cell tables: `coco_c/`.", ""])


def _closing_lines(stage_seconds: dict[str, float], side_by_side: list[str], wall_seconds: float,
                   number: int) -> list[str]:
    """Time per stage and where the raw results are."""
    rows = [[n + (" ‖" if n in side_by_side else ""), f"{s:.0f}"] for n, s in stage_seconds.items()]
    beside = (" Stages marked ‖ ran side by side, one process per model sharing the CPU cores, so their seconds "
              "overlap and the sum exceeds the time they took." if side_by_side else "")
    return ([f"## {number}. Time per stage", ""] + _table(["Stage", "Seconds"], rows)
            + ["", f"Sum of the stages: {sum(stage_seconds.values()):.0f} s. Wall time of this invocation: "
               f"{wall_seconds:.0f} s (finished stages are reused on a re-run).{beside}", "",
               "The same evaluation on ImageNet / COCO with the official checkpoints: the README's *Reproduce the "
               "paper* section (nothing is downloaded by the suite).", "",
               "Stage results of this run: `stages.json`; raw robustness records: `robustness/results.json`; "
               "detector checkpoints, logs and COCOeval stats: `detection/<model>-seed<k>/`; machine-readable "
               "numbers: `summary.json`.", ""])


def write_demo_report(out: Path, *, config, models, data: dict, classifiers: dict[str, dict], robustness: dict,
                      backgrounds: list[dict], detection: dict[str, list[dict]], coco_c: dict[str, dict],
                      stage_seconds: dict[str, float], wall_seconds: float, device: str, quick: bool,
                      side_by_side: list[str] = ()) -> Path:
    """Write ``out/report.md``, ``out/summary.json`` and ``out/plots/*.png``; returns the report path."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    labels = [label for label, _, _ in models]
    lines = _setup_lines(config, models, data, device, quick)
    lines += _models_section(config, models, classifiers, plots)
    lines += _robustness_section(config, labels, robustness, plots)
    lines += report_lines(backgrounds, config.in9_per_class, 4)
    lines += detection_section(detection, config.detector, config.detection, data["detection"], plots, device, quick, 5)
    lines += _coco_c_section(config, coco_c, 6)
    lines += real_data_lines(7)
    lines += _closing_lines(stage_seconds, list(side_by_side), wall_seconds, 8)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "summary.json", json.dumps({"classifiers": classifiers, "robustness": robustness["summary"],
                                                        "background_challenge": backgrounds,
                                                        "detection": detection_summary(detection), "coco_c": coco_c,
                                                        "stage_seconds": stage_seconds}, indent=2) + "\n")
    return path
