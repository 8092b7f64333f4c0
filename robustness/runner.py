"""The robustness evaluation loop: models × datasets × corruptions × severities × attacks/occlusion.

``run_robustness`` is the one entry point. A *cell* (``robustness.cells``) is one (model, dataset,
corruption, severity, variant) and yields exact top-1/top-5 counts and the exact calibration statistic
(ECE/NLL, ``robustness.calibration``); ``robustness.plan`` says which
passes and cells a run has. The models share the passes (``SharedPass``: one per folder): each image
is decoded once per run and turned into every view the cells need (each model's eval view, ImageNet-C's
crop), each on-the-fly (image, corruption, severity) is computed once and fed to every model, and the
models are held on the device together (``models_at_once`` caps how many; each group re-reads the data).
Every pass goes through the run's one DataLoader (one worker pool).
Finished cells are kept in the run folder (``robustness.store``), so a rerun computes only what is
missing, stale or new. Every random draw (on-the-fly corruptions, PGD starts, random occlusion) is keyed
per image (``common.seeding.image_seed(seed, dataset, corruption, severity, variant, image index)``), so
no number depends on the batch size or the number of processes. Under ``torchrun`` every process
evaluates a shard of each pass (no padding duplicates) and exact counts are summed; only rank 0 writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import pit
from classification.data import ImageFolderSet, build_class_index, to_float
from classification.metrics import topk_correct
from common import io, rundir
from common.autocast import autocast
from common.distributed import barrier, get_world_size, init_distributed, is_main_process, main_decides
from common.progress import Progress
from common.run import say_resumed
from common.seeding import image_generators
from robustness import attacks as attacks_lib
from robustness import autoattack as aa
from robustness import background, calibration, cue_conflict
from robustness import datasets as ds
from robustness import decoding
from robustness import geometry as geo
from robustness import occlusion as occ
from robustness import real_labels, shape_bias, test_sets
from robustness.cells import CellKey, CellRecord
from robustness.config import ModelSpec, RobustnessConfig, absolute
from robustness.metrics import reduce_counts
from robustness.plan import (ModelRun, Pass, cell_options, corruptions_run, describe, in9_plan, marker_options,
                             SharedPass, model_cfg, model_run, not_run, pass_geometry, plan_passes, shared_passes)
from robustness.report import summarize, write_report
from robustness.store import RunStore, jsonable

COUNTS = 3 + calibration.WIDTH  # a cell's counts: [n, top1, top5] then its calibration statistic


@dataclass
class RunContext:
    """What the passes of a run share: the config, the device, the run folder, the one loader, the progress;
    ``decoder``: "pil" (the loader's workers decode) or "device" (``robustness.decoding``)."""

    config: RobustnessConfig
    device: torch.device
    store: RunStore
    class_index: dict[str, int] = field(default_factory=dict)
    decoder: str = "pil"
    loader: Any = None
    batches: ds.PassBatches | None = None
    progress: Progress | None = None
    counted: set[CellKey] = field(default_factory=set)


def run_robustness(models: list[ModelSpec], data: str | None = None, out: str = "", **options: Any) -> dict:
    """Evaluate ``models`` (``ModelSpec``) on the clean ImageFolder ``data`` and the other sets of ``options``
    (the fields of ``RobustnessConfig``: imagenet_c/a/r, in9, attacks, occlusion, corruptions, ...), and
    write ``out/results.json``, ``out/report.md`` and plots.

    Accuracies in the summary are percentages; mCE / relative mCE are AlexNet-normalised, ×100; the raw
    mean corruption error is a plain top-1 error percentage. Returns ``{"records": [file-form records],
    "summary": {label: {...}}, "not_run": {summary key: why}, "report": path}`` (on every process).
    Raises ValueError when a set yields no readable image (no report is written then).
    """
    config = RobustnessConfig(models=list(models), data=data, out=out, **options)
    device = init_distributed(config.device)
    runs, class_index, plans, in9_plans = main_decides(lambda: _plan(config))  # rank 0 reads the disk for all
    store = RunStore.open(config.out, marker_options(config), overwrite=config.overwrite, resume=config.resume)
    ctx = RunContext(config, device, store, class_index, decoder=decoding.resolve_decoder(config.decode, device))
    wanted = {c: cell_options(c, p, r, config, ctx.decoder) for r in runs for p in plans[r.spec.display] for c in p.cells}
    wanted.update({key: opts for plan in in9_plans.values() for key, (_, opts) in plan.items()})
    store.conflicts(wanted, config.overwrite)
    _start(ctx, wanted, describe(next(iter(plans.values())), len(next(iter(in9_plans.values()))), len(runs)))
    ctx.loader, ctx.batches = ds.pass_loader(config.batch_size, config.workers, device.type == "cuda",
                                             encoded=ctx.decoder == "device")
    try:
        for group in _model_groups(runs, config.models_at_once):
            for sp in shared_passes(group, plans):
                _run_shared(sp, ctx, wanted)
            for r in group:
                _run_in9(r, ctx, in9_plans[r.spec.display])
                r.module = None
    finally:
        ds.close_loader(ctx.loader)
        ctx.progress.close()
    return _finish(ctx, runs, [store.records[k] for k in wanted])


def _plan(config: RobustnessConfig) -> tuple[list[ModelRun], dict[str, int], dict[str, list[Pass]], dict]:
    """Check every input, then the run's models, class index, passes and IN-9 cells (read from the disk)."""
    check_paths(config)
    runs = [model_run(spec, config) for spec in config.models]
    plans = {r.spec.display: plan_passes(r.spec.display, config) for r in runs}
    in9_plans = {r.spec.display: in9_plan(r, config) for r in runs}
    return runs, build_class_index(config.class_map, config.data), plans, in9_plans


def _start(ctx: RunContext, wanted: dict[CellKey, dict], plan_line: str) -> None:
    """Say what will run and what was already done; start the run's overall progress ("cell k of N")."""
    records = ctx.store.records
    ctx.counted = {k for k, opts in wanted.items() if k in records and records[k].options == opts and records[k].n}
    if is_main_process():
        print(plan_line, flush=True)
    say_resumed(ctx.store.run, f"{len(ctx.counted)} of {len(wanted)} cells done")
    ctx.progress = Progress(len(wanted), unit="cell", done=len(ctx.counted), enabled=ctx.config.progress,
                            desc="robustness")


def _finish(ctx: RunContext, runs: list[ModelRun], final: list[CellRecord]) -> dict:
    empty = sorted({rec.root for rec in final if not rec.n})
    if empty:
        raise ValueError(f"no readable image in {', '.join(empty)} (every file was skipped, see the warnings): "
                         "replace the files and run the same command again")
    missing = not_run(ctx.config)
    summary = summarize(final, [r.spec.display for r in runs])
    records = [rec.to_json() for rec in final]
    if is_main_process():
        options = _report_options(ctx, runs)
        io.atomic_write_json(ctx.store.out_dir / "results.json",
                             {"options": options, "models": {r.spec.display: r.identity for r in runs},
                              "records": records, "summary": summary, "not_run": missing})
        write_report(final, summary, ctx.store.out_dir, options=options, not_run=missing)
    barrier()
    return {"records": records, "summary": summary, "not_run": missing, "report": str(ctx.store.out_dir / "report.md")}


def check_paths(config: RobustnessConfig) -> None:
    """Check every input path and name before the first pass.

    Raises FileNotFoundError / ValueError / KeyError with one line naming the flag.
    """
    for spec in config.models:
        _check_model(spec)
    if "autoattack" in config.attacks:
        aa.require_torchattacks()
    if config.data:
        class_index = build_class_index(config.class_map, _existing_dir("--data", config.data))
        ImageFolderSet(config.data, class_index, 8, 1.0, limit=config.limit)
    else:
        class_index = build_class_index(config.class_map, None)
    for c in corruptions_run(config) if config.imagenet_c else ():
        for s in config.severities:
            ds.class_folders(ds.imagenet_c_root(config.imagenet_c, c, s))
    if config.in9:
        for line in background.check_in9(_existing_dir("--in9", config.in9)):
            if is_main_process():
                rundir.note(line)
    for subset, root in (("imagenet-a", config.imagenet_a), ("imagenet-r", config.imagenet_r)):
        if root:
            _check_subset(subset, root, config.class_map, class_index)
    _check_test_sets(config)


def _check_test_sets(config: RobustnessConfig) -> None:
    """ImageNet-V2, ImageNet-Sketch, the cue-conflict stimuli and the ReaL labels (matched to --data's file names)."""
    notes = []
    if config.imagenet_v2:
        notes += test_sets.check_v2(config.imagenet_v2)
    if config.imagenet_sketch:
        notes += test_sets.check_sketch(config.imagenet_sketch)
    if config.cue_conflict:
        cue_conflict.check_stimuli(config.cue_conflict)
    if config.imagenet_real:
        real_labels.read_labels(config.imagenet_real)
        listing = ImageFolderSet(config.data, build_class_index(config.class_map, config.data), 8, 1.0, limit=config.limit)
        real_labels.check_names([path for path, _ in listing.samples])
    for line in notes if is_main_process() else ():
        rundir.note(line)


def _check_subset(subset: str, root: str, class_map: str, class_index: dict[str, int]) -> None:
    _existing_dir(f"--{subset}", root)
    if class_map == "imagenet":
        missing = ds.check_subset_folders(root, subset)
        if missing and is_main_process():
            rundir.note(f"--{subset} {root} lacks {len(missing)} of the 200 class folders ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}): scored over all 200 classes, as published")
    ImageFolderSet(root, class_index, 8, 1.0)


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


def _model_groups(runs: list[ModelRun], at_once: int | None) -> list[list[ModelRun]]:
    """The models held on the device together: all of them, or ``at_once`` at a time (each group re-reads the data)."""
    size = at_once or len(runs)
    return [runs[i:i + size] for i in range(0, len(runs), size)]


UNCHANGED = ("clean", real_labels.VARIANT)  # cells that read the model's view as it is


@dataclass
class _Member:
    """One model's part of a shared pass: its pass, the cells to compute, its view among the pass's views."""

    run: ModelRun
    p: Pass
    cells: list[CellKey]
    view: int
    mask: torch.Tensor | None = None
    targets: torch.Tensor | None = None  # per image of the pass (by index): ReaL labels or texture category
    attacked: frozenset[int] = frozenset()  # AutoAttack's images (pass indices, ``--attack-limit``)


def _run_shared(sp: SharedPass, ctx: RunContext, wanted: dict[CellKey, dict]) -> None:
    """List the folder's images, compute every member's missing or stale cells in one loop, and save them.

    What to compute is read from the disk on rank 0 and broadcast: a process whose view of a shared
    filesystem lags cannot skip a pass the others run (and leave them waiting in a collective)."""
    cells = [c for _, p in sp.members for c in p.cells]
    listing, fingerprint, todo = main_decides(lambda: _pass_todo(sp, cells, ctx, wanted))
    if not todo:
        return
    samples, classes, root = listing.samples, listing.classes, listing.root
    targets = None if listing.targets is None else listing.targets.to(ctx.device)
    geometries: list[geo.Geometry] = []
    members = []
    for r, p in sp.members:
        mine = [c for c in p.cells if c in todo]
        if not mine:
            continue
        _ensure_model(r, ctx)
        test_sets.check_outputs(sp.labels, r.spec.display, r.num_outputs)  # before the loop: every process
        _check_labels(r.num_outputs, classes, root)  # raises alike, none hangs
        g = pass_geometry(p, r, ctx.config)
        if g not in geometries:
            geometries.append(g)
        attacked = (aa.spread(len(samples), ctx.config.attack_limit) if any(c.variant == "autoattack" for c in mine)
                    else frozenset())
        members.append(_Member(r, p, mine, geometries.index(g), _pass_mask(p, classes, r.num_outputs, ctx), targets,
                               attacked))
    keys = [(path, label, i, tuple(geometries)) for i, (path, label) in enumerate(samples)]
    order = [c for m in members for c in m.cells]
    pass_key = jsonable({"root": sp.root, "inputs": fingerprint, "cells": [str(c) for c in order],
                         "options": [wanted[c] for c in order]})
    counts, unread = _evaluate_pass(sp, order, keys, members, ctx, pass_key)
    paths = [path for path, _ in samples]
    skipped = main_decides(lambda: {paths[i]: ds.file_state(paths[i]) for i in unread})
    by_cell = dict(zip(order, counts.tolist()))
    ctx.store.add([_record(cell, m.run.spec.name, by_cell[cell], sp.root, fingerprint, wanted[cell], skipped)
                   for m in members for cell in m.cells])
    ctx.store.save_partial(pass_key, {"finished": True})
    _advance(ctx, order, sp.name)


def _record(cell: CellKey, model_name: str, row: list[int], root: str, fingerprint: str, options: dict,
            skipped: dict) -> CellRecord:
    """A finished cell from its counts row [n, top-1, top-5, calibration statistic] (cue-conflict: [n, shape,
    texture] decisions; ReaL: no calibration statistic)."""
    n, first, second = row[:3]
    if cell.dataset == shape_bias.DATASET:
        return CellRecord(cell, model_name, n, first, None, root, fingerprint, options, skipped,
                          decisions={"shape": first, "texture": second})
    stat = None if cell.variant == real_labels.VARIANT else calibration.to_record(row[3:])
    return CellRecord(cell, model_name, n, first, second, root, fingerprint, options, skipped, calibration=stat)


def _pass_todo(sp: SharedPass, cells: list[CellKey], ctx: RunContext, wanted: dict[CellKey, dict]
               ) -> tuple[test_sets.Listing, str, set[CellKey]]:
    """(the folder's images, input fingerprint, cells to compute), from this process's disk view; the clean
    pass with a ReaL cell gets each image's ReaL labels as its targets."""
    listing = test_sets.list_pass(sp.labels, sp.root, ctx.class_index, ctx.config.limit)
    if any(c.variant == real_labels.VARIANT for c in cells):
        listing.targets = real_labels.targets([path for path, _ in listing.samples],
                                              real_labels.read_labels(ctx.config.imagenet_real))
    fingerprint = ds.input_fingerprint(sp.root, [path for path, _ in listing.samples])
    todo = set()
    for cell in cells:
        keep, why = ctx.store.reusable(cell, wanted[cell], fingerprint)
        if not keep:
            todo.add(cell)
        if why:
            rundir.note(f"recomputing {cell.label}: {why}")
    return listing, fingerprint, todo


def _advance(ctx: RunContext, cells: list[CellKey], label: str) -> None:
    new = [c for c in cells if c not in ctx.counted]
    ctx.counted.update(new)
    ctx.progress.update(len(new), label=f"{cells[0].model} {label}")


def _run_in9(r: ModelRun, ctx: RunContext, plan: dict[CellKey, tuple[str, dict]]) -> None:
    """IN-9 variants, BG-gap and the Background Challenge of one model (``robustness.background``)."""
    root, config = absolute(ctx.config.in9), ctx.config

    def decide() -> tuple[dict, set]:  # rank 0's view of the disk, for every process
        prints = {key: background.cell_fingerprint(root, v) for key, (v, _) in plan.items()}
        return prints, {key for key, (_, opts) in plan.items() if ctx.store.reusable(key, opts, prints[key])[0]}

    prints, done = main_decides(decide)
    if len(done) == len(plan):
        return
    records, _ = background.evaluate_in9(
        _ensure_model(r, ctx), r.spec.display, r.spec.name, root, ctx.store.out_dir, {str(k) for k in done},
        num_outputs=r.num_outputs, device=ctx.device, challenge_limit=config.in9_challenge_limit,
        batch_size=config.batch_size, num_workers=config.workers, amp=config.amp, progress=config.progress,
        identity={"model": r.identity, "amp": config.amp, "img_size": r.img_size})
    finished = [CellRecord.from_json({**rec, "root": root, "inputs": prints[CellKey.parse(rec["key"])],
                                      "options": plan[CellKey.parse(rec["key"])][1]}) for rec in records]
    ctx.store.add(finished)
    _advance(ctx, [rec.key for rec in finished], "IN-9")


def _ensure_model(r: ModelRun, ctx: RunContext) -> nn.Module:
    """Build ``r``'s model on first need and record in run.json that it loaded."""
    if r.module is None:
        r.module = _build_model(r.spec, ctx.device, ctx.config.seed, ctx.config.img_size)
        with torch.no_grad():
            r.num_outputs = r.module(torch.zeros(1, 3, r.img_size, r.img_size, device=ctx.device)).shape[-1]
        ctx.store.record_model(r.spec.display, r.identity)
    return r.module


def _evaluate_pass(sp: SharedPass, cells: list[CellKey], keys: list[ds.Key], members: list[_Member],
                   ctx: RunContext, pass_key: dict) -> tuple[torch.Tensor, list[int]]:
    """Run ``cells`` (the members' cells, in order) over the folder's images, ``chunk_images`` at a time: after
    each chunk the running counts are saved (``RunStore.save_partial``), and a rerun continues after the last
    saved chunk (progress saved by a version with other count columns is not used). Returns int64 (len(cells),
    COUNTS) counts [n, top1, top5, calibration statistic...] summed over processes and the indices of the
    images that could not be read."""
    progress = main_decides(lambda: ctx.store.partial(pass_key))
    if progress and any(len(row) != COUNTS for row in progress["counts"]):
        progress = None
    start = progress["next"] if progress else 0
    totals = (torch.tensor(progress["counts"], dtype=torch.int64) if progress
              else torch.zeros(len(cells), COUNTS, dtype=torch.int64))
    unread = list(progress["unread"]) if progress else []
    if start and is_main_process():
        rundir.note(f"{sp.name}: resuming at image {start} of {len(keys)} (the saved chunks are kept)")
    chunk = ctx.config.chunk_images
    bar = tqdm(total=len(keys), initial=start, desc=sp.name, unit="img", leave=False,
               disable=not (ctx.config.progress and is_main_process()))
    for lo in range(start, len(keys), chunk):
        part = keys[lo:lo + chunk]
        counts, seen = _evaluate_chunk(cells, part, lo, members, ctx, bar)
        totals += counts
        unread += (lo + (~seen).nonzero().flatten()).tolist()
        ctx.store.save_partial(pass_key, {"next": lo + len(part), "counts": totals.tolist(), "unread": unread})
    bar.close()
    return totals, unread


def _evaluate_chunk(cells: list[CellKey], keys: list[ds.Key], offset: int, members: list[_Member], ctx: RunContext,
                    bar: tqdm) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of a shared pass: each batch is decoded once into the members' views; the own-view cells of
    every model read their model's view; each on-the-fly (corruption, severity) is computed once per batch
    and fed to every model that has it. Returns the chunk's (len(cells), COUNTS) counts and a bool (len(keys),)
    mask of the images read, both summed over processes."""
    device = ctx.device
    row = {cell: i for i, cell in enumerate(cells)}
    counts = torch.zeros(len(cells), COUNTS, dtype=torch.int64, device=device)
    seen = torch.zeros(len(keys), dtype=torch.int64, device=device)
    corruptions: dict[tuple[str, int], list[tuple[_Member, CellKey]]] = {}
    for m in members:
        for cell in m.cells if m.p.on_the_fly else ():
            corruptions.setdefault((cell.corruption, cell.severity), []).append((m, cell))
    ctx.batches.start(keys)
    for views_u8, labels, index in ctx.loader:
        bar.update(len(index) * get_world_size())  # this process's images × W (approximate under torchrun)
        if ctx.decoder == "device" and labels.numel():
            views_u8, decoded = decoding.decode_views(views_u8, keys[0][3], device)
            labels, index = labels[decoded], index[decoded]
        if labels.numel() == 0:
            continue
        seen[(index - offset).to(device)] = 1
        views = [to_float(v, device) for v in views_u8]
        labels = labels.to(device, non_blocking=True)
        indices = index.tolist()
        for m in members:
            if m.p.on_the_fly:
                continue
            x = geo.to_model_size(views[m.view], m.run.img_size) if m.p.geometry == "stored" else views[m.view]
            rows = None if m.targets is None else m.targets[index.to(device)]
            plain = None  # the model's logits on the unchanged view: its clean and ReaL cells share one forward
            for cell in m.cells:
                if cell.variant == "autoattack":
                    _score_autoattack(m, cell, x, labels, indices, counts[row[cell]], ctx)
                    continue
                if cell.variant in UNCHANGED and plain is not None:
                    _count(cell, plain, labels, rows, counts[row[cell]])
                    continue
                logits = _score(m, _apply_variant(cell, x, labels, m.run.module, ctx, indices), labels,
                                counts[row[cell]], ctx, cell, rows)
                plain = logits if cell.variant in UNCHANGED else plain
        for users in corruptions.values():
            x = _corrupted(users[0][1], views[users[0][0].view], indices, ctx)
            for m, cell in users:
                _score(m, geo.to_model_size(x, m.run.img_size), labels, counts[row[cell]], ctx)
    return reduce_counts(counts).cpu(), reduce_counts(seen).cpu() > 0


def _score(m: _Member, x: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, ctx: RunContext,
           cell: CellKey | None = None, rows: torch.Tensor | None = None, amp: bool | None = None) -> torch.Tensor:
    """Add the batch's counts of ``cell`` (``_count``) for ``m``'s model on input ``x`` to ``counts`` (in
    place); returns the logits. ``amp`` None: the run's --amp."""
    with torch.no_grad(), autocast(ctx.device, ctx.config.amp if amp is None else amp):
        logits = m.run.module(x).float()
    if m.mask is not None:  # ImageNet-A/R: only the subset's classes can be predicted
        logits = logits.masked_fill(~m.mask, float("-inf"))
    _count(cell, logits, labels, rows, counts)
    return logits


def _count(cell: CellKey | None, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
           counts: torch.Tensor) -> None:
    """Add a batch's counts to ``counts`` (in place): [n, top1, top5, calibration statistic]; ReaL: [labelled
    images, top1, top5] against each image's label list (``rows``); cue-conflict: [n, shape, texture]
    decisions (``rows``: texture). ReaL and cue-conflict cells have no calibration statistic."""
    if cell is not None and cell.variant == real_labels.VARIANT:
        counts[:3] += real_labels.real_counts(logits, rows)
    elif cell is not None and cell.dataset == shape_bias.DATASET:
        counts[:3] += shape_bias.decision_counts(logits, labels, rows[:, 0])
    else:
        counts[0] += labels.numel()
        counts[1:3] += topk_correct(logits, labels)
        counts[3:] += calibration.batch_statistic(logits, labels)


def _score_autoattack(m: _Member, cell: CellKey, images: torch.Tensor, labels: torch.Tensor, indices: list[int],
                      counts: torch.Tensor, ctx: RunContext) -> None:
    """AutoAttack on the batch's images among ``m.attacked`` (``--attack-limit``), scored like the attack judged
    them: in float32 whatever --amp says. The cell's n counts those images only."""
    keep = [j for j, i in enumerate(indices) if i in m.attacked]
    if not keep:
        return
    pick = torch.tensor(keep, device=images.device)
    seed = aa.batch_seed(ctx.config.seed, (cell.dataset, cell.variant), [indices[j] for j in keep])
    result = aa.autoattack(m.run.module, images[pick], labels[pick], ctx.config.eps, ctx.config.norm,
                           num_classes=m.run.num_outputs, seed=seed)
    _score(m, result.adv, labels[pick], counts, ctx, cell, amp=False)


def _pass_mask(p: Pass, classes: list[int], num_outputs: int, ctx: RunContext) -> torch.Tensor | None:
    """ImageNet-A/R: the authors' fixed 200 classes (--class-map imagenet) or the classes present (folder)."""
    if p.subset is None:
        return None
    if ctx.config.class_map == "imagenet":
        classes = [ctx.class_index[w] for w in ds.subset_wnids(p.subset)]
    return ds.class_mask(classes, num_outputs, ctx.device)


def cell_generators(seed: int, cell: CellKey, indices: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per image of the batch, seeded from (seed, the cell's data and variant, the image's index
    in its pass): the draws do not depend on the batch, the process, or the model."""
    parts = (cell.dataset, cell.corruption, cell.severity, cell.variant)
    return image_generators(seed, [(*parts, i) for i in indices], device)


def _corrupted(cell: CellKey, images: torch.Tensor, indices: list[int], ctx: RunContext) -> torch.Tensor:
    """ImageNet-C's chain on the benchmark crop, the same for every model: corrupt (draws keyed per image and
    cell, not per model), then store as the benchmark did (uint8, JPEG 85)."""
    from corruptions import corrupt

    x = corrupt(images, cell.corruption, cell.severity, check_range=False,  # uint8 / 255: in range
                generator=cell_generators(ctx.config.seed, cell, indices, images.device))
    return geo.imagenet_c_storage(x, ctx.config.imagenet_c_jpeg)


def _apply_variant(cell: CellKey, images: torch.Tensor, labels: torch.Tensor, model: nn.Module, ctx: RunContext,
                   indices: list[int]) -> torch.Tensor:
    """The input the model sees for a cell of its own view: float (B,3,H,W) in [0,1]."""
    config = ctx.config
    if cell.variant in UNCHANGED:
        return images
    if cell.variant == "occlusion_center":
        return occ.occlude_center(images, 0.5)
    if cell.variant == "occlusion_random":
        return occ.occlude_random(images, 0.25, generator=cell_generators(config.seed, cell, indices, images.device))
    with autocast(ctx.device, config.amp):
        if cell.variant == "fgsm":
            return attacks_lib.fgsm(model, images, labels, config.eps)
        if cell.variant == "pgd":
            return attacks_lib.pgd(model, images, labels, config.eps, config.step_size, config.steps,
                                   generator=cell_generators(config.seed, cell, indices, images.device))
    raise KeyError(f"unknown variant {cell.variant!r}")


def _check_labels(num_outputs: int, classes: list[int], root: str) -> None:
    top = max(classes)
    if top >= num_outputs:
        raise ValueError(f"the model has {num_outputs} outputs but {root} has class index {top}: "
                         "use a model with matching --num-classes, or --class-map folder")


def _build_model(spec: ModelSpec, device: torch.device, seed: int, img_size: int | None) -> nn.Module:
    """``pit.create_model`` wrapped to take [0,1] pixels, in eval mode on ``device``.

    An explicit eval ``img_size`` is passed to the models whose timm config says their input size is
    fixed (ViT/DeiT position embeddings); others (CNNs, PiT, which resamples its positional grid in the
    forward pass) run at any size. Initialisation is seeded, so randomly initialised models are the
    same in every process and on resume.
    """
    kwargs = dict(spec.model_kwargs)
    if img_size is not None and "img_size" not in kwargs and model_cfg(spec.name).get("fixed_input_size"):
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
    data_used = config.data_note or (f"{absolute(config.data)} (--class-map {config.class_map})" if config.data
                                     else "no clean set (--data not given): only the sets given")
    options.update(alpha=config.step_size, corruptions=corruptions_run(config), data_used=data_used,
                   weights_used={r.spec.display: weights_used(r.spec) for r in runs})
    return jsonable(options)
