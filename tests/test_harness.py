"""A harness you can leave running: store integrity and provenance, limits, clean CLI failures,
orphaned workers, progress, and reports that never pool unrelated cells."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from privfl.cli import main
from privfl.evaluations import Scenario, SpecError, parse_spec
from privfl.evaluations.runner import Progress, RunDirInUse, run_spec
from privfl.evaluations.store import CellRow, Store

SMALL = dict(dataset="digits", num_clients=4, rounds=2, local_steps=1, batch_size=8, model="mlp",
             model_params={"hidden": [8]})


def _spec_file(tmp_path: Path, raw: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------------------- store
@pytest.mark.parametrize("content", [b"", b"this is not a database, just some text" * 4])
def test_damaged_store_stops_run_and_report(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.sqlite").write_bytes(content)
    (run_dir / "results.md").write_text("earlier report")
    spec = _spec_file(tmp_path, {"name": "t", "base": SMALL})
    assert main(["run", str(spec), "--out", str(run_dir), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "results.sqlite" in err and ("0 bytes" in err if not content else "not an SQLite database" in err)
    assert main(["report", str(run_dir)]) == 2
    assert "results.sqlite" in capsys.readouterr().err
    # nothing was run, created or overwritten
    assert (run_dir / "results.sqlite").read_bytes() == content
    assert (run_dir / "results.md").read_text() == "earlier report"
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.md", "results.sqlite"]


def test_store_is_strict_json_and_restores_non_finite_values(tmp_path):
    store = Store(tmp_path)
    result = {"summary": {"epsilon": math.inf, "loss": math.nan, "acc": 0.5}, "series": {"x": [1.0, -math.inf]}}
    store.record(cell_id="c", spec="s", label="l", seed=0, scenario={"a": 1}, status="done", result=result)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        raw, flags = con.execute("SELECT result, nonfinite FROM cells").fetchone()
    assert strict(raw)["summary"] == {"epsilon": None, "loss": None, "acc": 0.5}
    assert sorted(map(tuple, [(tuple(p), v) for p, v in strict(flags)])) == [
        (("series", "x", 1), "-inf"), (("summary", "epsilon"), "inf"), (("summary", "loss"), "nan")]
    back = store.rows()[0].result
    assert back["summary"]["epsilon"] == math.inf and math.isnan(back["summary"]["loss"])
    assert back["series"]["x"] == [1.0, -math.inf]


def test_run_dir_belongs_to_one_spec(tmp_path):
    out = tmp_path / "run"
    first = parse_spec({"name": "first", "base": SMALL, "grid": {"label": ["old label"]}})
    run_spec(first, out, workers=0, progress=False)
    binding = Store(out).get_meta("binding")
    assert set(binding) >= {"spec_hash", "privfl", "torch", "python", "devices"}
    assert binding["spec_hash"] == first.content_hash()
    assert run_spec(first, out, workers=0, progress=False).skipped == 1  # the same spec resumes

    # a different spec that shares the cell: refused, and the message says why and what to do
    second = parse_spec({"name": "second", "base": {**SMALL, "label": "old label"},
                         "grid": [{"lr": [0.05]}, {"lr": [0.1]}]})
    assert {c.id for c in second.cells()} & {c.id for c in first.cells()}
    with pytest.raises(RunDirInUse, match=r"--out.*'first'.*'second'.*--force"):
        run_spec(second, out, workers=0, progress=False)
    assert len(Store(out).rows()) == 1
    # asked for: the shared cell is reused and shown under the new spec; the report names both producers
    summary = run_spec(second, out, workers=0, progress=False, force=True)
    assert (summary.skipped, summary.done) == (1, 1)
    assert {r.spec for r in Store(out).rows()} == {"second"}
    md = (out / "results.md").read_text()
    assert first.content_hash() in md and second.content_hash() in md
    assert len(Store(out).get_meta("history")) == 3

    # another torch (or privfl) version is refused too
    store = Store(out)
    store.set_meta("binding", {**store.get_meta("binding"), "torch": "0.0.1"})
    with pytest.raises(RunDirInUse, match="torch 0.0.1"):
        run_spec(second, out, workers=0, progress=False)


# ----------------------------------------------------------------------------------------- limits
def test_huge_grid_is_refused_before_it_is_expanded(tmp_path, capsys):
    # (a cold `privfl run` refuses it without importing torch: tests/test_leave_running.py)
    values = list(range(1, 101))
    raw = {"name": "huge", "base": SMALL,
           "grid": {"rounds": values, "local_steps": values, "dataset_params.n_train": values}, "seeds": 1}
    spec = parse_spec(raw)
    with pytest.raises(SpecError, match=r"1,000,000 cells.*10,000.*--max-cells"):
        spec.validate()
    with pytest.raises(SpecError, match=r"1,000,000 cells.*more than the limit of 10"):
        parse_spec(raw, max_cells=10)  # before any scenario is built
    path = _spec_file(tmp_path, {"name": "four", "base": SMALL, "grid": {"lr": [0.1, 0.2]}, "seeds": 2})
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--max-cells", "3"]) == 2
    assert "4 cells" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.sqlite").exists()


@pytest.mark.parametrize("change, needle", [
    ({"rounds": 10**12}, r"rounds: got 1000000000000; allowed: at most 100,000"),
    ({"num_clients": 10**6}, "num_clients"),
    ({"rounds": 100_000, "num_clients": 10_000, "local_steps": 10}, r"rounds: .*client SGD steps"),
    # each rule's own requirement, on the rows a round really gives it
    ({"aggregator": "krum", "byzantine": 1, "byzantine_attack": "sign-flip"}, r"aggregator: krum: needs n > 2f \+ 2"),
    ({"aggregator": "median", "byzantine": 1, "byzantine_attack": "sign-flip", "sample_rate": 0.5},
     r"aggregator: median: needs n > 2f, got n=2"),
    ({"preaggregators": ["nnm"], "byzantine": 2, "byzantine_attack": "sign-flip"}, r"preaggregators\[0\]: nnm"),
])
def test_sizes_and_rule_requirements_checked_at_validation(change, needle):
    with pytest.raises(SpecError, match=needle):
        Scenario(**{**SMALL, **change}).validate()


def test_valid_rule_sizes_pass():
    Scenario(**{**SMALL, "num_clients": 7, "aggregator": "krum", "byzantine": 2,
                "byzantine_attack": "sign-flip"}).validate()


def test_rule_sizes_of_huge_rounds_are_checked_on_bounded_rows(monkeypatch):
    """Krum on a 100,000-client round would build 10^10 distances at validation: the rules see at most
    MAX_CHECKED_ROWS rows, a pass there stands for the larger round, a failure there is not reported."""
    from privfl.defenses.krum import Krum
    from privfl.evaluations.scenario import MAX_CHECKED_ROWS

    seen: list[int] = []
    original = Krum.__call__
    monkeypatch.setattr(Krum, "__call__", lambda self, x, **kw: (seen.append(x.shape[0]), original(self, x, **kw))[1])
    big = {**SMALL, "num_clients": 100_000, "rounds": 1, "local_steps": 1, "aggregator": "krum",
           "byzantine_attack": "sign-flip"}
    Scenario(**big, byzantine=10).validate()
    Scenario(**big, byzantine=5_000).validate()  # fails on 2,048 rows, passes on 100,000: not reported
    assert seen == [MAX_CHECKED_ROWS, MAX_CHECKED_ROWS]
    with pytest.raises(SpecError, match=r"aggregator: krum: needs n > 2f \+ 2"):
        Scenario(**{**big, "num_clients": 2_000}, byzantine=999).validate()


def test_cli_out_errors_and_internal_errors(tmp_path, capsys, monkeypatch):
    spec = _spec_file(tmp_path, {"name": "t", "base": SMALL})
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        assert main(["run", str(spec), "--out", str(out), "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "Traceback" not in err
    # a ValueError that is not a validation error is a bug: exit 1 with the traceback, not "bad input"
    import privfl.evaluations.runner as runner

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(runner, "run_spec", broken)
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--workers", "0"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_list_shows_paper_and_defaults(capsys):
    assert main(["list", "aggregator"]) == 0
    out = capsys.readouterr().out
    assert "krum(f=0" in out and "Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017" in out


# ----------------------------------------------------------------------------------------- workers
DRIVER = """
import sys
from privfl.evaluations import parse_spec
from privfl.evaluations.runner import run_spec

if __name__ == "__main__":
    spec = parse_spec({"name": "orphans", "imports": [sys.argv[2]], "base": %r,
                       "grid": {"model_params": [{"tag": str(i), "log": sys.argv[3]} for i in range(6)]}})
    run_spec(spec, sys.argv[1], workers=2, progress=False)
"""
SLOW_MODEL = """
import os, time
from privfl.registry import register
from privfl.models import MLP

@register("model", __name__)
def slow_mlp(input_shape, num_classes, tag="", log=""):
    with open(log, "a") as fh:
        fh.write(f"{tag} {os.getpid()}\\n")
    time.sleep(1.0)
    return MLP(input_shape, num_classes, hidden=(8,))
"""


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_orphaned_workers_exit_within_seconds(tmp_path):
    name = f"privfl_slow_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(SLOW_MODEL)
    (tmp_path / "driver.py").write_text(DRIVER % ({**SMALL, "model": name, "model_params": {}},))
    log = tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "run"), name, str(log)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.exists(), "no worker started a cell"
        workers = _children(driver.pid)
        assert workers, "the driver has no child processes"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        killed = time.time()
        # the cells in flight may finish and be saved first (under load that takes a while); after that,
        # every worker must be gone within 10 s
        while any(_alive(p) for p in workers) and time.time() - killed < 180:
            time.sleep(0.2)
        gone = time.time()
        assert not any(_alive(p) for p in workers), f"orphans still alive 180 s after the parent died: {workers}"
    finally:
        if driver.poll() is None:
            driver.kill()
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as con:
        last_saved = con.execute("SELECT MAX(finished) FROM cells").fetchone()[0] or killed
    assert gone - max(killed, last_saved) < 10.0, (gone - killed, last_saved - killed)
    # the cells in flight were finished and saved, the queued ones were not started
    started = {line.split()[0] for line in log.read_text().split("\n") if line}
    assert len(started) < 6
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as con:
        saved = con.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
    assert saved >= 1


# ----------------------------------------------------------------------------------------- progress
def test_progress_estimates_from_finished_cells_and_logs_plain_lines():
    pending = [{"id": str(i), "scenario": {"rounds": 30 if i < 2 else 1}} for i in range(4)]

    class Pipe:  # a log file, not a terminal
        def isatty(self):
            return False

        def write(self, text):
            pass

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger, collect = logging.getLogger("privfl"), Collect()
    level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        progress = Progress("demo", pending, workers=2, stream=Pipe(), every_s=0.0)
        assert progress.eta_s() is None
        progress.finished("0", "done", 10.0)  # a 30-round cell took 10 s, the other one costs the same
        progress.finished("2", "done", 1.0)  # a 1-round cell took 1 s
        assert progress.eta_s() == pytest.approx((10.0 + 1.0) / 2)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    assert "demo: 4 cell(s) to run on 2 worker(s)" in collect.lines[0]
    assert "demo: 2/4 cells finished" in collect.lines[-1] and "0:06 left" in collect.lines[-1]


# ----------------------------------------------------------------------------------------- reports
def test_csv_headers_unique_and_markdown_escaped(tmp_path):
    spec = parse_spec({"name": "esc", "base": {**SMALL, "rounds": 1},
                       "grid": {"label": ["a | b", "two\nlines"]}})
    run_spec(spec, tmp_path, workers=0, progress=False)
    with open(tmp_path / "results.csv") as fh:
        header = next(csv.reader(fh))
        fh.seek(0)
        rows = list(csv.DictReader(fh))
    assert len(header) == len(set(header)) and "scenario.label" in header
    assert sorted(r["scenario.label"] for r in rows) == ["a | b", "two\nlines"]
    md = (tmp_path / "results.md").read_text()
    assert "| a \\| b | 1 |" in md and "| two lines | 1 |" in md
    assert "- `final_accuracy`: test accuracy" in md and "accuracy after only 1 round(s)" in md


def _cell(i, scenario, summary, seed=0, series=None, label=None):
    return CellRow(f"c{i}", "s", label or f"l{i}", seed, scenario, "done",
                   {"summary": summary, "series": series or {}}, None, 1, 0.0)


def test_baseline_never_averaged_across_groups():
    from privfl.evaluations.privacy import privacy_utility_panels

    fed = {"dataset": "digits", "model": "mlp", "rounds": 20, "num_clients": 100, "protocol": "fedavg"}
    ipm = {**fed, "num_clients": 20, "byzantine": 4, "byzantine_attack": "ipm"}
    faces = {**fed, "dataset": "lfw-faces", "rounds": 30}
    rows = [
        _cell(0, fed, {"epsilon": math.inf, "final_accuracy": 0.92}),
        _cell(1, fed, {"epsilon": math.inf, "final_accuracy": 0.90}, seed=1),
        _cell(2, {**fed, "mechanism": "gaussian"}, {"epsilon": 8.0, "final_accuracy": 0.85}),
        _cell(3, ipm, {"epsilon": math.inf, "final_accuracy": 0.1}),  # another experiment: not a baseline here
        _cell(4, faces, {"epsilon": math.inf, "final_accuracy": 0.5}),
        _cell(5, {**faces, "mechanism": "gaussian"}, {"epsilon": 2.0, "final_accuracy": 0.5}),
    ]
    panels = privacy_utility_panels(rows)
    assert len(panels) == 2
    digits = next(p for p in panels if "digits" in p["title"])
    assert [(acc, n) for _, acc, n in digits["baselines"]] == [(pytest.approx(0.91), 2)]
    assert list(digits["curves"].values()) == [[(8.0, 0.85, "l2", 1)]]


def test_inversion_curve_keeps_attack_variants_apart():
    from privfl.evaluations.inversion import psnr_eps_panels

    base = {"dataset": "lfw-faces", "model": "lenet", "protocol": "fedsgd", "batch_size": 1,
            "inversion_attack": "inverting-gradients", "inversion_attack_params": {"iterations": 10}}
    adaptive = {**base, "inversion_attack_params": {"iterations": 10, "support": "observed"}}

    def inv(psnrs):
        return {"inversion": {"victims": [{"psnr": p} for p in psnrs]}}

    rows = [
        _cell(0, {**base, "mechanism": "top-k"}, {"epsilon": math.inf}, series=inv([9.0, 10.0])),
        _cell(1, {**adaptive, "mechanism": "top-k"}, {"epsilon": math.inf}, series=inv([30.0, 31.0])),
        _cell(2, {**base, "mechanism": "gaussian"}, {"epsilon": 100.0}, series=inv([12.0])),
        _cell(3, {**base, "mechanism": "gaussian"}, {"epsilon": 100.0}, seed=1, series=inv([14.0]), label="l2"),
    ]
    (panel,) = psnr_eps_panels(rows)
    assert sorted(mean for _, mean, _ in panel["lines"]) == [9.5, 30.5]  # never their average, 20 dB
    assert list(panel["curves"].values()) == [[(100.0, 13.0, 2)]]  # seeds of one configuration averaged
