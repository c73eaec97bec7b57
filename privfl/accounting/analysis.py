"""Pure privacy analysis: functions of a mechanism's parameters, no bookkeeping.

- Rényi DP of the (Poisson-subsampled) Gaussian mechanism (Mironov, Talwar, Zhang 2019, "Rényi
  Differential Privacy of the Sampled Gaussian Mechanism", §3.3): Opacus' series, term for term and
  in the same order, with the terms vectorised (each integer order's binomial sum is one ``logaddexp``
  reduction; a fractional order's series terms are formed in blocks, then accumulated as Opacus
  does) and cached per ``(q, σ, orders)``; equal to Opacus' ``compute_rdp`` (bitwise on the machine it
  was developed on; tested to 1e-12 relative). Where
  ``scipy.special.binom`` overflows (integer orders past ~1029, where Opacus returns NaN) the log
  coefficients come from log-gamma instead.
- Rényi divergence between two finite output distributions (exact; both directions).
- RDP → (ε, δ): Balle, Barthe, Gaboardi, Hsu, Sato, "Hypothesis Testing Interpretations and Rényi
  Differential Privacy", AISTATS 2020, Theorem 21 (through Opacus' ``get_privacy_spent``):
  ε = min_α [RDP(α) − (ln δ + ln α)/(α − 1) + ln((α − 1)/α)].
- Pure ε under Poisson subsampling: ln(1 + q(e^ε − 1)) (add/remove neighbours).

The ledger (:mod:`privfl.accounting.ledger`) only records and composes; everything numeric is here
and in :mod:`privfl.accounting.pld`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants.analysis import rdp as _opacus_rdp
from scipy import special
from scipy.special import logsumexp

from privfl.params import POSITIVE, Int, Real, check_delta

__all__ = [
    "DEFAULT_ORDERS",
    "check_orders",
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


#: a Poisson sampling rate q in (0, 1]
SAMPLING_RATE = Real(0, 1, lo_open=True)


def check_orders(orders: Sequence[float] | np.ndarray) -> np.ndarray:
    """Orders as a float64 1-d array of values > 1 (``ValueError`` otherwise)."""
    arr = np.asarray(orders, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 1):
        raise ValueError(f"orders must be a non-empty 1-d array of finite values > 1, got {orders!r}")
    return arr


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] | np.ndarray) -> np.ndarray:
    """RDP of one Gaussian release with σ/sensitivity = ``noise_multiplier``: α / (2σ²)."""
    z = float(POSITIVE.check("noise_multiplier", noise_multiplier))
    return check_orders(orders) / (2.0 * z * z)


def subsampled_gaussian_rdp(
    sampling_rate: float, noise_multiplier: float, orders: Sequence[float] | np.ndarray
) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian release (Mironov et al. 2019; Opacus' ``compute_rdp`` with
    one step, vectorised over the orders and cached per ``(q, σ, orders)``)."""
    q = float(SAMPLING_RATE.check("sampling_rate", sampling_rate))
    z = float(POSITIVE.check("noise_multiplier", noise_multiplier))
    orders = check_orders(orders)
    if q == 1.0:
        return orders / (2.0 * z * z)
    return _sgm_rdp(q, z, orders.tobytes()).copy()


@functools.lru_cache(maxsize=256)
def _sgm_rdp(q: float, sigma: float, orders_bytes: bytes) -> np.ndarray:
    orders = np.frombuffer(orders_bytes, dtype=np.float64)
    out = np.empty(orders.shape)
    integer = orders == np.floor(orders)
    for k in np.nonzero(integer)[0]:
        out[k] = _log_a_int(q, sigma, int(orders[k])) / (orders[k] - 1)
    for k in np.nonzero(~integer)[0]:
        out[k] = _log_a_frac(q, sigma, float(orders[k])) / (orders[k] - 1)
    return out


@functools.lru_cache(maxsize=512)
def _log_binom(alpha: int) -> np.ndarray:
    """``ln C(α, i)``, i = 0..α: ``math.log`` of ``scipy.special.binom`` (Opacus' arithmetic); log-gamma
    where the coefficient overflows float64."""
    i = np.arange(alpha + 1)
    b = special.binom(alpha, i)
    out = np.array([math.log(x) if math.isfinite(x) else math.nan for x in b.tolist()])
    over = ~np.isfinite(b)
    if over.any():
        io = i[over] + 1.0
        out[over] = special.gammaln(alpha + 1.0) - special.gammaln(io) - special.gammaln(alpha + 2.0 - io)
    return out


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """``ln A_α`` for integer α: ``ln Σ_i C(α, i) q^i (1−q)^(α−i) exp((i² − i)/(2σ²))``, the terms formed as
    Opacus forms them and added left to right in log space (``logaddexp.reduce``: ``max + log1p(exp(min −
    max))``, Opacus' ``_log_add``)."""
    i = np.arange(alpha + 1)
    log_coef = _log_binom(alpha) + i * math.log(q) + (alpha - i) * math.log(1 - q)
    s = log_coef + (i * i - i) / (2 * (sigma**2))
    return float(np.logaddexp.reduce(s))


def _frac_terms(q: float, sigma: float, alpha: float, i: np.ndarray) -> tuple[list, list, list]:
    """Opacus' terms ``i`` of the two series for a fractional order, vectorised over ``i`` (the same
    operations in the same order as its scalar loop): ``(log_s0, log_s1, coefficient > 0)``."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    coef = special.binom(alpha, i)
    log_coef = np.log(np.abs(coef))
    j = alpha - i
    log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
    log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
    log_e0 = math.log(0.5) + (math.log(2) + special.log_ndtr(-((i - z0) / (math.sqrt(2) * sigma)) * 2**0.5))
    log_e1 = math.log(0.5) + (math.log(2) + special.log_ndtr(-((z0 - j) / (math.sqrt(2) * sigma)) * 2**0.5))
    log_s0 = log_t0 + (i * i - i) / (2 * (sigma**2)) + log_e0
    log_s1 = log_t1 + (j * j - j) / (2 * (sigma**2)) + log_e1
    return log_s0.tolist(), log_s1.tolist(), (coef > 0).tolist()


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """``ln A_α`` for a fractional order (Mironov et al. 2019, §3.3: two series ``a₀``, ``a₁``). The terms
    are formed in blocks of ``i`` at once; they are then added (subtracted, for negative coefficients) in
    log space one by one with Opacus' own ``_log_add``/``_log_sub``, stopping after the first term with
    both log-terms below −30 (Opacus' rule): exactly Opacus' terms, in Opacus' order."""
    log_a0 = log_a1 = -math.inf
    start, block = 0, 32
    while True:
        i = np.arange(start, start + block)
        for s0, s1, positive in zip(*_frac_terms(q, sigma, alpha, i)):
            if positive:
                log_a0, log_a1 = _opacus_rdp._log_add(log_a0, s0), _opacus_rdp._log_add(log_a1, s1)
            else:
                log_a0, log_a1 = _opacus_rdp._log_sub(log_a0, s0), _opacus_rdp._log_sub(log_a1, s1)
            if max(s0, s1) < -30:
                return _opacus_rdp._log_add(log_a0, log_a1)
        start, block = start + block, 2 * block


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
    q = float(SAMPLING_RATE.check("sampling_rate", sampling_rate))
    if math.isinf(epsilon) or q == 1.0:
        return float(epsilon)
    return float(math.log1p(q * math.expm1(epsilon)))


def rdp_to_epsilon(
    orders: Sequence[float] | np.ndarray, rdp: Sequence[float] | np.ndarray, delta: float
) -> tuple[float, float]:
    """(ε, best order) from an RDP curve at ``delta`` (Balle et al. 2020, Thm 21; Opacus)."""
    orders = check_orders(orders)
    rdp = np.asarray(rdp, dtype=np.float64)
    delta = check_delta(delta, positive=True)
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
    Int(0, None).check("steps", steps)
    rdp = steps * subsampled_gaussian_rdp(sampling_rate, noise_multiplier, orders)
    return rdp_to_epsilon(orders, rdp, delta)[0]
