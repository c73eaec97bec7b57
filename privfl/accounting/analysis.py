"""Pure privacy analysis: functions of a mechanism's parameters, no bookkeeping.

- Rényi DP of the (Poisson-subsampled) Gaussian mechanism: Opacus' analysis functions
  (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism").
- Rényi divergence between two finite output distributions (exact; both directions).
- RDP → (ε, δ): Balle, Barthe, Gaboardi, Hsu, Sato, "Hypothesis Testing Interpretations and Rényi
  Differential Privacy", AISTATS 2020, Theorem 21 (through Opacus' ``get_privacy_spent``):
  ε = min_α [RDP(α) − (ln δ + ln α)/(α − 1) + ln((α − 1)/α)].
- Pure ε under Poisson subsampling: ln(1 + q(e^ε − 1)) (add/remove neighbours).

The ledger (:mod:`privfl.accounting.ledger`) only records and composes; everything numeric is here
and in :mod:`privfl.accounting.pld`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants.analysis import rdp as _opacus_rdp
from scipy.special import logsumexp

__all__ = [
    "DEFAULT_ORDERS",
    "check_orders",
    "check_delta",
    "check_probability",
    "gaussian_rdp",
    "subsampled_gaussian_rdp",
    "pmf_rdp",
    "pmf_pure_epsilon",
    "check_pmf_pair",
    "subsampled_pure_epsilon",
    "rdp_to_epsilon",
    "gaussian_epsilon_rdp",
]

#: Opacus' default orders (RDPAccountant.DEFAULT_ALPHAS) extended to large orders, which
#: nearly-pure mechanisms (RQM, randomized response) and large compositions need.
DEFAULT_ORDERS: np.ndarray = np.array(
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 2048, 4096],
    dtype=np.float64,
)


def check_orders(orders: Sequence[float] | np.ndarray) -> np.ndarray:
    """Orders as a float64 1-d array of values > 1 (``ValueError`` otherwise)."""
    arr = np.asarray(orders, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 1):
        raise ValueError(f"orders must be a non-empty 1-d array of finite values > 1, got {orders!r}")
    return arr


def check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < float(delta) < 1.0):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def check_probability(value: float, name: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    lo_ok = ok and (value >= 0.0 if allow_zero else value > 0.0)
    if not (lo_ok and value <= 1.0):
        allowed = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    return float(value)


def _check_sigma(noise_multiplier: float) -> float:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) or not (
        noise_multiplier > 0 and math.isfinite(noise_multiplier)
    ):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    return float(noise_multiplier)


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] | np.ndarray) -> np.ndarray:
    """RDP of one Gaussian release with σ/sensitivity = ``noise_multiplier``: α / (2σ²)."""
    z = _check_sigma(noise_multiplier)
    return check_orders(orders) / (2.0 * z * z)


def subsampled_gaussian_rdp(
    sampling_rate: float, noise_multiplier: float, orders: Sequence[float] | np.ndarray
) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian release (Opacus' ``compute_rdp`` with one step)."""
    q = check_probability(sampling_rate, "sampling_rate")
    z = _check_sigma(noise_multiplier)
    orders = check_orders(orders)
    if q == 1.0:
        return orders / (2.0 * z * z)
    return np.asarray(_opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(orders)), dtype=float)


def check_pmf_pair(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two pmfs on the same finite support: non-negative, same shape, each summing to 1 (±1e-9)."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"pmf_pair must be a pair (P, Q) of probability vectors, got {type(pair).__name__}")
    p, q = (np.asarray(a, dtype=np.float64).reshape(-1) for a in pair)
    if p.shape != q.shape or p.size == 0:
        raise ValueError(f"pmf_pair: P and Q must have the same non-empty shape, got {p.shape} and {q.shape}")
    for name, a in (("P", p), ("Q", q)):
        if not np.all(np.isfinite(a)) or np.any(a < 0) or abs(a.sum() - 1.0) > 1e-9:
            raise ValueError(f"pmf_pair: {name} must be non-negative and sum to 1, got sum {a.sum()!r}")
    return p, q


def _renyi(p: np.ndarray, q: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """D_α(P‖Q) = 1/(α−1) · ln Σ_o P(o)^α Q(o)^(1−α), in log space; ∞ where P ≪ Q fails."""
    support = p > 0
    if np.any(q[support] == 0):
        return np.full(orders.shape, np.inf)
    lp, lq = np.log(p[support]), np.log(q[support])
    terms = orders[:, None] * lp[None, :] + (1.0 - orders[:, None]) * lq[None, :]
    return np.maximum(logsumexp(terms, axis=1) / (orders - 1.0), 0.0)


def pmf_rdp(pair: tuple[np.ndarray, np.ndarray], orders: Sequence[float] | np.ndarray) -> np.ndarray:
    """Exact RDP of a finite-output mechanism from its worst pair: max(D_α(P‖Q), D_α(Q‖P))."""
    p, q = check_pmf_pair(pair)
    orders = check_orders(orders)
    return np.maximum(_renyi(p, q, orders), _renyi(q, p, orders))


def pmf_pure_epsilon(pair: tuple[np.ndarray, np.ndarray]) -> float:
    """max_o |ln P(o) − ln Q(o)| over outcomes either distribution can produce (∞ if one cannot)."""
    p, q = check_pmf_pair(pair)
    either = (p > 0) | (q > 0)
    if np.any((p[either] == 0) | (q[either] == 0)):
        return math.inf
    return float(np.max(np.abs(np.log(p[either]) - np.log(q[either]))))


def subsampled_pure_epsilon(epsilon: float, sampling_rate: float) -> float:
    """Amplification of pure ε-DP by Poisson subsampling at rate q: ln(1 + q(e^ε − 1))."""
    q = check_probability(sampling_rate, "sampling_rate")
    if math.isinf(epsilon) or q == 1.0:
        return float(epsilon)
    return float(math.log1p(q * math.expm1(epsilon)))


def rdp_to_epsilon(
    orders: Sequence[float] | np.ndarray, rdp: Sequence[float] | np.ndarray, delta: float
) -> tuple[float, float]:
    """(ε, best order) from an RDP curve at ``delta`` (Balle et al. 2020, Thm 21; Opacus)."""
    orders = check_orders(orders)
    rdp = np.asarray(rdp, dtype=np.float64)
    delta = check_delta(delta)
    if rdp.shape != orders.shape:
        raise ValueError(f"rdp must have one value per order: got shape {rdp.shape} for {orders.shape[0]} orders")
    if not np.any(np.isfinite(rdp)):
        return math.inf, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": we report ε anyway
        eps, order = _opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(max(eps, 0.0)), float(order)


def gaussian_epsilon_rdp(
    *, sampling_rate: float, noise_multiplier: float, steps: int, delta: float,
    orders: Sequence[float] | np.ndarray = DEFAULT_ORDERS,
) -> float:
    """ε(δ) of ``steps`` Poisson-subsampled Gaussian releases by RDP (what Opacus' RDPAccountant reports)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    rdp = steps * subsampled_gaussian_rdp(sampling_rate, noise_multiplier, orders)
    return rdp_to_epsilon(orders, rdp, delta)[0]
