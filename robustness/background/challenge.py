"""The Background Challenge (Xiao et al., ICLR 2021), exact and batched.

A foreground (an ``original`` image ``x`` with binary mask ``m``, class ``c``) is pasted on every
background ``b`` of ``only_bg_t``: ``b·(1−m) + x·m``. It is *robust* when the model predicts ``c`` on
all of them; the challenge accuracy is the share of robust foregrounds. The authors' loop tries one
foreground at a time against the backgrounds in file order (batches of 32) and stops at the first
fooling one. Here one forward pass holds many (foreground, background) pairs:

* a pool of foregrounds is evaluated together; each foreground stops at its first fooling background;
* each foreground tries its untried backgrounds in order of how often they fooled earlier foregrounds
  (of its class first, then of any class); ties (at first, all backgrounds) are broken by file order
  rotated by a per-foreground offset, so the foregrounds of one pass explore different backgrounds and
  the counts learn fast. A foreground gets as many slots per pass as it has tried backgrounds so far
  (1, 1, 2, 4, ...): foregrounds that fall quickly waste no slots and robust ones finish in few passes.

Whether a foreground is robust does not depend on the order in which its backgrounds are tried, so the
answer is the authors'; only the number of forward passes changes. For every foreground we also bound
the number of forward passes the authors' loop would have spent on it (exact for robust foregrounds).

Resume: every finished foreground is appended (fsynced) to ``<progress_dir>/challenge.rank<r>.jsonl``;
a new run reads every such file, whatever the earlier world size, and skips what is done. Under
``torchrun`` each process takes every W-th unfinished foreground; records are gathered, totals exact.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from common import io
from common.distributed import all_gather_objects, get_rank, get_world_size, is_main_process
from robustness.background import layout

REFERENCE_BATCH = 32  # the authors' challenge_eval.py batch size
ORDERS = ("adaptive", "file", "shuffled")
Predict = Callable[[torch.Tensor], torch.Tensor]  # float (B,3,H,W) in [0,1] → int64 (B,) IN-9 labels, −1 = none


@dataclass
class ChallengeResult:
    """Totals of one challenge run (over every process and every resumed run)."""

    robust: int
    total: int
    forward_passes: int
    images: int
    reference_passes_min: int
    reference_passes_max: int
    per_class: dict[str, list[int]] = field(default_factory=dict)  # class → [robust, total]

    @property
    def accuracy(self) -> float | None:
        """Challenge accuracy in percent (None when no foreground was evaluated)."""
        return 100.0 * self.robust / self.total if self.total else None


@dataclass
class _Pool:
    """The foregrounds evaluated together: images uint8 (A,3,H,W), masks bool (A,1,H,W), labels (A,),
    tie-break offsets (A,), and bool (A,NB) backgrounds tried / found fooling."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    tried: torch.Tensor
    fooled: torch.Tensor
    items: list[layout.Foreground]


def backgrounds_fingerprint(samples: list[layout.Sample]) -> str:
    """A short hash of the background list: progress records are only reused for the same backgrounds."""
    return hashlib.sha256("\n".join(s.key for s in samples).encode()).hexdigest()[:16]


def load_backgrounds(samples: list[layout.Sample], device: torch.device) -> torch.Tensor:
    """uint8 (NB,3,H,W) backgrounds on ``device`` (the release's 4,050 at 224² take 0.6 GB)."""
    return torch.stack([layout.read_image(s.path) for s in samples]).to(device)


def read_progress(progress_dir: str | os.PathLike, fingerprint: str) -> dict[str, dict]:
    """Finished foregrounds recorded by earlier runs (any world size): key → record."""
    done: dict[str, dict] = {}
    for path in sorted(Path(progress_dir).glob("challenge.rank*.jsonl")):
        done.update((r["fg"], r) for r in io.read_jsonl(path) if r.get("backgrounds") == fingerprint)
    return done


def run_challenge(predict: Predict, root: str | os.PathLike, progress_dir: str | os.PathLike, *,
                  device: torch.device, limit: int | None = None, batch_size: int = 256,
                  order: str = "adaptive", seed: int = 0, progress: bool = False) -> ChallengeResult:
    """Run (or resume) the challenge on ``<root>`` (see the module doc); every process returns the totals.

    ``limit``: the first N foregrounds per class only (a quick estimate). ``order``: "adaptive" (the
    default, fewest passes), "file" or "shuffled" (seeded): the answer is the same for all three.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown background order {order!r}: choose from {ORDERS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    foregrounds = layout.challenge_foregrounds(root, limit)
    bg_samples = layout.variant_samples(root, layout.BACKGROUNDS)
    fingerprint = backgrounds_fingerprint(bg_samples)
    bg_size = layout.check_sizes([s.path for s in bg_samples], layout.BACKGROUNDS)
    fg_size = layout.check_sizes([f.image for f in foregrounds], "original")
    if fg_size != bg_size:
        raise ValueError(f"IN-9: original images are {fg_size[1]}x{fg_size[0]} but only_bg_t backgrounds are "
                         f"{bg_size[1]}x{bg_size[0]}: the challenge pastes one onto the other")
    wanted = {f.key for f in foregrounds}
    # Rank 0 reads the progress for everyone before any process writes: all shard the same list.
    earlier = all_gather_objects(read_progress(progress_dir, fingerprint) if is_main_process() else None)[0]
    done = {k: r for k, r in earlier.items() if k in wanted}
    todo = [f for f in foregrounds if f.key not in done]
    mine = todo[get_rank()::get_world_size()]
    new: list[dict] = []
    if mine:
        backgrounds = load_backgrounds(bg_samples, device)
        log = Path(progress_dir) / f"challenge.rank{get_rank()}.jsonl"
        engine = _Engine(predict, backgrounds, device, batch_size, order, seed, list(done.values()))
        bar = tqdm(total=len(mine), desc="background challenge", disable=not (progress and is_main_process()),
                   leave=False)
        for record in engine.run(mine):
            record["backgrounds"] = fingerprint
            io.append_jsonl(log, record)
            new.append(record)
            bar.update(1)
        bar.close()
    for records in all_gather_objects(new):
        done.update((r["fg"], r) for r in records)
    return summarize_records([done[f.key] for f in foregrounds])


def summarize_records(records: list[dict]) -> ChallengeResult:
    """Totals of finished-foreground records."""
    per_class: dict[str, list[int]] = {}
    for r in records:
        tally = per_class.setdefault(layout.IN9_CLASSES[r["label"]], [0, 0])
        tally[0] += int(r["robust"])
        tally[1] += 1
    return ChallengeResult(
        robust=sum(int(r["robust"]) for r in records), total=len(records),
        forward_passes=sum(r["passes"] for r in records), images=sum(r["images"] for r in records),
        reference_passes_min=sum(r["reference_passes"][0] for r in records),
        reference_passes_max=sum(r["reference_passes"][1] for r in records),
        per_class=dict(sorted(per_class.items())))


def reference_passes(tried: torch.Tensor, fooled_by: list[int], batch: int = REFERENCE_BATCH) -> tuple[int, int]:
    """Bounds on the forward passes the authors' loop spends on one foreground (batches of ``batch`` in
    file order, stopping at the batch holding the first fooling background).

    ``tried``: bool (NB,) backgrounds evaluated; ``fooled_by``: the fooling ones among them (empty: robust,
    every background tried, exact). The first fooling background lies between the first background not
    known to be harmless and the first known fooling one.
    """
    if not fooled_by:
        exact = math.ceil(tried.numel() / batch)
        return exact, exact
    harmless = tried.clone()
    harmless[fooled_by] = False
    first_unknown = int((~harmless).nonzero()[0])
    return first_unknown // batch + 1, min(fooled_by) // batch + 1


class _Engine:
    """The batched search: keeps a pool of foregrounds and yields one record per finished foreground."""

    def __init__(self, predict: Predict, backgrounds: torch.Tensor, device: torch.device, batch_size: int,
                 order: str, seed: int, earlier: list[dict]) -> None:
        self.predict, self.backgrounds, self.device = predict, backgrounds, device
        self.batch_size, self.order = batch_size, order
        nb = backgrounds.shape[0]
        self.fooled_class = torch.zeros(len(layout.IN9_CLASSES), nb, dtype=torch.int64, device=device)
        for r in earlier:  # resumed runs keep the order learnt so far
            self.fooled_class[r["label"], r["fooled_by"]] += 1
        rank = torch.arange(nb, device=device)
        if order == "shuffled":
            rank = torch.randperm(nb, generator=torch.Generator().manual_seed(seed)).to(device)
        self.file_rank = rank  # tie-break: lower rank first
        self.passes_since_record = 0

    def _priority(self, pool: _Pool) -> torch.Tensor:
        """int64 (A, NB): higher = try sooner (fooling counts of the class, then of all classes, then rank)."""
        nb = self.file_rank.numel()
        if self.order != "adaptive":
            return (nb - 1 - self.file_rank).unsqueeze(0).repeat(len(pool.items), 1)
        base = nb - 1 - (self.file_rank.unsqueeze(0) + pool.offsets.unsqueeze(1)) % nb
        total = self.fooled_class.sum(0)
        return (self.fooled_class[pool.labels] * (nb + 1) + total) * nb + base

    def _plan(self, pool: _Pool) -> tuple[torch.Tensor, torch.Tensor]:
        """(foreground slot, background index) pairs for one forward pass, at most ``batch_size``."""
        n_tried = pool.tried.sum(1)
        want = torch.minimum(n_tried.clamp(min=1), pool.tried.shape[1] - n_tried)
        grant = (self.batch_size - (want.cumsum(0) - want)).clamp(min=0)
        grant = torch.minimum(want, grant)
        k = int(grant.max())
        priority = self._priority(pool).masked_fill(pool.tried, -1)
        top = priority.topk(k, dim=1).indices  # (A, k): best untried backgrounds first
        take = torch.arange(k, device=self.device).unsqueeze(0) < grant.unsqueeze(1)
        fg = torch.arange(len(pool.items), device=self.device).unsqueeze(1).expand_as(top)
        return fg[take], top[take]

    def _step(self, pool: _Pool) -> torch.Tensor:
        """One forward pass; returns bool (A,) foregrounds finished (fooled, or every background tried)."""
        fg, bg = self._plan(pool)
        composite = torch.where(pool.masks[fg], pool.images[fg], self.backgrounds[bg]).float().div_(255)
        fooled = self.predict(composite).to(self.device) != pool.labels[fg]
        self.passes_since_record += 1
        pool.tried[fg, bg] = True
        pool.fooled[fg[fooled], bg[fooled]] = True
        self.fooled_class.index_put_((pool.labels[fg[fooled]], bg[fooled]), torch.ones_like(bg[fooled]), accumulate=True)
        return pool.fooled.any(1) | pool.tried.all(1)

    def _record(self, pool: _Pool, i: int) -> dict:
        fooled = pool.fooled[i].nonzero().flatten().tolist()
        record = {"fg": pool.items[i].key, "label": pool.items[i].label, "robust": not fooled, "fooled_by": fooled,
                  "images": int(pool.tried[i].sum()), "passes": self.passes_since_record,
                  "reference_passes": list(reference_passes(pool.tried[i], fooled))}
        self.passes_since_record = 0
        return record

    def run(self, foregrounds: list[layout.Foreground]) -> Iterator[dict]:
        """Evaluate ``foregrounds``; yields each one's record as soon as it is finished."""
        queue = enumerate(foregrounds)
        pool = self._new_pool()
        while True:
            self._refill(pool, queue)
            if not pool.items:
                return
            finished = self._step(pool).tolist()
            for i in [i for i, f in enumerate(finished) if f]:
                yield self._record(pool, i)
            self._keep(pool, [not f for f in finished])

    def _new_pool(self) -> _Pool:
        _, c, h, w = self.backgrounds.shape
        nb = self.backgrounds.shape[0]
        return _Pool(torch.empty(0, c, h, w, dtype=torch.uint8, device=self.device),
                     torch.empty(0, 1, h, w, dtype=torch.bool, device=self.device),
                     torch.empty(0, dtype=torch.int64, device=self.device),
                     torch.empty(0, dtype=torch.int64, device=self.device),
                     torch.empty(0, nb, dtype=torch.bool, device=self.device),
                     torch.empty(0, nb, dtype=torch.bool, device=self.device), [])

    def _refill(self, pool: _Pool, queue: Iterator[tuple[int, layout.Foreground]]) -> None:
        """Top the pool up to ``batch_size`` foregrounds (read from disk)."""
        numbered = [item for _, item in zip(range(self.batch_size - len(pool.items)), queue)]
        if not numbered:
            return
        new = [f for _, f in numbered]
        nb = self.backgrounds.shape[0]
        offsets = torch.tensor([int(i * 0.6180339887 * nb) % nb for i, _ in numbered], device=self.device)
        size = tuple(self.backgrounds.shape[-2:])
        images = torch.stack([layout.read_image(f.image) for f in new]).to(self.device)
        masks = torch.stack([layout.read_mask(f.mask, size) for f in new]).unsqueeze(1).to(self.device)
        pool.images = torch.cat([pool.images, images])
        pool.masks = torch.cat([pool.masks, masks])
        pool.labels = torch.cat([pool.labels, torch.tensor([f.label for f in new], device=self.device)])
        pool.offsets = torch.cat([pool.offsets, offsets])
        fresh = torch.zeros(len(new), nb, dtype=torch.bool, device=self.device)
        pool.tried = torch.cat([pool.tried, fresh])
        pool.fooled = torch.cat([pool.fooled, fresh])
        pool.items += new

    @staticmethod
    def _keep(pool: _Pool, keep: list[bool]) -> None:
        index = [i for i, k in enumerate(keep) if k]
        pool.images, pool.masks = pool.images[index], pool.masks[index]
        pool.labels, pool.offsets = pool.labels[index], pool.offsets[index]
        pool.tried, pool.fooled = pool.tried[index], pool.fooled[index]
        pool.items = [pool.items[i] for i in index]
