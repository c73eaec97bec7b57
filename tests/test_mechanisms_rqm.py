"""RQM and PBM: exact output distributions (checked against brute-force enumeration), the paper's
reference values, the worst pair, unbiasedness (fixed seeds, stated error rates), validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, chisquare

import privfl
from privfl.accounting import PrivacyLedger, pmf_rdp
from privfl.mechanisms.pbm import PBM
from privfl.mechanisms.rqm import RQM
from privfl.testing import check_rdp, check_rdp_dominates_pld, check_unbiased


def brute_force_pmf(c: float, delta: float, m: int, q: float, x: float) -> np.ndarray:
    """Enumerate every kept set of interior levels (independent of RQM.output_pmf's closed form)."""
    levels = [-(c + delta) + 2 * i * (c + delta) / (m - 1) for i in range(m)]
    pmf = np.zeros(m)
    for pattern in itertools.product([0, 1], repeat=m - 2):
        prob = math.prod(q if k else 1 - q for k in pattern)
        kept = [0] + [i + 1 for i, k in enumerate(pattern) if k] + [m - 1]
        for a, b in zip(kept, kept[1:]):
            if levels[a] <= x <= levels[b]:
                up = (x - levels[a]) / (levels[b] - levels[a])
                pmf[b] += prob * up
                pmf[a] += prob * (1 - up)
                break
    return pmf


@pytest.mark.parametrize("m, q", [(2, 0.5), (3, 0.3), (5, 0.5), (6, 0.9), (7, 1.0)])
@pytest.mark.parametrize("x", [-1.0, -0.37, 0.0, 0.5, 1.0])
def test_output_pmf_matches_enumeration(m, q, x):
    mech = RQM(c=1.0, delta=0.7, m=m, q=q)
    pmf = mech.output_pmf(x)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(pmf, brute_force_pmf(1.0, 0.7, m, q, x), atol=1e-12)
    assert float(pmf @ mech.levels()) == pytest.approx(x, abs=1e-12)  # unbiased in distribution


def test_reference_values_m5():
    g = RQM(c=1.0, delta=1.0, m=5, q=0.5).guarantee()
    assert g.epsilon_pure == pytest.approx(2.485, abs=1e-3)
    assert np.allclose(g.rdp([2, 8, 32]), [2.203, 2.404, 2.463], atol=1e-3)
    assert g.unit == "coordinate"
    ledger = PrivacyLedger()
    ledger.record(g, clients=[0], count=100, unit="client")
    assert ledger.epsilon(1e-5, method="pld") == pytest.approx(225.2, abs=0.1)
    assert ledger.epsilon(1e-5, method="rdp") >= ledger.epsilon(1e-5, method="pld")


@pytest.mark.parametrize("c, delta", [(1.0, 0.5), (0.05, 0.01), (3.0, 3.0)])
def test_m2_pure_epsilon_closed_form(c, delta):
    assert RQM(c=c, delta=delta, m=2, q=0.5).guarantee().epsilon_pure == pytest.approx(
        math.log((2 * c + delta) / delta), rel=1e-12)


def test_extreme_pair_is_the_worst_on_a_grid():
    mech = RQM(c=1.0, delta=0.5, m=6, q=0.4)
    orders = np.array([2.0, 8.0, 32.0])
    worst = mech.guarantee().rdp(orders)
    grid = np.linspace(-1, 1, 21)
    pmfs = {x: mech.output_pmf(x) for x in grid}
    for x, y in itertools.combinations(grid, 2):
        assert np.all(pmf_rdp((pmfs[x], pmfs[y]), orders) <= worst + 1e-12)


def test_rdp_monotone_and_below_pure():
    for m, q in [(3, 0.2), (5, 0.5), (9, 0.8)]:
        check_rdp(RQM(c=1.0, delta=0.3, m=m, q=q))


def test_delta_zero_rejected_and_validation():
    with pytest.raises(ValueError, match="delta"):
        RQM(c=1.0, delta=0.0)
    with pytest.raises(ValueError, match="m must be int"):
        RQM(m=1)
    with pytest.raises(ValueError, match="q must be"):
        RQM(q=0.0)
    with pytest.raises(ValueError, match="c must be"):
        RQM(c=-1.0)
    with pytest.raises(ValueError, match="reports"):
        RQM().decode(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        RQM().privatize(torch.zeros(2, 3, dtype=torch.int64))


def test_sampled_frequencies_match_the_exact_pmf():
    """Chi-square goodness of fit at 3 inputs; a correct sampler fails with probability 3e-4 (3 × 1e-4)."""
    mech = RQM(c=1.0, delta=1.0, m=5, q=0.5)
    xs = [0.3, -0.77, 1.0]
    x = torch.tensor(xs).repeat_interleave(40000).view(3, 40000)
    rep = mech.privatize(x, generator=torch.Generator().manual_seed(0))
    assert rep.dtype == torch.uint8
    for i, xv in enumerate(xs):
        counts = np.bincount(rep[i].numpy(), minlength=5)
        expected = mech.output_pmf(xv) * 40000
        keep = expected > 0
        assert counts[~keep].sum() == 0
        assert chisquare(counts[keep], expected[keep]).pvalue > 1e-4


def test_unbiased_with_clipping_stated():
    """Inputs outside [−c, c] are clipped first: the estimate is unbiased for the clipped value."""
    mech = RQM(c=0.5, delta=0.25, m=4, q=0.6)
    x = torch.linspace(-0.9, 0.9, 25)
    check_unbiased(mech, x, trials=4000, alpha=1e-3, target=x.clamp(-0.5, 0.5))


def test_same_seed_same_reports_keeps_device_and_input():
    mech = RQM(c=1.0, delta=0.5, m=5, q=0.5)
    x = torch.randn(4, 50, dtype=torch.float64)
    before = x.clone()
    a = mech.privatize(x, generator=torch.Generator().manual_seed(3))
    b = mech.privatize(x, generator=torch.Generator().manual_seed(3))
    c = mech.privatize(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(x, before)
    assert mech.decode(a, dtype=torch.float64).dtype == torch.float64
    assert mech.report_bytes(a) == 50 * 3 / 8


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 9),
    q=st.floats(0.05, 1.0),
    delta_ratio=st.floats(0.05, 3.0),
    x=st.floats(-1.0, 1.0),
)
def test_property_pmf_unbiased_and_eps_consistent(m, q, delta_ratio, x):
    mech = RQM(c=1.0, delta=delta_ratio, m=m, q=q)
    pmf = mech.output_pmf(x)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9) and np.all(pmf >= 0)
    assert float(pmf @ mech.levels()) == pytest.approx(x, abs=1e-9)
    g = mech.guarantee()
    check_rdp(g)
    check_rdp_dominates_pld(g, rounds=5)


# --------------------------------------------------------------------------------------------
# PBM
# --------------------------------------------------------------------------------------------
def test_pbm_pmf_and_pure_epsilon():
    mech = PBM(c=2.0, m=10, theta=0.2)
    g = mech.guarantee()
    P, Q = g.pmf_pair
    assert np.allclose(P, binom.pmf(np.arange(11), 10, 0.7)) and np.allclose(Q, binom.pmf(np.arange(11), 10, 0.3))
    assert g.epsilon_pure == pytest.approx(10 * math.log(0.7 / 0.3), rel=1e-9)
    check_rdp(g)


def test_pbm_unbiased():
    mech = PBM(c=1.0, m=16, theta=0.25)
    x = torch.linspace(-1, 1, 15)
    check_unbiased(mech, x, trials=4000, alpha=1e-3)


def test_pbm_validation():
    with pytest.raises(ValueError, match="theta"):
        PBM(theta=0.3)
    with pytest.raises(ValueError, match="m must"):
        PBM(m=0)


def test_registry_names_and_params():
    assert {"rqm", "pbm", "gaussian", "dp-brem", "dp-brem-plus", "top-k", "quantize", "fp16"} <= set(
        privfl.available("mechanism"))
    rqm = privfl.make("mechanism", "rqm", c=0.5, delta=0.5, m=3, q=0.5)
    assert (rqm.c, rqm.delta, rqm.m, rqm.q) == (0.5, 0.5, 3, 0.5)
    g = privfl.make("mechanism", "dp-fedavg", clip_norm=2.0, noise_multiplier=1.5)
    assert g.guarantee().noise_multiplier == 1.5
