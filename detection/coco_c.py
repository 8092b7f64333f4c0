"""COCO-C on the fly: a detector's AP on the clean val set and under every (corruption, severity) cell.

The benchmark (Michaelis et al. 2019, arXiv 1907.07484) corrupts each COCO val image at its native,
non-square size with ``imagecorruptions`` and stores it as uint8; the detector then resizes it as usual.
Here each image is read at its native size as uint8, corrupted on the detector's device with the batched
``corruptions.corrupt``, quantised to uint8 like the reference (``np.uint8`` truncation of the [0, 255]
result), then resized and padded exactly as ``detection eval`` does and scored with COCOeval.

- mPC = mean AP over the corruption × severity cells; rPC = mPC / clean AP.
- Reproducible: image ``i`` in cell (corruption, severity) is corrupted with its own generator seeded with
  ``common.seeding.image_seed(seed, corruption, severity, image id)``, so batching and ``torchrun``
  sharding do not change any pixel.
  Same-size images of a batch are corrupted in one call (``corrupt`` with one generator per image).
- Resumable by cell: ``--out`` is opened with ``common.run.open_run``; ``coco_c.json`` is rewritten
  atomically after every finished cell and a rerun with the same checkpoint, data and seed skips the
  cells it holds (new corruptions or severities add cells). Cells are typed (``detection.coco_c_cells``).
- COCOeval overlaps inference: rank 0 hands each cell's gathered detections to a background process
  (``detection.background_eval``) and every rank goes on with the next cell; records are written in cell
  order once scored, and rank 0 waits for the last before the summary. A cell scored by no COCOeval yet
  has no record, so an interrupted run computes it again.
- Detectors are named by their run (:func:`run_name`: the run folder's name, else the file stem) or ``labels``.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import corruptions
from common.distributed import ShardSampler, all_gather_objects, init_distributed, is_main_process, main_decides
from common.io import atomic_write_json, atomic_write_text
from common.progress import Progress
from common.run import open_run, say_resumed
from common.rundir import announce, read_marker
from common.seeding import image_seed
from common.tables import fmt
from common.vocabulary import default_workers, parse_corruptions, parse_severities
from detection.coco_c_cells import CLEAN, CellKey, cell_keys, summarize_cells
from detection.coco_c_report import comparison_table, write_report
from detection.background_eval import BackgroundScorer
from detection.coco_eval import CocoEvaluator, check_scored_once
from detection.data import CocoDetection, coco_paths, collate, make_transforms
from detection.epoch import evaluate
from detection.load import LoadedDetector, load_detector

KIND = "detection-coco-c"  # the run-folder marker kind (common.rundir)
RESULT_FILE = "coco_c.json"


def _quantise(x: Tensor) -> Tensor:
    """Float [0, 1] → uint8 as the reference stores it (``np.uint8`` of x * 255 truncates; the 1e-3 keeps
    values meant to be integers but computed a hair below in float32 on their integer)."""
    return (x * 255 + 1e-3).floor_().clamp_(0, 255).to(torch.uint8)


def corrupt_native(images: Sequence[Tensor], corruption: str, severity: int, seeds: Sequence[int]) -> list[Tensor]:
    """Corrupt uint8 images (3, H_i, W_i) of any sizes at their native size → uint8 images of the same sizes.

    Images of one size are corrupted in one batched call; image ``i`` draws from its own generator seeded
    with ``seeds[i]`` on its device, so the result equals ``corrupt(image[None] / 255, corruption,
    severity, generator)`` for that image alone (up to float rounding of the batched ops).
    """
    if corruption == CLEAN:
        return list(images)
    out: list[Tensor | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for members in groups.values():
        batch = TF.to_dtype(torch.stack([images[i] for i in members]), torch.float32, scale=True)
        generators = [torch.Generator(batch.device).manual_seed(seeds[i]) for i in members]
        corrupted = corruptions.corrupt(batch, corruption, severity, generators, check_range=False)  # uint8 / 255
        for k, i in enumerate(members):
            out[i] = _quantise(corrupted[k])
    return out  # type: ignore[return-value]


class CellBatches:
    """Batches of one cell for ``detection.epoch.evaluate``: native uint8 images → corrupted on ``device`` →
    uint8 → float → the detector's test resize → zero-padded batch + mask (``data.collate``).

    ``corrupt_seconds`` accumulates the time spent corrupting (device-synchronised)."""

    def __init__(self, loader: DataLoader, resize: v2.Transform, device: torch.device, corruption: str,
                 severity: int, seed: int) -> None:
        self.loader, self.resize, self.device = loader, resize, device
        self.corruption, self.severity, self.seed = corruption, severity, seed
        self.corrupt_seconds = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, list[dict]]]:
        for images, targets in self.loader:
            if not images:
                continue
            start = time.perf_counter()
            seeds = [image_seed(self.seed, self.corruption, self.severity, t["image_id"]) for t in targets]
            pixels = corrupt_native([im.to(self.device) for im in images], self.corruption, self.severity, seeds)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.corrupt_seconds += time.perf_counter() - start
            resized = [self.resize(TF.to_dtype(p, torch.float32, scale=True)) for p in pixels]
            yield collate(list(zip(resized, targets)))


def _native_collate(batch: list[tuple[Tensor, dict] | None]) -> tuple[list[Tensor], list[dict]]:
    """Lists of native-size images and their targets; unreadable samples (``None``) are left out."""
    kept = [sample for sample in batch if sample is not None]
    return [image for image, _ in kept], [target for _, target in kept]


def native_loader(dataset: CocoDetection, batch_size: int, num_workers: int) -> DataLoader:
    """uint8 images at native size, in dataset order; under ``torchrun`` process r gets images r, r+W, ...
    (no padding samples, so the gathered detections cover every image exactly once)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(dataset), num_workers=num_workers,
                      collate_fn=_native_collate, pin_memory=torch.cuda.is_available())


def load_for_eval(checkpoint: str, val_ann: str, val_images: str,
                  device: torch.device) -> tuple[LoadedDetector, CocoDetection, v2.Transform]:
    """(detector of any ``load_detector`` format on ``device``, the val set as native uint8 images in the
    detector's label space, the detector's test resize), as ``detection eval`` sets them up."""
    loaded = load_detector(checkpoint, device=str(device))
    rows_are_ids = loaded.cat_ids == list(range(len(loaded.cat_ids)))
    dataset = CocoDetection(val_ann, val_images, v2.ToImage(), label_space="coco-ids" if rows_are_ids else "contiguous")
    unknown = sorted(set(dataset.coco.getCatIds()) - set(loaded.cat_ids))
    if unknown:
        raise ValueError(f"checkpoint {checkpoint} ({loaded.source}) was trained on category ids {loaded.cat_ids} but "
                         f"{val_ann} also has {unknown}: evaluate on the dataset it was trained on")
    return loaded, dataset, make_transforms(False, loaded.sizes).transforms[-1]


class _GatheringEvaluator(CocoEvaluator):
    """A :class:`CocoEvaluator` whose ``summarize`` only checks that every image was scored once (after
    ``before_check``, which re-raises a background job's error) and leaves COCOeval to the caller: rank 0
    keeps the gathered ``results`` and ``image_ids`` to score them in the background."""

    def __init__(self, coco_gt, cat_ids: list[int], before_check: Callable[[], None] | None) -> None:
        super().__init__(coco_gt, cat_ids)
        self.before_check = before_check

    def summarize(self) -> dict:
        return main_decides(self._check)

    def _check(self) -> dict:
        if self.before_check is not None:
            self.before_check()
        check_scored_once(self.image_ids)
        return {}


@dataclass
class InferredCell:
    """A cell whose inference is done (its detections handed to COCOeval separately) and its timing."""
    cell: CellKey
    timing: dict

    def record(self, stats: dict, score_seconds: float) -> dict:
        """The cell's record once COCOeval gave ``stats``: ``{"corruption", "severity", "AP", ..., "stats":
        [12], "images", "seconds" (inference + COCOeval), "corrupt_seconds", "inference_seconds"}``."""
        metrics = {k: v for k, v in stats.items() if k != "summary"}
        return {"corruption": self.cell.corruption, "severity": self.cell.severity, **metrics,
                **self.timing, "seconds": self.timing["seconds"] + score_seconds}


def infer_cell(model: torch.nn.Module, postprocessor: torch.nn.Module, dataset: CocoDetection, loader: DataLoader,
               resize: v2.Transform, cat_ids: list[int], device: torch.device, cell: CellKey, seed: int,
               progress: bool = True, amp: bool = False,
               before_check: Callable[[], None] | None = None) -> tuple[InferredCell, list[dict], list[int]]:
    """One cell's inference on every process → (the cell, its detections in the COCO results format and the
    scored image ids: every process's, sorted, on rank 0; empty elsewhere), checked (each image once;
    ``before_check`` runs first on rank 0, its error raised on every process) but not yet scored."""
    batches = CellBatches(loader, resize, device, cell.corruption, cell.severity, seed)
    evaluator = _GatheringEvaluator(dataset.coco, cat_ids, before_check)
    start = time.perf_counter()
    stats, _ = evaluate(model, postprocessor, batches, evaluator, device, amp=amp, progress=progress)
    timing = {"images": len(dataset), "seconds": time.perf_counter() - start,
              "corrupt_seconds": sum(all_gather_objects(batches.corrupt_seconds)),
              "inference_seconds": len(dataset) / stats["fps"] if stats["fps"] else 0.0}
    return InferredCell(cell, timing), evaluator.results, evaluator.image_ids


def _read_previous(path: Path, options: dict) -> list[dict]:
    """Finished cells of an earlier run with the same options (checkpoint, data, seed); refuses others."""
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is corrupt (not JSON): --overwrite starts this checkpoint's COCO-C over") from None
    if previous.get("options") != options:
        raise ValueError(f"{path} holds COCO-C cells for other options {previous.get('options')} (now {options}): "
                         "--overwrite to start over, choose another --out, or rerun with the same --checkpoint, data "
                         "and --seed to resume")
    return list(previous.get("cells", []))


def _previous_cells(path: Path, options: dict) -> list[dict]:
    """:func:`_read_previous` on rank 0, shared with every process (errors included): a process whose
    listing lags must not evaluate a cell the others skip."""
    return main_decides(lambda: _read_previous(path, options))


def checkpoint_options(checkpoint: str, val_ann: str, seed: int) -> dict:
    """What one checkpoint's COCO-C cells depend on (recorded in its ``coco_c.json``)."""
    return {"checkpoint": str(Path(checkpoint).resolve()), "val_ann": str(Path(val_ann).resolve()), "seed": seed}


def coco_c_checkpoint(checkpoint: str, val_ann: str, val_images: str, out: str | Path, names: Sequence[str],
                      severities: Sequence[int], *, seed: int = 0, device: torch.device | None = None,
                      batch_size: int = 2, num_workers: int | None = None, progress: bool = True,
                      label: str | None = None, amp: bool = False, cells_progress: Progress | None = None) -> dict:
    """COCO-C of one checkpoint into ``out`` (``coco_c.json``, ``report.md``, ``coco_c_ap.png``); resumes
    from the cells already in ``coco_c.json``. Returns the written result (see :func:`summarize_cells`)."""
    device = device or init_distributed(None)
    out, label = Path(out), label or run_name(checkpoint)
    options = checkpoint_options(checkpoint, val_ann, seed)
    loaded, dataset, resize = load_for_eval(checkpoint, val_ann, val_images, device)
    cells = _previous_cells(out / RESULT_FILE, options)
    done = {CellKey.of(c) for c in cells}
    loader = native_loader(dataset, batch_size, default_workers(num_workers))
    scorer = BackgroundScorer(dataset.coco) if is_main_process() else None

    def commit(inferred: InferredCell, stats: dict, score_seconds: float) -> None:
        """Rank 0, in cell order: the scored cell's record appended and the results file rewritten."""
        cells.append(inferred.record(stats, score_seconds))
        _write(out, label, checkpoint, options, cells, names, severities)
        if progress:
            print(f"{label} {inferred.cell}: AP {fmt(100 * cells[-1]['AP'], missing_below=0)} "
                  f"({cells[-1]['seconds']:.1f} s)", flush=True)
        if cells_progress is not None:
            cells_progress.update(label=f"{label} {inferred.cell}")

    def finished() -> list[dict]:
        """Rank 0 waits until every cell is scored and written (re-raising a scoring error)."""
        scorer.drain()
        return cells

    try:
        for cell in cell_keys(names, severities):
            if cell in done:
                continue
            inferred, results, image_ids = infer_cell(loaded.model, loaded.postprocessor, dataset, loader, resize,
                                                      loaded.cat_ids, device, cell, seed, progress, amp,
                                                      scorer.raise_error if scorer else None)
            if scorer is not None:
                scorer.submit(results, image_ids, functools.partial(commit, inferred))
        cells = main_decides(finished)
    finally:
        if scorer is not None:
            scorer.close()
    result = _write(out, label, checkpoint, options, cells, names, severities)
    if is_main_process():
        write_report(out, result, names, severities)
    return result


def _write(out: Path, label: str, checkpoint: str, options: dict, cells: list[dict], names: Sequence[str],
           severities: Sequence[int]) -> dict:
    result = {"label": label, "checkpoint": checkpoint, "options": options, "corruptions": list(names),
              "severities": list(severities), **summarize_cells(cells, names, severities), "cells": cells}
    if is_main_process():
        atomic_write_json(out / RESULT_FILE, result)
    return result


def run_name(checkpoint: str) -> str:
    """A checkpoint's name in tables and lines: its run folder's name when it sits in one (a folder marked as a
    run, or holding ``run.json``), else its file stem (a Hugging Face folder: the folder's name)."""
    path = Path(checkpoint)
    if path.is_dir():
        return path.name
    folder = path.parent
    try:
        in_run = read_marker(folder) is not None or (folder / "run.json").is_file()
    except ValueError:
        in_run = False
    return folder.resolve().name if in_run else path.stem


def run_names(checkpoints: Sequence[str], labels: Sequence[str] | None = None) -> list[str]:
    """``labels``, else :func:`run_name` of each checkpoint, made distinct with ``-2``, ``-3``, ..."""
    names: list[str] = []
    for base in labels or [run_name(c) for c in checkpoints]:
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def coco_c_options(checkpoints: Sequence[str], seed: int) -> dict:
    """The run-folder options of a COCO-C run (each checkpoint's ``coco_c.json`` checks its own cells)."""
    return {"checkpoints": [str(Path(c).resolve()) for c in checkpoints], "seed": seed}


def _check_inputs(checkpoints: Sequence[str], coco_root: str | None, val_ann: str | None,
                  val_images: str | None) -> tuple[str, str]:
    if not checkpoints:
        raise ValueError("no --checkpoint given")
    missing = [c for c in checkpoints if not Path(c).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {', '.join(missing)}")
    if coco_root:
        paths = coco_paths(coco_root)
        val_ann, val_images = paths["val_ann"], paths["val_images"]
    if not (val_ann and val_images):
        raise ValueError("no data given: pass --coco DIR or --val-ann and --val-images")
    return val_ann, val_images


def run_coco_c(checkpoints: Sequence[str], coco_root: str | None, out: str, corruptions: str | Sequence[str] = "all",
               severities: str | Sequence[int] = "1-5", seed: int = 0, device: str | None = None, *,
               val_ann: str | None = None, val_images: str | None = None, batch_size: int = 2,
               num_workers: int | None = None, progress: bool = True, labels: Sequence[str] | None = None,
               amp: bool = False, resume: bool = False, overwrite: bool = False) -> dict:
    """COCO-C of one or several checkpoints. One checkpoint writes ``out/coco_c.json``, ``out/report.md``
    and ``out/coco_c_ap.png``; several write those under ``out/<name>/`` plus a comparison table
    ``out/report.md`` (names: ``labels``, else :func:`run_names`). Returns ``{"runs": {name: {"checkpoint",
    "clean_ap", "mpc", "rpc", "out"}}, "table": md}`` (AP values in [0, 1]). Names and severities are
    validated before any work (ValueError); the same command again keeps the finished cells."""
    names, sevs = parse_corruptions(corruptions), parse_severities(severities)
    torch_device = init_distributed(device)
    val_ann, val_images = main_decides(lambda: _check_inputs(checkpoints, coco_root, val_ann, val_images))
    tags = main_decides(lambda: run_names(checkpoints, labels))
    folders = ["."] if len(checkpoints) == 1 else tags
    opened = open_run(out, KIND, coco_c_options(checkpoints, seed), resume=resume, overwrite=overwrite,
                      files=[f"{f}/{RESULT_FILE}" for f in folders] + ["report.md"], compatible=lambda old, new: True)
    root = opened.path
    grid = set(cell_keys(names, sevs))
    done = sum(CellKey.of(cell) in grid for f, c in zip(folders, checkpoints)
               for cell in _previous_cells(root / f / RESULT_FILE, checkpoint_options(c, val_ann, seed)))
    total = len(checkpoints) * len(grid)
    if is_main_process():
        announce(root)
    say_resumed(opened, f"{done} cells already done, kept")
    bar = Progress(total, unit="cell", done=done, enabled=progress, desc="COCO-C")
    runs = {}
    for tag, folder, checkpoint in zip(tags, folders, checkpoints):
        result = coco_c_checkpoint(checkpoint, val_ann, val_images, root / folder, names, sevs, seed=seed,
                                   device=torch_device, batch_size=batch_size, num_workers=num_workers,
                                   progress=progress, label=tag, amp=amp, cells_progress=bar)
        runs[tag] = {"checkpoint": checkpoint, "out": str(root if folder == "." else root / folder),
                     **{k: result.get(k) for k in ("clean_ap", "mpc", "rpc", "corruption_ap")}}
    bar.close()
    table = comparison_table(runs, names, sevs)
    if is_main_process():
        if len(checkpoints) > 1:
            atomic_write_text(root / "report.md", table)
        print(table, end="")
        announce(root, finished=True)
    return {"runs": runs, "table": table}
