"""Constructors of :class:`~privfl.core.PrivacyGuarantee` for the common families.

Mechanisms build their ``guarantee()`` with these, and so can users and other privfl modules
(e.g. the local-DP frequency oracles) that want their releases in a :class:`PrivacyLedger`:

- :func:`gaussian_guarantee` — one Gaussian release with σ / sensitivity = ``noise_multiplier``;
  the ledger applies Poisson subsampling to it exactly (Opacus RDP, dp-accounting PLD).
- :func:`pmf_guarantee` — a finite-output mechanism given by the exact output distributions of its
  worst neighbouring pair: exact RDP on any order grid, exact pure ε, exact PLD.
- :func:`pure_guarantee` — any ε-DP (e.g. ε-LDP) release. Its pair is binary randomized response at
  ε, which dominates every ε-DP mechanism (Kairouz, Oh, Viswanath, ICML 2015), so the PLD and RDP
  computed from it are valid (and tight for the worst ε-DP mechanism).
- :func:`randomized_response_guarantee` — k-ary randomized response (GRR) at ε, exact pair
  ``P = (p, q, …, q)``, ``Q = (q, p, q, …)`` with p = e^ε/(e^ε + k − 1).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from privfl.accounting.analysis import check_pmf_pair, gaussian_rdp, pmf_pure_epsilon, pmf_rdp
from privfl.core import PrivacyGuarantee
from privfl.params import POSITIVE, Int

__all__ = ["gaussian_guarantee", "pmf_guarantee", "pure_guarantee", "randomized_response_guarantee"]


def gaussian_guarantee(
    noise_multiplier: float, *, name: str = "gaussian", unit: str = "client", notes: str = "", **extra
) -> PrivacyGuarantee:
    """One Gaussian release whose noise std is ``noise_multiplier`` × its ℓ2 sensitivity."""
    POSITIVE.check("noise_multiplier", noise_multiplier)
    z = float(noise_multiplier)
    return PrivacyGuarantee(
        name=name,
        rdp_curve=functools.partial(gaussian_rdp, z),
        noise_multiplier=z,
        unit=unit,
        notes=notes,
        extra=dict(extra),
    )


def pmf_guarantee(
    P: np.ndarray, Q: np.ndarray, /, *, name: str, unit: str = "client", notes: str = "", **extra
) -> PrivacyGuarantee:
    """A finite-output release given by the output pmfs ``(P, Q)`` of its worst neighbouring pair."""
    P, Q = check_pmf_pair((P, Q))
    pair = (P.copy(), Q.copy())
    return PrivacyGuarantee(
        name=name,
        rdp_curve=functools.partial(pmf_rdp, pair),
        epsilon_pure=pmf_pure_epsilon(pair),
        pmf_pair=pair,
        unit=unit,
        notes=notes,
        extra=dict(extra),
    )


def _rr_pair(epsilon: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    # p = e^ε/(e^ε + k − 1), computed stably for large ε.
    p_true = 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))
    p_other = (1.0 - p_true) / (k - 1)
    P = np.full(k, p_other)
    Q = np.full(k, p_other)
    P[0], Q[1] = p_true, p_true
    return P, Q


def randomized_response_guarantee(
    epsilon: float, k: int = 2, *, name: str = "randomized-response", unit: str = "user", notes: str = "", **extra
) -> PrivacyGuarantee:
    """k-ary randomized response (GRR / k-RR) at ε: report the true category with probability
    e^ε/(e^ε + k − 1), each other one with probability 1/(e^ε + k − 1)."""
    POSITIVE.check("epsilon", epsilon)
    k = int(Int(2, None).check("k", k))
    P, Q = _rr_pair(float(epsilon), k)
    g = pmf_guarantee(P, Q, name=name, unit=unit, notes=notes, **extra)
    # the exact pure ε is ε itself; keep the caller's value rather than its floating-point recomputation
    return dataclasses.replace(g, epsilon_pure=float(epsilon))


def pure_guarantee(
    epsilon: float, *, name: str = "pure-dp", unit: str = "user", notes: str = "", **extra
) -> PrivacyGuarantee:
    """Any ε-DP release (e.g. an ε-LDP report), accounted through the binary randomized-response
    pair at ε — the dominating pair of every ε-DP mechanism (Kairouz, Oh, Viswanath 2015)."""
    return randomized_response_guarantee(epsilon, 2, name=name, unit=unit, notes=notes, **extra)
