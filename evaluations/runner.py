"""Run a spec's cells on a local process pool, persisting each finished cell at once.

- Each cell runs in a worker process (``spawn``; ``torch.set_num_threads(1)`` — on a shared
  machine two torch threads per core can be 100× slower) and the worker writes its row to the
  SQLite store itself, so a finished cell survives a crash of anything else.
- Re-running the same spec into the same directory resumes: ``done`` cells are skipped,
  failed ones run again.
- A cell that raises is recorded with its traceback and the others go on. A worker process
  that dies (killed, out of memory) fails the cells that were in flight — they are recorded as
  failed with the reason — and the run continues on a fresh pool.
- ``workers=0`` runs cells in this process (same numerics: one thread per cell either way).
- ``backend="ray"`` (or a ``RayBackend``) runs the pending cells on Ray instead, on one machine or a
  cluster, with the same store and resume (``evaluations/ray_backend.py``).
"""

from __future__ import annotations

import os
import queue as queue_mod
import sys
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from privfl import registry
from privfl.evaluations.scenario import Scenario, run
from privfl.evaluations.spec import Cell, Spec
from privfl.evaluations.store import Store

__all__ = ["run_spec", "RunSummary", "default_workers"]


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


def _execute(payload: dict[str, Any], run_dir: str, spec_name: str, imports: list[str], ticks: Any) -> str:
    """Run one cell and write its row; returns the status. Runs in a worker or in-process."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    store = Store(run_dir)
    scenario = Scenario.from_dict(payload["scenario"])
    common = dict(
        cell_id=payload["id"], spec=spec_name, label=payload["label"], seed=payload["seed"],
        scenario=payload["scenario"],
    )
    try:
        registry.load_plugins(imports)

        def tick(_record: Any) -> None:
            if ticks is not None:
                ticks.put(1) if hasattr(ticks, "put") else ticks(1)

        result = run(scenario, payload["seed"], on_round=tick)
    except Exception:  # a failing cell is data for the report, not the end of the run
        store.record(status="failed", error=traceback.format_exc(), **common)
        return "failed"
    finally:
        torch.set_num_threads(previous)
    store.record(status="done", result=result, **common)
    return "done"


def _init_worker() -> None:
    torch.set_num_threads(1)


def _payload(cell: Cell) -> dict[str, Any]:
    return {"id": cell.id, "label": cell.label, "seed": cell.seed, "scenario": cell.scenario.to_dict()}


def run_spec(
    spec: Spec,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
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
        raise ValueError(f"workers must be an integer >= 0 (0 runs in this process), got {workers!r}")
    cells = spec.validate()
    store = Store(out_dir)
    store.set_meta("spec", {"name": spec.name, "description": spec.description, "seeds": spec.seeds})
    store.set_meta("cells", [c.id for c in cells])
    done = store.done_ids()
    pending = [c for c in cells if c.id not in done]
    total_rounds = sum(c.scenario.rounds for c in pending)
    bar = tqdm(
        total=total_rounds,
        unit="round",
        desc=f"{spec.name}: cells 0/{len(pending)}",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    counts = {"done": 0, "failed": 0}

    def finished(status: str) -> None:
        counts[status] += 1
        bar.set_description(f"{spec.name}: cells {counts['done'] + counts['failed']}/{len(pending)}")

    try:
        if workers == 0 or not pending:
            for cell in pending:
                finished(_execute(_payload(cell), str(store.run_dir), spec.name, spec.imports, bar.update))
        elif ray_backend is not None:
            ray_backend.run_cells(pending, store, spec, bar, finished)
        else:
            _run_pool(pending, store, spec, min(workers, len(pending)), bar, finished)
    finally:
        bar.close()
    from privfl.evaluations.report import write_report

    write_report(store.run_dir)
    return RunSummary(store.run_dir, len(cells), len(cells) - len(pending), counts["done"], counts["failed"])


def _run_pool(pending: list[Cell], store: Store, spec: Spec, workers: int, bar: tqdm, finished) -> None:
    ctx = get_context("spawn")
    with ctx.Manager() as manager:
        ticks = manager.Queue()
        todo = list(reversed(pending))
        while todo:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
            in_flight: dict[Future, Cell] = {}
            broken = False
            try:
                while todo or in_flight:
                    while todo and len(in_flight) < workers and not broken:
                        cell = todo.pop()
                        try:
                            fut = pool.submit(_execute, _payload(cell), str(store.run_dir), spec.name, spec.imports,
                                              ticks)
                        except BrokenProcessPool:  # broke before we heard of it: resubmit on a fresh pool
                            todo.append(cell)
                            broken = True
                            break
                        in_flight[fut] = cell
                    if not in_flight:
                        break
                    completed, _ = wait(list(in_flight), timeout=0.25, return_when=FIRST_COMPLETED)
                    _drain(ticks, bar)
                    for fut in completed:
                        cell = in_flight.pop(fut)
                        try:
                            finished(fut.result())
                        except BrokenProcessPool:
                            broken = True
                            _record_lost(store, spec, cell, "a worker process died (killed or out of memory) while "
                                                            "this cell was in flight")
                            finished("failed")
                        except Exception:
                            _record_lost(store, spec, cell, traceback.format_exc())
                            finished("failed")
                    if broken and not in_flight:
                        break
            finally:
                _drain(ticks, bar)
                pool.shutdown(wait=True, cancel_futures=True)


def _drain(ticks: Any, bar: tqdm) -> None:
    n = 0
    while True:
        try:
            n += ticks.get_nowait()
        except queue_mod.Empty:
            break
    if n:
        bar.update(n)


def _record_lost(store: Store, spec: Spec, cell: Cell, reason: str) -> None:
    """Record a cell whose worker never reported (a done row, if the worker wrote one, stays)."""
    store.record(
        cell_id=cell.id, spec=spec.name, label=cell.label, seed=cell.seed, scenario=cell.scenario.to_dict(),
        status="failed", error=reason,
    )
