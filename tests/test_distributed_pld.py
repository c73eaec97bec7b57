"""Exact PLD of the PBM and RQM sums under secure aggregation (PrivacyProfile, connect-the-dots).

The worst-case privacy profile δ(ε) = sup over vertex pairs of the hockey-stick divergence is checked
against a direct, independent evaluation Σ_o max(P − e^ε Q, 0) over every ordered vertex pair; the
composed PLD ε is checked to be at least the exact composed ε of each candidate worst pair (validity:
it must dominate every pair) and at most the RDP-converted ε (it is the tighter accountant).
Deterministic: no randomness.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from privfl.accounting import distributed as dd
from privfl.accounting.analysis import DEFAULT_ORDERS, rdp_to_epsilon
from privfl.accounting.pld import pld_epsilon
from privfl.mechanisms.pbm import PBM
from privfl.mechanisms.rqm import RQM


def _hockey(p: np.ndarray, q: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return np.maximum(p[None, :] - np.exp(eps)[:, None] * q[None, :], 0.0).sum(axis=1)


def _pbm_pairs(n: int, m: int, theta: float):
    lp = dd._pbm_vertex_logpmfs(n, m, theta)
    big_n = n * m
    for h in range(big_n + 1):
        for g in range(1, m + 1):
            if h + g <= big_n:
                yield np.exp(lp[h]), np.exp(lp[h + g])
                yield np.exp(lp[h + g]), np.exp(lp[h])


def test_pbm_profile_is_the_sup_over_vertex_pairs():
    n, m, theta = 3, 2, 0.2
    prof = dd.pbm_sum_profile(n=n, m=m, theta=theta)
    eps = np.linspace(-prof.epsilon_pure, prof.epsilon_pure, 41)
    eps = np.rint(eps / prof.STEP) * prof.STEP
    direct = np.max([_hockey(p, q, eps) for p, q in _pbm_pairs(n, m, theta)], axis=0)
    np.testing.assert_allclose(prof(eps), direct, rtol=1e-10, atol=1e-15)
    # no single pair attains the sup everywhere (why a profile, not a pmf pair): the argmax moves
    per_pair = np.array([_hockey(p, q, eps) for p, q in _pbm_pairs(n, m, theta)])
    assert len(set(np.argmax(per_pair[:, eps > 0.05], axis=0).tolist())) > 1


def _pair_epsilon(p: np.ndarray, q: np.ndarray, k: int, delta: float) -> float:
    lg = lambda a: {i: float(v) for i, v in enumerate(np.log(a)) if a[i] > 0}  # noqa: E731
    pld = pld_lib.from_two_probability_mass_functions(lg(q), lg(p), value_discretization_interval=1e-4)
    return float(pld.self_compose(k).get_epsilon_for_delta(delta))


@pytest.mark.parametrize("mech", [PBM(c=1.0, m=4, theta=0.05), RQM(c=1.0, delta=4.0, m=5, q=0.5)],
                         ids=["pbm", "rqm"])
def test_sum_pld_is_valid_and_tighter_than_rdp(mech):
    n, k, delta = 6, 40, 1e-5
    g = mech.sum_guarantee(n)
    assert g.extra.get("privacy_profile") is not None
    e_pld = pld_epsilon([(g, 1.0, k)], delta)
    e_rdp = rdp_to_epsilon(DEFAULT_ORDERS, k * g.rdp(DEFAULT_ORDERS), delta)[0]
    assert e_pld < e_rdp  # the exact profile beats the RDP conversion
    assert e_pld < k * g.epsilon_pure  # and the pure-ε composition the PLD fell back to before
    # valid: at least the exact composed ε of the pairs that are worst at some order
    if isinstance(mech, PBM):
        pairs = list(_pbm_pairs(n, mech.m, mech.theta))
    else:
        verts = dd.rqm_vertices(mech)
        pairs = []
        for rest in itertools.combinations_with_replacement(verts, n - 1):
            for x, y in itertools.permutations(verts, 2):
                pairs.append((dd.rqm_sum_pmf(mech, [x, *rest]), dd.rqm_sum_pmf(mech, [y, *rest])))
    div = np.array([[np.log(np.sum(p ** a * q ** (1 - a))) / (a - 1) for a in (2.0, 16.0)] for p, q in pairs])
    for i in set(np.argmax(div, axis=0).tolist()):
        assert e_pld >= _pair_epsilon(*pairs[i], k, delta) - 1e-3


def test_profile_rejects_intervals_off_its_grid():
    prof = dd.pbm_sum_profile(n=2, m=2, theta=0.1)
    assert prof.pld_pmf(3e-4) is not None
    assert prof.pld_pmf(1.5e-4) is None
    with pytest.raises(ValueError, match="epsilon_pure"):
        dd.PrivacyProfile(0.0)
