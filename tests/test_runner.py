"""Evaluation runner: specs, store, resume after a failing cell and after a killed worker, reports."""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from privfl.evaluations import Scenario, SpecError, parse_spec
from privfl.evaluations.runner import run_spec
from privfl.evaluations.store import Store

# A plugin that registers a model which logs every construction (one per cell run) and fails or
# kills its own process when a marker file exists (the marker is consumed, so a re-run succeeds).
PLUGIN = '''
import os, signal
from pathlib import Path
from privfl.registry import register
from privfl.models import MLP

@register("model", __name__)
def probe_mlp(input_shape, num_classes, tag="", log="", fail_marker="", kill_marker=""):
    with open(log, "a") as fh:
        fh.write(tag + "\\n")
    if fail_marker and Path(fail_marker).exists():
        raise RuntimeError(f"probe cell {tag} failed on purpose")
    if kill_marker and Path(kill_marker).exists():
        Path(kill_marker).unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    return MLP(input_shape, num_classes, hidden=(16,))
'''

TINY = dict(dataset="digits", num_clients=4, rounds=2, local_steps=2, batch_size=8, model="mlp",
            model_params={"hidden": [16]})


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "plug"
    pkg.mkdir()
    name = f"privfl_probe_{abs(hash(str(tmp_path))) % 10**8}"
    (pkg / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("PYTHONPATH", str(pkg))
    return name, tmp_path


def _probe_spec(name: str, tmp: Path, tags: list[str], *, fail_tag: str = "", kill_tag: str = "") -> dict:
    blocks = []
    for tag in tags:
        params = {"tag": tag, "log": str(tmp / "log.txt")}
        if tag == fail_tag:
            params["fail_marker"] = str(tmp / "fail.marker")
        if tag == kill_tag:
            params["kill_marker"] = str(tmp / "kill.marker")
        blocks.append({"model_params": [params], "label": [tag]})
    base = {**TINY, "model": name, "model_params": {}}
    return {"name": "probe", "imports": [name], "base": base, "grid": blocks, "seeds": [0]}


def _log(tmp: Path) -> list[str]:
    path = tmp / "log.txt"
    return path.read_text().split() if path.exists() else []


def _rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        return con.execute("SELECT label, status, attempts FROM cells ORDER BY label").fetchall()


def test_spec_expansion_and_dotted_axes():
    spec = parse_spec({
        "name": "g", "base": TINY,
        "grid": [{"model": ["mlp", "convnet"], "partition_params.alpha": [0.1, 10.0]}, {"num_clients": 2}],
        "seeds": 2,
    })
    cells = spec.cells()
    assert len(cells) == (2 * 2 + 1) * 2
    alphas = sorted({c.scenario.partition_params["alpha"] for c in cells})
    assert alphas == [0.1, 0.5, 10.0]  # 0.5 is the base default kept by the union block
    assert len({c.id for c in cells}) == len(cells)
    assert {c.label for c in cells} >= {"model=mlp, partition_params.alpha=0.1", "num_clients=2"}
    # cases: fields set together, the case's label names it, other axes still multiply
    cased = parse_spec({
        "base": TINY,
        "grid": {"cases": [{"label": "plain", "aggregator": "mean"},
                           {"lr": 0.2, "partition_params.alpha": 3.0}], "rounds": [1, 2]},
    }).cells()
    other = "lr=0.2, partition_params.alpha=3.0"
    labels = ["plain, rounds=1", "plain, rounds=2", f"{other}, rounds=1", f"{other}, rounds=2"]
    assert [c.label for c in cased] == labels
    settings = [(c.scenario.lr, c.scenario.partition_params["alpha"]) for c in cased]
    assert settings == [(0.05, 0.5)] * 2 + [(0.2, 3.0)] * 2
    assert all(c.scenario.label == "" for c in cased)
    with pytest.raises(SpecError, match="cases"):
        parse_spec({"base": TINY, "grid": {"cases": ["mean"]}})
    # two cases axes multiply; with labelled cases, single-valued axes stay out of the label
    two = parse_spec({"base": TINY, "grid": {
        "cases": [{"label": "A", "lr": 0.1}, {"label": "B", "lr": 0.2}],
        "cases_attack": [{"label": "x", "momentum": 0.0}, {"label": "y", "momentum": 0.5}],
        "rounds": [3], "num_clients": [3, 5]}}).cells()
    assert len(two) == 8 and len({c.id for c in two}) == 8
    assert two[0].label == "A, x, num_clients=3"
    assert {(c.scenario.lr, c.scenario.momentum, c.scenario.rounds) for c in two} == {
        (lr, mo, 3) for lr in (0.1, 0.2) for mo in (0.0, 0.5)}
    # the same cell listed twice appears once
    dup = parse_spec({"base": TINY, "grid": [{"rounds": [2]}, {"rounds": [2]}]})
    assert len(dup.cells()) == 1


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"base": {"modle": "mlp"}}, "modle"),
        ({"base": TINY, "colour": 1}, "colour"),
        ({"base": TINY, "grid": {"nope.x": [1]}}, "nope"),
        ({"base": TINY, "seeds": -1}, "seeds"),
        ({"base": TINY, "seeds": ["a"]}, "seeds"),
        ({"base": {**TINY, "rounds": "many"}}, "rounds"),
        ({"base": TINY, "name": "../escape"}, "name"),
        (["not", "a", "mapping"], "mapping"),
    ],
)
def test_parse_errors_name_the_field(raw, needle):
    with pytest.raises(SpecError, match=needle):
        parse_spec(raw)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model": "resnot"}, "resnot"),
        ({"aggregator": "krum-typo"}, "krum-typo"),
        ({"dataset_params": {"bogus": 1}}, "bogus"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"partition": "round-robin"}, "partition"),
        ({"byzantine": 2}, "byzantine_attack"),
        ({"device": "tpu"}, "device"),
        ({"protocol": "fedprox"}, "protocol"),
    ],
)
def test_validation_errors_name_the_field(change, needle):
    with pytest.raises(SpecError, match=needle):  # types and bounds fail at parse time, the rest at validate
        parse_spec({"base": {**TINY, **change}}).validate()


def test_failed_cell_is_recorded_and_rerun_resumes(plugin, tmp_path):
    name, tmp = plugin
    (tmp / "fail.marker").write_text("x")
    spec = parse_spec(_probe_spec(name, tmp, ["a", "b", "c"], fail_tag="b"))
    out = tmp / "run"
    first = run_spec(spec, out, workers=0, progress=False)
    assert (first.done, first.failed) == (2, 1)
    assert _rows(out) == [("a", "done", 1), ("b", "failed", 1), ("c", "done", 1)]
    failed = Store(out).rows("failed")[0]
    assert "failed on purpose" in failed.error and "Traceback" in failed.error
    assert sorted(_log(tmp)) == ["a", "b", "c"]

    (tmp / "fail.marker").unlink()
    second = run_spec(spec, out, workers=0, progress=False)
    assert (second.skipped, second.done, second.failed) == (2, 1, 0)
    # finished cells were neither recomputed nor duplicated; the failed one ran once more
    assert sorted(_log(tmp)) == ["a", "b", "b", "c"]
    assert _rows(out) == [("a", "done", 1), ("b", "done", 2), ("c", "done", 1)]
    third = run_spec(spec, out, workers=0, progress=False)
    assert (third.skipped, third.done) == (3, 0)
    assert len(_log(tmp)) == 4


@pytest.mark.slow
def test_killed_worker_loses_nothing_finished(plugin, tmp_path):
    name, tmp = plugin
    (tmp / "kill.marker").write_text("x")
    tags = ["a", "b", "c", "d", "e"]
    spec = parse_spec(_probe_spec(name, tmp, tags, kill_tag="c"))
    out = tmp / "run"
    first = run_spec(spec, out, workers=2, progress=False)
    rows = {label: status for label, status, _ in _rows(out)}
    assert rows["c"] == "failed"
    assert "worker process died" in [r for r in Store(out).rows() if r.label == "c"][0].error
    done_first = {label for label, status in rows.items() if status == "done"}
    assert first.failed >= 1 and done_first, rows
    log_first = list(_log(tmp))

    second = run_spec(spec, out, workers=2, progress=False)
    assert second.failed == 0
    assert {label for label, status, _ in _rows(out)} == set(tags)
    assert all(status == "done" for _, status, _ in _rows(out))
    rerun = _log(tmp)[len(log_first):]
    assert not (set(rerun) & done_first), f"finished cells recomputed: {set(rerun) & done_first}"
    assert set(rerun) == set(tags) - done_first
    with sqlite3.connect(out / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT cell_id) FROM cells").fetchone() == (5, 5)


@pytest.mark.slow
def test_same_results_whatever_the_number_of_workers(tmp_path):
    spec = parse_spec({"name": "det", "base": {**TINY, "model_params": {}}, "grid": {"model": ["mlp", "lenet"]},
                       "seeds": [0, 1]})
    a = run_spec(spec, tmp_path / "w0", workers=0, progress=False)
    b = run_spec(spec, tmp_path / "w2", workers=2, progress=False)
    assert a.done == b.done == 4

    def series(run_dir):
        return {r.cell_id: (r.result["series"]["accuracy"], r.result["series"]["loss"]) for r in Store(run_dir).rows()}

    sa, sb = series(tmp_path / "w0"), series(tmp_path / "w2")
    assert sa.keys() == sb.keys() and len(sa) == 4
    assert sa == sb  # exact float equality: bit-identical training
    # and a different seed really changes the run
    seeds = {}
    for r in Store(tmp_path / "w0").rows():
        seeds.setdefault(r.label, []).append(r.result["series"]["loss"])
    assert all(v[0] != v[1] for v in seeds.values())


def test_reports_written(tmp_path):
    spec = parse_spec({"name": "rep", "base": TINY, "grid": {"lr": [0.05, 0.1]}, "seeds": [0]})
    run_spec(spec, tmp_path / "run", workers=0, progress=False)
    run_dir = tmp_path / "run"
    for fname in ("results.md", "results.csv", "accuracy.png"):
        assert (run_dir / fname).stat().st_size > 0
    with open(run_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {r["scenario.lr"] for r in rows} == {"0.05", "0.1"}
    assert all(0.0 <= float(r["final_accuracy"]) <= 1.0 for r in rows)
    md = (run_dir / "results.md").read_text()
    assert "| lr=0.05 | 1 |" in md and "2 cell(s) done, 0 failed" in md
    assert (run_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_scenario_python_api_matches_docs():
    from privfl.evaluations import run

    result = run(Scenario(**TINY), seed=3)
    assert set(result) == {"summary", "series"}
    assert len(result["series"]["accuracy"]) == TINY["rounds"]
    assert result["summary"]["num_params"] == 64 * 16 + 16 + 16 * 10 + 10
    json.dumps(result)  # results are plain JSON


def test_bundled_default_spec_is_valid():
    from privfl.evaluations.spec import bundled_specs, load_spec

    assert "default" in bundled_specs()
    spec = load_spec(None)
    cells = spec.validate()
    # the foundation's baseline: FedAvg on digits, 20 clients, Dirichlet 0.5, 30 rounds, MLP and ConvNet, 2 seeds
    baseline = [c for c in cells if c.label in ("model=mlp", "model=convnet")]
    assert len(baseline) == 4 and {c.seed for c in baseline} == {0, 1}
    for c in baseline:
        s = c.scenario
        assert (s.dataset, s.protocol, s.num_clients, s.rounds, s.mechanism, s.byzantine) == (
            "digits", "fedavg", 20, 30, None, 0)
        assert (s.partition, s.partition_params) == ("dirichlet", {"alpha": 0.5})
    assert yaml.safe_load(bundled_specs()["default"].read_text())["name"] == "default"


def test_cli_bad_input_exit_codes(tmp_path, capsys):
    from privfl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": {**TINY, "aggregator": "medain"}}))
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "medain" in err and "valid aggregator names" in err and "mean" in err
    assert main(["run", "no-such-spec"]) == 2
    assert "no-such-spec" in capsys.readouterr().err
    bad.write_text("base: {rounds: [unclosed")
    assert main(["run", str(bad)]) == 2
    assert "YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--workers", "-3"])
    assert exc.value.code == 2 and "--workers" in capsys.readouterr().err
    assert main(["run", "default", "--device", "quantum"]) == 2
    assert "--device" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["list", "gadget"]) == 2
    assert "valid kinds" in capsys.readouterr().err
    assert main(["list", "aggregator"]) == 0
    assert "mean(f=0)" in capsys.readouterr().out


def test_cli_run_and_resume_subprocess(tmp_path):
    import subprocess

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": TINY, "seeds": [0]}))
    cmd = [sys.executable, "-m", "privfl.cli", "run", str(spec), "--out", str(tmp_path / "run"), "--workers", "0",
           "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "1 ran, 0 failed" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "1 already done, 0 ran" in second.stdout
