"""Empirical privacy audits (evaluations/audit.py): correct mechanisms stay below their accounted ε,
broken ones are caught, the one-run test, determinism, validation and `privfl audit --empirical`."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from privfl import registry
from privfl.accounting.empirical import one_run_epsilon_lower_bound, one_run_p_value
from privfl.accounting.guarantees import pure_guarantee
from privfl.cli import main
from privfl.core import Mechanism
from privfl.evaluations.audit import (
    FAR,
    AuditResult,
    accounted_epsilon,
    black_box_audit,
    canary_audit,
    neighbouring_pair,
    one_run_audit,
)
from privfl.mechanisms.gaussian import GaussianMechanism

Z_EPS2 = 1.9938124456435444  # noise multiplier whose exact ε(1e-5) is 2 (one Gaussian release)


def gaussian(z=Z_EPS2, local=False):
    return registry.make("mechanism", "gaussian", clip_norm=1.0, noise_multiplier=z, local=local)


# ---- deliberately broken mechanisms ------------------------------------------------------------
class HalfNoiseGaussian(GaussianMechanism):
    """Claims noise multiplier z but adds half the noise."""

    @property
    def noise_std(self) -> float:
        return 0.5 * self.noise_multiplier * self.clip_norm


class Laplace(Mechanism):
    """Scalar Laplace mechanism on [0, 1] claiming ε-DP; ``broken=True`` uses scale 1/(2ε) instead of 1/ε."""

    name = "laplace-test"
    role = "client-vector"

    def __init__(self, eps: float, broken: bool = False):
        self.eps, self.scale = eps, (0.5 if broken else 1.0) / eps

    def privatize(self, x, *, generator=None, client_ids=None):
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
        return x.clamp(0, 1) - self.scale * torch.sign(u) * torch.log1p(-2 * u.abs())

    def guarantee(self):
        return pure_guarantee(self.eps, name="laplace", unit="client")


# ---- accounting side ---------------------------------------------------------------------------
def test_accounted_epsilon_and_default_pairs():
    assert accounted_epsilon(gaussian(), 1e-5) == pytest.approx(2.0, abs=1e-6)
    assert accounted_epsilon(gaussian(), 1e-5, releases=4) == pytest.approx(
        accounted_epsilon(gaussian(Z_EPS2 / 2), 1e-5), abs=1e-6)  # 4 releases at z = one at z/2
    assert accounted_epsilon(registry.make("mechanism", "grr", k=4, eps=2.0), 0.0) == 2.0
    x_in, x_out, _ = neighbouring_pair(gaussian(), dim=3)
    assert x_in.shape == (1, 3) and x_out.shape == (0, 3) and x_in[0, 0] == FAR * 1.0  # far outside the clip ball
    x_in, x_out, _ = neighbouring_pair(gaussian(local=True), dim=2)
    assert torch.equal(x_in, -x_out) and x_in[0] == FAR * 1.0
    assert neighbouring_pair(registry.make("mechanism", "grr", k=4, eps=1.0))[:2] == (0, 1)


class _NoClipGaussian(GaussianMechanism):
    """Broken twin: never clips (inside the clip ball it is indistinguishable from the correct one)."""

    def clip(self, x):
        return x.clone()


@pytest.mark.parametrize("local", [False, True])
def test_default_pair_lies_outside_the_domain_so_a_missing_clip_is_caught(local):
    """Issue 12 §4: the default audit pair used to sit on the clip ball, where a Gaussian that never clips
    behaves exactly like the correct one. At FAR·C the correct twin clips back to C (ε bound ≤ accounted ε,
    the 95 % level), the broken twin releases 10·C and its lower bound exceeds the accounted ε."""
    good = black_box_audit(gaussian(local=local), trials=20_000, seed=0)
    bad = black_box_audit(_NoClipGaussian(clip_norm=1.0, noise_multiplier=Z_EPS2, local=local), trials=20_000, seed=0)
    assert good.epsilon_lower <= good.epsilon_accounted
    assert bad.epsilon_lower > 1.5 * bad.epsilon_accounted  # measured: 7.1 vs 2.0 (central), 8.3 vs 4.39 (local)


# ---- correct mechanisms never exceed their accounted ε -------------------------------------------
@pytest.mark.parametrize(
    "name, params, trials",
    [
        ("dp-fedavg", {"clip_norm": 1.0, "noise_multiplier": Z_EPS2}, 50_000),
        ("gaussian", {"clip_norm": 1.0, "noise_multiplier": 2.0, "local": True}, 50_000),
        ("grr", {"k": 4, "eps": 2.0}, 50_000),
        ("rqm", {"c": 1.0, "delta": 1.0, "m": 5, "q": 0.5}, 50_000),
        ("loloha", {"k": 4, "eps_inf": 2.0}, 20_000),
        ("oue", {"k": 4, "eps": 1.0}, 20_000),
    ],
)
def test_black_box_of_correct_mechanism_stays_below_accounted(name, params, trials):
    """Three seeds at 99.9 % confidence: finite-output mechanisms are audited almost tightly, so at
    95 % about 1 % of audits exceed (test_black_box_coverage_when_tight); at 99.9 % a failure of
    this test has probability < 1 % even for them."""
    mech = registry.make("mechanism", name, **params)
    bounds = [black_box_audit(mech, trials=trials, seed=s, confidence=0.999) for s in range(3)]
    for r in bounds:
        assert isinstance(r, AuditResult) and not r.exceeds
        assert r.epsilon_lower <= r.epsilon_accounted and 0 <= r.ratio <= 1
    # and the audit has power: finite-output mechanisms are audited almost tightly
    best = max(r.ratio for r in bounds)
    assert best > (0.85 if name in ("grr", "rqm", "loloha") else 0.3)


def test_black_box_coverage_when_tight():
    """GRR is audited almost exactly (ratio ≈ 0.98), so the 95 % bound exceeds ε with probability up
    to 5 %: over 100 seeds, more than 13 exceedances has probability < 5e-4 (measured: 3 of 300 at
    50,000 trials)."""
    mech = registry.make("mechanism", "grr", k=4, eps=2.0)
    results = [black_box_audit(mech, trials=10_000, seed=s) for s in range(100)]
    assert binom.sf(13, 100, 0.05) < 5e-4
    assert sum(r.exceeds for r in results) <= 13
    assert np.median([r.ratio for r in results]) > 0.9


def test_black_box_uses_likelihood_ratio_for_finite_outputs():
    r = black_box_audit(registry.make("mechanism", "grr", k=4, eps=2.0), trials=2000)
    assert r.details["score"] == "log-likelihood ratio"
    r = black_box_audit(registry.make("mechanism", "loloha", k=4, eps_inf=2.0), trials=2000)
    assert r.details["score"] == "projection on the difference"  # per-report hash seeds are public
    r = black_box_audit(registry.make("mechanism", "oue", k=4, eps=1.0), trials=2000)
    assert r.details["score"] == "projection on the difference"  # per-bit pmfs, not one pmf per report
    r = black_box_audit(registry.make("mechanism", "rqm"), trials=2000)
    assert r.details["score"] == "log-likelihood ratio"


def test_canary_and_one_run_of_correct_gaussian_stay_below_accounted():
    mech = gaussian()
    for seed in range(2):
        r = canary_audit(mech, trials=5000, rounds=2, seed=seed)
        assert r.releases == 2 and r.epsilon_accounted == pytest.approx(accounted_epsilon(mech, 1e-5, releases=2))
        assert 0 < r.epsilon_lower <= r.epsilon_accounted
        # the Gaussian-DP estimate is close to the exact ε (μ = √2 / z here) and its lower end below it
        assert r.epsilon_gdp_lower <= r.epsilon_accounted
        assert r.epsilon_gdp == pytest.approx(r.epsilon_accounted, rel=0.15)
        # true μ: √rounds / sqrt(z² + benign variance); 10 benign unit-norm updates in 100 dims add 10/100
        assert r.details["mu_interval"][0] <= math.sqrt(2) / math.sqrt(Z_EPS2**2 + 0.1) <= r.details["mu_interval"][1]
    for seed in range(3):
        r = one_run_audit(mech, canaries=1000, seed=seed)
        assert 0 < r.epsilon_lower <= r.epsilon_accounted and r.trials == 1000
        assert r.details["correct"] <= r.details["guesses"]


# ---- broken mechanisms are caught ---------------------------------------------------------------
def test_half_noise_gaussian_is_caught():
    broken = HalfNoiseGaussian(clip_norm=1.0, noise_multiplier=Z_EPS2, local=False)
    r = black_box_audit(broken, trials=50_000)
    assert r.epsilon_accounted == pytest.approx(2.0, abs=1e-6) and r.exceeds and r.ratio > 1.1
    c = canary_audit(broken, trials=20_000)
    assert c.epsilon_gdp_lower > c.epsilon_accounted and c.epsilon_lower > c.epsilon_accounted
    good = GaussianMechanism(clip_norm=1.0, noise_multiplier=Z_EPS2, local=False)
    assert not black_box_audit(good, trials=50_000).exceeds


def test_laplace_with_half_scale_is_caught():
    pair = (torch.ones(1), torch.zeros(1))
    for eps in (0.5, 1.0):
        r = black_box_audit(Laplace(eps, broken=True), trials=50_000, delta=0.0, pair=pair)
        assert r.epsilon_accounted == eps and r.exceeds and r.epsilon_lower > 1.5 * eps
        ok = black_box_audit(Laplace(eps), trials=50_000, delta=0.0, pair=pair)
        assert not ok.exceeds and ok.epsilon_lower > 0.6 * eps


# ---- determinism, device, state ----------------------------------------------------------------
def test_same_seed_same_result_and_inputs_untouched():
    mech = gaussian()
    a, b = black_box_audit(mech, trials=4000, seed=7), black_box_audit(mech, trials=4000, seed=7)
    assert a.epsilon_lower == b.epsilon_lower and a.details["bound"] == b.details["bound"]
    assert black_box_audit(mech, trials=4000, seed=8).details["bound"] != a.details["bound"]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert canary_audit(mech, trials=500, seed=g1).details["bound"] == canary_audit(mech, trials=500, seed=g2).details[
        "bound"]
    assert one_run_audit(mech, seed=5).details == one_run_audit(mech, seed=5).details
    # the global RNG is not consumed by the vmapped central releases
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    black_box_audit(mech, trials=100)
    assert torch.equal(torch.rand(1), before)
    # a stateful oracle keeps its users
    loloha = registry.make("mechanism", "loloha", k=4, eps_inf=2.0)
    loloha.privatize(torch.tensor([1, 2]), client_ids=torch.tensor([0, 1]))
    state = copy.deepcopy(loloha.state_dict())
    black_box_audit(loloha, trials=100)
    assert loloha.state_dict()["users"].keys() == state["users"].keys()
    assert all(np.array_equal(np.asarray(loloha.state_dict()["users"][k]), np.asarray(v))
               for k, v in state["users"].items() if isinstance(v, (list, np.ndarray, torch.Tensor)))


# ---- the one-run test ---------------------------------------------------------------------------
def _p_value_by_loop(m, r, v, eps, delta):
    q = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(binom.pmf(k, r, q) for k in range(v, r + 1))
    best = max((sum(binom.pmf(k, r, q) for k in range(v - i, v)) / i for i in range(1, v + 1)), default=0.0)
    return min(tail + 2 * m * delta * best, 1.0)


@pytest.mark.parametrize("m, r, v, eps, delta", [(1000, 100, 80, 1.0, 1e-5), (1000, 100, 80, 1.0, 0.0),
                                                 (500, 50, 50, 3.0, 1e-6), (200, 20, 3, 0.5, 1e-3)])
def test_one_run_p_value_matches_direct_sum(m, r, v, eps, delta):
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(_p_value_by_loop(m, r, v, eps, delta), rel=1e-9,
                                                                 abs=1e-15)


def test_one_run_bound_properties():
    # δ = 0: v correct of r is exactly the binomial test of randomized response
    eps = one_run_epsilon_lower_bound(1000, 100, 80, delta=0.0, significance=0.05)
    q = math.exp(eps) / (1 + math.exp(eps))
    assert binom.sf(79, 100, q) == pytest.approx(0.05, rel=1e-6)
    assert one_run_epsilon_lower_bound(1000, 100, 80, delta=1e-5) <= eps  # the δ term can only lower it
    assert one_run_epsilon_lower_bound(1000, 100, 50) == 0.0  # chance level proves nothing
    # all 1000 guesses right: the paper's ceiling ~ ln(1000)-ish, finite at δ = 0
    assert 5.0 < one_run_epsilon_lower_bound(1000, 1000, 1000, significance=0.05) < 9.0
    with pytest.raises(ValueError, match="v <= r <= m"):
        one_run_p_value(10, 5, 6, 1.0)
    with pytest.raises(ValueError, match="epsilon"):
        one_run_p_value(10, 5, 3, -1.0)


def test_one_run_bound_coverage_on_randomized_response():
    """ε-DP randomized response on each of r guesses: v ~ Binomial(r, e^ε/(1+e^ε)); the 95 % bound
    exceeds ε in at most 5 % of runs (more than 25 of 250 has probability < 1e-3)."""
    eps, r = 1.0, 400
    v = np.random.default_rng(0).binomial(r, math.exp(eps) / (1 + math.exp(eps)), size=250)
    bounds = np.array([one_run_epsilon_lower_bound(r, r, int(k), significance=0.05) for k in v])
    assert binom.sf(25, 250, 0.05) < 1e-3
    assert np.sum(bounds > eps) <= 25 and np.median(bounds) > 0.6


# ---- validation ---------------------------------------------------------------------------------
def test_audits_reject_bad_input():
    mech = gaussian()
    with pytest.raises(TypeError, match="mechanism"):
        black_box_audit("gaussian")
    with pytest.raises(ValueError, match="trials"):
        black_box_audit(mech, trials=4)
    with pytest.raises(ValueError, match="delta"):
        black_box_audit(mech, delta=1.5)
    with pytest.raises(ValueError, match="confidence"):
        black_box_audit(mech, confidence=1.0)
    with pytest.raises(ValueError, match="seed"):
        black_box_audit(mech, seed=-1)
    with pytest.raises(ValueError, match="score"):
        black_box_audit(mech, score="best")
    with pytest.raises(ValueError, match="identical"):
        black_box_audit(gaussian(local=True), pair=(torch.ones(1), torch.ones(1)), trials=100)
    with pytest.raises(ValueError, match="pair"):
        black_box_audit(mech, pair=(torch.ones(1),))
    with pytest.raises(ValueError, match="central"):
        canary_audit(gaussian(local=True))
    with pytest.raises(ValueError, match="central"):
        one_run_audit(registry.make("mechanism", "grr", k=4, eps=1.0))
    with pytest.raises(ValueError, match="guesses"):
        one_run_audit(mech, canaries=10, guesses=(20,))
    with pytest.raises(ValueError, match="device"):
        black_box_audit(mech, device="gpu0")
    dp_brem = registry.make("mechanism", "dp-brem")  # record-level: a whole-client pair is not its relation
    with pytest.raises(ValueError, match="record-level"):
        black_box_audit(dp_brem)
    with pytest.raises(ValueError, match="record-level"):
        canary_audit(dp_brem)


# ---- the Gaussian target and the CLI ------------------------------------------------------------
@pytest.mark.slow
def test_gaussian_target_audit():
    """Issue 7's target: Gaussian at ε = 2 (δ = 1e-5), 500,000 trials per side → ε_LB ≥ 1.2 at 95 %."""
    r = black_box_audit(gaussian(), trials=500_000, seed=0)
    assert r.epsilon_accounted == pytest.approx(2.0, abs=1e-6)
    assert 1.2 <= r.epsilon_lower <= 2.0


def test_cli_audit_empirical(tmp_path, capsys):
    spec = tmp_path / "audit.yaml"
    spec.write_text(
        "name: audit-test\nbase: {rounds: 2, num_clients: 6, model_params: {hidden: [8]}}\n"
        "grid:\n  - cases:\n"
        "      - {label: dpfedavg, mechanism: dp-fedavg, mechanism_params: {noise_multiplier: 1.9938124}}\n"
        "      - {label: rqm, mechanism: rqm}\n"
        "  - {mode: [analytics], analytics_users: [100], cases: [{label: grr, mechanism: grr, "
        "mechanism_params: {k: 3, eps: 1.0}}]}\n"
    )
    png = tmp_path / "audit.png"
    assert main(["audit", str(spec), "--trials", "2000", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 5  # gaussian: black-box, canary, one-run; rqm and grr: black-box
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        accounted, lower, ratio = float(cells[4]), float(cells[5]), float(cells[6])
        assert 0 <= lower <= accounted and ratio == pytest.approx(lower / accounted, abs=2e-3)
    assert {"black-box", "canary (white-box)", "one-run"} <= {row.split("|")[3].strip() for row in rows}
    assert png.stat().st_size > 1000
    # accounting is `privfl account`; the old `--empirical` spelling still audits; bad input exits 2
    assert main(["account", str(spec), "--tables", str(tmp_path / "t.md")]) == 0
    assert "ε (RDP)" in capsys.readouterr().out
    assert main(["audit", str(spec), "--empirical", "--trials", "2000"]) == 0
    assert "empirical ε (lower bound)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(spec), "--trials", "3"])
    assert exc.value.code == 2


def test_bundled_audit_spec_validates():
    from privfl.evaluations.spec import load_spec

    spec = load_spec("dp_audit")
    mechs = {c.scenario.mechanism for c in spec.validate()}
    assert mechs == {"dp-fedavg", "gaussian", "rqm", "grr", "loloha"}
    for cell in spec.validate():
        if cell.label.startswith("DP-FedAvg eps="):
            eps = float(cell.label.split("=")[1])
            mech = registry.make("mechanism", "dp-fedavg", **cell.scenario.mechanism_params)
            assert accounted_epsilon(mech, cell.scenario.delta) == pytest.approx(eps, abs=1e-6)
