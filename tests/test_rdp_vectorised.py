"""The vectorised, cached subsampled-Gaussian RDP equals Opacus' ``compute_rdp`` (to 1e-12 relative, on
every order where Opacus is finite), the ledger's per-step fast path composes exactly like one record of
the total count, and ε equals Opacus' RDPAccountant on its own orders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from privfl.accounting import PrivacyLedger, analysis
from privfl.accounting.guarantees import gaussian_guarantee, pure_guarantee

ORDERS = analysis.DEFAULT_ORDERS


def opacus_curve(q, sigma, orders):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)))


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(q=st.floats(1e-4, 0.99), sigma=st.floats(0.4, 8.0))
def test_subsampled_gaussian_rdp_equals_opacus(q, sigma):
    analysis._sgm_rdp.cache_clear()
    ours = analysis.subsampled_gaussian_rdp(q, sigma, ORDERS)
    ref = opacus_curve(q, sigma, ORDERS)
    finite = np.isfinite(ref)
    assert finite[ORDERS <= 1024].all()
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-12, atol=0)
    # where binom overflows (orders 2048, 4096) Opacus gives NaN; ours is finite and continues the curve
    assert np.isfinite(ours).all() and np.all(np.diff(ours[ORDERS >= 512]) > 0)


def test_fixed_cases_equal_opacus_and_are_cached():
    for q, sigma in [(0.01, 1.1), (0.3, 0.8), (0.9, 5.0), (1e-4, 0.5)]:
        analysis._sgm_rdp.cache_clear()
        ours = analysis.subsampled_gaussian_rdp(q, sigma, ORDERS)
        ref = opacus_curve(q, sigma, ORDERS)
        finite = np.isfinite(ref)
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-12, atol=0)
        again = analysis.subsampled_gaussian_rdp(q, sigma, ORDERS)
        assert analysis._sgm_rdp.cache_info().hits >= 1
        again[0] = -1.0  # callers get a copy: the cache cannot be corrupted
        assert analysis.subsampled_gaussian_rdp(q, sigma, ORDERS)[0] == ours[0]


def test_ledger_per_step_records_equal_one_record_and_opacus():
    g = gaussian_guarantee(1.1)
    steps = PrivacyLedger(orders=RDPAccountant.DEFAULT_ALPHAS)
    acc = RDPAccountant()
    for _ in range(500):
        steps.record(g, sampling_rate=0.01)
        acc.step(noise_multiplier=1.1, sample_rate=0.01)
    once = PrivacyLedger(orders=RDPAccountant.DEFAULT_ALPHAS)
    once.record(g, sampling_rate=0.01, count=500)
    assert steps.epsilon(1e-5) == once.epsilon(1e-5)
    assert steps.epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert len(steps) == 500 and len(steps.events) == 500
    ev = steps.events[-1]
    assert (ev.guarantee, ev.sampling_rate, ev.count, ev.clients, ev.unit) == (g, 0.01, 1, None, "client")


def test_ledger_fast_path_keeps_components_and_checks_apart():
    ledger = PrivacyLedger()
    g1, g2 = gaussian_guarantee(1.0), gaussian_guarantee(2.0)
    ledger.record(g1, sampling_rate=0.1)
    ledger.record(g2, sampling_rate=0.1)
    ledger.record(g1, sampling_rate=0.1)
    ledger.record(g1, sampling_rate=0.2)  # another rate: another component
    ledger.record(pure_guarantee(1.0), clients=[3], unit="client")
    ref = PrivacyLedger()
    ref.record(g1, sampling_rate=0.1, count=2)
    ref.record(g2, sampling_rate=0.1)
    ref.record(g1, sampling_rate=0.2)
    ref.record(pure_guarantee(1.0), clients=[3], unit="client")
    np.testing.assert_array_equal(ledger.rdp(), ref.rdp())
    assert ledger.epsilon(1e-5) == ref.epsilon(1e-5)
    with pytest.raises(ValueError, match="sampling_rate"):
        ledger.record(g1, sampling_rate=1.5)  # a new rate is checked
    with pytest.raises(ValueError, match="count"):
        ledger.record(g1, sampling_rate=0.1, count=-1)  # the fast path does not skip the count check
