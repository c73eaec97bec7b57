"""Reusable checks for privacy mechanisms and their accounting (public: run them on your own mechanism).

Each check returns a small result object with the figures it computed and raises ``AssertionError``
with a readable message when the property fails:

- :func:`check_unbiased` — ``estimate(privatize(x))`` is unbiased for the (clipped) input, by a
  two-sided z-test per coordinate with a Bonferroni correction: a correct mechanism fails with
  probability at most ``alpha`` (the stated error rate).
- :func:`check_rdp` — the RDP curve is non-decreasing in the order (true of every Rényi
  divergence) and never above the pure ε.
- :func:`check_epsilon_monotone` — ε(δ) grows with the number of rounds and with the sampling rate
  (for a family of guarantees indexed by the noise, ε decreases as the noise grows:
  :func:`check_epsilon_decreasing_in_noise`).
- :func:`check_rdp_dominates_pld` — the RDP-converted ε is at least the PLD ε (the PLD is the
  tight one; the conversion can only lose), up to the PLD's discretization ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor

from privfl.accounting.analysis import DEFAULT_ORDERS, rdp_to_epsilon
from privfl.accounting.ledger import PrivacyLedger
from privfl.core import Mechanism, PrivacyGuarantee

__all__ = [
    "UnbiasedResult",
    "check_unbiased",
    "RDPResult",
    "check_rdp",
    "MonotoneResult",
    "check_epsilon_monotone",
    "check_epsilon_decreasing_in_noise",
    "check_rdp_dominates_pld",
    "epsilon_after",
]


@dataclass
class UnbiasedResult:
    max_abs_z: float
    threshold: float
    trials: int
    alpha: float
    mean: Tensor


def check_unbiased(
    mechanism: Mechanism,
    x: Tensor,
    *,
    trials: int = 2000,
    alpha: float = 1e-3,
    target: Tensor | None = None,
    seed: int = 0,
) -> UnbiasedResult:
    """``decode(privatize(x))`` averages to ``target`` (default ``x``) over ``trials`` independent draws.

    ``x`` is one input row ``[d]``; it is privatized ``trials`` times as the rows of one ``[trials, d]``
    matrix (rows are randomized independently by contract). For every coordinate the z-statistic
    (mean − target)/(s/√trials) is compared with the Bonferroni threshold Φ⁻¹(1 − alpha/(2d)); a correct
    mechanism fails with probability ≤ alpha (asymptotically; use trials ≥ 1000). Coordinates
    whose sample variance is 0 must match the target exactly.
    """
    if x.dim() != 1:
        raise ValueError(f"x must be one input row of shape [d], got shape {tuple(x.shape)}")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    target = x if target is None else target
    rows = x.unsqueeze(0).expand(trials, -1).contiguous()
    g = torch.Generator(device=x.device).manual_seed(seed)
    out = mechanism.decode(mechanism.privatize(rows, generator=g)).to(torch.float64)
    mean = out.mean(dim=0)
    sd = out.std(dim=0)
    diff = mean - target.to(torch.float64)
    threshold = float(norm.ppf(1 - alpha / (2 * x.numel())))
    zero = sd == 0
    if bool((zero & (diff.abs() > 1e-9)).any()):
        bad = torch.nonzero(zero & (diff.abs() > 1e-9)).flatten()[:5].tolist()
        raise AssertionError(f"{mechanism.name}: deterministic coordinates {bad} differ from the target")
    z = torch.where(zero, torch.zeros_like(diff), diff / (sd.clamp_min(1e-300) / math.sqrt(trials)))
    max_z = float(z.abs().max()) if z.numel() else 0.0
    if max_z > threshold:
        i = int(z.abs().argmax())
        raise AssertionError(
            f"{mechanism.name} looks biased: coordinate {i} mean {float(mean[i]):.6g} vs target "
            f"{float(target[i]):.6g} (|z| = {max_z:.2f} > {threshold:.2f}, family-wise error rate {alpha})"
        )
    return UnbiasedResult(max_z, threshold, trials, alpha, mean)


@dataclass
class RDPResult:
    orders: np.ndarray
    rdp: np.ndarray
    epsilon_pure: float


def check_rdp(guarantee: PrivacyGuarantee | Mechanism, orders: Sequence[float] | np.ndarray = DEFAULT_ORDERS,
              *, rtol: float = 1e-9) -> RDPResult:
    """The RDP curve is ≥ 0, non-decreasing in the order and ≤ the pure ε (within ``rtol``)."""
    g = guarantee.guarantee() if isinstance(guarantee, Mechanism) else guarantee
    orders = np.sort(np.asarray(orders, dtype=np.float64))
    rdp = g.rdp(orders)
    if np.any(rdp < -1e-12):
        raise AssertionError(f"{g.name}: negative RDP {rdp.min()!r}")
    finite = np.isfinite(rdp)
    steps = np.diff(rdp[finite])
    if np.any(steps < -rtol * np.maximum(1.0, np.abs(rdp[finite][1:]))):
        i = int(np.argmin(steps))
        raise AssertionError(f"{g.name}: RDP decreases between orders {orders[finite][i]} and {orders[finite][i + 1]}")
    if math.isfinite(g.epsilon_pure) and np.any(rdp > g.epsilon_pure * (1 + rtol) + 1e-12):
        raise AssertionError(f"{g.name}: RDP {rdp.max()} exceeds the pure ε {g.epsilon_pure}")
    return RDPResult(orders, rdp, g.epsilon_pure)


def epsilon_after(
    guarantee: PrivacyGuarantee, rounds: int, *, sampling_rate: float = 1.0, delta: float = 1e-5,
    method: str = "rdp", central: bool = True,
) -> float:
    """ε(δ) after ``rounds`` releases of ``guarantee`` (central at ``sampling_rate``, or local for one client)."""
    ledger = PrivacyLedger()
    ledger.record(guarantee, sampling_rate=sampling_rate, count=rounds, clients=None if central else [0])
    return ledger.epsilon(delta, method=method)


@dataclass
class MonotoneResult:
    values: list[float]
    epsilons: list[float]


def _nondecreasing(eps: list[float], tol: float) -> bool:
    return all(b >= a - tol * max(1.0, abs(a)) for a, b in zip(eps, eps[1:]))


def check_epsilon_monotone(
    guarantee: PrivacyGuarantee,
    *,
    rounds: Sequence[int] = (1, 2, 5, 10, 50),
    sampling_rates: Sequence[float] = (1.0,),
    delta: float = 1e-5,
    method: str = "rdp",
    tol: float = 1e-6,
) -> MonotoneResult:
    """ε(δ) is non-decreasing in the number of rounds (at every sampling rate) and in the sampling
    rate (at every number of rounds). Sampling amplification applies where the ledger applies it."""
    rates = sorted(sampling_rates)
    grid = []
    for q in rates:
        if method == "rdp":  # one RDP curve per rate, scaled by the number of rounds (RDP composes linearly)
            ledger = PrivacyLedger()
            ledger.record(guarantee, sampling_rate=q)
            curve, pure = ledger.rdp(), ledger.pure_epsilon()
            grid.append([min(rdp_to_epsilon(ledger.orders, r * curve, delta)[0], r * pure) for r in sorted(rounds)])
        else:
            grid.append([epsilon_after(guarantee, r, sampling_rate=q, delta=delta, method=method)
                         for r in sorted(rounds)])
    for q, row in zip(rates, grid):
        if not _nondecreasing(row, tol):
            raise AssertionError(f"{guarantee.name}: ε not monotone in rounds at sampling rate {q}: {row}")
    for j, r in enumerate(sorted(rounds)):
        col = [grid[i][j] for i in range(len(rates))]
        if not _nondecreasing(col, tol):
            raise AssertionError(f"{guarantee.name}: ε not monotone in the sampling rate after {r} rounds: {col}")
    return MonotoneResult(list(rates), [e for row in grid for e in row])


def check_epsilon_decreasing_in_noise(
    make_guarantee: Callable[[float], PrivacyGuarantee],
    noises: Sequence[float],
    *,
    rounds: int = 10,
    sampling_rate: float = 1.0,
    delta: float = 1e-5,
    method: str = "rdp",
    tol: float = 1e-6,
) -> MonotoneResult:
    """ε(δ) after ``rounds`` is non-increasing as the noise parameter grows (``make_guarantee(noise)``)."""
    xs = sorted(noises)
    eps = [epsilon_after(make_guarantee(v), rounds, sampling_rate=sampling_rate, delta=delta, method=method)
           for v in xs]
    if not all(b <= a + tol * max(1.0, abs(a)) for a, b in zip(eps, eps[1:])):
        raise AssertionError(f"ε does not decrease with the noise: noises {xs} → ε {eps}")
    return MonotoneResult(xs, eps)


def check_rdp_dominates_pld(
    guarantee: PrivacyGuarantee,
    *,
    rounds: int = 10,
    sampling_rate: float = 1.0,
    delta: float = 1e-5,
    tol: float = 1e-3,
) -> tuple[float, float]:
    """ε by RDP conversion ≥ ε by PLD − ``tol``·max(1, ε) (returns both)."""
    e_rdp = epsilon_after(guarantee, rounds, sampling_rate=sampling_rate, delta=delta, method="rdp")
    e_pld = epsilon_after(guarantee, rounds, sampling_rate=sampling_rate, delta=delta, method="pld")
    if e_rdp < e_pld - tol * max(1.0, e_pld):
        raise AssertionError(f"{guarantee.name}: RDP-converted ε {e_rdp} < PLD ε {e_pld} after {rounds} rounds "
                             f"at sampling rate {sampling_rate}")
    return e_rdp, e_pld
