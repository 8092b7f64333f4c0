"""The robustness evaluation loop: models × datasets × corruptions × severities × attacks/occlusion.

A *cell* is one (model, dataset, corruption, severity, variant) and yields exact top-1/top-5 counts.
Cells that read the same images share one *pass* over the data (clean, occlusion and attacks on the
clean set; the 5 severities of one on-the-fly corruption), so each image is decoded once per pass.
Finished cells are appended to ``out/cells.jsonl`` and ``out/results.json`` is rewritten atomically,
so an interrupted run resumes where it stopped; the run's options are kept in ``out/run.json`` and a
run with different options refuses to mix results. Under ``torchrun`` every process evaluates a
shard of each pass (no padding duplicates) and exact counts are summed; only rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import pit
from robustness import attacks as attacks_lib
from robustness import datasets as ds
from robustness import occlusion as occ
from robustness.metrics import reduce_counts, topk_correct
from robustness.report import summarize, write_report
from common import io
from common.distributed import all_gather_objects, barrier, get_rank, get_world_size, init_distributed, is_main_process

ATTACKS = ("fgsm", "pgd")
OCCLUSIONS = {"occlusion_center": "centred square, half of each side (25% of the area), zero fill",
              "occlusion_random": "one random square patch of 25% of the area, zero fill"}


@dataclass
class ModelSpec:
    """One model to evaluate: a ``pit.create_model`` name, optional weights file, display label."""

    name: str
    weights: str | None = None
    label: str | None = None
    model_kwargs: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class Cell:
    model: str
    dataset: str  # "imagenet" | "imagenet-c" | "imagenet-a" | "imagenet-r"
    corruption: str | None
    severity: int | None
    variant: str  # "clean" | "fgsm" | "pgd" | "occlusion_center" | "occlusion_random"

    @property
    def key(self) -> str:
        return f"{self.model}|{self.dataset}|{self.corruption}|{self.severity}|{self.variant}"


@dataclass
class Pass:
    """One loop over ``root``; every cell gets the same batches. ``masked``: logits restricted to the
    classes present (ImageNet-A/R); ``on_the_fly``: each cell corrupts the clean batch on the device."""

    name: str
    root: str
    cells: list[Cell]
    masked: bool = False
    on_the_fly: bool = False


def run_robustness(models: list[ModelSpec], data: str, out: str, *, class_map: str = "imagenet",
                   img_size: int | None = None, crop_pct: float | None = None,
                   imagenet_c: str | None = None, corrupt_on_the_fly: bool = False,
                   imagenet_a: str | None = None, imagenet_r: str | None = None,
                   corruptions: list[str] | str = "all", severities: list[int] = (1, 2, 3, 4, 5),
                   attacks: list[str] = (), eps: float = 1 / 255, alpha: float | None = None, steps: int = 5,
                   occlusion: bool = False, limit: int | None = None, batch_size: int = 64,
                   device: str | None = None, amp: bool = False, num_workers: int = 2, seed: int = 0,
                   progress: bool = True, overwrite: bool = False) -> dict:
    """Evaluate ``models`` and write ``out/results.json``, ``out/report.md`` and plots; see the module doc.

    Accuracies in the summary are percentages; mCE / relative mCE are AlexNet-normalised, ×100; the raw
    mean corruption error is a plain top-1 error percentage. Returns
    ``{"records": [...], "summary": {label: {...}}, "report": path}`` (on every process).
    """
    if not models:
        raise ValueError("no model given")
    labels = [m.display for m in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}: give each ModelSpec a label")
    if imagenet_c and corrupt_on_the_fly:
        raise ValueError("choose one source of corruptions: imagenet_c (on disk) or corrupt_on_the_fly, not both")
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}: choose from {list(ATTACKS)}")
    bad_sev = [s for s in severities if s not in (1, 2, 3, 4, 5)]
    if bad_sev:
        raise ValueError(f"severities must be in 1..5, got {bad_sev}")
    if eps < 0 or steps < 1 or batch_size < 1:
        raise ValueError("need eps >= 0, steps >= 1 and batch_size >= 1")
    corruption_names = resolve_corruptions(corruptions) if (imagenet_c or corrupt_on_the_fly) else []
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    data = str(Path(data).resolve())
    class_index = ds.build_class_index(class_map, data)
    ds.class_folders(data)

    device_ = init_distributed(device)
    out_dir = Path(out)
    randomised = bool(corrupt_on_the_fly or "pgd" in attacks or occlusion)
    options = {
        "data": data, "class_map": class_map, "img_size": img_size, "crop_pct": crop_pct,
        "imagenet_c": _abs(imagenet_c), "corrupt_on_the_fly": corrupt_on_the_fly,
        "imagenet_a": _abs(imagenet_a), "imagenet_r": _abs(imagenet_r), "eps": eps, "alpha": alpha, "steps": steps,
        "limit": limit, "seed": seed, "amp": amp,
        # Random draws are keyed by (seed, cell, batch, rank): they depend on how the data is batched.
        "batch_size": batch_size if randomised else None, "world_size": get_world_size() if randomised else None,
    }
    model_ids = _jsonable({m.display: _model_identity(m) for m in models})
    options = _jsonable(options)
    selection = {"models": labels, "corruptions": corruption_names, "severities": list(severities),
                 "attacks": list(attacks), "occlusion": occlusion}
    done = _prepare_out_dir(out_dir, options, model_ids, overwrite)

    records: dict[str, dict] = dict(done)
    wanted: list[str] = []
    for spec in models:
        passes = plan_passes(spec.display, data, imagenet_c, corrupt_on_the_fly, imagenet_a, imagenet_r,
                             corruption_names, list(severities), list(attacks), occlusion)
        wanted += [c.key for p in passes for c in p.cells]
        if all(c.key in records for p in passes for c in p.cells):
            continue  # finished in an earlier run
        model = _build_model(spec, device_, seed, img_size)
        size, pct = _input_geometry(model, spec, img_size, crop_pct)
        with torch.no_grad():
            num_outputs = model(torch.zeros(1, 3, size, size, device=device_)).shape[-1]
        for p in passes:
            todo = [c for c in p.cells if c.key not in records]
            if not todo:
                continue
            dataset = ds.ImageFolderSet(p.root, class_index, size, pct, limit=limit)
            _check_labels(num_outputs, dataset)  # before the loop: every process raises alike, none hangs
            ctx = dict(model=model, device=device_, seed=seed, eps=eps, alpha=alpha, steps=steps, amp=amp,
                       num_outputs=num_outputs)
            counts = _evaluate_pass(p, todo, dataset, ctx, batch_size, num_workers, progress)
            for cell, (n, c1, c5) in zip(todo, counts.tolist()):
                rec = {"key": cell.key, **asdict(cell), "model_name": spec.name, "n": n, "top1_correct": c1,
                       "top5_correct": c5, "top1": 100.0 * c1 / n if n else None, "top5": 100.0 * c5 / n if n else None}
                records[cell.key] = rec
                if is_main_process():
                    io.append_jsonl(out_dir / "cells.jsonl", rec)
            if is_main_process():
                _write_results(out_dir, options, selection, model_ids, [records[k] for k in wanted if k in records])
        del model
    final = [records[k] for k in wanted]
    summary = summarize(final, labels)
    report = out_dir / "report.md"
    if is_main_process():
        _write_results(out_dir, options, selection, model_ids, final)
        write_report(final, summary, out_dir, options={**options, **selection})
    barrier()
    return {"records": final, "summary": summary, "report": str(report)}


def resolve_corruptions(corruptions: list[str] | str) -> list[str]:
    """'all' → the 15 ImageNet-C corruptions; 'extra' → the 4 extra ones; or explicit names (validated)."""
    from corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

    names = [corruptions] if isinstance(corruptions, str) else list(corruptions)
    out: list[str] = []
    for name in names:
        expanded = {"all": list(CORRUPTIONS), "extra": list(EXTRA_CORRUPTIONS)}.get(name, [name])
        for n in expanded:
            if n not in CORRUPTIONS and n not in EXTRA_CORRUPTIONS:
                raise KeyError(f"unknown corruption {n!r}: choose from 'all', 'extra', "
                               f"{', '.join(list(CORRUPTIONS) + list(EXTRA_CORRUPTIONS))}")
            if n not in out:
                out.append(n)
    return out


def plan_passes(label: str, data: str, imagenet_c: str | None, on_the_fly: bool, imagenet_a: str | None,
                imagenet_r: str | None, corruptions: list[str], severities: list[int], attacks: list[str],
                occlusion: bool) -> list[Pass]:
    """The passes over the data for one model, in evaluation order."""
    clean = [Cell(label, "imagenet", None, None, "clean")]
    clean += [Cell(label, "imagenet", None, None, v) for v in (OCCLUSIONS if occlusion else ())]
    clean += [Cell(label, "imagenet", None, None, a) for a in attacks]
    passes = [Pass("clean", data, clean)]
    for c in corruptions:
        if on_the_fly:
            passes.append(Pass(f"{c} (on the fly)", data, [Cell(label, "imagenet-c", c, s, "clean") for s in severities],
                                   on_the_fly=True))
        else:
            passes += [Pass(f"{c} {s}", str(ds.imagenet_c_root(imagenet_c, c, s)), [Cell(label, "imagenet-c", c, s, "clean")])
                       for s in severities]
    for name, root in (("imagenet-a", imagenet_a), ("imagenet-r", imagenet_r)):
        if root:
            passes.append(Pass(name, root, [Cell(label, name, None, None, "clean")], masked=True))
    return passes


def _evaluate_pass(p: Pass, cells: list[Cell], dataset: ds.ImageFolderSet, ctx: dict, batch_size: int,
                   num_workers: int, progress: bool) -> torch.Tensor:
    """Run ``cells`` over ``dataset``; returns int64 (len(cells), 3) counts [n, top1, top5] summed over processes."""
    device, model = ctx["device"], ctx["model"]
    loader = ds.make_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    counts = torch.zeros(len(cells), 3, dtype=torch.int64, device=device)
    mask = ds.class_mask(dataset.classes, ctx["num_outputs"], device) if p.masked else None
    rank, world = get_rank(), get_world_size()
    bar = tqdm(loader, desc=f"{cells[0].model} | {p.name}", disable=not (progress and is_main_process()), leave=False)
    for batch_idx, (images_u8, labels, _) in enumerate(bar):
        if labels.numel() == 0:
            continue
        images = ds.to_float(images_u8, device)
        labels = labels.to(device, non_blocking=True)
        global_batch = batch_idx * world + rank
        for i, cell in enumerate(cells):
            x = _apply_variant(cell, images, labels, ctx, p.on_the_fly, _generator(ctx["seed"], cell, global_batch, device))
            with torch.no_grad(), _autocast(device, ctx["amp"]):
                logits = model(x).float()
            if mask is not None:  # ImageNet-A/R: only the classes present can be predicted
                logits = logits.masked_fill(~mask, float("-inf"))
            counts[i, 0] += labels.numel()
            counts[i, 1:] += topk_correct(logits, labels)
    return reduce_counts(counts).cpu()


def _apply_variant(cell: Cell, images: torch.Tensor, labels: torch.Tensor, ctx: dict, on_the_fly: bool,
                   generator: torch.Generator) -> torch.Tensor:
    """The input the model sees for this cell: float (B,3,H,W) in [0,1]."""
    if on_the_fly:
        from corruptions import corrupt

        return corrupt(images, cell.corruption, cell.severity, generator=generator)
    if cell.variant == "clean":
        return images
    if cell.variant == "occlusion_center":
        return occ.occlude_center(images, 0.5)
    if cell.variant == "occlusion_random":
        return occ.occlude_random(images, 0.25, generator=generator)
    with _autocast(ctx["device"], ctx["amp"]):
        if cell.variant == "fgsm":
            return attacks_lib.fgsm(ctx["model"], images, labels, ctx["eps"])
        if cell.variant == "pgd":
            return attacks_lib.pgd(ctx["model"], images, labels, ctx["eps"], ctx["alpha"], ctx["steps"],
                                   generator=generator)
    raise KeyError(f"unknown variant {cell.variant!r}")


def _generator(seed: int, cell: Cell, global_batch: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, cell, batch): reruns and resumes draw the same numbers."""
    digest = hashlib.sha256(f"{seed}|{cell.dataset}|{cell.corruption}|{cell.severity}|{cell.variant}|{global_batch}".encode())
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1)


def _autocast(device: torch.device, enabled: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def _check_labels(num_outputs: int, dataset: ds.ImageFolderSet) -> None:
    top = max(dataset.classes)
    if top >= num_outputs:
        raise ValueError(f"the model has {num_outputs} outputs but {dataset.root} has class index {top}: "
                         "use a model with matching num_classes (--num-classes) or --class-map folder")


def _build_model(spec: ModelSpec, device: torch.device, seed: int, img_size: int | None) -> nn.Module:
    """``pit.create_model`` wrapped to take [0,1] pixels, in eval mode on ``device``.

    An explicit eval ``img_size`` is passed to models that take one (ViT/DeiT position embeddings) and
    left out for those that do not (CNNs). Initialisation is seeded, so randomly initialised models are
    the same in every process and on resume.
    """
    kwargs = dict(spec.model_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if img_size is not None and "img_size" not in kwargs:
            try:
                model = pit.create_model(spec.name, weights=spec.weights, img_size=img_size, **kwargs)
            except (TypeError, ValueError) as err:  # pit.create_model reports constructor TypeErrors as ValueError
                if "img_size" not in str(err):
                    raise
                torch.manual_seed(seed)
                model = pit.create_model(spec.name, weights=spec.weights, **kwargs)
        else:
            model = pit.create_model(spec.name, weights=spec.weights, **kwargs)
    return pit.NormalizedModel(model).to(device).eval()


def _input_geometry(model: nn.Module, spec: ModelSpec, img_size: int | None, crop_pct: float | None) -> tuple[int, float]:
    """Eval image size and crop fraction: explicit values, else the model's kwargs, else its pretrained_cfg."""
    cfg = getattr(model.model, "pretrained_cfg", None) or {}
    size = img_size or spec.model_kwargs.get("img_size") or cfg.get("input_size", (3, 224, 224))[-1]
    size = size[-1] if isinstance(size, (tuple, list)) else size
    return int(size), float(crop_pct or cfg.get("crop_pct", 0.875))


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists), so stored and current options compare equal."""
    return json.loads(json.dumps(obj))


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What makes a model's numbers: name, kwargs and the weights file (path, size, mtime)."""
    ident: dict[str, Any] = {"name": spec.name, "model_kwargs": spec.model_kwargs, "weights": _abs(spec.weights)}
    if spec.weights:
        if not os.path.isfile(spec.weights):
            raise FileNotFoundError(f"weights file {spec.weights} does not exist")
        st = os.stat(spec.weights)
        ident.update(weights_size=st.st_size, weights_mtime=st.st_mtime)
    return ident


def _prepare_out_dir(out_dir: Path, options: dict, model_ids: dict, overwrite: bool) -> dict[str, dict]:
    """Check ``out_dir/run.json`` against this run (rank 0), record it, and return the finished cells."""
    error, done = None, {}
    if is_main_process():
        run_file = out_dir / "run.json"
        if overwrite and out_dir.exists():
            for name in ("run.json", "cells.jsonl", "results.json", "report.md"):
                (out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(out_dir / "plots", ignore_errors=True)
        previous = json.loads(run_file.read_text()) if run_file.exists() else None
        if previous is not None:
            error = _options_conflict(previous, options, model_ids)
        if error is None:
            merged = dict(previous["models"]) if previous else {}
            merged.update(model_ids)
            io.atomic_write_json(run_file, {"options": options, "models": merged})
            done = {r["key"]: r for r in io.read_jsonl(out_dir / "cells.jsonl") if r.get("model") in model_ids}
    error, done = all_gather_objects((error, done))[0]
    if error:
        raise ValueError(error)
    return done


def _options_conflict(previous: dict, options: dict, model_ids: dict) -> str | None:
    diffs = [f"{k}: {previous['options'].get(k)!r} → {v!r}" for k, v in options.items() if previous["options"].get(k) != v]
    diffs += [f"model {label!r}: {previous['models'][label]} → {ident}" for label, ident in model_ids.items()
              if label in previous["models"] and previous["models"][label] != ident]
    if not diffs:
        return None
    return ("the output folder holds results of a run with different options (" + "; ".join(diffs) +
            "): use a new --out folder, or --overwrite to discard the old results")


def _write_results(out_dir: Path, options: dict, selection: dict, model_ids: dict, records: list[dict]) -> None:
    io.atomic_write_json(out_dir / "results.json", {"options": {**options, **selection}, "models": model_ids,
                                                    "records": records, "summary": summarize(records, selection["models"])})
