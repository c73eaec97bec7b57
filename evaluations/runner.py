"""Run a spec's cells on a local process pool, persisting each finished cell at once.

- A run directory belongs to one spec: the store records the spec's content hash and the privfl /
  torch versions (:func:`bind_run_dir`); a different spec or version is refused unless ``force``.
- The grid is counted before it is expanded and refused above ``max_cells``; every distinct
  scenario is validated before anything runs.
- Each cell runs in a worker process (``spawn``; ``torch.set_num_threads(1)`` — on a shared
  machine two torch threads per core can be 100× slower) and the worker writes its row to the
  SQLite store itself, so a finished cell survives a crash of anything else. A worker whose parent
  died finishes and saves the cell it is running, then exits (checked every 0.5 s).
- Re-running the same spec into the same directory resumes: ``done`` cells are skipped,
  failed ones run again.
- A cell that raises is recorded with its traceback and the others go on. A worker process
  that dies (killed, out of memory) fails the cells that were in flight — they are recorded as
  failed with the reason — and the run continues on a fresh pool.
- ``workers=0`` runs cells in this process (same numerics: one thread per cell either way).
- Progress counts finished cells; the time left is estimated from the measured cost of finished
  cells of the same kind (:class:`Progress`). On a terminal a bar, otherwise a plain line on the
  ``privfl`` logger every ``PROGRESS_EVERY_S`` seconds. Inside a cell, long loops (attacks, reference
  models, audits) log on ``privfl.*`` (:mod:`privfl.progress`); pool workers forward those records to
  this process through a queue (:class:`_LogForwarder`), each tagged with its cell, where the
  ``privfl`` logger's handlers print them (above the bar on a terminal).

**Backend seam.** :func:`compute_cell` is the unit of work a backend submits: it takes a cell's
JSON payload and returns the cell's row (plain JSON, no store access). The driver (or a local
worker, for durability) writes that row with :func:`write_outcome`, then reports it to
:class:`Progress` with ``finished(payload, status, seconds)``. A distributed backend runs
``compute_cell`` remotely and calls ``write_outcome`` in the driver, which owns the store:
``backend="ray"`` (or a ``RayBackend``) runs the pending cells on Ray that way, on one machine or a
cluster, with the same store and resume (``evaluations/ray_backend.py``).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from privfl.evaluations.cells import PROGRESS_EVERY_S, Progress, compute_cell, payload_of, write_outcome
from privfl.evaluations.scenario import SpecError
from privfl.evaluations.spec import MAX_CELLS, Spec
from privfl.evaluations.store import Store, StoreError, provenance

__all__ = ["run_spec", "RunSummary", "default_workers", "compute_cell", "write_outcome", "bind_run_dir",
           "RunDirInUse", "Progress", "PROGRESS_EVERY_S"]

log = logging.getLogger("privfl")
_WATCH_EVERY_S = 0.5


class RunDirInUse(StoreError):
    """The run directory holds results of another spec or another privfl / torch version."""


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int
    done: int
    failed: int

    @property
    def ok(self) -> bool:
        return self.failed == 0


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------ one cell
_WORKER: dict[str, Any] = {"parent": None, "busy": False, "cell": None}


def _orphaned() -> bool:
    return _WORKER["parent"] is not None and os.getppid() != _WORKER["parent"]


def _watch_parent() -> None:
    while True:
        time.sleep(_WATCH_EVERY_S)
        if _orphaned() and not _WORKER["busy"]:
            os._exit(0)


def _init_worker(parent: int, log_queue: Any = None, log_level: int = logging.WARNING) -> None:
    torch.set_num_threads(1)
    _WORKER["parent"] = parent
    if log_queue is not None:
        _log_to_parent(log_queue, log_level)
    threading.Thread(target=_watch_parent, name="privfl-parent-watch", daemon=True).start()


# ------------------------------------------------------------------------------------ worker logs
class _CellTag(logging.Filter):
    """Prefixes a worker's record with the cell it is running (the parent interleaves several workers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _WORKER["cell"]:
            record.msg, record.args = f"[{_WORKER['cell']}] {record.getMessage()}", None
        return True


def _log_to_parent(log_queue: Any, level: int) -> None:
    """A worker's ``privfl`` logger (and its children: ``privfl.attacks``, ``privfl.audit``, ...) sends its
    records, at the parent's level, to the parent through ``log_queue``."""
    handler = logging.handlers.QueueHandler(log_queue)
    handler.addFilter(_CellTag())
    logger = logging.getLogger("privfl")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


class _LogForwarder:
    """The parent's end of the workers' log queue: a thread hands each record to the parent's logger of
    the same name (whose handlers print it: the CLI's stderr line, above the progress bar on a terminal).

    Not a ``QueueListener``: its stop sentinel goes through the queue, and a worker killed while writing
    could leave the queue's write lock held; this one polls and stops on an event, and :meth:`close`
    never waits more than a few seconds. One forwarder per pool: a fresh pool gets a fresh queue."""

    def __init__(self, ctx: Any) -> None:
        self.queue = ctx.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="privfl-log-forwarder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                record = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # a worker died mid-write: the queue is unusable, its records are lost
                return
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)

    def close(self) -> None:
        """Forward what the (finished) workers sent, then stop."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.queue.close()
        self.queue.cancel_join_thread()


def _execute(payload: dict[str, Any], run_dir: str) -> tuple[str, float]:
    """A local worker's job: run the cell and write its row itself; returns (status, seconds)."""
    if _orphaned():  # queued before the parent died: nobody waits for it
        os._exit(0)
    _WORKER["busy"] = True
    _WORKER["cell"] = f"{payload['label']} · seed {payload['seed']}"
    try:
        row = compute_cell(payload)
        write_outcome(Store(run_dir), row)
    finally:
        _WORKER["busy"] = False
        _WORKER["cell"] = None
    return row["status"], row["seconds"]


# ------------------------------------------------------------------------------------ run directory
def bind_run_dir(store: Store, spec: Spec, *, force: bool = False) -> dict[str, Any]:
    """Bind the run directory to ``spec`` and this privfl / torch; returns the producer record.

    Refuses (:class:`RunDirInUse`) a directory that holds another spec's (by content hash) or another
    version's cells, unless ``force``; every binding is kept in meta ``history``.
    """
    machine = provenance()
    current = {"spec_hash": spec.content_hash(), "spec_name": spec.name, **machine}
    bound = store.get_meta("binding")
    problems = []
    if bound is None and store.count() > 0:
        problems.append("its cells were written by an earlier privfl that recorded no spec hash or versions")
    elif bound is not None:
        if bound.get("spec_hash") != current["spec_hash"]:
            problems.append(f"it holds spec {bound.get('spec_name')!r} (content hash {bound.get('spec_hash')}), "
                            f"this is spec {spec.name!r} (content hash {current['spec_hash']})")
        for key in ("privfl", "torch"):
            if bound.get(key) != current[key]:
                problems.append(f"its cells were computed with {key} {bound.get(key)}, this is {key} {current[key]}")
    if problems and not force:
        raise RunDirInUse(
            f"--out {str(store.run_dir)!r}: a run directory belongs to one spec and one privfl/torch version, but "
            + "; ".join(problems)
            + ". Choose a new --out, or pass --force to add this run to it (cells common to both are reused and "
              "shown under this spec's labels; the report lists which versions produced which cells)."
        )
    if problems:
        log.warning("--force: %s", "; ".join(problems))
    history = store.get_meta("history", []) or []
    history.append({**current, "time": time.time(), "forced": bool(problems)})
    store.set_meta("history", history)
    store.set_meta("binding", current)
    store.set_meta("spec", {"name": spec.name, "description": spec.description, "seeds": spec.seeds,
                            "hash": current["spec_hash"]})
    return {"spec_hash": current["spec_hash"], "privfl": machine["privfl"], "torch": machine["torch"],
            "python": machine["python"]}


def run_spec(
    spec: Spec,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    max_cells: int | None = MAX_CELLS,
    backend: Any = "local",
) -> RunSummary:
    """Run (or resume) every cell of ``spec`` into ``out_dir``; reports are written at the end.

    ``backend``: ``"local"`` (the process pool), ``"ray"`` or a ``RayBackend(address=..., ...)``.
    """
    from privfl.evaluations.ray_backend import resolve_backend

    ray_backend = resolve_backend(backend, workers)  # None for the local pool
    if workers is None:
        workers = default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise SpecError(f"workers must be an integer >= 0 (0 runs in this process), got {workers!r}")
    cells = spec.validate(max_cells=max_cells)
    store = Store(out_dir)
    producer = bind_run_dir(store, spec, force=force)
    done = store.done_ids()
    store.relabel({c.id: (spec.name, c.label) for c in cells if c.id in done})
    pending = [payload_of(c, spec, producer) for c in cells if c.id not in done]
    tracker = Progress(spec.name, pending, workers or 1, enabled=progress)
    try:
        if workers == 0 or not pending:
            for p in pending:
                row = compute_cell(p)
                write_outcome(store, row)
                tracker.finished(p["id"], row["status"], row["seconds"])
        elif ray_backend is not None:
            ray_backend.run_cells(pending, store, tracker)
        else:
            _run_pool(pending, store, min(workers, len(pending)), tracker)
    finally:
        tracker.close()
    from privfl.evaluations.report import write_report

    write_report(store.run_dir)
    return RunSummary(store.run_dir, len(cells), len(cells) - len(pending), tracker.counts["done"],
                      tracker.counts["failed"])


def _run_pool(pending: list[dict[str, Any]], store: Store, workers: int, tracker: Progress) -> None:
    ctx = get_context("spawn")
    todo = list(reversed(pending))
    run_dir = str(store.run_dir)
    level = logging.getLogger("privfl").getEffectiveLevel()
    while todo:
        logs = _LogForwarder(ctx)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(os.getpid(), logs.queue, level))
        in_flight: dict[Future, dict[str, Any]] = {}
        broken = False
        try:
            while todo or in_flight:
                while todo and len(in_flight) < workers and not broken:
                    payload = todo.pop()
                    try:
                        fut = pool.submit(_execute, payload, run_dir)
                    except BrokenProcessPool:  # broke before we heard of it: resubmit on a fresh pool
                        todo.append(payload)
                        broken = True
                        break
                    in_flight[fut] = payload
                if not in_flight:
                    break
                completed, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
                tracker.tick()
                for fut in completed:
                    payload = in_flight.pop(fut)
                    try:
                        status, seconds = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        _record_lost(store, payload, "a worker process died (killed or out of memory) while "
                                                     "this cell was in flight")
                        status, seconds = "failed", None
                    except Exception:
                        _record_lost(store, payload, traceback.format_exc())
                        status, seconds = "failed", None
                    tracker.finished(payload["id"], status, seconds)
                if broken and not in_flight:
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            logs.close()


def _record_lost(store: Store, payload: dict[str, Any], reason: str) -> None:
    """Record a cell whose worker never reported (a done row, if the worker wrote one, stays)."""
    write_outcome(store, {"cell_id": payload["id"], "spec": payload["spec"], "label": payload["label"],
                          "seed": payload["seed"], "scenario": payload["scenario"], "status": "failed",
                          "error": reason, "producer": payload.get("producer")})
