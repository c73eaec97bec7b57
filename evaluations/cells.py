"""One cell of an evaluation as a unit of work, and the progress of many (shared by every backend).

:func:`payload_of` turns a cell into plain JSON, :func:`compute_cell` runs it anywhere and returns its
row (no store access), :func:`write_outcome` is the driver's (or a local worker's) write, and
:class:`Progress` reports finished cells with an estimate of the time left. The local pool
(:mod:`privfl.evaluations.runner`) and the Ray backend (:mod:`privfl.evaluations.ray_backend`) both
build on these.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
import traceback
from typing import Any

import torch

from privfl import registry
from privfl.evaluations.scenario import Scenario, run
from privfl.evaluations.spec import Cell, Spec
from privfl.evaluations.store import Store
from privfl.progress import hms

__all__ = ["payload_of", "compute_cell", "write_outcome", "Progress", "PROGRESS_EVERY_S"]

log = logging.getLogger("privfl")
PROGRESS_EVERY_S = 30.0  # plain progress lines when stderr is not a terminal


def payload_of(cell: Cell, spec: Spec, producer: dict[str, Any]) -> dict[str, Any]:
    """Everything a worker anywhere needs to run ``cell`` (plain JSON)."""
    return {"id": cell.id, "label": cell.label, "seed": cell.seed, "scenario": cell.scenario.to_dict(),
            "spec": spec.name, "imports": list(spec.imports), "producer": producer}


def compute_cell(payload: dict[str, Any], *, threads: int = 1, device: str | None = None) -> dict[str, Any]:
    """Run one cell; returns its row (``status`` done/failed, ``result`` or ``error``, ``seconds``).

    ``threads``: torch threads for the cell (1, as in the pool); ``device``: what a scenario's
    ``device: auto`` means where the cell runs (a backend resolves it on its worker; the row keeps
    the scenario as the spec wrote it)."""
    start = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    row: dict[str, Any] = {
        "cell_id": payload["id"], "spec": payload["spec"], "label": payload["label"], "seed": payload["seed"],
        "scenario": payload["scenario"], "producer": payload.get("producer") or {},
    }
    try:
        registry.load_plugins(payload.get("imports") or [])
        scenario = Scenario.from_dict(payload["scenario"])
        if device is not None and scenario.device == "auto":
            scenario = scenario.replace(device=device)
        result = run(scenario, payload["seed"])
        row.update(status="done", result=result)
    except Exception:  # a failing cell is data for the report, not the end of the run
        row.update(status="failed", error=traceback.format_exc())
    finally:
        torch.set_num_threads(previous)
    row["seconds"] = time.perf_counter() - start
    return row


def write_outcome(store: Store, row: dict[str, Any]) -> bool:
    """Write a row from :func:`compute_cell` (a ``done`` row already there is kept)."""
    return store.record(**{k: v for k, v in row.items() if k != "seconds"})


# ------------------------------------------------------------------------------------ progress
def _kind(scenario: dict[str, Any]) -> str:
    keys = ("mode", "dataset", "model", "protocol", "rounds", "local_steps", "num_clients", "inversion_attack",
            "inversion_attack_params", "analytics_users")
    return json.dumps([scenario.get(k) for k in keys], sort_keys=True, default=str)


class Progress:
    """Finished cells out of ``total`` and an estimate of the time left.

    The estimate: each pending cell costs the mean measured seconds of finished cells of its kind
    (same mode, dataset, model, protocol, rounds, local steps, clients, attack), or of all finished
    cells when none of its kind has finished; the sum is divided by the number of workers.
    """

    def __init__(self, name: str, pending: list[dict[str, Any]], workers: int, *, enabled: bool = True,
                 stream: Any = None, every_s: float = PROGRESS_EVERY_S):
        self.name, self.workers = name, max(1, workers)
        self.left = {p["id"]: _kind(p["scenario"]) for p in pending}
        self.total = len(pending)
        self.costs: dict[str, list[float]] = {}
        self.counts = {"done": 0, "failed": 0}
        self.start = time.monotonic()
        self.enabled = enabled and self.total > 0
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_line = self.start
        self.bar = None
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="cell", desc=f"{name}: cells", dynamic_ncols=True,
                            file=self.stream, bar_format="{desc} {n_fmt}/{total_fmt} {bar} [{elapsed}{postfix}]")
            self._redirect = _log_above_bar()
        elif self.enabled:
            log.info("%s: %d cell(s) to run on %d worker(s)", name, self.total, self.workers)

    @property
    def finished_count(self) -> int:
        return self.counts["done"] + self.counts["failed"]

    def eta_s(self) -> float | None:
        every = [c for v in self.costs.values() for c in v]
        if not every:
            return None
        overall = statistics.fmean(every)
        left = sum(statistics.fmean(self.costs[k]) if k in self.costs else overall for k in self.left.values())
        return left / min(self.workers, max(1, len(self.left)))

    def text(self) -> str:
        eta = self.eta_s()
        failed = f", {self.counts['failed']} failed" if self.counts["failed"] else ""
        left = "time left: estimated after the first cell" if eta is None else f"~{hms(eta)} left"
        return (f"{self.name}: {self.finished_count}/{self.total} cells finished{failed}, "
                f"{hms(time.monotonic() - self.start)} elapsed, {left}")

    def finished(self, payload_id: str, status: str, seconds: float | None) -> None:
        kind = self.left.pop(payload_id, None)
        self.counts[status] += 1
        if kind is not None and seconds is not None and status == "done":
            self.costs.setdefault(kind, []).append(float(seconds))
        if self.bar is not None:
            eta = self.eta_s()
            self.bar.set_postfix_str(("" if eta is None else f"~{hms(eta)} left")
                                     + (f", {self.counts['failed']} failed" if self.counts["failed"] else ""),
                                     refresh=False)
            self.bar.update(1)
        self.tick()

    def tick(self) -> None:
        """Called often: refreshes the bar, or logs a plain line every ``every_s`` seconds."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.refresh()
            return
        now = time.monotonic()
        if now - self.last_line >= self.every_s or self.finished_count == self.total:
            self.last_line = now
            log.info("%s", self.text())

    def close(self) -> None:
        if self.bar is not None:
            self._redirect.__exit__(None, None, None)
            self.bar.close()
            self.bar = None


def _log_above_bar() -> Any:
    """While a bar is shown, log lines (the run's own and those its workers forward, e.g. an attack's
    progress) go to the terminal through ``tqdm.write``, above the bar, instead of through it: the
    console handlers of the ``privfl`` and root loggers are swapped for tqdm's until :meth:`Progress.close`."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    def console(h: logging.Handler) -> bool:
        return isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)

    loggers = [lg for lg in (logging.getLogger("privfl"), logging.getLogger()) if any(map(console, lg.handlers))]
    redirect = logging_redirect_tqdm(loggers)
    redirect.__enter__()
    return redirect
