"""A harness you can leave running, part 2: progress from inside long attacks and audits (also from worker
processes), mixing-rule sizes checked at validation, stale report files removed, and a huge grid refused
by a cold ``privfl`` process before torch is imported."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privfl import registry
from privfl.cli import main
from privfl.evaluations import Scenario, SpecError, parse_spec
from privfl.evaluations.audit import canary_audit
from privfl.evaluations.report import PLOTS, write_report
from privfl.evaluations.runner import run_spec
from privfl.evaluations.store import Store
from privfl.progress import ProgressLog


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def privfl_records():
    """Every record the ``privfl`` logger (and its children) handles in this process, at INFO."""
    logger = logging.getLogger("privfl")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


# ----------------------------------------------------------------------------------------- progress
def test_progress_log_is_throttled_and_says_done_total_rate_and_time_left(privfl_records):
    quiet = ProgressLog("privfl.test", "loop", 50, unit="iterations", every=3600.0)
    for i in range(50):
        quiet.update(i + 1)
    quiet.finish()
    assert privfl_records == []  # shorter than the interval: nothing at all
    chatty = ProgressLog("privfl.test", "loop", 4, unit="iterations", every=0.0)
    for i in range(4):
        chatty.update(i + 1)
    chatty.finish()
    lines = [r.getMessage() for r in privfl_records]
    assert len(lines) == 4  # three progress lines (the last step is the closing line's) and the closing line
    assert re.fullmatch(r"loop: 2/4 iterations \(50%\), \S+ iterations/s, ~\d+:\d\d left", lines[1]), lines[1]
    assert re.fullmatch(r"loop: done, 4 iterations in \d+:\d\d", lines[-1]), lines[-1]
    assert {r.name for r in privfl_records} == {"privfl.test"}


def test_canary_audit_logs_its_batches(privfl_records, monkeypatch):
    monkeypatch.setenv("PRIVFL_PROGRESS_EVERY_S", "0")
    mech = registry.make("mechanism", "dp-fedavg", clip_norm=1.0, noise_multiplier=1.0)
    canary_audit(mech, trials=64, batch_size=16, num_clients=2, dim=8)
    lines = [r.getMessage() for r in privfl_records if r.name == "privfl.audit"]
    assert lines[0].startswith("canary audit of dp-fedavg: 64 trials per side: 1/8 batches")
    assert lines[-1].startswith("canary audit of dp-fedavg: 64 trials per side: done, 8 batches")


@pytest.mark.slow
def test_attack_progress_in_a_worker_process_reaches_the_parent(tmp_path, monkeypatch, privfl_records):
    monkeypatch.setenv("PRIVFL_PROGRESS_EVERY_S", "0")  # (inherited by the workers) a line per iteration
    spec = parse_spec({"name": "ig", "base": {
        "dataset": "digits", "model": "mlp", "model_params": {"hidden": [8]}, "protocol": "fedsgd",
        "batch_size": 1, "rounds": 1, "num_clients": 2, "partition": "iid", "partition_params": {},
        "label": "IG cell", "inversion_attack": "inverting-gradients", "inversion_attack_params": {"iterations": 3},
        "inversion_victims": 1}})
    summary = run_spec(spec, tmp_path / "run", workers=1, progress=False)
    assert summary.done == 1
    attack = [r.getMessage() for r in privfl_records if r.name == "privfl.attacks"]
    # the worker's records, tagged with its cell, were handled by the parent's logger
    assert any(re.fullmatch(r"\[IG cell · seed 0\] inverting-gradients: Adam on 1 trial\(s\) at once: "
                            r"1/3 iterations \(33%\), .* left", m) for m in attack), attack
    assert any(m.startswith("[IG cell · seed 0] inverting-gradients: Adam on 1 trial(s) at once: done, 3 iterations")
               for m in attack), attack


# ----------------------------------------------------------------------------------------- decentralized
DEC = dict(mode="decentralized", num_clients=4, rounds=1, local_steps=1, model="mlp", model_params={"hidden": [8]})


@pytest.mark.parametrize("change, needle", [
    # complete graph: a node receives all 4 models, NNA with f = 4 needs more than 4
    ({"mixing_params": {"f": 4}}, r"receives 4 model\(s\).*more than f=4; each node receives all 4 models"),
    # sampled graph (the paper's): a node receives n − f = 3 models, f = 3 leaves none to average
    ({"num_clients": 5, "byzantine": 2, "byzantine_attack": "sign-flip", "graph": "sampled", "mixing_params": {"f": 3}},
     r"more than f=3; each honest node receives n − f = 3 model\(s\)"),
])
def test_mixing_rule_sizes_checked_at_validation(change, needle):
    with pytest.raises(SpecError, match=r"^scenario\.mixing: nna: .*" + needle):
        Scenario.from_dict({**DEC, **change}).validate()


def test_mixing_rule_size_error_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "dec.yaml"
    path.write_text(yaml.safe_dump({"name": "dec", "base": {**DEC, "mixing_params": {"f": 4}}}))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"]) == 2
    assert re.search(r"cell \[dec\]\.mixing: nna: node 0 receives 4", capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
    # within the rule's requirement the same scenarios validate
    Scenario.from_dict({**DEC, "mixing_params": {"f": 3}}).validate()
    Scenario.from_dict({**DEC, "num_clients": 5, "byzantine": 2, "byzantine_attack": "sign-flip",
                        "graph": "sampled"}).validate()


# ----------------------------------------------------------------------------------------- stale files
def _one_cell_store(run_dir: Path) -> None:
    store = Store(run_dir)
    result = {"summary": {"final_accuracy": 0.5}, "series": {"round": [1, 2], "accuracy": [0.3, 0.5]}}
    store.record(cell_id="c0", spec="s", label="a cell", seed=0, scenario=Scenario().to_dict(), status="done",
                 result=result)


def test_regenerated_report_removes_its_own_stale_files_only(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _one_cell_store(run_dir)
    wanted = {"first.png", "second.png", "second.md"}

    def plot(run_dir, rows):  # a plot family whose output shrinks between two reports
        out = []
        for name in sorted(wanted):
            (Path(run_dir) / name).write_text(name)
            out.append(Path(run_dir) / name)
        return out

    monkeypatch.setitem(PLOTS, "test-shrinking", plot)
    (run_dir / "mine.png").write_text("the user's own picture")  # not the report's: never touched
    (run_dir / "notes.md").write_text("the user's notes")
    paths = write_report(run_dir)
    assert {"first.png", "second.png", "second.md", "accuracy.png"} <= {p.name for p in paths.values()}
    wanted.clear()
    wanted.add("first.png")
    write_report(run_dir)
    names = {p.name for p in run_dir.iterdir()}
    assert "second.png" not in names and "second.md" not in names
    assert {"first.png", "accuracy.png", "mine.png", "notes.md", "results.md", "results.csv"} <= names
    assert "second.png" not in (run_dir / "results.md").read_text()
    assert (run_dir / "mine.png").read_text() == "the user's own picture"


def test_report_in_a_directory_from_before_the_record_removes_known_stale_plots(tmp_path):
    run_dir = tmp_path / "run"
    _one_cell_store(run_dir)
    for name in ("inversion_grid2.png", "robustness_heatmap.png", "mine.png", "grid_of_mine.png"):
        (run_dir / name).write_text(name)
    write_report(run_dir)
    names = {p.name for p in run_dir.iterdir()}
    assert "inversion_grid2.png" not in names and "robustness_heatmap.png" not in names
    assert {"mine.png", "grid_of_mine.png", "accuracy.png"} <= names


# ----------------------------------------------------------------------------------------- cold refusal
def test_cold_cli_refuses_a_huge_grid_without_importing_torch(tmp_path):
    values = [round(0.001 * (i + 1), 3) for i in range(100)]
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({"name": "huge", "grid": {"lr": values, "momentum": values,
                                                            "weight_decay": values}}))
    code = ("import sys\nfrom privfl.cli import main\nrc = main(sys.argv[1:])\n"
            "print(rc, 'torch' in sys.modules, 'privfl.evaluations.scenario' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "run", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["2", "False", "False"], (out.stdout, out.stderr)
    assert "the grid expands to 1,000,000 cells ((100 × 100 × 100) × 1 seed(s))" in out.stderr
    assert "more than the limit of 10,000" in out.stderr and "--max-cells" in out.stderr
    assert not (tmp_path / "o").exists()
    # the installed entry point (python -m privfl) takes the same path: no torch in its import log
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "privfl", "run", str(path), "--max-cells", "500"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2 and "more than the limit of 500" in out.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")]
    assert "privfl.cli" in imported and "torch" not in imported


# ----------------------------------------------------------------------------------------- report text and plots
def test_report_marks_coinciding_curves_and_titles_privacy_only_where_eps_is_finite(tmp_path, monkeypatch):
    import matplotlib.axes

    store = Store(tmp_path)
    series = {"round": [1, 2, 3], "accuracy": [0.3, 0.6, 0.9]}
    cells = [("mean", "mean", series), ("trimmed", "trimmed-mean", series),  # equal without Byzantine clients
             ("median", "median", {"round": [1, 2, 3], "accuracy": [0.3, 0.5, 0.8]})]
    for label, agg, s in cells:
        store.record(cell_id=label, spec="s", label=label, seed=0, scenario=Scenario(aggregator=agg).to_dict(),
                     status="done", result={"summary": {"final_accuracy": s["accuracy"][-1], "epsilon": float("inf")},
                                            "series": s})
    labels: list[str] = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: (labels.append(k.get("label")), plot(self, *a, **k))[1])
    write_report(tmp_path)
    assert labels == ["mean (n=1)", "trimmed (n=1) — same curve as mean", "median (n=1)"]
    assert "## Federated training\n" in (tmp_path / "results.md").read_text()  # ε = ∞ everywhere: no "privacy"
    store.record(cell_id="dp", spec="s", label="dp", seed=0, scenario=Scenario(mechanism="dp-fedavg").to_dict(),
                 status="done", result={"summary": {"final_accuracy": 0.5, "epsilon": 3.0}, "series": series})
    write_report(tmp_path)
    assert "## Federated training — privacy spent\n" in (tmp_path / "results.md").read_text()
