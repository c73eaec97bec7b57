"""LDP frequency oracles and LOLOHA: exact output distributions, estimators, ledger, state, errors.

Statistical tests use fixed seeds; each states the probability that a correct implementation
fails it (so a failure is a bug, not bad luck).
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import privfl
from privfl import registry
from privfl.accounting import PrivacyLedger
from privfl.mechanisms.ldp import (
    HASH_PRIME,
    FrequencyOracle,
    draw_hash_seeds,
    hash_collision_probability,
    hash_indicator,
    hash_support_counts,
    hash_values,
    project_simplex,
)
from privfl.mechanisms.loloha import optimal_g
from privfl.mechanisms.longitudinal import (
    LongitudinalOracle,
    first_report_epsilon_grr,
    instantaneous_grr_p,
    pack_bits,
    unpack_bits,
)

ONE_SHOT = {"grr": {"eps": 1.2}, "olh": {"eps": 1.2}, "oue": {"eps": 1.2}, "sue": {"eps": 1.2}}
LONGITUDINAL = {
    "l-grr": {"eps_inf": 2.0, "eps_1": 0.8},
    "l-osue": {"eps_inf": 2.0, "eps_1": 0.8},
    "rappor": {"eps_inf": 2.0, "eps_1": 0.8},
    "dbitflippm": {"eps_inf": 2.0, "d": 2},
    "loloha": {"eps_inf": 2.0, "eps_1": 0.8, "g": 3},
    "biloloha": {"eps_inf": 2.0, "eps_1": 0.8},
    "ololoha": {"eps_inf": 4.0, "eps_1": 1.6},
}
ALL = {**ONE_SHOT, **LONGITUDINAL}
K = 6


def make(name: str, k: int = K, **overrides):
    return privfl.make("mechanism", name, k=k, **{**ALL[name], **overrides})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_log_ratio(m: np.ndarray) -> float:
    """max over input pairs and outputs of |log M[v, o] − log M[v', o]|."""
    logs = np.log(m)
    return float(max(np.max(np.abs(logs[i] - logs[j])) for i, j in itertools.combinations(range(m.shape[0]), 2)))


def public_draws(mech, count: int = 12):
    """Public randomness to condition on: hash seeds (some with collisions) or sampled buckets."""
    if hasattr(mech, "collision"):  # local hashing: the seed (a, b)
        seeds = draw_hash_seeds(count, gen(5), torch.device("cpu")).tolist()
        return [{"seed": (1, 0)}] + [{"seed": tuple(s)} for s in seeds]
    if getattr(mech, "name", "") == "dbitflippm":
        return [{"sampled": s} for s in itertools.permutations(range(mech.k), mech.d)][:count]
    return [{}]


# --------------------------------------------------------------------------------------------
# Registry names and parameters
# --------------------------------------------------------------------------------------------
def test_registry_names_and_parameters():
    names = set(privfl.available("mechanism"))
    assert set(ALL) <= names
    for name in ("l-grr", "l-osue", "rappor", "loloha", "biloloha", "ololoha"):
        assert {"k", "eps_inf", "eps_1"} <= set(registry.parameters("mechanism", name))
    assert "g" in registry.parameters("mechanism", "loloha")
    assert "g" in registry.parameters("mechanism", "olh")
    assert {"k", "eps_inf"} <= set(registry.parameters("mechanism", "dbitflippm"))
    for name in ALL:
        assert isinstance(make(name), FrequencyOracle)
    for name in LONGITUDINAL:
        assert isinstance(make(name), LongitudinalOracle)


# --------------------------------------------------------------------------------------------
# Exact output distributions (computed, not sampled)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL))
def test_exact_report_distribution_satisfies_claimed_epsilon(name):
    mech = make(name)
    claimed = ALL[name].get("eps_1", ALL[name].get("eps", ALL[name].get("eps_inf")))
    worst = 0.0
    for public in public_draws(mech):
        m = mech.transition_matrix(**public)
        assert np.all(m >= 0)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
        worst = max(worst, max_log_ratio(m))
    assert worst <= claimed + 1e-9
    g = mech.guarantee()
    P, Q = g.pmf_pair
    assert abs(P.sum() - 1) < 1e-12 and abs(Q.sum() - 1) < 1e-12
    # the guarantee's pure ε is attained by the enumerated distributions (conditioning on public draws)
    assert g.epsilon_pure <= claimed + 1e-9
    assert abs(g.epsilon_pure - worst) < 1e-9
    rdp = g.rdp(np.array([1.5, 2.0, 8.0, 64.0]))
    assert np.all(rdp >= 0) and np.all(rdp <= g.epsilon_pure + 1e-12) and np.all(np.diff(rdp) >= -1e-12)


@pytest.mark.parametrize("name", sorted(set(LONGITUDINAL) - {"dbitflippm"}))
def test_exact_permanent_distribution_satisfies_eps_inf(name):
    mech = make(name)
    worst = 0.0
    for public in public_draws(mech):
        m = mech.transition_matrix(stage="permanent", **public)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
        worst = max(worst, max_log_ratio(m))
    assert worst <= mech.eps_inf + 1e-9
    assert abs(worst - mech.eps_inf) < 1e-9  # the permanent response spends exactly eps_inf
    perm = mech.guarantee().extra["permanent_pmf_pair"]
    assert abs(perm[0].sum() - 1) < 1e-12 and abs(perm[1].sum() - 1) < 1e-12
    assert abs(mech.permanent_guarantee().epsilon_pure - mech.eps_inf) < 1e-9


@pytest.mark.parametrize("name", ["l-osue", "rappor", "biloloha"])
def test_first_report_is_exactly_eps_1_where_the_papers_are_exact(name):
    mech = make(name)
    assert abs(mech.guarantee().epsilon_pure - mech.eps_1) < 1e-9


@pytest.mark.parametrize("d", [3, 10, 100])
def test_grr_chain_calibration_paper_vs_exact(d):
    eps_inf, eps_1 = 3.0, 1.2
    paper = first_report_epsilon_grr(eps_inf, eps_1, d, "paper")
    exact = first_report_epsilon_grr(eps_inf, eps_1, d, "exact")
    assert abs(exact - eps_1) < 1e-9
    assert paper < eps_1  # the papers' instantaneous GRR is conservative beyond a binary domain
    # for d = 2 both calibrations coincide
    binary = [instantaneous_grr_p(eps_inf, eps_1, 2, c) for c in ("paper", "exact")]
    assert abs(binary[0] - binary[1]) < 1e-15
    lgrr = privfl.make("mechanism", "l-grr", k=d, eps_inf=eps_inf, eps_1=eps_1, calibration="exact")
    assert abs(max_log_ratio(lgrr.transition_matrix()) - eps_1) < 1e-9


def test_paper_p2_closed_form():
    """LOLOHA's p2 as printed in the paper: (e^{ε∞+ε1} − 1) / (−g e^{ε1} + (g−1)e^{ε∞} + e^{ε1} + e^{ε1+ε∞} − 1)."""
    for g, eps_inf, eps_1 in [(2, 1.0, 0.4), (8, 5.0, 2.0), (3, 3.0, 1.2)]:
        ei, e1 = math.exp(eps_inf), math.exp(eps_1)
        printed = (ei * e1 - 1) / (-g * e1 + (g - 1) * ei + e1 + e1 * ei - 1)
        assert abs(make("loloha", eps_inf=eps_inf, eps_1=eps_1, g=g).p2 - printed) < 1e-12


@pytest.mark.parametrize("eps_inf, g", [(1.0, 2), (3.0, 3), (5.0, 8)])
def test_ololoha_optimal_g_matches_paper(eps_inf, g):
    assert optimal_g(eps_inf, 0.4) == g
    assert privfl.make("mechanism", "ololoha", k=100, eps_inf=eps_inf, eps_1=0.4 * eps_inf).g == g
    assert privfl.make("mechanism", "biloloha", k=100, eps_inf=eps_inf).g == 2


def test_olh_default_g():
    for eps in (0.5, 1.0, 2.0, 4.0):
        assert make("olh", eps=eps).g == round(math.exp(eps) + 1)


# --------------------------------------------------------------------------------------------
# The sampler implements the computed distributions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["grr", "l-grr"])
def test_report_histogram_matches_transition_matrix(name):
    """χ² goodness of fit, 60,000 users holding value 2; a correct sampler fails w.p. 1e-4."""
    mech = make(name)
    reports = mech.privatize(torch.full((60_000,), 2), generator=gen(11))
    observed = torch.bincount(reports, minlength=K).numpy()
    expected = mech.transition_matrix()[2] * reports.numel()
    assert stats.chisquare(observed, expected).pvalue > 1e-4


@pytest.mark.parametrize("name", sorted(set(ALL) - {"dbitflippm"}))
def test_support_rates_match_the_analysis(name):
    """P(report supports the own value) = A, P(supports another value) = B: binomial z-tests at |z| < 4.5
    over the k columns of 40,000 users (false-failure probability < 1e-4)."""
    mech = make(name)
    n = 40_000
    ind = mech.support_indicator(mech.privatize(torch.full((n,), 3), generator=gen(12))).to(torch.float64)
    a, b = mech.support_probabilities()
    rates = ind.mean(0)
    want = torch.full((K,), b, dtype=torch.float64)
    want[3] = a
    z = (rates - want) / torch.sqrt(want * (1 - want) / n)
    assert float(z.abs().max()) < 4.5, (rates, want)


def test_dbitflippm_bits_match_the_analysis():
    mech = make("dbitflippm")
    n = 40_000
    reports = mech.privatize(torch.full((n,), 1), generator=gen(13)).to(torch.int64)
    buckets, bits = reports >> 1, reports & 1
    assert bool((buckets[:, 0] != buckets[:, 1]).all())  # d distinct buckets per user
    own = buckets == 1
    for mask, p in ((own, mech.p), (~own, mech.q)):
        rate = bits[mask].double().mean()
        assert abs(float(rate) - p) < 4.5 * math.sqrt(p * (1 - p) / int(mask.sum()))
    sampled = torch.bincount(buckets.flatten(), minlength=K).double() / (n * mech.d)
    assert float((sampled - 1 / K).abs().max()) < 4.5 * math.sqrt((1 / K) / (n * mech.d))


# --------------------------------------------------------------------------------------------
# Unbiased estimators and their closed-form variance
# --------------------------------------------------------------------------------------------
REPS, USERS = 300, 2_000


def _replicated_estimates(name: str) -> tuple[torch.Tensor, torch.Tensor, FrequencyOracle]:
    """REPS independent populations of USERS users (one batched privatize; longitudinal protocols at
    their second collection, after 30 % of users changed value). Returns estimates [REPS, k], truth."""
    mech = make(name)
    probs = torch.tensor([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
    base = torch.multinomial(probs, USERS, replacement=True, generator=gen(1))
    later = base.clone()
    change = torch.rand(USERS, generator=gen(2)) < 0.3
    later[change] = torch.randint(0, K, (int(change.sum()),), generator=gen(3))
    values = later.repeat(REPS)
    if isinstance(mech, LongitudinalOracle):
        mech.privatize(base.repeat(REPS), generator=gen(4))
    reports = mech.privatize(values, generator=gen(5))
    est = torch.stack([mech.estimate(reports[r * USERS:(r + 1) * USERS]) for r in range(REPS)])
    truth = torch.bincount(later, minlength=K).double() / USERS
    return est, truth, mech


@pytest.mark.parametrize("name", sorted(ALL))
def test_estimator_unbiased_and_variance_matches_closed_form(name):
    """Over 300 independent populations: mean within 4.5 standard errors of the truth (per category) and
    sample variance inside the two-sided χ²(299) interval of level 1 − 1e-4/k around the closed form.
    False-failure probability < 2e-4 per protocol."""
    est, truth, mech = _replicated_estimates(name)
    var = mech.variance(USERS, truth)
    z = (est.mean(0) - truth) / torch.sqrt(var / REPS)
    assert float(z.abs().max()) < 4.5, z
    ratio = est.var(0) * (REPS - 1) / var
    lo, hi = stats.chi2.ppf([0.5e-4 / K, 1 - 0.5e-4 / K], REPS - 1)
    assert bool((ratio > lo).all() and (ratio < hi).all()), (ratio / (REPS - 1)).tolist()


@pytest.mark.parametrize("name", ["grr", "oue", "l-osue", "ololoha", "dbitflippm"])
def test_decode_rows_average_to_estimate(name):
    mech = make(name)
    reports = mech.privatize(torch.randint(0, K, (3_000,), generator=gen(7)), generator=gen(8))
    rows = mech.decode(reports)
    assert rows.shape == (3_000, K) and rows.dtype == torch.float64
    torch.testing.assert_close(rows.mean(0), mech.estimate(reports), rtol=1e-10, atol=1e-12)


def test_variance_approximation_is_the_papers():
    """At f = 0 LOLOHA's variance is σ(1−σ)/(n (p1−q1)²(p2−q2)²) with σ = q1 p2 + (1−q1) q2, q1 = 1/g
    (up to the exact collision probability of the hash family, 1/g + O(g/P²))."""
    mech = make("loloha", k=100, eps_inf=3.0, eps_1=1.2, g=4)
    q1 = 1 / mech.g
    sigma = q1 * mech.p2 + (1 - q1) * mech.q2
    paper = sigma * (1 - sigma) / (1000 * (mech.p1 - q1) ** 2 * (mech.p2 - mech.q2) ** 2)
    assert abs(float(mech.variance(1000)[0]) / paper - 1) < 1e-9


# --------------------------------------------------------------------------------------------
# The hash family
# --------------------------------------------------------------------------------------------
def test_hash_support_counts_equal_brute_force():
    g, k, n = 5, 37, 4_000
    seeds = draw_hash_seeds(n, gen(20), torch.device("cpu"))
    y = torch.randint(0, g, (n,), generator=gen(21))
    brute = hash_indicator(seeds, y, g, k).sum(0)
    assert torch.equal(hash_support_counts(seeds, y, g, k), brute)
    # and the int64 single-value hash agrees with an exact Python-integer evaluation
    v = torch.randint(0, k, (n,), generator=gen(22))
    exact = [((a * x + b) % HASH_PRIME) * g // HASH_PRIME for (a, b), x in zip(seeds.tolist(), v.tolist())]
    assert hash_values(seeds, v, g).tolist() == exact


def test_hash_pairwise_collision_probability():
    """Fraction of 400,000 hash draws with H(3) = H(9), within 4.5 binomial standard errors of the
    family's exact collision probability Σπ_j² (false-failure probability < 1e-5)."""
    g, n = 3, 400_000
    seeds = draw_hash_seeds(n, gen(23), torch.device("cpu"))
    h3 = hash_values(seeds, torch.full((n,), 3), g)
    h9 = hash_values(seeds, torch.full((n,), 9), g)
    c = hash_collision_probability(g)
    assert abs(c - 1 / g) < 1e-15
    rate = float((h3 == h9).double().mean())
    assert abs(rate - c) < 4.5 * math.sqrt(c * (1 - c) / n)
    marg = torch.bincount(h3, minlength=g).double() / n
    assert float((marg - 1 / g).abs().max()) < 4.5 * math.sqrt((1 / g) / n)


# --------------------------------------------------------------------------------------------
# The longitudinal ledger
# --------------------------------------------------------------------------------------------
def _evolve(n: int, k: int, steps: int, change: float, seed: int) -> list[torch.Tensor]:
    g = gen(seed)
    values = [torch.randint(0, k, (n,), generator=g)]
    for _ in range(steps - 1):
        v = values[-1].clone()
        moved = torch.rand(n, generator=g) < change
        v[moved] = torch.randint(0, k, (int(moved.sum()),), generator=g)
        values.append(v)
    return values


def _distinct_per_user(history: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack(history, dim=1)
    return torch.tensor([len(set(row)) for row in stacked.tolist()])


@pytest.mark.parametrize("name", sorted(LONGITUDINAL))
def test_spent_budget_equals_distinct_memoized_values_and_respects_bound(name):
    n, k, steps = 400, 8, 25
    mech = make(name, k=k)
    history = _evolve(n, k, steps, 0.35, seed=30)
    ledger = PrivacyLedger()
    for t, values in enumerate(history):
        mech.privatize(values, generator=gen(100 + t))
        mech.account(ledger, clients=torch.arange(n), sampling_rate=1.0, dim=k, round=t)
    ids = mech.state.ids
    assert torch.equal(ids, torch.arange(n))
    if name in ("loloha", "biloloha", "ololoha"):  # memo key: the user's hashed value
        hashed = [hash_values(mech.state.public, v, mech.g) for v in history]
        distinct = _distinct_per_user(hashed)
    elif name == "dbitflippm":  # memo key: the pattern (position of the value among the sampled buckets)
        distinct = _distinct_per_user([mech._slot(v, mech.state.public) for v in history])
    else:
        distinct = _distinct_per_user(history)
    assert torch.equal(mech.state.memo_count, distinct)
    assert torch.equal(mech.state.memoized_per_user(), distinct)
    spent = mech.spent()
    assert torch.equal(spent, distinct.double() * mech.eps_inf)  # exactly, not approximately
    assert float(spent.max()) <= mech.budget_bound()
    report = mech.budget()
    assert report["max"] == float(spent.max()) and abs(report["mean"] - float(spent.mean())) < 1e-12
    # the PrivacyLedger composes the same permanent releases
    per_release = mech.permanent_guarantee().epsilon_pure
    for u in (0, 17, 399):
        assert abs(ledger.pure_epsilon(client=u) - int(distinct[u]) * per_release) < 1e-9


@pytest.mark.parametrize("name, bound_slots", [("l-grr", 5), ("rappor", 5), ("biloloha", 2), ("dbitflippm", 3)])
def test_bound_is_reached_and_never_exceeded(name, bound_slots):
    """Every user cycles through every value: baselines reach k·eps_inf, BiLOLOHA stops at 2·eps_inf,
    dBitFlipPM (d=2) at 3·eps_inf."""
    k = 5
    mech = make(name, k=k)
    for t in range(3 * k):
        mech.privatize((torch.arange(50) + t) % k, generator=gen(t))
        assert float(mech.spent().max()) <= mech.budget_bound()
    assert mech.budget_bound() == bound_slots * mech.eps_inf
    assert float(mech.spent().max()) == mech.budget_bound()


def test_memoized_responses_are_reused():
    """Same value again: the permanent response is looked up, not redrawn (dBitFlipPM reports are
    identical; L-GRR's memo entry is unchanged; values hashing alike share LOLOHA's entry)."""
    values = torch.randint(0, K, (300,), generator=gen(40))
    mech = make("dbitflippm")
    first = mech.privatize(values, generator=gen(41))
    again = mech.privatize(values, generator=gen(42))
    assert torch.equal(first, again)
    lgrr = make("l-grr")
    lgrr.privatize(values, generator=gen(43))
    memo = lgrr.state.memo_values.clone()
    lgrr.privatize(values, generator=gen(44))
    assert torch.equal(lgrr.state.memo_values, memo) and int(lgrr.spent().max()) == lgrr.eps_inf
    lol = make("biloloha", k=50)
    lol.privatize(torch.zeros(1, dtype=torch.int64), generator=gen(45))
    h = hash_values(lol.state.public, torch.arange(50), 2)
    twin = int(torch.nonzero(h == h[0])[1])  # another value with the same hash as 0
    lol.privatize(torch.tensor([twin]), generator=gen(46))
    assert float(lol.spent()[0]) == lol.eps_inf
    assert lol.state.memo_slots(0).tolist() == [int(h[0])]


# --------------------------------------------------------------------------------------------
# Per-user state: serialisation, join / leave / resume, determinism
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LONGITUDINAL))
def test_state_roundtrip_continues_identically(name):
    history = _evolve(200, K, 4, 0.5, seed=50)
    a = make(name)
    outs = [a.privatize(v, generator=gen(60 + t)) for t, v in enumerate(history)]
    b = make(name)
    for t in range(2):
        b.privatize(history[t], generator=gen(60 + t))
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = make(name)
    c.load_state_dict(torch.load(buf))
    for t in range(2, 4):
        assert torch.equal(c.privatize(history[t], generator=gen(60 + t)), outs[t])
    assert torch.equal(c.spent(), a.spent())
    with pytest.raises(ValueError, match="state belongs to"):
        make(name, k=K + 1).load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", ["l-grr", "rappor", "loloha", "dbitflippm"])
def test_users_join_leave_and_resume(name):
    mech = make(name)
    v = torch.randint(0, K, (10,), generator=gen(70))
    ids = torch.tensor([5, 900, 3, 42, 7, 1000, 11, 12, 13, 2])
    mech.privatize(v, client_ids=ids, generator=gen(71))
    assert mech.state.ids.tolist() == sorted(ids.tolist())
    spent_before = mech.spent(ids)
    leaving = torch.tensor([900, 3])
    saved = mech.export_users(leaving)
    assert set(mech.state.ids.tolist()) == set(ids.tolist()) - {900, 3}
    assert mech.spent(leaving).tolist() == [0.0, 0.0]
    # others keep reporting (the same values: nothing new spent), new users join, the leavers skip collections
    mech.privatize(torch.cat([v[[0, 3]], torch.randint(0, K, (2,), generator=gen(72))]),
                   client_ids=torch.tensor([5, 42, 77, 78]), generator=gen(73))
    mech.import_users(saved)
    torch.testing.assert_close(mech.spent(ids), spent_before)
    assert torch.equal(mech.state.memoized_per_user(), mech.state.memo_count)
    # a resumed user reporting a memoized value spends nothing more
    mech.privatize(v[[1, 2]], client_ids=leaving, generator=gen(74))
    torch.testing.assert_close(mech.spent(leaving), spent_before[[1, 2]])
    with pytest.raises(ValueError, match="already present"):
        mech.import_users(saved)


@pytest.mark.parametrize("name", sorted(ALL))
def test_determinism_no_mutation_and_dtypes(name):
    values = torch.randint(0, K, (500,), generator=gen(80))
    before = values.clone()
    r1 = make(name).privatize(values, generator=gen(81))
    r2 = make(name).privatize(values, generator=gen(81))
    assert torch.equal(r1, r2)
    assert torch.equal(values, before)
    assert r1.device == values.device and not r1.is_floating_point()
    est = make(name).estimate(r1)
    assert est.shape == (K,) and est.dtype == torch.float64 and bool(torch.isfinite(est).all())


# --------------------------------------------------------------------------------------------
# Projection onto the simplex (post-processing, kept apart from the unbiased estimate)
# --------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-2, 2, allow_nan=False, width=64), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_project_simplex_is_the_euclidean_projection(vec, seed):
    x = torch.tensor(vec, dtype=torch.float64)
    p = project_simplex(x)
    assert bool((p >= 0).all()) and abs(float(p.sum()) - 1) < 1e-9
    torch.testing.assert_close(project_simplex(p), p, rtol=0, atol=1e-12)  # idempotent on the simplex
    # no point of the simplex is closer (random candidates)
    cands = torch.distributions.Dirichlet(torch.ones(len(vec), dtype=torch.float64)).sample((200,))
    assert float(torch.linalg.norm(p - x)) <= float(torch.linalg.norm(cands - x, dim=1).min()) + 1e-9


def test_project_simplex_bad_input():
    with pytest.raises(TypeError):
        project_simplex(torch.tensor([1, 2]))
    with pytest.raises(ValueError):
        project_simplex(torch.tensor([float("nan"), 0.5]))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL))
def test_values_outside_domain_and_empty_population_are_rejected(name):
    mech = make(name)
    with pytest.raises(ValueError, match=r"\[0, k\)"):
        mech.privatize(torch.tensor([0, K]), generator=gen(0))
    with pytest.raises(ValueError, match=r"\[0, k\)"):
        mech.privatize(torch.tensor([-1, 0]), generator=gen(0))
    with pytest.raises(TypeError, match="int64"):
        mech.privatize(torch.tensor([0.0, 1.0]), generator=gen(0))
    with pytest.raises(ValueError, match="empty"):
        mech.privatize(torch.zeros(0, dtype=torch.int64), generator=gen(0))
    reports = mech.privatize(torch.tensor([0, 1]), generator=gen(0))
    with pytest.raises(ValueError, match="empty"):
        mech.estimate(reports[:0])
    with pytest.raises(ValueError, match="n must be"):
        mech.variance(0)


@pytest.mark.parametrize("name", ["l-grr", "l-osue", "rappor", "loloha", "biloloha", "ololoha"])
def test_eps_1_must_be_below_eps_inf(name):
    for eps_1 in (2.0, 3.0):
        with pytest.raises(ValueError, match="eps_1"):
            privfl.make("mechanism", name, k=10, eps_inf=2.0, eps_1=eps_1)
    with pytest.raises(ValueError, match="eps_1"):
        privfl.make("mechanism", name, k=10, eps_inf=2.0, eps_1=-0.1)


def test_other_bad_parameters():
    for g in (1, 0, -3):
        with pytest.raises(ValueError, match="g"):
            privfl.make("mechanism", "loloha", k=10, eps_inf=2.0, g=g)
        with pytest.raises(ValueError, match="g"):
            privfl.make("mechanism", "olh", k=10, eps=1.0, g=g)
    with pytest.raises(TypeError, match="g"):
        privfl.make("mechanism", "loloha", k=10, eps_inf=2.0, g=2.5)
    with pytest.raises(ValueError, match="k"):
        privfl.make("mechanism", "grr", k=1, eps=1.0)
    with pytest.raises(ValueError, match="eps_inf"):
        privfl.make("mechanism", "l-grr", k=10, eps_inf=float("inf"))
    with pytest.raises(TypeError, match="eps"):
        privfl.make("mechanism", "sue", k=10, eps="1")
    with pytest.raises(ValueError, match="d"):
        privfl.make("mechanism", "dbitflippm", k=10, eps_inf=1.0, d=11)
    with pytest.raises(ValueError, match="calibration"):
        privfl.make("mechanism", "l-grr", k=10, eps_inf=1.0, calibration="approx")
    mech = make("loloha")
    with pytest.raises(ValueError, match="distinct"):
        mech.privatize(torch.tensor([0, 1]), client_ids=torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="one id per value"):
        mech.privatize(torch.tensor([0, 1]), client_ids=torch.tensor([3]))
    with pytest.raises(TypeError, match="generator"):
        mech.privatize(torch.tensor([0, 1]), generator=0)
    with pytest.raises(ValueError, match="shape"):
        mech.estimate(torch.zeros(4, 2, dtype=torch.int64))


def test_bit_packing_roundtrip():
    bits = torch.rand(7, 19, generator=gen(90)) < 0.5
    packed = pack_bits(bits)
    assert packed.shape == (7, 3) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, 19), bits)
