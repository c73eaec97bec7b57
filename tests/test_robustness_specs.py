"""The robustness and MoNNA specs (shipped, runnable by name), the Byzantine slice of the bundled default
run, and the accuracy-under-attack table and heatmap written from a run's store."""

from __future__ import annotations

from pathlib import Path

import pytest

import privfl
from privfl.evaluations.robustness_report import robustness_tables
from privfl.evaluations.spec import bundled_specs, load_spec, parse_spec
from privfl.evaluations.store import CellRow

AGGREGATORS = privfl.available("aggregator")  # the spec covers every registered rule
ATTACKS = ["sign-flip", "ipm", "alie", "min-max", "min-sum", "mimic", "gaussian", "label-flip", "nan", "inf"]


@pytest.mark.slow
def test_robustness_spec_covers_every_rule_attack_alpha_and_f():
    assert "robustness" in bundled_specs()
    spec = load_spec("robustness")
    cells = spec.cells()
    # validating all 1,476 distinct scenarios takes ~3 s; one per (defense, attack, f) pair covers every
    # component and parameter combination the spec uses
    seen = {}
    for c in cells:
        s = c.scenario
        key = (s.aggregator, tuple(s.preaggregators), s.byzantine_attack, repr(s.byzantine_attack_params), s.byzantine)
        seen.setdefault(key, c)
    for c in seen.values():
        c.scenario.validate()
    assert spec.seeds == [0, 1]
    sc = [c.scenario for c in cells]
    assert {s.aggregator for s in sc} == set(AGGREGATORS)
    assert {s.byzantine_attack for s in sc if s.byzantine} == set(ATTACKS)
    assert {s.partition_params["alpha"] for s in sc} == {0.1, 1.0, 10.0}
    assert {s.byzantine for s in sc} == {0, 2, 4}
    assert {tuple(s.preaggregators) for s in sc} == {(), ("nnm",)}
    assert all(s.num_clients == 20 and s.worker_momentum == 0.9 and s.dataset == "digits" for s in sc)
    # every robust rule meets every attack at every (alpha, f), alone and after NNM, for both seeds
    robust = {s.aggregator for s in sc} - {"mean"}
    assert len(cells) == (len(robust) * 2 * 12 + 2 * 10) * 3 * 2 * 2 + 10 * 2 * 3 * 2


def test_monna_spec_is_the_papers_cifar_setting_on_digits():
    spec = load_spec("monna")
    cells = spec.validate()
    sc = [c.scenario for c in cells]
    assert all(s.mode == "decentralized" and s.num_clients == 16 and s.node_momentum == 0.99 for s in sc)
    assert {s.byzantine for s in sc} == {0, 3} and all(s.graph == "sampled" for s in sc)
    assert {s.byzantine_attack for s in sc if s.byzantine} == {"alie", "ipm", "sign-flip", "label-flip"}


def test_default_run_has_the_byzantine_slice():
    cells = load_spec(None).validate()
    byz = [c for c in cells if c.scenario.byzantine]
    defenses = {(c.scenario.aggregator, tuple(c.scenario.preaggregators)) for c in byz}
    assert {("mean", ()), ("trimmed-mean", ("nnm",)), ("centered-clipping", ())} <= defenses
    assert {c.scenario.byzantine_attack for c in byz} >= {"alie", "sign-flip"}
    assert all(c.scenario.model == "mlp" and c.scenario.rounds <= 20 for c in byz)


def _row(agg, pre, attack, f, alpha, acc, seed=0):
    scenario = {"aggregator": agg, "preaggregators": pre, "byzantine": f, "byzantine_attack": attack,
                "byzantine_attack_params": {}, "aggregator_params": {}, "partition_params": {"alpha": alpha},
                "rounds": 5}
    return CellRow(f"{agg}{pre}{attack}{f}{alpha}{seed}", "s", "l", seed, scenario, "done",
                   {"summary": {"final_accuracy": acc}, "series": {}}, None, 1, 0.0)


def test_robustness_tables_average_seeds_and_add_the_baseline_column():
    rows = [
        _row("mean", [], "alie", 4, 1.0, 0.2), _row("mean", [], "alie", 4, 1.0, 0.4, seed=1),
        _row("krum", ["nnm"], "alie", 4, 1.0, 0.9), _row("krum", ["nnm"], "nan", 4, 1.0, 0.8),
        _row("mean", [], None, 0, 1.0, 0.95), _row("krum", ["nnm"], None, 0, 1.0, 0.93),
        _row("mean", [], "alie", 4, 0.1, 0.1),
    ]
    tables = robustness_tables(rows)
    panel = tables[(("f", 4), ("partition_params.alpha", "1.0"))]
    assert panel["mean"]["alie"] == pytest.approx(0.3)
    assert panel["mean"]["none"] == pytest.approx(0.95)
    assert panel["nnm+krum"] == {"alie": 0.9, "nan": 0.8, "none": 0.93}
    assert tables[(("f", 4), ("partition_params.alpha", "0.1"))]["mean"] == {"alie": 0.1}


@pytest.mark.slow
def test_tiny_robustness_run_writes_table_and_heatmap(tmp_path: Path):
    from privfl.evaluations.runner import run_spec

    spec = parse_spec({
        "name": "tiny-robustness",
        "base": {"num_clients": 8, "rounds": 2, "local_steps": 2, "model": "mlp", "model_params": {"hidden": [8]},
                 "device": "cpu"},
        "grid": [
            {"byzantine": [0], "aggregator": ["mean", "median"]},
            {"byzantine": [1], "aggregator": ["mean", "median"], "byzantine_attack": ["sign-flip"]},
            {"byzantine": [1], "aggregator": ["median"], "preaggregators": [["nnm"]], "byzantine_attack": ["nan"]},
        ],
        "seeds": [0],
    })
    summary = run_spec(spec, tmp_path, workers=0, progress=False)
    assert summary.done == 5 and summary.failed == 0
    md = (tmp_path / "robustness.md").read_text()
    assert "| defense | none | nan | sign-flip |" in md and "| nnm+median |" in md
    png = tmp_path / "robustness_heatmap.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
