"""One model on IN-9: variant accuracies, BG-gap and the challenge, as robustness-runner records.

Records follow the runner's cell format (``dataset="in9"``; ``variant`` is the IN-9 variant or
``"bg_challenge"``; accuracies in percent; no top-5: IN-9 is scored on the mapped top-1 only). The
challenge record also carries ``challenge`` = {forward passes and composites used, the bounds on the
authors' loop's passes, the per-foreground limit, per-class [robust, total]}.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from robustness.background import layout
from robustness.cells import CellKey
from robustness.background.challenge import run_challenge
from robustness.background.variants import bg_gap, evaluate_variant, in9_predictor

DATASET = "in9"
CHALLENGE = "bg_challenge"


def cell_key(label: str, variant: str) -> str:
    """The runner's cell key of an IN-9 cell."""
    return str(CellKey(label, DATASET, variant=variant))


def planned_cells(label: str, root: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """(cell key → variant or ``CHALLENGE``, notes) for the IN-9 sets present under ``root``."""
    present, notes = layout.present_variants(root)
    cells = {cell_key(label, v): v for v in present}
    if _can_challenge(root, present):
        cells[cell_key(label, CHALLENGE)] = CHALLENGE
    else:
        notes.append(f"IN-9 background challenge skipped: needs original/, {layout.BACKGROUNDS}/ and "
                     f"{layout.MASKS}/ under {root}")
    return cells, notes


def check_in9(root: str | os.PathLike) -> list[str]:
    """Check ``root`` before any evaluation (class folders, one image size per variant, a mask for every
    original image); returns the notes about what is missing. Raises one-line ValueError / FileNotFoundError."""
    cells, notes = planned_cells("", root)
    for variant in cells.values():
        if variant != CHALLENGE:
            layout.check_sizes([s.path for s in layout.variant_samples(root, variant)], variant)
    if CHALLENGE in cells.values():
        layout.challenge_foregrounds(root)
    return notes


def _can_challenge(root: str | os.PathLike, present: list[str]) -> bool:
    return {"original", layout.BACKGROUNDS} <= set(present) and (Path(root) / layout.MASKS / "val").is_dir()


def cell_fingerprint(root: str | os.PathLike, variant: str) -> str:
    """A short hash of the files a cell reads (the variant's images; for the challenge: originals + backgrounds)."""
    names = ["original", layout.BACKGROUNDS] if variant == CHALLENGE else [variant]
    keys = [f"{v}/{s.key}" for v in names for s in layout.variant_samples(root, v)]
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _record(label: str, model_name: str, variant: str, n: int, correct: int, **extra) -> dict:
    return {"key": cell_key(label, variant), "model": label, "dataset": DATASET, "corruption": None, "severity": None,
            "variant": variant, "model_name": model_name, "n": n, "top1_correct": correct, "top5_correct": None,
            "top1": 100.0 * correct / n if n else None, "top5": None, **extra}


def evaluate_in9(model: nn.Module, label: str, model_name: str, root: str | os.PathLike, out_dir: str | os.PathLike,
                 done: set[str], *, num_outputs: int, device: torch.device, class_map: list[int] | None = None,
                 challenge_limit: int | None = None, batch_size: int = 64, challenge_batch: int = 256,
                 num_workers: int = 2, amp: bool = False, progress: bool = False,
                 identity: dict | None = None) -> tuple[list[dict], list[str]]:
    """(new records, notes) for ``model`` (pixel space, [0,1] input, ``num_outputs`` logits) on ``<root>``;
    cells whose keys are in ``done`` are skipped.

    Missing variants are skipped with a note; the challenge runs when ``original``, ``only_bg_t`` and
    ``fg_mask`` are all present. Progress of the challenge lives in ``<out_dir>/in9/<label>-<hash>/``, the hash
    of ``identity`` (what makes the model's predictions: name, weights, amp, ...), so other weights never
    reuse it.
    """
    cells, notes = planned_cells(label, root)
    todo = [variant for key, variant in cells.items() if key not in done]
    if not todo:
        return [], notes
    predict = in9_predictor(model, layout.output_map(num_outputs, class_map), amp)
    records = []
    for variant in todo:
        if variant != CHALLENGE:
            n, correct = evaluate_variant(predict, root, variant, device, batch_size, num_workers, progress)
            records.append(_record(label, model_name, variant, n, correct))
            continue
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
        tag = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        result = run_challenge(predict, root, Path(out_dir) / "in9" / f"{safe}-{tag}", device=device, limit=challenge_limit,
                               batch_size=challenge_batch, progress=progress)
        stats = {k: v for k, v in asdict(result).items() if k not in ("robust", "total")}
        records.append(_record(label, model_name, CHALLENGE, result.total, result.robust,
                               challenge={**stats, "limit_per_class": challenge_limit}))
    return records, notes


def in9_summary(records: list[dict], label: str) -> dict[str, float | None]:
    """``in9_<variant>_top1`` for each variant, ``bg_gap`` (points) and ``bgc_top1`` (challenge accuracy) of one model."""
    mine = {r["variant"]: r for r in records if r["model"] == label and r["dataset"] == DATASET}
    out: dict[str, float | None] = {f"in9_{v}_top1": mine[v]["top1"] if v in mine else None for v in layout.VARIANTS}
    out["bg_gap"] = bg_gap({v: mine[v]["top1"] for v in ("mixed_same", "mixed_rand") if v in mine})
    out["bgc_top1"] = mine[CHALLENGE]["top1"] if CHALLENGE in mine else None
    return out
