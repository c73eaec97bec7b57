"""The Ray backend: the local backend's rows, a killed worker, a killed driver, a missing cluster.

One local Ray instance (``ray.init(num_cpus=2)``) serves the whole module; the tests that use it
share an xdist group so that ``-n 2`` starts it once.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from privfl.evaluations import Scenario, parse_spec
from privfl.evaluations.ray_backend import RayBackend, estimate_cost
from privfl.evaluations.runner import run_spec
from privfl.evaluations.store import Store

ray = pytest.importorskip("ray")

# A model that logs each construction (one per cell run); with a marker file in `kill_dir` it
# consumes the marker and SIGKILLs its own (Ray worker) process; while `hold` exists it waits.
PLUGIN = '''
import os, signal, time
from pathlib import Path
from privfl.registry import register
from privfl.models import MLP

@register("model", "ray_probe_mlp")
def ray_probe_mlp(input_shape, num_classes, tag="", log="", kill_dir="", hold=""):
    with open(log, "a") as fh:
        fh.write(tag + "\\n")
    markers = sorted(Path(kill_dir).glob("*")) if kill_dir else []
    if markers:
        markers[0].unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while hold and Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return MLP(input_shape, num_classes, hidden=(16,))
'''
PLUGIN_MODULE = "privfl_ray_probe"
TINY = dict(dataset="digits", num_clients=4, rounds=2, local_steps=2, batch_size=8, model="mlp",
            model_params={"hidden": [16]})
ray_group = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A 2-CPU local Ray instance whose workers can import the probe plugin; yields its GCS address."""
    plugin_dir = tmp_path_factory.mktemp("ray_plugin")
    (plugin_dir / f"{PLUGIN_MODULE}.py").write_text(PLUGIN)
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_dir), saved["PYTHONPATH"]) if p)
    os.environ["OMP_NUM_THREADS"] = "1"
    sys.path.insert(0, str(plugin_dir))
    with warnings.catch_warnings():  # Ray's note on accelerator variables (device auto does not rely on it)
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address, plugin_dir
    finally:
        ray.shutdown()
        sys.path.remove(str(plugin_dir))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _probe_spec(tmp: Path, tags: list[str], *, kill: str = "", hold: str = "") -> dict:
    blocks = []
    for tag in tags:
        params = {"tag": tag, "log": str(tmp / "log.txt")}
        if tag == kill:
            params["kill_dir"] = str(tmp / "kill")
        if tag == hold:
            params["hold"] = str(tmp / "hold")
        blocks.append({"model_params": [params], "label": [tag]})
    base = {**TINY, "model": "ray_probe_mlp", "model_params": {}}
    return {"name": "rayprobe", "imports": [PLUGIN_MODULE], "base": base, "grid": blocks, "seeds": [0]}


def _log(tmp: Path) -> list[str]:
    path = tmp / "log.txt"
    return path.read_text().split() if path.exists() else []


def _rows(run_dir: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT cell_id) FROM cells").fetchone()
        assert n == distinct
        return {label: (status, attempts) for label, status, attempts in
                con.execute("SELECT label, status, attempts FROM cells")}


def _untimed(result: dict) -> dict:
    summary = {k: v for k, v in result["summary"].items() if k != "wall_time_s"}
    series = {k: v for k, v in result["series"].items() if k != "seconds"}
    return {"summary": summary, "series": series}


@ray_group
@pytest.mark.slow
def test_same_rows_as_the_local_backend(ray_cluster, tmp_path, caplog):
    import logging

    spec = parse_spec({"name": "same", "base": {**TINY, "model_params": {}}, "grid": {"model": ["mlp"]},
                       "seeds": [0, 1]})
    local = run_spec(spec, tmp_path / "local", workers=0, progress=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="privfl"):
        remote = run_spec(spec, tmp_path / "ray", backend="ray", progress=True)
    assert local.done == remote.done == 2 and remote.failed == 0
    # progress (not a terminal: plain lines on the privfl logger) reached every cell through the driver
    assert any("2/2 cells finished" in r.getMessage() for r in caplog.records), caplog.text

    def rows(run_dir):
        return {r.cell_id: (r.label, r.seed, r.status, _untimed(r.result)) for r in Store(run_dir).rows()}

    a, b = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 2
    assert a == b  # exact: same cell ids, seeds and numbers (losses, accuracies, bytes)
    # and the seeds matter: a different seed gives a different loss curve
    by_label: dict[str, list] = {}
    for label, _seed, _status, result in b.values():
        by_label.setdefault(label, []).append(result["series"]["loss"])
    assert all(v[0] != v[1] for v in by_label.values())


@ray_group
@pytest.mark.slow
def test_killed_worker_fails_its_cell_and_is_retried(ray_cluster, tmp_path):
    (tmp_path / "kill").mkdir()
    (tmp_path / "kill" / "1").write_text("x")
    spec = parse_spec(_probe_spec(tmp_path, ["a", "b", "c"], kill="c"))
    out = tmp_path / "run"
    # no automatic retry: the killed cell is recorded failed with the reason, the others are done
    first = run_spec(spec, out, backend=RayBackend(retries=0), progress=False)
    assert (first.done, first.failed) == (2, 1)
    assert _rows(out) == {"a": ("done", 1), "b": ("done", 1), "c": ("failed", 1)}
    error = Store(out).rows("failed")[0].error
    assert "worker or node running this cell was lost" in error and "WorkerCrashedError" in error
    # next run, one automatic retry: c's worker is killed once more (failed, attempt 2), then c completes
    (tmp_path / "kill" / "2").write_text("x")
    second = run_spec(spec, out, backend=RayBackend(retries=1), progress=False)
    assert (second.skipped, second.done, second.failed) == (2, 1, 0)
    assert _rows(out) == {"a": ("done", 1), "b": ("done", 1), "c": ("done", 3)}
    assert sorted(_log(tmp_path)) == ["a", "b", "c", "c", "c"]  # done cells never ran again


@ray_group
@pytest.mark.slow
def test_killed_driver_loses_nothing(ray_cluster, tmp_path):
    address, plugin_dir = ray_cluster
    (tmp_path / "hold").write_text("x")  # cell d waits while this exists: the driver is mid-grid
    raw = _probe_spec(tmp_path, ["a", "b", "c", "d"], hold="d")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(plugin_dir), os.environ.get("PYTHONPATH"))))}
    cmd = [sys.executable, "-m", "privfl.cli", "run", str(spec_file), "--out", str(out), "--backend", "ray",
           "--address", address, "--no-progress"]
    stderr = open(tmp_path / "driver.err", "w")  # a file, not a pipe: a full pipe would stall the driver
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        done: dict = {}
        while time.monotonic() < deadline and driver.poll() is None:
            try:  # (never create the store here: only the driver does)
                if (out / "results.sqlite").exists():
                    done = {k: v for k, v in _rows(out).items() if v[0] == "done"}
            except sqlite3.OperationalError:  # the driver is still creating the store
                done = {}
            if len(done) == 3:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.err").read_text()[-3000:]
        assert set(done) == {"a", "b", "c"}, done
        driver.send_signal(signal.SIGKILL)  # mid-grid: d is in flight
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        stderr.close()
    assert "d" not in _rows(out)  # nothing half-written for the cell in flight
    (tmp_path / "hold").unlink()
    spec = parse_spec(raw)
    again = run_spec(spec, out, backend="ray", progress=False)
    assert (again.skipped, again.done, again.failed) == (3, 1, 0)
    assert _rows(out) == {t: ("done", 1) for t in "abcd"}
    log = _log(tmp_path)
    assert sorted(t for t in log if t != "d") == ["a", "b", "c"]  # finished cells never recomputed


def test_missing_cluster_and_bad_options_exit_2(tmp_path, capsys):
    from privfl.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": TINY}))
    with socket.socket() as s:  # a local port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--backend", "ray",
                 "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "no Ray cluster is reachable" in err and "ray start --head" in err
    assert not (tmp_path / "o").exists()  # nothing written
    for argv, needle in [
        (["--backend", "ray", "--address", "http://head"], "--address"),
        (["--backend", "ray", "--gpus-per-cell", "1.5"], "--gpus-per-cell"),
        (["--backend", "ray", "--workers", "2"], "--workers"),
        (["--gpus-per-cell", "0.5"], "--backend ray"),
    ]:
        assert main(["run", str(spec), "--out", str(tmp_path / "o"), *argv]) == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(TypeError, match="cpus_per_cell"):
        RayBackend(cpus_per_cell=1.5)


def test_long_cells_first_by_estimate():
    base = Scenario(**TINY)
    longer = base.replace(rounds=20)
    heavier = base.replace(model="convnet")
    attacked = base.replace(model="lenet", inversion_attack="inverting-gradients", inversion_victims=2)
    costs = {name: estimate_cost(s) for name, s in
             [("base", base), ("longer", longer), ("heavier", heavier), ("attacked", attacked)]}
    assert costs["longer"] == pytest.approx(10 * costs["base"])  # linear in rounds
    assert costs["heavier"] > costs["base"]
    # 2 victims × 4800 iterations (the attack's default) dwarf 2 rounds of training
    assert costs["attacked"] > 1000 * estimate_cost(base.replace(model="lenet"))



def test_a_ray_task_logs_its_cells_progress_tagged_to_stderr(monkeypatch, capfd):
    """Ray forwards a worker's stderr to the driver (log_to_driver): the task prints the cell's privfl.*
    records there at the driver's level, tagged with the cell, like the pool's workers through their queue."""
    import logging

    import privfl.evaluations.ray_backend as rb
    from privfl.evaluations.cells import payload_of
    from privfl.registry import register

    @register("model", "ray_log_probe_mlp")
    def ray_log_probe_mlp(input_shape, num_classes):
        logging.getLogger("privfl.attacks").info("probe: 3/10 steps")
        logging.getLogger("privfl.attacks").debug("below the driver's level")
        from privfl.models import MLP
        return MLP(input_shape, num_classes, hidden=(8,))

    monkeypatch.setattr(rb, "_worker_device", lambda: "cpu")
    spec = parse_spec({"name": "logs", "base": {**TINY, "rounds": 1, "model": "ray_log_probe_mlp",
                                                 "model_params": {}}, "seeds": [0]})
    cell = spec.cells()[0]
    logger = logging.getLogger("privfl")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        row = rb._run_cell(payload_of(cell, spec, {}), 1, logging.INFO)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert '"status": "done"' in row
    err = capfd.readouterr().err
    assert f"privfl.attacks: [{cell.label} · seed 0] probe: 3/10 steps" in err, err
    assert "below the driver's level" not in err
