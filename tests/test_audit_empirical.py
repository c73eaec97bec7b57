"""The statistics core of empirical audits (privfl.accounting.empirical)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom, norm

from privfl.accounting.empirical import (
    DIRECTIONS,
    EmpiricalBound,
    clopper_pearson,
    epsilon_from_rates,
    epsilon_lower_bound,
    gdp_epsilon,
    gdp_mu_interval,
)
from privfl.accounting.pld import gaussian_epsilon_exact


# ---- Clopper–Pearson ----------------------------------------------------------------------------
def test_clopper_pearson_known_values():
    # 5 successes in 100 trials, exact 95 % interval (standard tables: 0.0164, 0.1128)
    lo, hi = clopper_pearson(5, 100, 0.95)
    assert lo == pytest.approx(0.016431879, abs=1e-8)
    assert hi == pytest.approx(0.112834911, abs=1e-8)
    # closed forms at the edges: k = 0 → upper = 1 − α^(1/n) (one-sided), k = n → lower = α^(1/n)
    assert clopper_pearson(0, 10, 0.95, side="upper") == (0.0, pytest.approx(1 - 0.05 ** 0.1, abs=1e-12))
    assert clopper_pearson(10, 10, 0.95, side="lower") == (pytest.approx(0.05 ** 0.1, abs=1e-12), 1.0)
    assert clopper_pearson(0, 10, 0.95)[0] == 0.0 and clopper_pearson(10, 10, 0.95)[1] == 1.0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 10_000), frac=st.floats(0, 1), conf=st.floats(0.5, 0.999))
def test_clopper_pearson_matches_scipy_beta(n, frac, conf):
    k = int(round(frac * n))
    lo, hi = clopper_pearson(k, n, conf)
    a = (1 - conf) / 2
    assert lo == (0.0 if k == 0 else pytest.approx(beta.ppf(a, k, n - k + 1), rel=1e-9, abs=1e-14))
    assert hi == (1.0 if k == n else pytest.approx(beta.ppf(1 - a, k + 1, n - k), rel=1e-9, abs=1e-14))
    assert lo <= k / n <= hi
    # one-sided bounds are tighter than the two-sided ones on their side
    assert clopper_pearson(k, n, conf, side="lower")[0] >= lo
    assert clopper_pearson(k, n, conf, side="upper")[1] <= hi


def test_clopper_pearson_vectorised_and_coverage():
    k = np.arange(0, 51)
    lo, hi = clopper_pearson(k, 50, 0.9)
    assert lo.shape == hi.shape == (51,) and np.all(np.diff(lo) > 0) and np.all(np.diff(hi) > 0)
    # exact coverage ≥ 90 % for every true rate on a grid (CP is conservative)
    for p in np.linspace(0.01, 0.99, 25):
        covered = (lo <= p) & (p <= hi)
        assert binom.pmf(k, 50, p)[covered].sum() >= 0.9 - 1e-12


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(k=-1, n=10), ValueError, "k must"),
        (dict(k=11, n=10), ValueError, "k must be <= n"),
        (dict(k=1.5, n=10), ValueError, "k must"),
        (dict(k=1, n=0), ValueError, "n must"),
        (dict(k=1, n=10, confidence=1.0), ValueError, "confidence"),
        (dict(k=1, n=10, confidence="high"), TypeError, "confidence"),
        (dict(k=1, n=10, side="left"), ValueError, "side"),
    ],
)
def test_clopper_pearson_rejects_bad_input(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        clopper_pearson(**kwargs)


# ---- rates → ε ------------------------------------------------------------------------------------
def test_epsilon_from_rates_both_directions():
    assert epsilon_from_rates(0.5, 0.1) == pytest.approx(math.log(5))
    # backward direction: (1 − FPR − δ)/(1 − TPR) = 0.99/0.1
    assert epsilon_from_rates(0.9, 0.01) == pytest.approx(max(math.log(90), math.log(9.9)))
    assert epsilon_from_rates(0.99, 0.5) == pytest.approx(math.log(50))
    assert epsilon_from_rates(0.5, 0.1, 0.05) == pytest.approx(math.log(4.5))
    assert epsilon_from_rates(0.3, 0.5) == 0.0  # worse than chance proves nothing
    assert epsilon_from_rates(0.5, 0.0) == math.inf
    out = epsilon_from_rates(np.array([0.5, 1e-6]), np.array([0.1, 0.0]), 1e-5)
    assert out[0] == pytest.approx(max(math.log((0.5 - 1e-5) / 0.1), math.log((1 - 0.1 - 1e-5) / 0.5)))
    assert out[1] == 0.0  # TPR below δ (and FPR = 0): 0/0 proves nothing
    with pytest.raises(ValueError, match="tpr"):
        epsilon_from_rates(1.5, 0.1)
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rates(0.5, 0.1, 1.0)


# ---- threshold distinguisher --------------------------------------------------------------------
def _gaussian_scores(mu, n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(mu, 1.0, n), rng.normal(0.0, 1.0, n)


def test_lower_bound_result_is_consistent():
    s_in, s_out = _gaussian_scores(2.0, 4000, 0)
    keep_in, keep_out = s_in.copy(), s_out.copy()
    b = epsilon_lower_bound(s_in, s_out, delta=1e-5, confidence=0.9)
    assert isinstance(b, EmpiricalBound) and b.direction in DIRECTIONS
    assert np.array_equal(s_in, keep_in) and np.array_equal(s_out, keep_out)  # inputs untouched
    assert b.trials == (4000, 4000) and b.evaluation_trials == (3000, 3000) and b.confidence == 0.9
    assert b.epsilon == pytest.approx(math.log((b.tpr_lower - 1e-5) / b.fpr_upper))
    assert b.tpr_lower <= b.tpr and b.fpr <= b.fpr_upper
    # the stored bounds are the two-sided 90 % CP bounds of the evaluation counts
    k_pos, k_neg = round(b.tpr * 3000), round(b.fpr * 3000)
    assert b.tpr_lower == pytest.approx(clopper_pearson(k_pos, 3000, 0.9)[0], rel=1e-12)
    assert b.fpr_upper == pytest.approx(clopper_pearson(k_neg, 3000, 0.9)[1], rel=1e-12)
    # the evaluation split is a subset of the trials: its counts cannot exceed the full sample's
    pos, neg = (s_in, s_out) if b.direction.startswith("in") else (s_out, s_in)
    region = (lambda s: s >= b.threshold) if b.direction.endswith("above") else (lambda s: s < b.threshold)
    assert k_pos <= region(pos).sum() <= k_pos + 1000 and k_neg <= region(neg).sum() <= k_neg + 1000
    # same input → same bound; tensors (any dtype) accepted
    assert epsilon_lower_bound(s_in, s_out, delta=1e-5, confidence=0.9) == b
    assert epsilon_lower_bound(torch.tensor(s_in), torch.tensor(s_out), delta=1e-5, confidence=0.9) == b
    assert 2.0 < b.epsilon < gaussian_epsilon_exact(2.0, 1e-5)


def test_sorted_input_is_still_split_at_random():
    """A caller's sorted scores must not put all the tail into one split."""
    s_in, s_out = _gaussian_scores(1.0, 4000, 5)
    a = epsilon_lower_bound(s_in, s_out, delta=1e-5)
    b = epsilon_lower_bound(np.sort(s_in), np.sort(s_out)[::-1], delta=1e-5)
    assert a == b  # the split is a fixed permutation of the multiset, so ordering is irrelevant


def test_lower_bound_finds_either_direction():
    s_in, s_out = _gaussian_scores(-3.0, 3000, 1)  # "in" sits below "out"
    b = epsilon_lower_bound(s_in, s_out)
    assert b.direction in ("in_below", "out_above") and b.epsilon > 1.0
    b_swapped = epsilon_lower_bound(s_out, s_in)
    assert b_swapped.direction in ("in_above", "out_below") and b_swapped.epsilon > 1.0


def test_lower_bound_of_identical_distributions_is_zero():
    rng = np.random.default_rng(2)
    bounds = [epsilon_lower_bound(rng.normal(size=2000), rng.normal(size=2000)).epsilon for _ in range(20)]
    assert max(bounds) < 0.2 and sum(b > 0 for b in bounds) <= 3


@pytest.mark.slow
def test_correct_gaussian_never_exceeds_its_epsilon():
    """μ-GDP with ε(1e-5) = 2 exactly: over 30 seeds the 95 % bound stays below 2 (and is not vacuous)."""
    mu = 0.5015516891697231
    assert gaussian_epsilon_exact(mu, 1e-5) == pytest.approx(2.0, abs=1e-6)
    bounds = [epsilon_lower_bound(*_gaussian_scores(mu, 20_000, seed), delta=1e-5).epsilon for seed in range(30)]
    assert max(bounds) <= 2.0
    assert np.median(bounds) > 0.5


def test_coverage_on_randomized_response():
    """Binary randomized response at ε = 1 (outputs 0/1): the bound exceeds ε with probability ≤ 5 %.

    The bound is nearly tight here (n = 2000 per side), so exceedances would show a broken interval:
    over 300 runs, more than 28 exceedances has probability < 1e-3 at a true rate of 5 %."""
    eps = 1.0
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(3)
    bounds = np.array([
        epsilon_lower_bound(rng.binomial(1, p, 2000).astype(float), rng.binomial(1, 1 - p, 2000).astype(float)).epsilon
        for _ in range(300)
    ])
    assert binom.sf(28, 300, 0.05) < 1e-3
    assert np.sum(bounds > eps) <= 28
    assert np.median(bounds) > 0.6  # and the test has power


@pytest.mark.parametrize(
    "args, kwargs, exc, text",
    [
        (([1.0], [0.0, 1.0]), {}, ValueError, "scores_in must hold at least 2"),
        (([[1.0, 2.0]], [0.0, 1.0]), {}, ValueError, "scores_in must be 1-d"),
        (([1.0, 2.0], [0.0, np.nan]), {}, ValueError, "scores_out must be finite"),
        ((["a", "b"], [0.0, 1.0]), {}, TypeError, "scores_in"),
        (([1.0, 2.0], [0.0, 1.0]), dict(delta=-0.1), ValueError, "delta"),
        (([1.0, 2.0], [0.0, 1.0]), dict(confidence=0.0), ValueError, "confidence"),
        (([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]), dict(selection_fraction=0.1), ValueError, "selection_fraction"),
        (([1.0, 2.0], [0.0, 1.0]), dict(selection_confidence=2), ValueError, "selection_confidence"),
    ],
)
def test_lower_bound_rejects_bad_input(args, kwargs, exc, text):
    with pytest.raises(exc, match=text):
        epsilon_lower_bound(*args, **kwargs)


# ---- Gaussian-DP estimator ----------------------------------------------------------------------
def test_gdp_estimator_recovers_mu_and_epsilon():
    mu = 1.0
    s_in, s_out = _gaussian_scores(mu, 20_000, 4)
    est, lo, hi = gdp_mu_interval(s_in, s_out, confidence=0.95)
    assert lo < mu < hi and hi - lo < 0.06 and lo < est < hi
    # the asymptotic interval's half-width: z · sqrt(2/n + μ²/(4n))
    assert (hi - lo) / 2 == pytest.approx(norm.ppf(0.975) * math.sqrt(2 / 20_000 + est**2 / 80_000), rel=1e-9)
    assert gdp_epsilon(mu, 1e-5) == pytest.approx(gaussian_epsilon_exact(mu, 1e-5))
    assert gdp_epsilon(0.0, 1e-5) == 0.0
    with pytest.raises(ValueError, match="delta"):
        gdp_epsilon(1.0, 0.0)
    with pytest.raises(ValueError, match="mu"):
        gdp_epsilon(-1.0, 1e-5)
    with pytest.raises(ValueError, match="zero variance"):
        gdp_mu_interval(np.ones(10), np.zeros(10))
