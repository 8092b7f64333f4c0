"""The demo's Background Challenge section: PiT-Ti vs DeiT-Ti on a generated IN-9-style set.

IN-9 class k is the demo world's class k (``common.synthetic_backgrounds``), so the demo classifiers
(10 outputs, the world's classes in folder order) are mapped to IN-9 by ``k → k`` for k < 9 and
output 9 → −1 (outside IN-9, always wrong), just as the authors map ImageNet's 1000 classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import pit
from common.synthetic_backgrounds import BackgroundsSpec, make_in9_style
from common.tables import fmt, markdown_table
from robustness.background import evaluate_in9, in9_summary

DEMO_VARIANTS = ("original", "only_fg", "only_bg_t", "mixed_same", "mixed_rand")  # the table's, and the challenge's
VARIANT_COLUMNS = (("Original", "in9_original_top1"), ("Only-FG", "in9_only_fg_top1"),
                   ("Mixed-Same", "in9_mixed_same_top1"), ("Mixed-Rand", "in9_mixed_rand_top1"),
                   ("BG-gap", "bg_gap"), ("BGC", "bgc_top1"))


def background_rows(classifiers: dict[str, dict], models: tuple, *, num_classes: int, img_size: int,
                    per_class: int, out: Path, cache: str | Path | None, device: str,
                    upright: bool = False) -> list[dict[str, Any]]:
    """One row per demo model: IN-9 variant accuracies, BG-gap, challenge accuracy (percent) and the
    challenge's forward passes vs the authors' loop's. ``classifiers[label]["checkpoint"]``: the trained weights;
    ``upright``: the objects drawn as the classifiers' training images were (``ClassificationSpec.upright``)."""
    spec = BackgroundsSpec(per_class=per_class, img_size=img_size, variants=DEMO_VARIANTS, upright=upright)
    root = make_in9_style(cache, spec)
    class_map = [k if k < 9 else -1 for k in range(num_classes)]
    rows = []
    for label, name, kwargs in models:
        model = pit.create_pixel_model(name, weights=classifiers[label]["checkpoint"], num_classes=num_classes,
                                       img_size=img_size, **kwargs).to(device).eval()
        records, _ = evaluate_in9(model, label, name, root, out, set(), num_outputs=num_classes,
                                  device=torch.device(device), class_map=class_map, num_workers=0,
                                  identity={"name": name, "weights": classifiers[label]["checkpoint"]})
        challenge = next(r["challenge"] for r in records if "challenge" in r)
        rows.append({"model": label, **in9_summary(records, label), "foregrounds": 9 * per_class,
                     "forward_passes": challenge["forward_passes"],
                     "reference_passes": [challenge["reference_passes_min"], challenge["reference_passes_max"]]})
    return rows


def report_lines(rows: list[dict[str, Any]], per_class: int, number: int) -> list[str]:
    """Section ``number`` of the report: a table (top-1 %, BG-gap in points) and what the columns mean."""
    n = 9 * per_class
    header = ["Model"] + [t for t, _ in VARIANT_COLUMNS] + ["Forward passes: this suite", "authors' loop"]
    body = []
    for r in rows:
        lo, hi = r["reference_passes"]
        body.append([r["model"]] + [fmt(r[k]) for _, k in VARIANT_COLUMNS]
                    + [str(r["forward_passes"]), f"{lo}" if lo == hi else f"{lo}–{hi}"])
    lines = [f"## {number}. Background Challenge (IN-9 style, top-1 %)", "", *markdown_table(header, body).splitlines()]
    lines += ["", f"A generated set in the ImageNet-9 layout ({n} images per variant, {per_class} per class; masks "
              "known exactly): each object pasted on its own background (Original), on black (Only-FG), on a background "
              "of its class (Mixed-Same) or of a random image (Mixed-Rand); BG-gap = Mixed-Same − Mixed-Rand, in points. "
              f"**BGC**: share of the {n} objects classified right on *every* one of the {n} backgrounds (Xiao et al. "
              f"2021). With {n} images one image moves a column by {100 / n:.1f} points: only differences of "
              "several images mean anything here.", "",
              "The two *forward passes* columns say how much work the exact BGC took: the batches the model ran in "
              "this suite's search (many objects at once, up to 256 object-on-background images per batch, each "
              "object trying first the backgrounds that fooled others and stopping once fooled), against the batches "
              "of 32 the authors' loop would run (one object at a time, backgrounds in file order, until the first "
              "that fools it; a range where the search cannot tell which background the loop would meet first). Both "
              "give the same BGC; fewer passes is less work.", ""]
    return lines
