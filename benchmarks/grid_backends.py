"""Cells per minute of one evaluation grid on the local process pool vs the Ray backend, same machine.

The grid: FedAvg on ``digits`` (MLP, 10 clients, 10 local steps of batch 16), ``--rounds`` rounds per
cell, ``--cells`` cells (learning rates × 2 seeds). Both backends run the same cells with
``--workers`` parallel cells (pool processes; Ray ``num_cpus``), one torch thread each, into fresh
run directories, and the two stores must hold the same numbers (training is bit-identical).

* ``local``: ``run_spec(spec, dir, workers=W)``, including the pool's process start-up;
* ``ray``  : ``ray.init(num_cpus=W)`` timed on its own (Ray's start-up cost), then
  ``run_spec(spec, dir, backend="ray")`` on that instance, including its workers' start-up.

Target (issue 16): for cells longer than a few seconds, Ray's grid time (without ``ray.init``) is at
most 1.15 × the pool's. Other processes share this machine: the load average is printed before and
after; the ratio measured in the same run is what counts.
Run: ``.venv/bin/python benchmarks/grid_backends.py [--cells 40] [--rounds 20] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from privfl.evaluations import parse_spec
from privfl.evaluations.runner import run_spec
from privfl.evaluations.store import Store

TARGET = 1.15


def grid(cells: int, rounds: int) -> dict:
    if cells < 2 or cells % 2:
        raise ValueError(f"--cells: got {cells}; allowed: an even number >= 2 (learning rates × 2 seeds)")
    lrs = [round(0.02 + 0.005 * i, 4) for i in range(cells // 2)]
    base = dict(dataset="digits", num_clients=10, rounds=rounds, local_steps=10, batch_size=16, model="mlp")
    return {"name": "grid_backends", "base": base, "grid": {"lr": lrs}, "seeds": [0, 1]}


def numbers(run_dir: Path) -> dict:
    """Each cell's untimed results (summary without wall time, series without seconds)."""
    out = {}
    for r in Store(run_dir).rows():
        summary = {k: v for k, v in r.result["summary"].items() if k != "wall_time_s"}
        out[r.cell_id] = (summary, {k: v for k, v in r.result["series"].items() if k != "seconds"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the pool's and Ray's worker processes
    torch.set_num_threads(1)
    spec = parse_spec(grid(args.cells, args.rounds))
    print(f"grid: {len(spec.cells())} cells x {args.rounds} rounds; {args.workers} parallel cells, 1 torch thread "
          f"each; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        local = run_spec(spec, Path(tmp) / "local", workers=args.workers, progress=False)
        t_local = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - start
        try:
            start = time.perf_counter()
            remote = run_spec(spec, Path(tmp) / "ray", backend="ray", progress=False)
            t_ray = time.perf_counter() - start
        finally:
            ray.shutdown()
        assert local.done == remote.done == len(spec.cells()), (local, remote)
        same = numbers(Path(tmp) / "local") == numbers(Path(tmp) / "ray")
        walls = [r.result["summary"]["wall_time_s"] for r in Store(Path(tmp) / "local").rows()]
    n = len(walls)
    mean_cell = sum(walls) / n
    print(f"mean cell time (pool): {mean_cell:.2f} s; load average after: {os.getloadavg()}")
    print(f"local pool : {t_local:7.1f} s  {60 * n / t_local:6.1f} cells/min")
    print(f"ray        : {t_ray:7.1f} s  {60 * n / t_ray:6.1f} cells/min  (+ ray.init {t_init:.1f} s: "
          f"{60 * n / (t_ray + t_init):.1f} cells/min with start-up)")
    ratio = t_ray / t_local
    print(f"ray / local grid time: {ratio:.3f} (target <= {TARGET}) {'PASS' if ratio <= TARGET else 'FAIL'}; "
          f"identical numbers in both stores: {same}")


if __name__ == "__main__":
    main()
