"""COCOeval of finished cells in one background process while the caller runs the next cell's inference.

Why a process and not a thread: COCOeval is mostly Python (``evaluateImg`` loops over images × categories ×
areas) and holds the GIL for seconds at a time. The inference thread gives the GIL up at every blocking call
(a CUDA synchronise, a device→host copy, the DataLoader's queue) and each time waits up to the interpreter's
5 ms switch interval to get it back: measured here, 300 waits of 0.1 ms took 0.05 s alone and 1.6 s beside a
Python-bound thread. A spawned process (never forked: the parent may hold CUDA) scores in parallel without
that; it costs one copy of the ground truth and the pickling of each cell's detections (one cell's list of
result dicts, fed to the pipe by a ``multiprocessing.Queue`` thread, so handing it over does not wait for the
process to be free).

Guarantees: cells are scored and committed in submission order (one process, FIFO); at most
``max_pending`` cells are handed over and not yet committed (``submit`` waits for a slot, which bounds the
memory to that many cells' detections); a commit (``on_scored``, e.g. writing the results file) runs in a
parent thread under a lock, and after :meth:`close` none runs any more. An error in the process or in a
commit is kept, the jobs after it are neither scored nor committed, and :meth:`raise_error` / :meth:`drain`
re-raise it in the caller's thread (call them where every rank can learn of it, e.g. inside
``common.distributed.main_decides``). The process ignores Ctrl-C (the parent handles it and ends the process).
"""
from __future__ import annotations

import collections
import contextlib
import io
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from typing import Any, Callable

from pycocotools.coco import COCO

from detection.coco_eval import coco_stats

POLL_SECONDS = 0.5  # how often blocked waits look at the process's health (never a result's latency)


def _serve(score: Callable[[COCO, list, list], dict], dataset: dict, jobs: Any, done: Any) -> None:
    """The process: the ground truth indexed once, then ``(results, image_ids)`` → ``(True, (stats, seconds))``
    or ``(False, error)`` until ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    coco_gt = COCO()
    coco_gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    while (job := jobs.get()) is not None:
        try:
            start = time.perf_counter()
            stats = score(coco_gt, *job)
            done.put((True, (stats, time.perf_counter() - start)))
        except Exception as err:  # noqa: BLE001 - handed to the parent and re-raised there
            done.put((False, _picklable(err)))


def _picklable(err: Exception) -> Exception:
    """``err`` if it survives pickling (type and message kept), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(err).__name__}: {err}")


class BackgroundScorer:
    """COCOeval (``detection.coco_eval.coco_stats``) of ``coco_gt``'s detections in a spawned process,
    started at the first :meth:`submit`."""

    def __init__(self, coco_gt: COCO, max_pending: int = 2) -> None:
        self._dataset = coco_gt.dataset
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Condition()
        self._waiting: collections.deque[Callable[[dict, float], None]] = collections.deque()
        self._error: BaseException | None = None
        self._closed = False
        self._process: multiprocessing.process.BaseProcess | None = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._jobs, self._done = context.Queue(), context.Queue()
        self._jobs.cancel_join_thread()  # exiting never waits on a pipe the ended process no longer reads
        self._process = context.Process(target=_serve, args=(coco_stats, self._dataset, self._jobs, self._done),
                                        name="coco-eval", daemon=True)
        self._process.start()
        threading.Thread(target=self._receive, name="coco-eval-results", daemon=True).start()

    def submit(self, results: list[dict], image_ids: list[int], on_scored: Callable[[dict, float], None]) -> None:
        """Score ``results`` over ``image_ids`` in the background, then call ``on_scored(stats, seconds)``
        (``coco_stats``'s dict; COCOeval's seconds). Waits while ``max_pending`` cells are in flight. Never
        raises an earlier job's error (so that no rank fails alone): after one, the job is dropped."""
        while not self._slots.acquire(timeout=POLL_SECONDS):
            if self._error is not None:
                return
        if self._error is not None:
            self._slots.release()
            return
        if self._process is None:
            self._start()
        with self._lock:
            self._waiting.append(on_scored)
        self._jobs.put((results, image_ids))

    def _receive(self) -> None:
        """Parent thread: each result, in order, committed under the lock (or its error kept)."""
        while True:
            try:
                ok, value = self._done.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._process.is_alive():
                    continue
                with self._lock:
                    if not self._closed:
                        self._fail(RuntimeError(f"the COCOeval process ended unexpectedly (exit code "
                                                f"{self._process.exitcode}) with {len(self._waiting)} cell(s) unscored"))
                    self._release_all()
                return
            with self._lock:
                on_scored = self._waiting.popleft()
                if not ok:
                    self._fail(value)
                elif self._error is None and not self._closed:
                    try:
                        on_scored(*value)
                    except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                        self._fail(err)
                self._lock.notify_all()
            self._slots.release()

    def _fail(self, err: BaseException) -> None:
        if self._error is None:
            self._error = err
        self._lock.notify_all()

    def _release_all(self) -> None:
        while self._waiting:
            self._waiting.popleft()
            self._slots.release()
        self._lock.notify_all()

    def raise_error(self) -> None:
        """Re-raise the first error of a background job (or commit), if any."""
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait until every submitted job is committed; re-raise the first error. Ctrl-C interrupts the wait."""
        with self._lock:
            while self._waiting and self._error is None:
                self._lock.wait(timeout=POLL_SECONDS)
        self.raise_error()

    def close(self) -> None:
        """End the process. Jobs not yet committed are abandoned (after :meth:`drain` there are none) and no
        commit runs once this returns."""
        with self._lock:
            self._closed = True
        if self._process is None:
            return
        if self._process.is_alive():
            if self._waiting:
                self._process.terminate()
            else:
                self._jobs.put(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
