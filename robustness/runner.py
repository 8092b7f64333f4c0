"""The robustness evaluation loop: models × datasets × corruptions × severities × attacks/occlusion.

A *cell* is one (model, dataset, corruption, severity, variant) and yields exact top-1/top-5 counts.
Cells that read the same images share one *pass* over the data (clean, occlusion and attacks on the
clean set; the 5 severities of one on-the-fly corruption), so each image is decoded once per pass.
``plan_passes`` is the one place that says which passes and cells a run has. Every pass goes through
the run's one DataLoader (one worker pool). Finished cells are kept in the run folder
(``robustness.store``), so a rerun computes only what is missing, stale or new. Under ``torchrun``
every process evaluates a shard of each pass (no padding duplicates) and exact counts are summed;
only rank 0 writes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from tqdm import tqdm

import pit
from classification.metrics import topk_correct
from common import io, rundir
from common.autocast import autocast
from common.distributed import barrier, get_rank, get_world_size, init_distributed, is_main_process
from robustness import attacks as attacks_lib
from robustness import background
from robustness import datasets as ds
from robustness import occlusion as occ
from robustness.config import ATTACKS, OCCLUSIONS, ModelSpec, RobustnessConfig, absolute  # noqa: F401
from robustness.metrics import reduce_counts
from robustness.report import summarize, write_report
from robustness.store import RunStore, jsonable

RANDOM_VARIANTS = ("pgd", "occlusion_random")


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
    """One loop over ``root``; every cell gets the same batches. ``subset``: ImageNet-A/R, logits masked
    to its 200 classes; ``on_the_fly``: each cell corrupts the clean batch on the device."""

    name: str
    root: str
    cells: list[Cell]
    subset: str | None = None
    on_the_fly: bool = False


@dataclass
class ModelRun:
    """One model of the run: its spec, eval geometry and identity; ``module`` is built on first need."""

    spec: ModelSpec
    img_size: int
    crop_pct: float
    identity: dict[str, Any]
    module: nn.Module | None = None
    num_outputs: int = 0


@dataclass
class RunContext:
    """What the passes of a run share: the config, the device, the run folder and the one loader."""

    config: RobustnessConfig
    device: torch.device
    store: RunStore
    corruptions: list[str]
    class_index: dict[str, int] = field(default_factory=dict)
    loader: Any = None
    batches: ds.PassBatches | None = None
    notes: list[str] = field(default_factory=list)


def run_robustness(models: list[ModelSpec], data: str, out: str, **options: Any) -> dict:
    """``run(RobustnessConfig(models, data, out, **options))``: the options are the config's fields."""
    return run(RobustnessConfig(models=list(models), data=data, out=out, **options))


def run(config: RobustnessConfig) -> dict:
    """Evaluate ``config.models`` and write ``out/results.json``, ``out/report.md`` and plots.

    Accuracies in the summary are percentages; mCE / relative mCE are AlexNet-normalised, ×100; the raw
    mean corruption error is a plain top-1 error percentage. Returns
    ``{"records": [...], "summary": {label: {...}}, "report": path}`` (on every process).
    Raises ValueError when a set yields no readable image (no report is written then).
    """
    corruptions = check_paths(config)
    device = init_distributed(config.device)
    runs = [model_run(spec, config) for spec in config.models]
    store = RunStore.open(config.out, marker_options(config))
    ctx = RunContext(config, device, store, corruptions, ds.build_class_index(config.class_map, config.data))
    plans = {r.spec.display: plan_passes(r.spec.display, config, corruptions) for r in runs}
    wanted = {c.key: cell_options(c, p, r, ctx) for r in runs for p in plans[r.spec.display] for c in p.cells}
    in9_plans = {r.spec.display: _in9_plan(r, config) for r in runs}
    wanted.update({key: opts for plan in in9_plans.values() for key, (_, opts) in plan.items()})
    store.conflicts(wanted, config.overwrite)
    ctx.loader, ctx.batches = ds.pass_loader(config.batch_size, config.num_workers, device.type == "cuda")
    try:
        for r in runs:
            for p in plans[r.spec.display]:
                _run_pass(p, r, ctx, wanted)
            _run_in9(r, ctx, in9_plans[r.spec.display])
            r.module = None
    finally:
        ctx.loader = None
    final = [store.records[k] for k in wanted]
    empty = sorted({rec["root"] for rec in final if not rec["n"]})
    if empty:
        raise ValueError(f"no readable image in {', '.join(empty)} (every file was skipped, see the warnings): "
                         "replace the files and run the same command again")
    summary = summarize(final, [r.spec.display for r in runs])
    if is_main_process():
        _write_results(ctx, runs, final, summary)
        write_report(final, summary, store.out_dir, options=_report_options(ctx, runs))
    barrier()
    return {"records": final, "summary": summary, "report": str(store.out_dir / "report.md")}


def resolve_corruptions(corruptions: list[str] | str) -> list[str]:
    """'all' → the 15 ImageNet-C corruptions; 'extra' → the 4 extra ones; or explicit names (validated)."""
    from corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

    names = [corruptions] if isinstance(corruptions, str) else list(corruptions)
    out: list[str] = []
    for name in names:
        expanded = {"all": list(CORRUPTIONS), "extra": list(EXTRA_CORRUPTIONS)}.get(name, [name])
        for n in expanded:
            if n not in CORRUPTIONS and n not in EXTRA_CORRUPTIONS:
                raise KeyError(f"unknown corruption {n!r}: choose --corruptions from 'all', 'extra', "
                               f"{', '.join(list(CORRUPTIONS) + list(EXTRA_CORRUPTIONS))}")
            if n not in out:
                out.append(n)
    return out


def plan_passes(label: str, config: RobustnessConfig, corruptions: list[str]) -> list[Pass]:
    """The passes over the data for one model, in evaluation order: the one place cells are planned."""
    data = absolute(config.data)
    clean = [Cell(label, "imagenet", None, None, "clean")]
    clean += [Cell(label, "imagenet", None, None, v) for v in (OCCLUSIONS if config.occlusion else ())]
    clean += [Cell(label, "imagenet", None, None, a) for a in config.attacks]
    passes = [Pass("clean", data, clean)]
    for c in corruptions:
        if config.corrupt_on_the_fly:
            cells = [Cell(label, "imagenet-c", c, s, "clean") for s in config.severities]
            passes.append(Pass(f"{c} (on the fly)", data, cells, on_the_fly=True))
        else:
            passes += [Pass(f"{c} {s}", str(ds.imagenet_c_root(absolute(config.imagenet_c), c, s)),
                            [Cell(label, "imagenet-c", c, s, "clean")]) for s in config.severities]
    for subset, root in (("imagenet-a", config.imagenet_a), ("imagenet-r", config.imagenet_r)):
        if root:
            passes.append(Pass(subset, absolute(root), [Cell(label, subset, None, None, "clean")], subset=subset))
    return passes


def check_paths(config: RobustnessConfig) -> list[str]:
    """Check every input path and name before the first pass; returns the corruptions to run.

    Raises FileNotFoundError / ValueError / KeyError with one line naming the flag.
    """
    for spec in config.models:
        _check_model(spec)
    names = resolve_corruptions(config.corruptions) if (config.imagenet_c or config.corrupt_on_the_fly) else []
    class_index = ds.build_class_index(config.class_map, _existing_dir("--data", config.data))
    ds.ImageFolderSet(config.data, class_index, 8, 1.0, limit=config.limit)
    for c in names if config.imagenet_c else ():
        for s in config.severities:
            ds.class_folders(ds.imagenet_c_root(config.imagenet_c, c, s))
    if config.in9:
        for line in background.check_in9(_existing_dir("--in9", config.in9)):
            if is_main_process():
                rundir.note(line)
    for subset, root in (("imagenet-a", config.imagenet_a), ("imagenet-r", config.imagenet_r)):
        if not root:
            continue
        _existing_dir(f"--{subset}", root)
        if config.class_map == "imagenet":
            missing = ds.check_subset_folders(root, subset)
            if missing and is_main_process():
                rundir.note(f"--{subset} {root} lacks {len(missing)} of the 200 class folders ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''}): scored over all 200 classes, as published")
        ds.ImageFolderSet(root, class_index, 8, 1.0)
    return names


def _existing_dir(flag: str, path: str) -> str:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{flag} folder {path} does not exist")
    return path


def _check_model(spec: ModelSpec) -> None:
    from pit.names import check_name

    check_name(spec.name)
    if spec.weights is None:
        return
    path = Path(spec.weights)
    if path.is_dir():
        raise ValueError(f"--weights {path} for {spec.display} is a folder: give the weights file inside it")
    if not path.exists():
        raise FileNotFoundError(f"--weights file {path} for {spec.display} does not exist")
    pit.read_state_dict(path)  # unreadable files are named now; a file that does not fit, when the model loads


def _model_cfg(name: str) -> dict[str, Any]:
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def model_run(spec: ModelSpec, config: RobustnessConfig) -> ModelRun:
    """The model's eval geometry (explicit values, else its kwargs, else timm's config) and identity."""
    cfg = _model_cfg(spec.name)
    size = config.img_size or spec.model_kwargs.get("img_size") or cfg.get("input_size", (3, 224, 224))[-1]
    size = size[-1] if isinstance(size, (tuple, list)) else size
    identity: dict[str, Any] = {"name": spec.name, "model_kwargs": spec.model_kwargs,
                                "weights": absolute(spec.weights), "pretrained": spec.pretrained}
    if spec.weights:
        identity["weights_state"] = ds.file_state(spec.weights)
    return ModelRun(spec, int(size), float(config.crop_pct or cfg.get("crop_pct", 0.875)), jsonable(identity))


def marker_options(config: RobustnessConfig) -> dict[str, Any]:
    """What identifies the run for its folder (``default_out`` reuses a folder only for the same run)."""
    skip = {"models", "out", "device", "num_workers", "progress", "overwrite", "data_note"}
    options = {k: v for k, v in asdict(config).items() if k not in skip}
    options["models"] = [model_run(spec, config).identity | {"label": spec.display} for spec in config.models]
    options.update(data=absolute(config.data), imagenet_c=absolute(config.imagenet_c),
                   imagenet_a=absolute(config.imagenet_a), imagenet_r=absolute(config.imagenet_r),
                   in9=absolute(config.in9))
    return jsonable(options)


def cell_options(cell: Cell, p: Pass, r: ModelRun, ctx: RunContext) -> dict[str, Any]:
    """The options that make ``cell``'s number: a finished cell is kept only if they are unchanged."""
    config = ctx.config
    options: dict[str, Any] = {"model": r.identity, "root": p.root, "class_map": config.class_map,
                               "img_size": r.img_size, "crop_pct": r.crop_pct, "limit": config.limit, "amp": config.amp}
    if cell.variant in ATTACKS:
        options["eps"] = config.eps
    if cell.variant == "pgd":
        options.update(alpha=config.step_size, steps=config.steps)
    if cell.variant in RANDOM_VARIANTS or p.on_the_fly:  # draws are keyed by (seed, cell, batch, rank)
        options.update(seed=config.seed, batch_size=config.batch_size, world_size=get_world_size())
    return jsonable(options)


def _run_pass(p: Pass, r: ModelRun, ctx: RunContext, wanted: dict[str, dict]) -> None:
    """List the pass's images, compute the cells that are missing or stale, and save them."""
    config = ctx.config
    listing = ds.ImageFolderSet(p.root, ctx.class_index, r.img_size, r.crop_pct, limit=config.limit)
    paths = [path for path, _ in listing.samples]
    fingerprint = ds.input_fingerprint(p.root, paths)
    todo = []
    for cell in p.cells:
        keep, why = ctx.store.reusable(cell.key, wanted[cell.key], fingerprint)
        if not keep:
            todo.append(cell)
        if why and is_main_process():
            rundir.note(f"recomputing {cell.key.replace('|None', '')}: {why}")
    if not todo:
        return
    module = _ensure_model(r, ctx)
    _check_labels(r.num_outputs, listing)  # before the loop: every process raises alike, none hangs
    keys = [(path, label, i, r.img_size, r.crop_pct) for i, (path, label) in enumerate(listing.samples)]
    counts, seen = _evaluate_pass(p, todo, keys, module, r.num_outputs, ctx, listing.classes)
    skipped = {paths[i]: ds.file_state(paths[i]) for i in (~seen).nonzero().flatten().tolist()}
    ctx.store.add([_record(cell, r, p, row, wanted[cell.key], fingerprint, skipped)
                   for cell, row in zip(todo, counts.tolist())])


def _in9_plan(r: ModelRun, config: RobustnessConfig) -> dict[str, tuple[str, dict]]:
    """IN-9 cell key → (variant, cell options) for one model; none without --in9."""
    if not config.in9:
        return {}
    root = absolute(config.in9)
    cells, _ = background.planned_cells(r.spec.display, root)
    base = {"model": r.identity, "root": root, "amp": config.amp}
    return {key: (v, jsonable({**base, **({"limit": config.in9_challenge_limit} if v == background.CHALLENGE else {})}))
            for key, v in cells.items()}


def _run_in9(r: ModelRun, ctx: RunContext, plan: dict[str, tuple[str, dict]]) -> None:
    """IN-9 variants, BG-gap and the Background Challenge of one model (``robustness.background``)."""
    root, config = absolute(ctx.config.in9), ctx.config
    prints = {key: background.cell_fingerprint(root, v) for key, (v, _) in plan.items()}
    done = {key for key, (_, opts) in plan.items() if ctx.store.reusable(key, opts, prints[key])[0]}
    if len(done) == len(plan):
        return
    records, _ = background.evaluate_in9(
        _ensure_model(r, ctx), r.spec.display, r.spec.name, root, ctx.store.out_dir, done, num_outputs=r.num_outputs,
        device=ctx.device, challenge_limit=config.in9_challenge_limit, batch_size=config.batch_size,
        num_workers=config.num_workers, amp=config.amp, progress=config.progress,
        identity={"model": r.identity, "amp": config.amp, "img_size": r.img_size})
    ctx.store.add([{**rec, "root": root, "inputs": prints[rec["key"]], "skipped": 0, "skipped_files": {},
                    "options": plan[rec["key"]][1]} for rec in records])


def _record(cell: Cell, r: ModelRun, p: Pass, row: list[int], options: dict, fingerprint: str,
            skipped: dict[str, Any]) -> dict[str, Any]:
    n, c1, c5 = row
    return {"key": cell.key, **asdict(cell), "model_name": r.spec.name, "n": n, "skipped": len(skipped),
            "top1_correct": c1, "top5_correct": c5, "top1": 100.0 * c1 / n if n else None,
            "top5": 100.0 * c5 / n if n else None, "root": p.root, "inputs": fingerprint,
            "skipped_files": skipped, "options": options}


def _ensure_model(r: ModelRun, ctx: RunContext) -> nn.Module:
    """Build ``r``'s model on first need and record in run.json that it loaded."""
    if r.module is None:
        r.module = _build_model(r.spec, ctx.device, ctx.config.seed, ctx.config.img_size)
        with torch.no_grad():
            r.num_outputs = r.module(torch.zeros(1, 3, r.img_size, r.img_size, device=ctx.device)).shape[-1]
        ctx.store.record_model(r.spec.display, r.identity)
    return r.module


def _evaluate_pass(p: Pass, cells: list[Cell], keys: list[ds.Key], model: nn.Module, num_outputs: int,
                   ctx: RunContext, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``cells`` over the pass's images. Returns int64 (len(cells), 3) counts [n, top1, top5] and a bool
    (len(keys),) tensor of the images read, both summed over processes."""
    device = ctx.device
    counts = torch.zeros(len(cells), 3, dtype=torch.int64, device=device)
    seen = torch.zeros(len(keys), dtype=torch.int64, device=device)
    mask = _pass_mask(p, classes, num_outputs, ctx)
    rank, world = get_rank(), get_world_size()
    ctx.batches.start(keys)
    show = ctx.config.progress and is_main_process()
    for batch_idx, (images_u8, labels, index) in enumerate(tqdm(ctx.loader, desc=f"{cells[0].model} | {p.name}",
                                                                disable=not show, leave=False)):
        if labels.numel() == 0:
            continue
        seen[index.to(device)] = 1
        images = ds.to_float(images_u8, device)
        labels = labels.to(device, non_blocking=True)
        global_batch = batch_idx * world + rank
        for i, cell in enumerate(cells):
            generator = _generator(ctx.config.seed, cell, global_batch, device)
            x = _apply_variant(cell, images, labels, model, ctx, p.on_the_fly, generator)
            with torch.no_grad(), autocast(device, ctx.config.amp):
                logits = model(x).float()
            if mask is not None:  # ImageNet-A/R: only the subset's classes can be predicted
                logits = logits.masked_fill(~mask, float("-inf"))
            counts[i, 0] += labels.numel()
            counts[i, 1:] += topk_correct(logits, labels)
    return reduce_counts(counts).cpu(), reduce_counts(seen).cpu() > 0


def _pass_mask(p: Pass, classes: list[int], num_outputs: int, ctx: RunContext) -> torch.Tensor | None:
    """ImageNet-A/R: the authors' fixed 200 classes (--class-map imagenet) or the classes present (folder)."""
    if p.subset is None:
        return None
    if ctx.config.class_map == "imagenet":
        classes = [ctx.class_index[w] for w in ds.subset_wnids(p.subset)]
    return ds.class_mask(classes, num_outputs, ctx.device)


def _apply_variant(cell: Cell, images: torch.Tensor, labels: torch.Tensor, model: nn.Module, ctx: RunContext,
                   on_the_fly: bool, generator: torch.Generator) -> torch.Tensor:
    """The input the model sees for this cell: float (B,3,H,W) in [0,1]."""
    config = ctx.config
    if on_the_fly:
        from corruptions import corrupt

        return corrupt(images, cell.corruption, cell.severity, generator=generator)
    if cell.variant == "clean":
        return images
    if cell.variant == "occlusion_center":
        return occ.occlude_center(images, 0.5)
    if cell.variant == "occlusion_random":
        return occ.occlude_random(images, 0.25, generator=generator)
    with autocast(ctx.device, config.amp):
        if cell.variant == "fgsm":
            return attacks_lib.fgsm(model, images, labels, config.eps)
        if cell.variant == "pgd":
            return attacks_lib.pgd(model, images, labels, config.eps, config.step_size, config.steps,
                                   generator=generator)
    raise KeyError(f"unknown variant {cell.variant!r}")


def _generator(seed: int, cell: Cell, global_batch: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, cell, batch): reruns and resumes draw the same numbers."""
    digest = hashlib.sha256(f"{seed}|{cell.dataset}|{cell.corruption}|{cell.severity}|{cell.variant}|{global_batch}".encode())
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1)


def _check_labels(num_outputs: int, dataset: ds.ImageFolderSet) -> None:
    top = max(dataset.classes)
    if top >= num_outputs:
        raise ValueError(f"the model has {num_outputs} outputs but {dataset.root} has class index {top}: "
                         "use a model with matching --num-classes, or --class-map folder")


def _build_model(spec: ModelSpec, device: torch.device, seed: int, img_size: int | None) -> nn.Module:
    """``pit.create_model`` wrapped to take [0,1] pixels, in eval mode on ``device``.

    An explicit eval ``img_size`` is passed to the models whose timm config says their input size is
    fixed (ViT/DeiT position embeddings); others (CNNs, PiT, which resamples its positional grid in the
    forward pass) run at any size. Initialisation is seeded, so randomly initialised models are the
    same in every process and on resume.
    """
    kwargs = dict(spec.model_kwargs)
    if img_size is not None and "img_size" not in kwargs and _model_cfg(spec.name).get("fixed_input_size"):
        kwargs["img_size"] = img_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = pit.create_model(spec.name, weights=spec.weights, pretrained=spec.pretrained, **kwargs)
    return pit.NormalizedModel(model).to(device).eval()


def weights_used(spec: ModelSpec) -> str:
    """One line for the report: which weights ``spec`` ran with."""
    if spec.weights:
        return f"file {absolute(spec.weights)}"
    if spec.pretrained:
        return "the model's published pretrained weights"
    return "random initialisation (accuracy at chance)"


def _report_options(ctx: RunContext, runs: list[ModelRun]) -> dict[str, Any]:
    config = ctx.config
    options = marker_options(config)
    options.update(alpha=config.step_size, corruptions=ctx.corruptions,
                   data_used=config.data_note or f"{absolute(config.data)} (--class-map {config.class_map})",
                   weights_used={r.spec.display: weights_used(r.spec) for r in runs})
    return options


def _write_results(ctx: RunContext, runs: list[ModelRun], records: list[dict], summary: dict) -> None:
    io.atomic_write_json(ctx.store.out_dir / "results.json",
                         {"options": _report_options(ctx, runs), "models": {r.spec.display: r.identity for r in runs},
                          "records": records, "summary": summary})
