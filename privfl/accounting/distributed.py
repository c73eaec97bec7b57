r"""Distributed DP under secure aggregation: the privacy of one client's report *inside the sum*.

Under secure aggregation (Bonawitz et al., CCS 2017) the server learns only Σ_i y_i of the n
participants' reports. The privacy of client 1 then comes from its own randomness *and* that of the
other honest participants: the neighbouring pair is (y_1(x) + R, y_1(x') + R) with R = Σ_{i≥2} y_i the
others' independent reports. By the data-processing inequality this is never worse than the local
guarantee of y_1 alone, and for n > 1 it is usually much better. Neighbouring throughout this module:
**replace one client's input** by any other of the input domain (the participants are public under
secure aggregation, so "add/remove" would change the visible n). Everything here is a pure function
of the mechanism's parameters (no bookkeeping); mechanisms build their ``sum_guarantee(n)`` with it.

**Distributed discrete Gaussian (DDG)** — Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021 (arXiv 2102.06387). In the
integer (scaled, rotated, rounded) domain each of n clients adds N_Z(0, σ²); with ℓ2 / ℓ1 sensitivities
Δ2, Δ1 of the integer vectors (dimension d), τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1)) and the
aggregate std √n σ, the sum is (α, ε(α))-RDP with (the paper's Proposition 14 / Eq. 17, as in the
authors' ``distributed_dp/accounting_utils.py``)

    ε(α) = min{ α Δ2²/(2nσ²) + τ d,  α/2 (Δ2²/(nσ²) + 2 Δ1 τ/(√n σ) + τ² d),  α/2 (Δ2/(√n σ) + √d τ)² }.

Conditional randomized rounding with parameter β (the paper's Theorem 1 / Proposition 22) bounds the
rounded norm by min(Δ + √d, √(Δ² + d/4 + √(2 ln(1/β)) (Δ + √d/2))), and Δ1 ≤ Δ2 · min(√d, Δ2).

**Skellam** — Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021 (arXiv 2110.04995). Each client adds Sk(μ/n) (difference of two Poisson(μ/2n));
the sum carries Sk(μ) and is (α, ε(α))-RDP with (integer-domain sensitivities Δ1, Δ2)

    ε(α) = α Δ2²/(2μ) + min{ ((2α − 1) Δ2² + 6 Δ1)/(4μ²),  3 Δ1/(2μ) }.

Both papers also apply modular clipping (sums mod 2^bits); wrap-around is post-processing of the
privatized sum and does not change these guarantees (it costs accuracy, not privacy).

**PBM** — Chen, Özgür, Kairouz, "The Poisson Binomial Mechanism for Unbiased Federated Learning with
Secure Aggregation", ICML 2022. Client i sends Binomial(m, p_i), p_i = 1/2 + θ x_i/c ∈ [1/2−θ, 1/2+θ];
the sum is a Poisson binomial. The paper bounds its Rényi divergence in closed form (its Theorem on
the Rényi divergence of two Poisson binomials); privfl computes the **exact worst case** instead:

*Proposition (worst case over the others' inputs).* Write the sum as N = n·m independent Bernoullis
whose success probabilities lie in [lo, hi] = [1/2−θ, 1/2+θ]. Relax the constraint that a client's m
Bernoullis share one probability: each may take any value in [lo, hi]. For α > 1, (P, Q) ↦
Σ_o P(o)^α Q(o)^{1−α} is jointly convex, and the pair of output pmfs is affine in each single
Bernoulli's probability (the others' Bernoullis enter P and Q identically), so the supremum over the
relaxed box is attained at a vertex: every Bernoulli at lo or hi. By exchangeability a vertex is
described by the number h of Bernoullis at hi, giving PB(h) = Bin(h, hi) ∗ Bin(N−h, lo); client 1
moves at most its m Bernoullis, so the worst pair is max over |a − b| ≤ m of D_α(PB(a) ‖ PB(b)) —
an upper bound for the actual mechanism (its configurations are a subset of the relaxed box), and
exact at the vertices. The same argument applies to the hockey-stick divergence and to the pure ε
(a ratio of affine functions is monotone on an interval). :func:`pbm_sum_rdp` computes it.

**RQM** — Youn, Hu, Ziani, Abernethy 2023. One client's per-coordinate pmf over the m level indices
is exact (:meth:`~privfl.mechanisms.rqm.RQM.output_pmf`); the sum of n clients' indices is the
convolution of their pmfs (support 0..n(m−1)). :func:`rqm_sum_pmf` computes it exactly by direct
convolution of non-negative vectors — relative accuracy even in the tails, which decide high-order
Rényi divergences and the pure ε; an FFT (absolute error ~1e-16 of the peak) would erase the tail
probabilities that matter here. :func:`rqm_sum_rdp` is the exact RDP for **stated** inputs of the other
clients. *Worst case.* RQM's pmf is affine in x on each cell [B(i), B(i+1)] (the laws of the nearest
kept levels do not depend on where x lies in its cell, and the rounding probability is affine in x),
so by the same joint-convexity argument the worst case over the others' inputs (and over the pair
x, x') is attained with every input at a cell end inside [−c, c]: the vertices
V = {−c, c} ∪ {B(i) ∈ (−c, c)}. By exchangeability the others enter only through how many sit at each
vertex: C(n−2+|V|, |V|−1) configurations, enumerated by :func:`rqm_sum_worst_rdp` (a guarantee).

**PLD of the sums.** No single vertex pair is the worst at every ε (for PBM the centred pair is worst
near ε = 0, the pairs at the ends of the range in the tails), so there is no one pmf pair to hand to
the PLD accountant. The hockey-stick divergence is jointly convex too, so the worst-case privacy
profile δ(ε) is the sup over the same vertex pairs; :class:`PrivacyProfile` holds it exactly on a
grid and turns it into a PLD by pessimistic connect-the-dots, which dominates every pair and so
composes validly (``privfl.accounting.pld``). Built lazily (:class:`LazyProfile`): only the PLD
accountant pays for it.

*The PBM paper's closed-form RDP bound* (its theorem on the Rényi divergence of two Poisson
binomials) is not implemented: its statement could not be read from the material reachable when this
was written (abstract pages only), so neither the bound nor how close the exact worst case comes to
it is checked here.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import binom

from privfl.accounting.analysis import check_orders
from privfl.core import InputDomain, Mechanism, check_updates
from privfl.params import COUNT, POSITIVE, Real

__all__ = [
    "rounded_l2_bound",
    "rounded_l1_bound",
    "ddg_tau",
    "ddg_rdp",
    "skellam_rdp",
    "pbm_sum_rdp",
    "pbm_sum_pure_epsilon",
    "pbm_sum_profile",
    "PrivacyProfile",
    "LazyProfile",
    "rqm_sum_pmf",
    "rqm_sum_rdp",
    "rqm_vertices",
    "rqm_sum_worst_rdp",
    "MAX_CONFIGURATIONS",
    "EXACT_GRID",
    "step_up_curve",
    "unit_label",
    "SecureSum",
]

#: Upper limit on enumerated configurations of the others' inputs (RQM worst case).
MAX_CONFIGURATIONS = 200_000


# --------------------------------------------------------------------------------------------
# DDG and Skellam (closed forms)
# --------------------------------------------------------------------------------------------
def rounded_l2_bound(l2: float, *, dim: int, beta: float) -> float:
    """ℓ2 norm bound of an integer vector after conditional randomized rounding of a vector of norm
    ≤ ``l2`` in ``dim`` coordinates (Kairouz et al. 2021, Theorem 1): min(l2 + √d, √(l2² + d/4 +
    √(2 ln(1/β)) (l2 + √d/2))); β = 0 means unconditional rounding (the first term only)."""
    l2 = float(POSITIVE.check("l2", l2))
    dim = int(COUNT.check("dim", dim))
    Real(0, 1, hi_open=True).check("beta", beta)
    bound_1 = l2 + math.sqrt(dim)
    if beta == 0:
        return bound_1
    sq = l2 * l2 + 0.25 * dim + math.sqrt(2.0 * math.log(1.0 / beta)) * (l2 + 0.5 * math.sqrt(dim))
    return min(bound_1, math.sqrt(sq))


def rounded_l1_bound(l2: float, *, dim: int) -> float:
    """ℓ1 bound of an integer vector of ℓ2 norm ≤ ``l2``: l2 · min(√d, l2) (integer coordinates: ℓ1 ≤ ℓ2²)."""
    l2 = float(POSITIVE.check("l2", l2))
    return l2 * min(math.sqrt(int(COUNT.check("dim", dim))), l2)


def ddg_tau(local_sigma: float, n: int) -> float:
    """τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1)): the distance of a sum of n discrete Gaussians
    N_Z(0, σ²) from N_Z(0, nσ²) (Kairouz et al. 2021, Theorem 1); 0 for n = 1."""
    s = float(POSITIVE.check("local_sigma", local_sigma))
    n = int(COUNT.check("n", n))
    k = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * s * s * k / (k + 1.0)).sum())


def ddg_rdp(orders: Sequence[float] | np.ndarray, *, l2: float, l1: float, local_sigma: float, n: int,
            dim: int) -> np.ndarray:
    """RDP of the sum of n clients' integer vectors each carrying N_Z(0, σ²) noise (integer domain:
    ``l2``/``l1`` sensitivities, ``local_sigma`` = σ per client), Kairouz et al. 2021 Prop. 14 / Eq. 17."""
    orders = check_orders(orders)
    l2, l1 = float(POSITIVE.check("l2", l2)), float(POSITIVE.check("l1", l1))
    sigma_total = math.sqrt(int(COUNT.check("n", n))) * float(POSITIVE.check("local_sigma", local_sigma))
    dim = int(COUNT.check("dim", dim))
    tau = ddg_tau(local_sigma, n)
    e2, e1 = l2 / sigma_total, l1 / sigma_total
    term_1 = orders / 2.0 * e2**2 + tau * dim
    term_2 = orders / 2.0 * (e2**2 + 2.0 * e1 * tau + tau**2 * dim)
    term_3 = orders / 2.0 * (e2 + math.sqrt(dim) * tau) ** 2
    return np.minimum(np.minimum(term_1, term_2), term_3)


def skellam_rdp(orders: Sequence[float] | np.ndarray, *, l2: float, l1: float, mu: float) -> np.ndarray:
    """RDP of the Skellam mechanism with aggregate variance ``mu`` (Sk(μ) on the sum; integer-domain
    sensitivities), Agarwal, Kairouz, Liu 2021: α Δ2²/(2μ) + min(((2α−1)Δ2² + 6Δ1)/(4μ²), 3Δ1/(2μ))."""
    a = check_orders(orders)
    l2, l1, mu = float(POSITIVE.check("l2", l2)), float(POSITIVE.check("l1", l1)), float(POSITIVE.check("mu", mu))
    return a * l2 * l2 / (2.0 * mu) + np.minimum(((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * mu * mu),
                                                 3.0 * l1 / (2.0 * mu))


# --------------------------------------------------------------------------------------------
# Exact divergences of finite pmfs (both directions, many pairs at once)
# --------------------------------------------------------------------------------------------
def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.clip(p, 0.0, None))


def _renyi_many(lp: np.ndarray, lq: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """D_α(P_k ‖ Q_k) for rows k of log-pmfs ``lp``, ``lq`` ([K, L]) at every order: [K, orders]."""
    out = np.empty((lp.shape[0], orders.size))
    for j, a in enumerate(orders):
        with np.errstate(invalid="ignore"):
            t = a * lp + (1.0 - a) * lq
        t = np.where(np.isneginf(lp), -np.inf, t)  # outcomes P cannot produce contribute nothing
        bad = np.isfinite(lp) & np.isneginf(lq)  # P ≪ Q fails: D = ∞
        val = logsumexp(t, axis=1) / (a - 1.0)
        out[:, j] = np.where(bad.any(axis=1), np.inf, np.maximum(val, 0.0))
    return out


def _pure_many(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """max_o |ln P_k(o) − ln Q_k(o)| per row (∞ when the supports differ)."""
    either = np.isfinite(lp) | np.isfinite(lq)
    with np.errstate(invalid="ignore"):
        diff = np.abs(lp - lq)
    diff = np.where(either, diff, 0.0)
    diff = np.where(either & (np.isneginf(lp) | np.isneginf(lq)), np.inf, diff)
    return diff.max(axis=1)


# --------------------------------------------------------------------------------------------
# Privacy profiles (exact PLD accounting of the sums)
# --------------------------------------------------------------------------------------------
_BIG = 1e6  # stands in for ±∞ log-ratios; finite log-ratios of float64 pmfs are below 1500


def _hockey_tables(lp: np.ndarray, lq: np.ndarray):
    """Per row k of log-pmfs: the log-ratios L = ln P − ln Q sorted ascending, and the cumulative sums
    of P and Q over outcomes in *descending* L order (leading 0), so that for ln a = t
    H_a(P‖Q) = Σ_{L > t} (P − aQ) = CP[c] − a·CQ[c] with c = #{L > t}."""
    with np.errstate(invalid="ignore"):
        L = lp - lq
    L = np.where(np.isneginf(lp), -_BIG, L)  # P = 0: never in a prefix that matters
    L = np.where(np.isfinite(lp) & np.isneginf(lq), _BIG, L)  # Q = 0 < P: always in
    order = np.argsort(L, axis=1, kind="stable")
    Ls = np.take_along_axis(L, order, axis=1)
    desc = order[:, ::-1]
    P = np.take_along_axis(np.exp(lp), desc, axis=1)
    Q = np.take_along_axis(np.exp(lq), desc, axis=1)
    zero = np.zeros((lp.shape[0], 1))
    cp = np.concatenate([zero, np.cumsum(P, axis=1)], axis=1)
    return Ls, cp, np.concatenate([zero, np.cumsum(Q, axis=1)], axis=1)


def _hockey_at(tables, t: np.ndarray) -> np.ndarray:
    """H_{e^t}(P_k‖Q_k) for every row k at the log-thresholds ``t`` ([K, T], or [T] shared by all rows)."""
    Ls, CP, CQ = tables
    K, N = Ls.shape
    t = np.broadcast_to(np.clip(t, -700.0, 700.0), (K,) + np.shape(t)[-1:])
    count = np.empty(t.shape, dtype=np.int64)
    for k in range(K):  # exact comparisons (an offset trick to batch the rows would round the log-ratios)
        count[k] = N - np.searchsorted(Ls[k], t[k], side="right")  # outcomes with L > t
    rows = np.arange(K)[:, None]
    a = np.exp(t[0]) if t.strides[0] == 0 else np.exp(t)  # thresholds shared by every row: one exp each
    return np.maximum(CP[rows, count] - a * CQ[rows, count], 0.0)


class PrivacyProfile:
    r"""The privacy profile δ(ε) = sup_k H_{e^ε}(P_k‖Q_k) of a family of output-pmf pairs closed under
    swapping P and Q (every neighbouring pair of a mechanism, or a set of pairs that covers them all),
    held exactly on the grid ε = j·:data:`STEP`, |ε| ≤ ``epsilon_pure``; fed batch by batch.

    :meth:`pld_pmf` turns it into a PLD by pessimistic *connect-the-dots* (Doroshenko, Ghazi, Kamath,
    Kumar, Manurangsi, PETS 2022, Algorithm 1): its profile interpolates δ at the grid points linearly
    in e^ε, which bounds every pair's profile from above (each is convex in e^ε), so it dominates every
    pair of the family (Zhu, Dong, Wang, AISTATS 2022) and its self-compositions bound the
    compositions — the exact PLD path for sums where no single pair dominates."""

    STEP = 1e-4

    def __init__(self, epsilon_pure: float) -> None:
        self.epsilon_pure = float(POSITIVE.check("epsilon_pure", epsilon_pure, owner="PrivacyProfile"))
        self.k_max = int(math.ceil(self.epsilon_pure / self.STEP - 1e-9))
        self.t = np.arange(-self.k_max, self.k_max + 1) * self.STEP
        self.delta = np.zeros(self.t.size)

    @property
    def size(self) -> int:
        return self.t.size

    def update(self, lp: np.ndarray, lq: np.ndarray, chunk: int = 256) -> None:
        """Fold in the row pairs of log-pmfs ``lp``, ``lq`` ([K, N]); their log-ratios must lie within
        ±``epsilon_pure`` (as for every pair of the family)."""
        for i in range(0, lp.shape[0], chunk):
            h = _hockey_at(_hockey_tables(lp[i:i + chunk], lq[i:i + chunk]), self.t)
            self.delta = np.maximum(self.delta, h.max(axis=0))

    def __call__(self, eps: np.ndarray) -> np.ndarray:
        """δ(ε) at grid points ε (multiples of STEP): 1 − e^ε below −ε_pure, 0 above ε_pure."""
        j = np.rint(np.asarray(eps, dtype=np.float64) / self.STEP).astype(np.int64)
        inside = np.abs(j) <= self.k_max
        out = np.where(j < 0, -np.expm1(np.asarray(eps, dtype=np.float64)), 0.0)
        out[inside] = self.delta[j[inside] + self.k_max]
        return out

    def pld_pmf(self, interval: float):
        """The connect-the-dots PLD pmf (dp-accounting ``PLDPmf``, one direction — the family is closed
        under swapping, so both are the same) at discretization ``interval``, a multiple of STEP;
        ``None`` for other intervals."""
        from dp_accounting.pld import pld_pmf

        ratio = interval / self.STEP
        r = int(round(ratio))
        if r < 1 or abs(ratio - r) > 1e-9 * max(1.0, ratio):
            return None
        lo, hi = -int(math.ceil(self.k_max / r)), int(math.ceil(self.k_max / r))
        eps = np.arange(lo, hi + 1) * r * self.STEP
        return pld_pmf.create_pmf_pessimistic_connect_dots_fixed_gap(interval, lo, hi, self(eps))


class LazyProfile:
    """A :class:`PrivacyProfile` built on first use by ``build()`` (it costs seconds; only the PLD
    accountant needs it), with the same :meth:`pld_pmf`."""

    def __init__(self, build) -> None:
        self._build, self._profile = build, None

    @property
    def profile(self) -> PrivacyProfile:
        if self._profile is None:
            self._profile = self._build()
        return self._profile

    def pld_pmf(self, interval: float):
        return self.profile.pld_pmf(interval)


# --------------------------------------------------------------------------------------------
# PBM: exact worst case of the sum over the others' inputs
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _pbm_vertex_logpmfs(n: int, m: int, theta: float) -> np.ndarray:
    """Row h: ln pmf of Bin(h, 1/2+θ) ∗ Bin(N−h, 1/2−θ), N = n·m, h = 0..N."""
    big_n = n * m
    hi, lo = 0.5 + theta, 0.5 - theta
    rows = np.empty((big_n + 1, big_n + 1))
    for h in range(big_n + 1):
        rows[h] = np.convolve(binom.pmf(np.arange(h + 1), h, hi), binom.pmf(np.arange(big_n - h + 1), big_n - h, lo))
    return _log(rows)


def _check_pbm(n: int, m: int, theta: float) -> tuple[int, int, float]:
    n, m = int(COUNT.check("n", n)), int(COUNT.check("m", m))
    theta = float(Real(0, 0.25, lo_open=True).check("theta", theta))
    if n * m > 4096:
        raise ValueError(f"n·m = {n * m} Bernoullis: the exact worst case is computed for n·m <= 4096")
    return n, m, theta


def pbm_sum_rdp(orders: Sequence[float] | np.ndarray, *, n: int, m: int, theta: float) -> np.ndarray:
    """Exact worst-case RDP (both directions) of one client's Binomial(m, p) report inside the sum of
    ``n`` PBM reports, over every input of every client (the Proposition in the module docstring):
    max over h and 1 ≤ g ≤ m of D_α(PB(h) ‖ PB(h ± g))."""
    orders = check_orders(orders)
    n, m, theta = _check_pbm(n, m, theta)
    lp = _pbm_vertex_logpmfs(n, m, theta)
    big_n = n * m
    worst = np.zeros(orders.size)
    for g in range(1, m + 1):
        a, b = lp[: big_n + 1 - g], lp[g:]
        worst = np.maximum(worst, _renyi_many(a, b, orders).max(axis=0))
        worst = np.maximum(worst, _renyi_many(b, a, orders).max(axis=0))
    return worst


def pbm_sum_pure_epsilon(*, n: int, m: int, theta: float) -> float:
    """Exact worst-case pure ε of one client's report inside the sum of ``n`` PBM reports."""
    n, m, theta = _check_pbm(n, m, theta)
    lp = _pbm_vertex_logpmfs(n, m, theta)
    big_n = n * m
    return float(max(_pure_many(lp[: big_n + 1 - g], lp[g:]).max() for g in range(1, m + 1)))


def pbm_sum_profile(*, n: int, m: int, theta: float) -> PrivacyProfile:
    """The exact worst-case privacy profile of one client's report inside the sum of ``n`` PBM reports:
    the sup of the hockey-stick divergence over every vertex pair (PB(h), PB(h ± g)), 1 ≤ g ≤ m (the
    Proposition of the module docstring applies to it: it is jointly convex), as a :class:`PrivacyProfile`."""
    n, m, theta = _check_pbm(n, m, theta)
    lp = _pbm_vertex_logpmfs(n, m, theta)
    big_n = n * m
    profile = PrivacyProfile(pbm_sum_pure_epsilon(n=n, m=m, theta=theta))
    for g in range(1, m + 1):  # (PB(h+g), PB(h)) is (PB(N−h−g), PB(N−h)) mirrored (k ↦ N−k): one direction covers both
        profile.update(lp[: big_n + 1 - g], lp[g:])
    return profile


# --------------------------------------------------------------------------------------------
# RQM: exact pmf of the sum, exact loss for stated inputs, proven worst case
# --------------------------------------------------------------------------------------------
def _conv_power(p: np.ndarray, k: int) -> np.ndarray:
    """p ∗ p ∗ … (k times) by repeated squaring (k = 0: the point mass at 0)."""
    out = np.ones(1)
    base = p
    while k:
        if k & 1:
            out = np.convolve(out, base)
        k >>= 1
        if k:
            base = np.convolve(base, base)
    return out


def rqm_sum_pmf(mechanism, inputs: Sequence[float]) -> np.ndarray:
    """Exact pmf of the sum of the level indices that ``len(inputs)`` RQM clients report for one
    coordinate with the given scalar inputs (support 0..n(m−1)); inputs outside [−c, c] are clipped."""
    xs = list(inputs)
    if not xs:
        raise ValueError("inputs must hold at least one client's scalar input")
    values, counts = np.unique(np.clip(np.asarray(xs, dtype=np.float64), -mechanism.c, mechanism.c),
                               return_counts=True)
    out = np.ones(1)
    for v, k in zip(values, counts):
        out = np.convolve(out, _conv_power(mechanism.output_pmf(float(v)), int(k)))
    return out


def rqm_sum_rdp(mechanism, orders: Sequence[float] | np.ndarray, *, x: float, x_prime: float,
                others: Sequence[float]) -> tuple[np.ndarray, float]:
    """Exact RDP (both directions) and pure ε of client 1's report inside the sum when it holds ``x``
    vs ``x_prime`` and the other clients hold ``others`` (stated inputs: **not** a worst case)."""
    orders = check_orders(orders)
    rest = rqm_sum_pmf(mechanism, others) if len(others) else np.ones(1)
    P = np.convolve(rest, mechanism.output_pmf(float(x)))[None, :]
    Q = np.convolve(rest, mechanism.output_pmf(float(x_prime)))[None, :]
    lp, lq = _log(P), _log(Q)
    rdp = np.maximum(_renyi_many(lp, lq, orders), _renyi_many(lq, lp, orders))[0]
    return rdp, float(_pure_many(lp, lq)[0])


def rqm_vertices(mechanism) -> np.ndarray:
    """The cell ends inside [−c, c] where RQM's pmf changes slope: {−c, c} ∪ {B(i) ∈ (−c, c)}."""
    levels = mechanism.levels()
    inner = levels[(levels > -mechanism.c) & (levels < mechanism.c)]
    return np.unique(np.concatenate([[-mechanism.c, mechanism.c], inner]))


def _multisets(k: int, size: int):
    """All count vectors of ``size`` non-negative ints summing to ``k``."""
    for bars in itertools.combinations(range(k + size - 1), size - 1):
        prev, counts = -1, []
        for b in bars:
            counts.append(b - prev - 1)
            prev = b
        counts.append(k + size - 2 - prev)
        yield counts


def rqm_sum_worst_rdp(mechanism, orders: Sequence[float] | np.ndarray, *, n: int,
                      profile: PrivacyProfile | None = None) -> tuple[np.ndarray, float, int]:
    """Worst case over every input of every client of the RDP (both directions) and pure ε of one
    client's report inside the sum of ``n`` RQM reports (one coordinate): the vertex enumeration of
    the module docstring. Returns (rdp, pure ε, configurations enumerated); ``ValueError`` when the
    enumeration exceeds :data:`MAX_CONFIGURATIONS`. ``profile`` (a :class:`PrivacyProfile` whose
    ``epsilon_pure`` bounds the sum's, e.g. the local one) is filled with the worst-case privacy profile."""
    orders = check_orders(orders)
    n = int(COUNT.check("n", n))
    verts = rqm_vertices(mechanism)
    size = len(verts)
    configs = math.comb(n - 1 + size - 1, size - 1)
    if configs > MAX_CONFIGURATIONS:
        raise ValueError(f"n = {n}: {configs} configurations of the other clients' inputs exceed "
                         f"MAX_CONFIGURATIONS = {MAX_CONFIGURATIONS}")
    pmfs = [mechanism.output_pmf(float(v)) for v in verts]
    powers = [[np.ones(1)] for _ in verts]  # powers[v][k] = p_v^{∗k}
    for v in range(size):
        for _ in range(n - 1):
            powers[v].append(np.convolve(powers[v][-1], pmfs[v]))
    pairs = [(i, j) for i in range(size) for j in range(size) if i != j]
    worst, pure = np.zeros(orders.size), 0.0
    batch_p, batch_q = [], []

    def flush() -> None:
        nonlocal worst, pure
        if not batch_p:
            return
        lp, lq = _log(np.stack(batch_p)), _log(np.stack(batch_q))
        worst = np.maximum(worst, _renyi_many(lp, lq, orders).max(axis=0))
        pure = max(pure, float(_pure_many(lp, lq).max()))
        if profile is not None:  # the ordered pairs are closed under swapping
            profile.update(lp, lq)
        batch_p.clear()
        batch_q.clear()

    for counts in _multisets(n - 1, size):
        rest = np.ones(1)
        for v, k in enumerate(counts):
            if k:
                rest = np.convolve(rest, powers[v][k])
        for i, j in pairs:  # ordered pairs: both directions of the divergence
            batch_p.append(np.convolve(rest, pmfs[i]))
            batch_q.append(np.convolve(rest, pmfs[j]))
        if len(batch_p) >= 512:
            flush()
    flush()
    return worst, pure, configs


# --------------------------------------------------------------------------------------------
# Guarantees of one client's report inside the sum
# --------------------------------------------------------------------------------------------
#: Orders at which the exact (enumerated) worst cases are evaluated; other orders take the value at
#: the next larger grid order (Rényi divergences are non-decreasing in the order, so this is an
#: upper bound), and orders above the grid take the pure ε (RDP ≤ pure ε at every order).
EXACT_GRID = np.array([1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0,
                       48.0, 64.0, 96.0, 128.0, 256.0, 512.0, 1024.0, 4096.0])


def step_up_curve(grid: np.ndarray, values: np.ndarray, cap: float):
    """An RDP curve from exact values on ``grid``: each order gets the value of the smallest grid
    order ≥ it (valid: RDP is non-decreasing in the order), orders above the grid get ``cap``."""
    grid = np.asarray(grid, dtype=np.float64)
    values = np.minimum(np.asarray(values, dtype=np.float64), cap)

    def curve(orders: np.ndarray) -> np.ndarray:
        orders = check_orders(orders)
        idx = np.searchsorted(grid, orders, side="left")
        out = np.full(orders.shape, float(cap))
        inside = idx < grid.size
        out[inside] = values[idx[inside]]
        return out

    return curve


def unit_label(n: int) -> str:
    """The unit every secure-aggregation guarantee is stated in."""
    return f"per client under secure aggregation with {int(n)} participants"


# --------------------------------------------------------------------------------------------
# The sum as a mechanism of its own (for check_privacy_loss and the audits)
# --------------------------------------------------------------------------------------------
class SecureSum(Mechanism):
    """What the server sees of client 1 under secure aggregation: the sum of its report and those of
    ``len(others)`` other clients holding the stated inputs ``others`` — a
    :class:`~privfl.core.Mechanism` of its own, so :func:`privfl.testing.check_privacy_loss` and the
    audits apply to the sum.

    ``mechanism``: a registered secure-aggregation mechanism (pbm, rqm: integer sums; ddg, skellam:
    sums mod 2^bits). ``others``: the other clients' inputs — scalars for the per-coordinate mechanisms
    (every coordinate of a row gets its own stated scalar only through ``x``; the others hold the same
    value in every coordinate), ``[n−1, d]`` tensors or scalars for ddg/skellam.
    ``privatize(x)`` runs the real client pipeline for every row of ``x`` plus the others and returns
    the sums; ``decode`` the server's estimate of the sum; ``output_pmf`` (pbm, rqm) the exact pmf of
    the sum (one coordinate); ``guarantee()`` the mechanism's ``sum_guarantee(n)`` (the proven worst
    case over every input, which the stated ``others`` cannot exceed).
    """

    name = "secure-sum"
    role = "client-vector"
    exact_pmf = True  # the convolution of the clients' pmfs (pbm, rqm; NotImplementedError otherwise)

    def __init__(self, mechanism, others) -> None:
        if not isinstance(mechanism, Mechanism) or not mechanism.secure_sum:
            raise TypeError(f"mechanism must be a secure-aggregation mechanism (secure_sum: pbm, rqm, ddg, "
                            f"skellam), got {type(mechanism).__name__}")
        self.mechanism = mechanism
        self.others = others
        self.n = 1 + (len(others) if not hasattr(others, "shape") else int(others.shape[0]))
        self.modulus = getattr(mechanism, "modulus", None)

    def domain(self) -> InputDomain:
        """Client 1's input domain: the wrapped mechanism's."""
        return self.mechanism.domain()

    def _others_rows(self, d: int, like):
        if hasattr(self.others, "shape"):
            return torch.as_tensor(self.others, dtype=like.dtype, device=like.device).reshape(self.n - 1, d)
        vals = torch.as_tensor(list(self.others), dtype=like.dtype, device=like.device)
        return vals.reshape(-1, 1).expand(self.n - 1, d)

    def privatize(self, x, *, generator=None, client_ids=None):
        check_updates(x, name="x", min_rows=0)
        trials, d = x.shape
        rest = self._others_rows(d, x)
        rows = torch.cat([x.unsqueeze(1), rest.unsqueeze(0).expand(trials, -1, -1)], dim=1).reshape(-1, d)
        reports = self.mechanism.privatize(rows, generator=generator).to(torch.int64)
        total = reports.reshape(trials, self.n, -1).sum(dim=1)
        return total if self.modulus is None else torch.remainder(total, self.modulus)

    def decode(self, reports):
        if self.modulus is not None:  # ddg/skellam: the decoder of the modular sum is the decoder itself
            return self.mechanism.decode(reports)
        return self.mechanism.decode_sum(reports, self.n)

    def output_pmf(self, x: float) -> np.ndarray:
        if not self.mechanism.exact_pmf or hasattr(self.others, "shape"):
            raise NotImplementedError("exact pmf of the sum: pbm and rqm with scalar inputs only")
        pmf = np.asarray(self.mechanism.output_pmf(float(x)))
        for v in self.others:
            pmf = np.convolve(pmf, self.mechanism.output_pmf(float(v)))
        return pmf

    def report_outcomes(self, reports):
        return reports.reshape(-1).to(torch.int64), None

    def guarantee(self):
        return self.mechanism.sum_guarantee(self.n)
