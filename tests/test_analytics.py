"""The federated-analytics mode: evolving populations, τ collections, MSE and budget, plots, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from scipy import stats

from privfl.evaluations import Scenario, SpecError, run
from privfl.evaluations.analytics import MarkovPopulation, ZipfPopulation, make_population

SMALL = dict(mode="analytics", analytics_users=3_000, rounds=6, analytics_alpha=0.4,
             analytics_data_params={"s": 1.1, "change_prob": 0.3})


def scenario(mechanism: str, **params) -> Scenario:
    return Scenario(mechanism=mechanism, mechanism_params={"k": 40, "eps_inf": 2.0, **params}, **SMALL)


@pytest.mark.parametrize("mechanism", ["loloha", "l-osue", "dbitflippm"])
def test_run_reports_mse_and_budget(mechanism):
    sc = scenario(mechanism)
    sc.validate()
    result = run(sc, seed=3)
    json.dumps(result)
    s, series = result["summary"], result["series"]
    assert set(result) == {"summary", "series"}
    assert all(len(v) == sc.rounds for v in series.values())
    assert series["round"] == list(range(1, sc.rounds + 1))
    assert s["mse_avg"] == pytest.approx(sum(series["mse"]) / sc.rounds)
    assert 0 < s["mse_avg"] < 0.05
    assert s["eps_spent_max"] <= s["eps_bound"]
    assert series["eps_spent_mean"] == sorted(series["eps_spent_mean"])  # budgets only grow
    assert series["eps_spent_max"][0] == s["eps_inf"]  # first collection: one memoized value each
    if mechanism != "dbitflippm":  # (dBitFlipPM with d = 1 is exactly eps_inf/2 per memoized pattern)
        assert s["eps_ledger_max"] == pytest.approx(s["eps_spent_max"])
        assert s["eps_1"] == pytest.approx(0.4 * s["eps_inf"])
    assert run(sc, seed=3)["series"]["mse"] == series["mse"]  # same seed, same result
    assert run(sc, seed=4)["series"]["mse"] != series["mse"]


def test_one_shot_oracle_spends_per_report_and_partial_participation():
    sc = Scenario(mechanism="olh", mechanism_params={"k": 30, "eps": 1.0}, sample_rate=0.5,
                  **{**SMALL, "analytics_alpha": None})
    sc.validate()
    result = run(sc, seed=0)
    s, series = result["summary"], result["series"]
    n = SMALL["analytics_users"]
    for p in series["participants"]:  # Binomial(3000, 0.5): |z| < 4.5
        assert abs(p - n / 2) < 4.5 * math.sqrt(n / 4)
    # eps per report = 1: the mean user has spent (#reports it made), the ledger agrees on the worst user
    assert s["eps_spent_mean"] == pytest.approx(sum(series["participants"]) / n)
    assert s["eps_ledger_max"] == pytest.approx(s["eps_spent_max"])
    assert s["eps_bound"] == sc.rounds * 1.0


def test_loloha_budget_far_below_baselines_for_large_k():
    """The paper's qualitative result at small scale: with many value changes, BiLOLOHA's worst user spends
    at most 2·eps_inf while RAPPOR's spends one eps_inf per distinct value, at comparable MSE."""
    base = dict(mode="analytics", analytics_users=4_000, rounds=12, analytics_alpha=0.4,
                analytics_data_params={"s": 0.5, "change_prob": 0.5})
    res = {m: run(Scenario(mechanism=m, mechanism_params={"k": 200, "eps_inf": 2.0}, **base), seed=1)["summary"]
           for m in ("biloloha", "rappor")}
    assert res["biloloha"]["eps_spent_max"] <= 4.0
    assert res["rappor"]["eps_spent_max"] >= 2.5 * res["biloloha"]["eps_spent_max"]
    assert res["biloloha"]["eps_spent_mean"] < 0.5 * res["rappor"]["eps_spent_mean"]
    assert res["biloloha"]["mse_avg"] < 3 * res["rappor"]["mse_avg"]


def test_zipf_population_changes_and_marginal():
    """Initial values ~ Zipf (χ², p > 1e-4) and each step changes a value w.p. change_prob (binomial, |z| < 4.5)
    to a *different* value."""
    pop = ZipfPopulation(20, s=1.2, change_prob=0.25)
    g = torch.Generator().manual_seed(0)
    v0 = pop.initial(50_000, g)
    counts = torch.bincount(v0, minlength=20).double()
    assert stats.chisquare(counts.numpy(), (pop.pmf * 50_000).numpy()).pvalue > 1e-4
    v1 = pop.step(v0, g)
    changed = (v1 != v0).double().mean()
    assert abs(float(changed) - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / 50_000)
    # a changed value follows Zipf conditioned on differing from the old one: check from value 0
    moved = v1[(v0 == 0) & (v1 != v0)]
    cond = pop.pmf.clone()
    cond[0] = 0
    cond /= cond.sum()
    obs = torch.bincount(moved, minlength=20).double()[1:]
    assert stats.chisquare(obs.numpy(), (cond[1:] * len(moved)).numpy()).pvalue > 1e-4


def test_markov_population_moves_to_successors():
    g = torch.Generator().manual_seed(1)
    pop = make_population("markov", 15, {"change_prob": 0.4, "successors": 3}, g)
    assert isinstance(pop, MarkovPopulation)
    v0 = pop.initial(20_000, g)
    v1 = pop.step(v0, g)
    moved = v1 != v0
    assert abs(float(moved.double().mean()) - 0.4) < 4.5 * math.sqrt(0.24 / 20_000)
    targets = pop.targets[v0[moved]]
    assert bool((targets == v1[moved][:, None]).any(dim=1).all())  # every move goes to a successor


@pytest.mark.parametrize("change, needle", [
    ({"analytics_users": 0}, "analytics_users"),
    ({"rounds": 0}, "rounds"),
    ({"analytics_alpha": 1.5}, "analytics_alpha"),
    ({"analytics_data": "gauss"}, "analytics_data"),
    ({"analytics_data_params": {"change_prob": 2.0}}, "change_prob"),
    ({"analytics_data_params": {"speed": 1}}, "speed"),
    ({"mechanism": None}, "mechanism"),
    ({"mechanism": "gaussian"}, "frequency oracle"),
    ({"mechanism": "lolohaa"}, "lolohaa"),
    ({"mechanism_params": {"k": 40, "eps_inf": 2.0, "eps_1": 0.5}}, "analytics_alpha"),
    ({"mechanism_params": {"k": 1, "eps_inf": 2.0}}, "k"),
    ({"mechanism_params": {"k": 40, "eps_inf": 2.0, "g": 1}}, "g"),
    ({"sample_rate": 0.0}, "sample_rate"),
])
def test_validation_errors_name_the_field(change, needle):
    with pytest.raises(SpecError, match=needle):  # types and bounds fail when built, the rest at validate
        scenario("loloha").replace(**change).validate()


def test_longitudinal_spec_and_plots(tmp_path):
    """The bundled spec parses and validates (72 cells); a 2-cell miniature writes both plots."""
    from privfl.evaluations.report import write_report
    from privfl.evaluations.runner import run_spec
    from privfl.evaluations.spec import bundled_specs, load_spec, parse_spec

    assert "longitudinal" in bundled_specs()
    spec = load_spec("longitudinal")
    cells = spec.validate()
    assert len(cells) == 72
    assert {c.scenario.analytics_users for c in cells} == {100_000}
    assert {c.scenario.mechanism_params["k"] for c in cells} == {100, 1000}
    raw = yaml.safe_load(bundled_specs()["longitudinal"].read_text())
    raw["base"].update(analytics_users=500, rounds=3)
    raw["grid"] = [{"mechanism": ["biloloha", "l-grr"], "mechanism_params.k": [20], "mechanism_params.eps_inf": [1.0]}]
    summary = run_spec(parse_spec(raw), tmp_path / "run", workers=0, progress=False)
    assert summary.done == 2 and summary.failed == 0
    paths = write_report(tmp_path / "run")
    for name in ("ldp_mse", "ldp_budget"):
        assert paths[name].name == f"{name}.png" and paths[name].stat().st_size > 1000
