"""What a robustness run evaluates: its models' geometry and identity, its passes over the data and cells.

``plan_passes`` is the one place that says which passes and cells a run has, per model; ``shared_passes``
merges the passes of every model over the same folder (clean cells and on-the-fly corruptions of --data
together), so each image is decoded once per run. ``cell_options`` says what makes a cell's number
(a finished cell is kept only while they are unchanged); ``not_run`` names the cells of the paper's table
that the data given cannot make.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import timm
from torch import nn

from common.distributed import get_world_size
from robustness import autoattack, background, cue_conflict, real_labels
from robustness import geometry as geo
from robustness.cells import CellKey
from robustness.config import ATTACKS, OCCLUSIONS, ModelSpec, RobustnessConfig, absolute
from robustness.datasets import file_state, imagenet_c_root
from robustness.store import jsonable

RANDOM_VARIANTS = ("pgd", "occlusion_random")


@dataclass
class Pass:
    """One loop over ``root``; every cell gets the same batches. ``subset``: ImageNet-A/R, logits masked
    to its 200 classes; ``on_the_fly``: each cell corrupts the clean batch on the device; ``geometry``:
    the kind of pixels the files become (``robustness.geometry``: model, stored or made), ``size`` the
    stored crop when it is not ImageNet-C's (the cue-conflict stimuli); ``labels``: how the folder's images
    are labelled (``robustness.test_sets.LABELS``)."""

    name: str
    root: str
    cells: list[CellKey]
    subset: str | None = None
    on_the_fly: bool = False
    geometry: str = "model"
    size: int | None = None
    labels: str = "run"


@dataclass
class ModelRun:
    """One model of the run: its spec, eval geometry and identity; ``module`` is built on first need."""

    spec: ModelSpec
    img_size: int
    crop_pct: float
    identity: dict[str, Any]
    module: nn.Module | None = None
    num_outputs: int = 0


def model_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of ``name`` as a dict ({} when it has none)."""
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def model_run(spec: ModelSpec, config: RobustnessConfig) -> ModelRun:
    """The model's eval geometry (explicit values, else its kwargs, else timm's config) and identity."""
    cfg = model_cfg(spec.name)
    size = config.img_size or spec.model_kwargs.get("img_size") or cfg.get("input_size", (3, 224, 224))[-1]
    size = size[-1] if isinstance(size, (tuple, list)) else size
    identity: dict[str, Any] = {"name": spec.name, "model_kwargs": spec.model_kwargs,
                                "weights": absolute(spec.weights), "pretrained": spec.pretrained}
    if spec.weights:
        identity["weights_state"] = file_state(spec.weights)
    return ModelRun(spec, int(size), float(config.crop_pct or cfg.get("crop_pct", 0.875)), jsonable(identity))


def plan_passes(label: str, config: RobustnessConfig) -> list[Pass]:
    """The passes over the data for one model, in evaluation order: the one place cells are planned."""
    passes = []
    if config.data:
        data = absolute(config.data)
        clean = [CellKey(label, "imagenet")]
        clean += [CellKey(label, "imagenet", variant=real_labels.VARIANT)] if config.imagenet_real else []
        clean += [CellKey(label, "imagenet", variant=v) for v in (OCCLUSIONS if config.occlusion else ())]
        clean += [CellKey(label, "imagenet", variant=a) for a in config.attacks]
        passes.append(Pass("clean", data, clean))
    for c in corruptions_run(config):
        if config.corrupt_on_the_fly:
            cells = [CellKey(label, "imagenet-c", c, s) for s in config.severities]
            passes.append(Pass(f"{c} (on the fly)", absolute(config.data), cells, on_the_fly=True, geometry="made"))
        else:
            passes += [Pass(f"{c} {s}", str(imagenet_c_root(absolute(config.imagenet_c), c, s)),
                            [CellKey(label, "imagenet-c", c, s)], geometry="stored") for s in config.severities]
    for subset, root in (("imagenet-a", config.imagenet_a), ("imagenet-r", config.imagenet_r)):
        if root:
            passes.append(Pass(subset, absolute(root), [CellKey(label, subset)], subset=subset))
    for dataset, root, labels in (("imagenet-v2", config.imagenet_v2, "v2"),
                                  ("imagenet-sketch", config.imagenet_sketch, "imagenet")):
        if root:
            passes.append(Pass(dataset, absolute(root), [CellKey(label, dataset)], labels=labels))
    if config.cue_conflict:
        passes.append(Pass("cue-conflict", absolute(config.cue_conflict), [CellKey(label, "cue-conflict")],
                           geometry="stored", size=cue_conflict.SIZE, labels="cue-conflict"))
    return passes


@dataclass
class SharedPass:
    """One loop over ``root`` that serves every model and every cell reading it: the per-model passes
    (``members``: (model, pass)) of the same folder merged, so each image is decoded once per run and each
    on-the-fly (image, corruption, severity) is computed once and fed to every model."""

    name: str
    root: str
    subset: str | None
    members: list[tuple[ModelRun, Pass]]
    labels: str = "run"


def shared_passes(runs: list[ModelRun], plans: dict[str, list[Pass]]) -> list[SharedPass]:
    """The per-model passes of ``runs`` grouped by folder (clean cells and on-the-fly corruptions of --data in
    one pass; each ImageNet-C folder, ImageNet-A and ImageNet-R in their own), in evaluation order."""
    merged: dict[tuple[str, str | None], SharedPass] = {}
    for r in runs:
        for p in plans[r.spec.display]:
            key = (p.root, p.subset)
            if key not in merged:
                merged[key] = SharedPass(p.name, p.root, p.subset, [], p.labels)
            merged[key].members.append((r, p))
    for sp in merged.values():
        unique = {p.name: p for _, p in sp.members}
        if len(unique) > 1:
            fly = sum(p.on_the_fly for p in unique.values())
            rest = [name for name, p in unique.items() if not p.on_the_fly]
            sp.name = " + ".join(rest + ([f"{fly} corruption(s) on the fly"] if fly else []))
    return list(merged.values())


def pass_geometry(p: Pass, r: ModelRun, config: RobustnessConfig) -> geo.Geometry:
    """The pixels ``p``'s files become for ``r``: the model's eval view, or ImageNet-C's (the same for every
    model); the cue-conflict stimuli are read at their 224 stored pixels."""
    if p.geometry == "model":
        return geo.model_view(r.img_size, r.crop_pct)
    return geo.benchmark_view(p.geometry, p.size or config.imagenet_c_size)


def corruptions_run(config: RobustnessConfig) -> list[str]:
    """The corruptions the run evaluates: ``config.corruptions`` when it has a source, else none."""
    return list(config.corruptions) if (config.imagenet_c or config.corrupt_on_the_fly) else []


def in9_plan(r: ModelRun, config: RobustnessConfig) -> dict[CellKey, tuple[str, dict]]:
    """IN-9 cell key → (variant, cell options) for one model; none without --in9."""
    if not config.in9:
        return {}
    root = absolute(config.in9)
    cells, _ = background.planned_cells(r.spec.display, root)
    base = {"model": r.identity, "root": root, "amp": config.amp}
    return {CellKey.parse(key): (v, jsonable({**base, **({"limit": config.in9_challenge_limit}
                                                          if v == background.CHALLENGE else {})}))
            for key, v in cells.items()}


def cell_options(cell: CellKey, p: Pass, r: ModelRun, config: RobustnessConfig, decoder: str = "pil") -> dict[str, Any]:
    """The options that make ``cell``'s number: a finished cell is kept only if they are unchanged.

    Random draws are keyed per image (``common.seeding``), so the batch size and the number of
    processes are not among them, except for AutoAttack, whose components draw per batch; ``decoder`` is
    where files are decoded (``robustness.decoding``)."""
    geometry = geo.describe(pass_geometry(p, r, config), r.img_size, jpeg=p.on_the_fly and config.imagenet_c_jpeg,
                            decoder=decoder)
    options: dict[str, Any] = {"model": r.identity, "root": p.root,
                               "class_map": config.class_map if p.labels == "run" else p.labels,
                               "geometry": geometry, "limit": config.limit, "amp": config.amp}
    if cell.variant == real_labels.VARIANT:
        options["real_labels"] = real_labels.identity(config.imagenet_real)
    if cell.variant in ATTACKS:
        options["eps"] = config.eps
    if cell.variant == "pgd":
        options.update(alpha=config.step_size, steps=config.steps)
    if cell.variant == "autoattack":  # torchattacks draws per batch: the batches are part of the number
        options.update(autoattack.protocol(config.norm, config.eps), attack_limit=config.attack_limit,
                       seed=config.seed, draws="per batch", batch_size=config.batch_size,
                       chunk_images=config.chunk_images, processes=get_world_size())
    if cell.variant in RANDOM_VARIANTS or p.on_the_fly:
        options.update(seed=config.seed, draws="per image")
    return jsonable(options)


def marker_options(config: RobustnessConfig) -> dict[str, Any]:
    """What identifies the run for its folder (``default_out`` reuses a folder only for the same run)."""
    skip = {"models", "out", "device", "decode", "num_workers", "models_at_once", "chunk_images", "progress", "overwrite", "resume", "data_note"}
    options = {k: v for k, v in asdict(config).items() if k not in skip}
    options["models"] = [model_run(spec, config).identity | {"label": spec.display} for spec in config.models]
    options.update(data=absolute(config.data), imagenet_c=absolute(config.imagenet_c),
                   imagenet_a=absolute(config.imagenet_a), imagenet_r=absolute(config.imagenet_r),
                   imagenet_v2=absolute(config.imagenet_v2), imagenet_sketch=absolute(config.imagenet_sketch),
                   imagenet_real=absolute(config.imagenet_real), cue_conflict=absolute(config.cue_conflict),
                   in9=absolute(config.in9))
    return jsonable(options)


def not_run(config: RobustnessConfig) -> dict[str, str]:
    """Summary key → why the paper's table has no number there: the cells that need clean images."""
    if config.data:
        return {}
    why = "not run: needs clean images (--data DIR)"
    out = dict.fromkeys(("clean_top1", "clean_top5", "occlusion_top1", "occlusion_random_top1", "fgsm_top1",
                         "pgd_top1"), why)
    if corruptions_run(config):
        out["relative_mCE"] = why
    return out


def describe(passes: list[Pass], in9_cells: int, models: int) -> str:
    """One line for the start of a run: what will run, and how many cells."""
    per_model = sum(len(p.cells) for p in passes) + in9_cells
    parts = []
    clean = next((p for p in passes if p.name == "clean"), None)
    if clean:
        parts += [{"clean": "clean", real_labels.VARIANT: "ReaL", "occlusion_center": "occlusion (centre)",
                   "occlusion_random": "occlusion (random patch)", "fgsm": "FGSM", "pgd": "PGD",
                   "autoattack": "AutoAttack"}[c.variant] for c in clean.cells]
    corrupted = [p for p in passes if p.cells[0].dataset == "imagenet-c"]
    if corrupted:
        names = list(dict.fromkeys(c.corruption for p in corrupted for c in p.cells))
        severities = sorted({c.severity for p in corrupted for c in p.cells})
        source = "on the fly" if corrupted[0].on_the_fly else "from --imagenet-c"
        parts.append(f"{len(names)} corruption(s) × {len(severities)} severities {source}")
    sets = {"imagenet-a": "ImageNet-A", "imagenet-r": "ImageNet-R", "imagenet-v2": "ImageNet-V2",
            "imagenet-sketch": "ImageNet-Sketch", "cue-conflict": "cue-conflict (shape bias)"}
    parts += [sets[p.cells[0].dataset] for p in passes if p.cells[0].dataset in sets]
    if in9_cells:
        parts.append(f"IN-9 ({in9_cells} cells)")
    return (f"robustness: {', '.join(parts)}: {per_model} cell(s) per model × {models} model(s) = "
            f"{per_model * models} cells")
