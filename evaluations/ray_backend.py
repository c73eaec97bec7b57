"""Run a spec's cells on Ray (``privfl run SPEC --backend ray``): same cells, same seeds, same store.

The local process pool (:mod:`privfl.evaluations.runner`) stays the default; this backend runs the
same pending cells as Ray tasks, on one machine or on a cluster, and changes nothing about what a
run means.

- **The driver owns the store.** A task computes one cell and returns its row as JSON text
  (status, result or error); the driver writes it to ``results.sqlite`` the moment it arrives, in
  one transaction (:meth:`Store.record`), so workers need no shared disk. A ``done`` row is never
  replaced, so a cell never runs twice into the store; re-running the command skips done cells
  and runs failed ones again.
- **Faults.** Ray's own task retries are off (``max_retries=0``); the driver retries instead so
  that every attempt is in the store. A task whose worker process or node dies (killed, out of
  memory, node lost: any ``RayError`` but an exception raised by the task's own code) fails only
  the cells in flight: each is recorded ``failed`` with the reason and resubmitted automatically
  up to ``retries`` times in the same run (default 1; ``attempts`` in the store counts them). A
  cell whose code raises is recorded with its traceback and not retried in the run (the same seed
  raises again); the next run retries it. Killing the driver loses only the cells in flight
  (rows are single transactions; Ray stops a dead driver's tasks): the next run resumes.
- **Resources.** Each cell asks Ray for ``cpus_per_cell`` CPUs and runs with that many torch
  threads; ``gpus_per_cell`` may be fractional (0.25: four cells share a GPU). Device ``auto``
  resolves on the worker: CUDA when Ray granted the task a GPU, else CPU (never an unreserved GPU).
- **Scheduling.** Cells are submitted longest first by :func:`estimate_cost` through a window of
  twice the cluster's cell slots (re-read every 10 s, so an autoscaled cluster is followed), so a
  grid does not end with one straggler and the autoscaler sees the demand.
- **Same results as the local backend**: the same cell ids and seeds, one torch thread per cell
  by default (as the pool), and rows that pass through JSON exactly as the pool's do.

Connecting: with no ``address`` a local Ray instance is started (and stopped at the end);
``"auto"`` joins the cluster started on this machine with ``ray start --head``; ``"host:port"``
a cluster's GCS; ``"ray://host:port"`` a remote cluster through Ray Client. If Ray is already
initialised in this process (``ray.init(..., runtime_env=...)``), that connection is used as is:
that is the place to ship plugin modules (a spec's ``imports``) to the workers of a cluster.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import torch

from privfl import registry
from privfl.evaluations.cells import Progress, compute_cell, write_outcome
from privfl.evaluations.scenario import Scenario, SpecError
from privfl.evaluations.store import Store

__all__ = ["RayBackend", "resolve_backend", "estimate_cost", "BACKENDS"]

BACKENDS = ("local", "ray")
PROBE_TIMEOUT_S = 10.0  # an address nobody answers is reported after this long (ray.init would retry for minutes)
WINDOW_REFRESH_S = 10.0

# Relative cost of one training example (forward + backward) per bundled model, for ordering only.
MODEL_COST = {"mlp": 1.0, "lenet": 2.0, "convnet": 20.0, "resnet": 100.0}
# One attack iteration differentiates through the victim's local steps: about three passes each.
ATTACK_PASSES = 3.0


@dataclass(frozen=True)
class RayBackend:
    """Options of the Ray backend (``run_spec(spec, out, backend=RayBackend(...))``; ``"ray"`` = defaults).

    ``address``: None (start a local instance), ``"auto"``, ``"host:port"`` or ``"ray://host:port"``.
    ``cpus_per_cell``: CPUs Ray reserves per cell = torch threads of the cell (1, as the local pool).
    ``gpus_per_cell``: GPUs per cell, a fraction in (0, 1] or a whole number (0: CPU cells).
    ``retries``: automatic resubmissions of a cell whose worker or node died, within one run.
    """

    address: str | None = None
    cpus_per_cell: int = 1
    gpus_per_cell: float = 0.0
    retries: int = 1

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, str):
            raise TypeError(f"address (--address) must be a string or None, got {type(self.address).__name__}")
        if self.address is not None:
            _parse_address(self.address)
        for name, low in (("cpus_per_cell", 1), ("retries", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} (--{name.replace('_', '-')}) must be an integer, got {value!r}")
            if value < low:
                raise SpecError(f"{name} (--{name.replace('_', '-')}): got {value}; allowed: an integer >= {low}")
        gpus = self.gpus_per_cell
        if not isinstance(gpus, (int, float)) or isinstance(gpus, bool):
            raise TypeError(f"gpus_per_cell (--gpus-per-cell) must be a number, got {gpus!r}")
        if not math.isfinite(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
            raise SpecError(
                f"gpus_per_cell (--gpus-per-cell): got {gpus!r}; allowed: 0, a fraction in (0, 1] "
                "(cells share a GPU) or a whole number of GPUs"
            )

    # ------------------------------------------------------------------ the driver
    def run_cells(self, pending: list[dict[str, Any]], store: Store, tracker: Progress) -> None:
        """Run the ``pending`` cell payloads on Ray, writing each row to ``store`` as it arrives and
        reporting it to ``tracker`` (the runner's backend seam: ``compute_cell`` remotely,
        ``write_outcome`` here)."""
        ray = _import_ray()
        self._check_devices(pending)
        started = self._connect(ray)
        try:
            self._check_resources(ray, local=started and self.address is None)
            _Driver(ray, self, store, tracker).run(pending)
        finally:
            if started:
                ray.shutdown()

    def _check_devices(self, pending: list[dict[str, Any]]) -> None:
        explicit = sorted({str(p["scenario"].get("device", "cpu")) for p in pending} - {"auto", "cpu"})
        if explicit and self.gpus_per_cell == 0:
            raise SpecError(
                f"device: cells ask for {', '.join(map(repr, explicit))} but gpus_per_cell (--gpus-per-cell) is 0, "
                "so Ray would reserve no GPU for them; allowed: --gpus-per-cell > 0, or device 'auto'/'cpu'"
            )

    def _connect(self, ray: Any) -> bool:
        """Connect (or start a local instance); True when this call did, so the run shuts it down."""
        if ray.is_initialized():
            return False
        if self.address != "auto" and self.address is not None:
            _probe(self.address)
        try:
            with warnings.catch_warnings():  # device auto never relies on Ray hiding GPUs (see _worker_device)
                warnings.filterwarnings("ignore", message=".*accelerator visible devices", category=FutureWarning)
                if self.address is None:
                    ray.init(address="local", include_dashboard=False)
                else:
                    ray.init(address=self.address)
        except ConnectionError as exc:
            raise SpecError(
                f"address (--address): got {self.address!r} but no Ray cluster answered ({exc}); allowed: the "
                "address of a running cluster ('auto' after `ray start --head` on this machine, host:port, "
                "ray://host:port), or no --address to start a local Ray instance"
            ) from None
        return True

    def _check_resources(self, ray: Any, *, local: bool) -> None:
        total = ray.cluster_resources()
        short = [
            f"{need:g} {name} per cell but the cluster has {total.get(name, 0):g}"
            for name, need in (("CPU", self.cpus_per_cell), ("GPU", self.gpus_per_cell))
            if need > total.get(name, 0)
        ]
        if not short:
            return
        message = f"Ray cluster too small: {'; '.join(short)}"
        if local:
            raise SpecError(f"{message}; allowed: --cpus-per-cell / --gpus-per-cell within this machine's resources")
        logging.getLogger("privfl").warning("%s; cells wait until nodes with them join (autoscaler)", message)

    def slots(self, ray: Any) -> int:
        """How many cells the cluster runs at once now (CPU and GPU bound)."""
        total = ray.cluster_resources()
        slots = int(total.get("CPU", 0) // self.cpus_per_cell)
        if self.gpus_per_cell > 0:
            slots = min(slots, int(total.get("GPU", 0) // self.gpus_per_cell))
        return max(1, slots)


class _Driver:
    """The submission loop: a bounded window of tasks, rows written as they arrive, bounded retries."""

    def __init__(self, ray: Any, backend: RayBackend, store: Store, tracker: Progress):
        self.ray, self.backend, self.store, self.tracker = ray, backend, store, tracker
        self.task = ray.remote(_run_cell).options(
            num_cpus=backend.cpus_per_cell, num_gpus=backend.gpus_per_cell, max_retries=0
        )

    def run(self, pending: list[dict[str, Any]]) -> None:
        ray, backend = self.ray, self.backend
        costs = {p["id"]: estimate_cost(Scenario.from_dict(p["scenario"])) for p in pending}
        todo = deque(sorted(pending, key=lambda p: -costs[p["id"]]))  # stable: spec order on ties
        attempts: dict[str, int] = {}
        in_flight: dict[Any, dict[str, Any]] = {}
        level = logging.getLogger("privfl").getEffectiveLevel()  # the workers log at the driver's level
        window, window_at = 2 * backend.slots(ray), time.monotonic()
        try:
            while todo or in_flight:
                if time.monotonic() - window_at > WINDOW_REFRESH_S:
                    window, window_at = 2 * backend.slots(ray), time.monotonic()
                while todo and len(in_flight) < window:
                    payload = todo.popleft()
                    attempts[payload["id"]] = attempts.get(payload["id"], 0) + 1
                    in_flight[self.task.remote(payload, backend.cpus_per_cell, level)] = payload
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0.2)
                self.tracker.tick()
                for ref in ready:
                    payload = in_flight.pop(ref)
                    status, seconds, lost = self._collect(ref, payload)
                    if lost and attempts[payload["id"]] <= backend.retries:
                        todo.appendleft(payload)  # resubmitted at once, ahead of the rest
                    else:
                        self.tracker.finished(payload["id"], status, seconds)
        finally:
            try:  # best effort on the way out: an error here must not hide the one that got us here
                for ref in in_flight:  # interrupted: stop what is still running (its cells stay pending)
                    ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass

    def _collect(self, ref: Any, payload: dict[str, Any]) -> tuple[str, float | None, bool]:
        """Write the row a task returned (or why it has none): (status, seconds, True when the worker was lost)."""
        from ray.exceptions import RayError, RayTaskError

        common = {"cell_id": payload["id"], "spec": payload["spec"], "label": payload["label"],
                  "seed": payload["seed"], "scenario": payload["scenario"], "producer": payload.get("producer")}
        try:
            row = json.loads(self.ray.get(ref))
        except RayTaskError as exc:  # raised by the task's own code outside the cell (e.g. a BaseException)
            write_outcome(self.store, {**common, "status": "failed", "error": str(exc)})
            return "failed", None, False
        except RayError as exc:  # the worker or its node died, or the result was lost: not the cell's fault
            reason = (f"the Ray worker or node running this cell was lost ({type(exc).__name__}: "
                      f"{str(exc).strip()[:2000]})")
            write_outcome(self.store, {**common, "status": "failed", "error": reason})
            return "failed", None, True
        write_outcome(self.store, row)
        return row["status"], row.get("seconds"), False


# ---------------------------------------------------------------------- the worker
def _run_cell(payload: dict[str, Any], threads: int, log_level: int = logging.WARNING) -> str:
    """Run one cell in a Ray task (``compute_cell`` with ``cpus_per_cell`` threads, device ``auto``
    resolved here, on the worker); returns its row as JSON text (the driver writes it).

    The cell's progress records (``privfl.*`` loggers, at the driver's ``log_level``) go to the worker's
    stderr tagged with the cell, which Ray forwards to the driver's console (``log_to_driver``, Ray's
    default), as the local pool's workers forward theirs through a queue."""
    handler = _worker_log_handler(log_level)
    handler.cell = f"{payload['label']} · seed {payload['seed']}"
    try:
        return json.dumps(compute_cell(payload, threads=threads, device=_worker_device()), allow_nan=True)
    finally:
        handler.cell = None


class _TaggedStderr(logging.StreamHandler):
    """stderr lines ``HH:MM:SS privfl: [cell] message`` for the cell this worker runs now."""

    cell: str | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self.cell:
            record = logging.makeLogRecord({**record.__dict__, "msg": f"[{self.cell}] {record.getMessage()}",
                                            "args": None})
        return super().format(record)


def _worker_log_handler(level: int) -> _TaggedStderr:
    logger = logging.getLogger("privfl")
    handler = next((h for h in logger.handlers if isinstance(h, _TaggedStderr)), None)
    if handler is None:
        handler = _TaggedStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.handlers[:] = [handler]
        logger.propagate = False
    logger.setLevel(level)
    return handler


def _worker_device() -> str:
    import ray

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------- helpers
def estimate_cost(scenario: Scenario) -> float:
    """A relative cost of one cell, for ordering (longest first), not a time.

    Training: rounds × participating clients × local steps × batch × the model's cost per example
    (``MODEL_COST``, 1 for models it does not list). Gradient inversion adds, per attacked
    client-round, iterations × restarts × local steps × batch × model cost × ``ATTACK_PASSES``.
    Analytics cells: rounds × users / 1000.
    """
    if scenario.mode == "analytics":
        return scenario.rounds * scenario.analytics_users / 1000.0
    model = MODEL_COST.get(scenario.model, 1.0)
    participants = max(1.0, scenario.num_clients * scenario.sample_rate)
    per_update = scenario.local_steps * (scenario.batch_size or 64) * model
    cost = scenario.rounds * participants * per_update
    if scenario.inversion_attack:
        params = dict(scenario.inversion_attack_params)
        try:
            defaults = registry.parameters("privacy_attack", scenario.inversion_attack)
        except (KeyError, ValueError):
            defaults = {}
        for name in ("iterations", "restarts"):
            if name not in params and name in defaults and isinstance(defaults[name].default, int):
                params[name] = defaults[name].default
        attacked = len(scenario.inversion_rounds) * scenario.inversion_victims
        cost += attacked * params.get("iterations", 1) * params.get("restarts", 1) * per_update * ATTACK_PASSES
    return float(cost)


def resolve_backend(backend: Any, workers: int | None) -> RayBackend | None:
    """``"local"`` → None (the process pool); ``"ray"`` or a :class:`RayBackend` → the Ray options."""
    if isinstance(backend, RayBackend):
        chosen: RayBackend | None = backend
    elif isinstance(backend, str):
        if backend not in BACKENDS:
            raise SpecError(f"backend (--backend): got {backend!r}; allowed: {', '.join(BACKENDS)}")
        chosen = RayBackend() if backend == "ray" else None
    else:
        raise TypeError(f"backend must be 'local', 'ray' or a RayBackend, got {type(backend).__name__}")
    if chosen is not None and chosen.address not in (None, "auto"):
        _probe(chosen.address)  # before anything is written: a wrong address fails in seconds, not minutes
    if chosen is not None and workers is not None:
        raise SpecError(
            f"workers (--workers): got {workers!r} with the Ray backend, which runs as many cells as the cluster "
            "has CPUs / cpus_per_cell; allowed: leave it unset (or use --backend local)"
        )
    return chosen


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError(
            "backend (--backend): got 'ray' but Ray is not installed; allowed: 'local', or install the extra "
            "with `pip install 'privfl[ray]'`"
        ) from None
    return ray


def _parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of an address to probe; None for 'auto'. ValueError for anything else."""
    if address == "auto":
        return None
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    allowed = "'auto', 'host:port' or 'ray://host:port'"
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("gcs", "ray") or not parts.hostname or port is None:
        raise SpecError(f"address (--address): got {address!r}; allowed: {allowed}")
    return parts.hostname, port


def _probe(address: str) -> None:
    """Fail fast (a clear ValueError) when nothing listens at ``address``; ray.init would retry for minutes."""
    target = _parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise SpecError(
            f"address (--address): got {address!r} but no Ray cluster is reachable there ({exc}); allowed: the "
            "address of a running cluster (start one with `ray start --head`), or no --address to start a local "
            "Ray instance"
        ) from None
