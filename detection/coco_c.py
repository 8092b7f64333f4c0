"""COCO-C on the fly: a detector's AP on the clean val set and under every (corruption, severity) cell.

The benchmark (Michaelis et al. 2019, arXiv 1907.07484) corrupts each COCO val image at its native,
non-square size with ``imagecorruptions`` and stores it as uint8; the detector then resizes it as usual.
Here each image is read at its native size as uint8, corrupted on the detector's device with the batched
``corruptions.corrupt``, quantised to uint8 like the reference (``np.uint8`` truncation of the [0, 255]
result), then resized and padded exactly as ``detection eval`` does and scored with COCOeval.

- mPC = mean AP over the corruption × severity cells; rPC = mPC / clean AP.
- Reproducible: image ``i`` in cell (corruption, severity) is corrupted with its own generator seeded from
  (seed, corruption, severity, image id), so batching and ``torchrun`` sharding do not change any pixel.
  Same-size images of a batch are corrupted in one call (``corrupt`` with one generator per image).
- Resumable by cell: ``coco_c.json`` is rewritten atomically after every finished cell and a rerun with
  the same checkpoint, data and seed skips the cells it holds.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import corruptions
from common.distributed import all_gather_objects, get_rank, get_world_size, init_distributed, is_main_process
from common.io import atomic_write_json, atomic_write_text
from common.rundir import announce, claim
from detection.coco_c_report import comparison_table, write_report
from detection.coco_eval import CocoEvaluator
from detection.data import CocoDetection, coco_paths, collate, make_transforms
from detection.engine import evaluate
from detection.load import LoadedDetector, load_detector

CLEAN = "clean"
KIND = "detection-coco-c"  # the run-folder marker kind (common.rundir)
RESULT_FILE = "coco_c.json"


def parse_corruptions(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` (the 15 ImageNet-C corruptions), or names separated by commas/spaces → validated names."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    names = [n for part in parts for n in part.replace(",", " ").split()]
    if names == ["all"]:
        return corruptions.CORRUPTIONS
    if not names:
        raise ValueError("--corruptions is empty: give 'all' or names such as 'gaussian_noise,fog'")
    unknown = [n for n in names if n not in corruptions.ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(f"--corruptions: unknown name(s) {', '.join(unknown)}; valid: all or "
                         f"{', '.join(corruptions.ALL_CORRUPTIONS)}")
    return tuple(dict.fromkeys(names))


def parse_severities(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"1-5"``, ``"1,3,5"``, ``"3"`` or a list of ints → sorted severities in 1..5."""
    if not isinstance(spec, str):
        spec = ",".join(str(s) for s in spec)
    values: list[int] = []
    try:
        for part in spec.replace(" ", ",").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            values.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--severities {spec!r} is not a list or range of integers: use e.g. 1-5 or 1,3,5") from None
    if not values or any(not 1 <= v <= 5 for v in values):
        raise ValueError(f"--severities {spec!r} must name severities in 1..5, e.g. 1-5 or 1,3,5")
    return tuple(sorted(set(values)))


def image_seed(seed: int, corruption: str, severity: int, image_id: int) -> int:
    """A 63-bit seed for one image in one cell, independent of batching, sharding and run order."""
    digest = hashlib.blake2b(f"{seed}/{corruption}/{severity}/{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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
        corrupted = corruptions.corrupt(batch, corruption, severity, generators)
        for k, i in enumerate(members):
            out[i] = _quantise(corrupted[k])
    return out  # type: ignore[return-value]


class CellBatches:
    """Batches of one cell for ``engine.evaluate``: native uint8 images → corrupted on ``device`` →
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
    shard = list(range(get_rank(), len(dataset), get_world_size()))
    return DataLoader(dataset, batch_size=batch_size, sampler=shard, num_workers=num_workers,
                      collate_fn=_native_collate, pin_memory=torch.cuda.is_available())


def summarize_cells(cells: Sequence[dict], names: Sequence[str], severities: Sequence[int]) -> dict:
    """Clean AP, mPC (mean AP over the names × severities cells), rPC = mPC / clean AP and the mean AP
    per corruption, from per-cell records ``{"corruption", "severity", "AP", ...}`` (AP in [0, 1])."""
    ap = {(c["corruption"], c["severity"]): c["AP"] for c in cells}
    clean = ap.get((CLEAN, 0))
    grid = [(n, s) for n in names for s in severities]
    if clean is None or any(cell not in ap for cell in grid):
        return {"complete": False}
    per = {n: sum(ap[(n, s)] for s in severities) / len(severities) for n in names}
    mpc = sum(ap[cell] for cell in grid) / len(grid)
    return {"complete": True, "clean_ap": clean, "mpc": mpc, "rpc": mpc / clean if clean > 0 else 0.0,
            "corruption_ap": per, "cells_in_mpc": len(grid)}


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


def evaluate_cell(model: torch.nn.Module, postprocessor: torch.nn.Module, dataset: CocoDetection, loader: DataLoader,
                  resize: v2.Transform, cat_ids: list[int], device: torch.device, corruption: str, severity: int,
                  seed: int, progress: bool = True) -> dict:
    """One cell → ``{"corruption", "severity", "AP", ..., "stats": [12], "images", "seconds",
    "corrupt_seconds", "inference_seconds"}`` (detections of every process gathered before COCOeval)."""
    batches = CellBatches(loader, resize, device, corruption, severity, seed)
    start = time.perf_counter()
    stats, _ = evaluate(model, postprocessor, batches, CocoEvaluator(dataset.coco, cat_ids), device, progress=progress)
    seconds = time.perf_counter() - start
    timing = {"images": len(dataset), "seconds": seconds,
              "corrupt_seconds": sum(all_gather_objects(batches.corrupt_seconds)),
              "inference_seconds": sum(all_gather_objects(len(loader.sampler) / stats["fps"] if stats["fps"] else 0.0))}
    metrics = {k: v for k, v in stats.items() if k not in ("summary", "fps", "latency_ms")}
    return {"corruption": corruption, "severity": severity, **metrics, **timing}


def _read_previous(path: Path, options: dict) -> list[dict]:
    """Finished cells of an earlier run with the same options (checkpoint, data, seed); refuses others."""
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is corrupt (not JSON): delete it to start this checkpoint's COCO-C over") from None
    if previous.get("options") != options:
        raise ValueError(f"{path} holds COCO-C cells for other options {previous.get('options')} (now {options}): "
                         "choose another --out, or rerun with the same --checkpoint, data and --seed to resume")
    return list(previous.get("cells", []))


def _previous_cells(path: Path, options: dict) -> list[dict]:
    """:func:`_read_previous` on the main process, shared with every process (errors included, so that
    no process waits on the others)."""
    found: tuple[list[dict] | None, str | None] = ([], None)
    if is_main_process():
        try:
            found = (_read_previous(path, options), None)
        except ValueError as err:
            found = (None, str(err))
    cells, error = all_gather_objects(found)[0]
    if error:
        raise ValueError(error)
    return cells


def coco_c_checkpoint(checkpoint: str, val_ann: str, val_images: str, out: str | Path, names: Sequence[str],
                      severities: Sequence[int], *, seed: int = 0, device: torch.device | None = None,
                      batch_size: int = 2, num_workers: int = 2, progress: bool = True) -> dict:
    """COCO-C of one checkpoint into ``out`` (``coco_c.json``, ``report.md``, ``coco_c_ap.png``); resumes
    from the cells already in ``coco_c.json``. Returns the written result (see :func:`summarize_cells`)."""
    device = device or init_distributed(None)
    out = Path(out)
    options = {"checkpoint": str(Path(checkpoint).resolve()), "val_ann": str(Path(val_ann).resolve()), "seed": seed}
    loaded, dataset, resize = load_for_eval(checkpoint, val_ann, val_images, device)
    model, postprocessor, cat_ids = loaded.model, loaded.postprocessor, loaded.cat_ids
    cells = _previous_cells(out / RESULT_FILE, options)
    done = {(c["corruption"], c["severity"]) for c in cells}
    loader = native_loader(dataset, batch_size, num_workers)
    for corruption, severity in [(CLEAN, 0)] + [(n, s) for n in names for s in severities]:
        if (corruption, severity) in done:
            continue
        cells.append(evaluate_cell(model, postprocessor, dataset, loader, resize, cat_ids, device, corruption, severity,
                                   seed, progress))
        _write(out, checkpoint, options, cells, names, severities)
        if is_main_process() and progress:
            print(f"{Path(checkpoint).name} {corruption} {severity}: AP {100 * cells[-1]['AP']:.1f} "
                  f"({cells[-1]['seconds']:.1f} s)", flush=True)
    result = _write(out, checkpoint, options, cells, names, severities)
    if is_main_process():
        write_report(out, result, names, severities)
    return result


def _write(out: Path, checkpoint: str, options: dict, cells: list[dict], names: Sequence[str],
           severities: Sequence[int]) -> dict:
    result = {"checkpoint": checkpoint, "options": options, "corruptions": list(names), "severities": list(severities),
              **summarize_cells(cells, names, severities), "cells": cells}
    if is_main_process():
        atomic_write_json(out / RESULT_FILE, result)
    return result


def _tags(checkpoints: Sequence[str]) -> list[str]:
    """A short distinct name per checkpoint: its folder for ``.../run/checkpoint.pth``, else its file stem."""
    tags: list[str] = []
    for path in map(Path, checkpoints):
        base = path.parent.name if path.stem == "checkpoint" and path.parent.name else path.stem
        tag, k = base, 2
        while tag in tags:
            tag, k = f"{base}-{k}", k + 1
        tags.append(tag)
    return tags


def run_coco_c(checkpoints: Sequence[str], coco_root: str | None, out: str, corruptions: str | Sequence[str] = "all",
               severities: str | Sequence[int] = "1-5", seed: int = 0, device: str | None = None, *,
               val_ann: str | None = None, val_images: str | None = None, batch_size: int = 2, num_workers: int = 2,
               progress: bool = True) -> dict:
    """COCO-C of one or several checkpoints. One checkpoint writes ``out/coco_c.json``, ``out/report.md``
    and ``out/coco_c_ap.png``; several write those under ``out/<name>/`` plus a comparison table
    ``out/report.md``. Returns ``{"runs": {name: {"checkpoint", "clean_ap", "mpc", "rpc", "out"}}, "table": md}``
    (AP values in [0, 1]). Names and severities are validated before any work (ValueError)."""
    names, sevs = parse_corruptions(corruptions), parse_severities(severities)
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
    torch_device = init_distributed(device)
    options = {"checkpoints": [str(Path(c).resolve()) for c in checkpoints], "seed": seed}
    root = claim(out, KIND, options) if is_main_process() else Path(out)
    if is_main_process():
        announce(root)
    runs = {}
    for tag, checkpoint in zip(_tags(checkpoints), checkpoints):
        folder = root if len(checkpoints) == 1 else root / tag
        result = coco_c_checkpoint(checkpoint, val_ann, val_images, folder, names, sevs, seed=seed, device=torch_device,
                                   batch_size=batch_size, num_workers=num_workers, progress=progress)
        runs[tag] = {"checkpoint": checkpoint, "out": str(folder),
                     **{k: result.get(k) for k in ("clean_ap", "mpc", "rpc", "corruption_ap")}}
    table = comparison_table(runs, names, sevs)
    if is_main_process():
        if len(checkpoints) > 1:
            atomic_write_text(root / "report.md", table)
        print(table, end="")
        announce(root, finished=True)
    return {"runs": runs, "table": table}
