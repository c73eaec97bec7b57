"""Privacy accounting: reference values, the ledger (heterogeneous composition, per-client worst
case, local vs central events, units), PLD against closed forms, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import comb
from scipy.stats import norm

from privfl.accounting import (
    PrivacyLedger,
    gaussian_epsilon_rdp,
    gaussian_guarantee,
    pmf_guarantee,
    pmf_rdp,
    pure_guarantee,
    randomized_response_guarantee,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
)
from privfl.accounting.pld import pld_epsilon
from privfl.core import PrivacyGuarantee


# --------------------------------------------------------------------------------------------
# Reference values (REFERENCES §1.4: Opacus RDPAccountant 2.10137; PLD/PRV 1.828)
# --------------------------------------------------------------------------------------------
def test_subsampled_gaussian_reference_values():
    ledger = PrivacyLedger()
    ledger.record(gaussian_guarantee(1.0), sampling_rate=0.01, count=1000)
    assert ledger.epsilon(1e-5) == pytest.approx(2.1014, abs=1e-3)
    assert ledger.epsilon(1e-5, method="pld") == pytest.approx(1.828, abs=0.01)
    ledger.record(gaussian_guarantee(1.0), sampling_rate=0.01, count=9000)
    assert ledger.epsilon(1e-5) == pytest.approx(6.7127, abs=1e-3)
    assert gaussian_epsilon_rdp(sampling_rate=0.01, noise_multiplier=1.0, steps=10_000, delta=1e-5) == pytest.approx(
        6.7127, abs=1e-3)


def test_opacus_rdp_accountant_agrees():
    """The ledger's RDP path equals Opacus' own stateful RDPAccountant on its default orders."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(300):
        acc.step(noise_multiplier=1.3, sample_rate=0.02)
    ledger = PrivacyLedger(orders=RDPAccountant.DEFAULT_ALPHAS)
    ledger.record(gaussian_guarantee(1.3), sampling_rate=0.02, count=300)
    assert ledger.epsilon(1e-6) == pytest.approx(acc.get_epsilon(1e-6), rel=1e-12)


def _gaussian_delta(eps: float, mu: float) -> float:
    """Exact δ(ε) of the Gaussian mechanism with μ = sensitivity/σ (Balle & Wang, ICML 2018, Thm 8)."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


def test_gaussian_pld_matches_the_exact_curve():
    """Unsampled heterogeneous Gaussians compose into μ = sqrt(Σ 1/z²); PLD ε matches the exact curve."""
    ledger = PrivacyLedger()
    ledger.record(gaussian_guarantee(2.0), count=10)
    ledger.record(gaussian_guarantee(4.0), count=20)
    mu = math.sqrt(10 / 4 + 20 / 16)
    exact = brentq(lambda e: _gaussian_delta(e, mu) - 1e-5, 0.0, 100.0)
    assert ledger.epsilon(1e-5, method="pld") == pytest.approx(exact, abs=2e-3)
    assert ledger.epsilon(1e-5, method="rdp") >= exact


def _rr_composed_delta(eps_prime: float, eps: float, k: int) -> float:
    """δ(ε') of k-fold binary randomized response at ε: loss (k − 2j)ε w.p. C(k,j) p^(k−j) (1−p)^j."""
    p = math.exp(eps) / (1 + math.exp(eps))
    total = 0.0
    for j in range(k + 1):
        loss = (k - 2 * j) * eps
        if loss > eps_prime:
            total += comb(k, j) * p ** (k - j) * (1 - p) ** j * (1 - math.exp(eps_prime - loss))
    return total


def test_pure_dp_events_pld_matches_randomized_response_closed_form():
    eps, k, delta = 0.5, 40, 1e-5
    exact = brentq(lambda e: _rr_composed_delta(e, eps, k) - delta, 0.0, k * eps)
    ledger = PrivacyLedger()
    ledger.record(pure_guarantee(eps), clients=[3], count=k)
    assert ledger.epsilon(delta, method="pld") == pytest.approx(exact, abs=5e-3)
    assert ledger.pure_epsilon() == pytest.approx(k * eps)
    assert ledger.epsilon(delta) <= k * eps + 1e-12  # capped by basic composition


def test_pmf_rdp_against_direct_sum():
    P = np.array([0.5, 0.3, 0.2])
    Q = np.array([0.2, 0.3, 0.5])
    for a in (1.5, 2.0, 7.0):
        direct = max(math.log(sum(P**a * Q ** (1 - a))), math.log(sum(Q**a * P ** (1 - a)))) / (a - 1)
        assert pmf_rdp((P, Q), [a])[0] == pytest.approx(direct, rel=1e-12)
    g = pmf_guarantee(P, Q, name="toy")
    assert g.epsilon_pure == pytest.approx(math.log(2.5))


def test_randomized_response_guarantee_pure_epsilon_exact():
    g = randomized_response_guarantee(1.3, k=7)
    P, Q = g.pmf_pair
    assert P.sum() == pytest.approx(1.0) and Q.sum() == pytest.approx(1.0)
    assert math.log(P[0] / Q[0]) == pytest.approx(1.3, abs=1e-12)
    assert g.epsilon_pure == 1.3


# --------------------------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------------------------
def test_heterogeneous_composition_equals_sum_of_rdp_curves():
    orders = np.array([2.0, 4.0, 8.0, 16.0, 32.0])
    ledger = PrivacyLedger(orders=orders)
    ledger.record(gaussian_guarantee(1.1), sampling_rate=0.05, count=30)
    ledger.record(gaussian_guarantee(0.8), sampling_rate=0.2, count=5)
    ledger.record(pure_guarantee(0.3, unit="client"), clients=[0], count=2)
    rr = pure_guarantee(0.3).rdp(orders)
    expected = 30 * subsampled_gaussian_rdp(0.05, 1.1, orders) + 5 * subsampled_gaussian_rdp(0.2, 0.8, orders) + 2 * rr
    assert np.allclose(ledger.rdp(client=0), expected, rtol=1e-12)
    assert ledger.epsilon(1e-5, client=0) == pytest.approx(rdp_to_epsilon(orders, expected, 1e-5)[0], rel=1e-12)
    # a client without the local events only has the central part
    assert ledger.epsilon(1e-5, client=1) < ledger.epsilon(1e-5, client=0)
    assert ledger.epsilon(1e-5) == ledger.epsilon(1e-5, client=0)  # worst case


def test_per_client_worst_case_and_local_events():
    ledger = PrivacyLedger()
    g = pure_guarantee(1.0, unit="client")
    ledger.record(g, clients=[0, 1, 2])
    ledger.record(g, clients=[2])
    ledger.record(g, clients=np.array([2, 5]))
    per = ledger.per_client_epsilon(1e-5)
    assert per[0] == per[1] == per[5] < per[2]
    assert ledger.epsilon(1e-5) == per[2]
    assert ledger.pure_epsilon(client=2) == pytest.approx(3.0)
    assert ledger.clients == [0, 1, 2, 5]


def test_local_events_are_not_amplified_central_ones_are():
    g = gaussian_guarantee(1.0)
    central, local = PrivacyLedger(), PrivacyLedger()
    central.record(g, sampling_rate=0.1, count=50)
    local.record(g, clients=[0], count=50)
    assert central.epsilon(1e-5) < local.epsilon(1e-5)


def test_units_are_not_mixed():
    ledger = PrivacyLedger()
    ledger.record(gaussian_guarantee(1.0, unit="client"), count=3)
    ledger.record(gaussian_guarantee(1.0, unit="record"), clients=[0], count=3)
    with pytest.raises(ValueError, match="several units"):
        ledger.epsilon(1e-5)
    assert ledger.epsilon(1e-5, unit="client") == pytest.approx(ledger.epsilon(1e-5, unit="record"))


def test_no_guarantee_is_infinite_everywhere():
    ledger = PrivacyLedger()
    ledger.record(PrivacyGuarantee.none("top-k"), clients=[0])
    assert ledger.epsilon(1e-5) == math.inf
    assert ledger.epsilon(1e-5, method="pld") == math.inf
    assert ledger.pure_epsilon() == math.inf
    assert PrivacyLedger().epsilon(1e-5) == 0.0


def test_rdp_only_guarantee_has_no_pld():
    g = PrivacyGuarantee(name="curve-only", rdp_curve=lambda a: a * 0.1)
    ledger = PrivacyLedger()
    ledger.record(g, count=2)
    assert ledger.epsilon(1e-5) > 0
    assert not ledger.supports("pld")
    with pytest.raises(ValueError, match="use method='rdp'"):
        ledger.epsilon(1e-5, method="pld")


def test_pld_interval_keeps_large_compositions_below_rdp():
    from privfl.mechanisms.rqm import RQM

    g = RQM(c=1.0, delta=1.0, m=5, q=0.5).guarantee()
    ledger = PrivacyLedger()
    ledger.record(g, clients=[0], count=2000, unit="client")
    e_rdp, e_pld = ledger.epsilon(1e-5), ledger.epsilon(1e-5, method="pld")
    assert e_pld <= e_rdp
    assert e_pld > 0.95 * e_rdp


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(sampling_rate=1.5), "sampling_rate"),
        (dict(count=-1), "count"),
        (dict(clients=[[0, 1]]), "clients"),
        (dict(clients=[-2]), "clients"),
        (dict(unit=""), "unit"),
    ],
)
def test_record_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrivacyLedger().record(gaussian_guarantee(1.0), **kwargs)


def test_validation_messages():
    ledger = PrivacyLedger()
    with pytest.raises(TypeError, match="PrivacyGuarantee"):
        ledger.record("gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delta"):
        ledger.epsilon(0.0)
    with pytest.raises(ValueError, match="method"):
        ledger.epsilon(1e-5, method="prv")
    with pytest.raises(ValueError, match="noise_multiplier"):
        gaussian_guarantee(0.0)
    with pytest.raises(ValueError, match="orders"):
        PrivacyLedger(orders=[0.5, 2.0])
    with pytest.raises(ValueError, match="sum to 1"):
        pmf_guarantee(np.array([0.5, 0.6]), np.array([0.5, 0.5]), name="bad")
    with pytest.raises(ValueError, match="delta"):
        pld_epsilon([(gaussian_guarantee(1.0), 1.0, 1)], 2.0)
