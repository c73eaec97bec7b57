"""Reusable checks for privacy mechanisms and their accounting (public: run them on your own mechanism).

Each check returns a small result object with the figures it computed and raises ``AssertionError``
with a readable message when the property fails:

- :func:`check_unbiased` — ``estimate(privatize(x))`` is unbiased for the mechanism's estimand (the
  clipped input for clipping mechanisms), by a two-sided z-test per coordinate with a Bonferroni
  correction: a correct mechanism fails with probability at most ``alpha`` (the stated error rate).
- :func:`check_claim` — the mechanism's own ε agrees with an **independent** claim (the paper's
  formula, computed by the caller). Every other check reads the expected ε from ``guarantee()``, so a
  mechanism whose guarantee faithfully reports a wrong formula passes them; pass the paper's ε as
  ``eps=`` to :func:`~privfl.testing.privacy.check_privacy_loss` (what the mechanism *does* against
  the paper) and to :func:`check_claim` (what it *says* against the paper).
- :func:`check_rdp` — the RDP curve is non-decreasing in the order (true of every Rényi
  divergence) and never above the pure ε.
- :func:`check_epsilon_monotone` — ε(δ) grows with the number of rounds and with the sampling rate
  (for a family of guarantees indexed by the noise, ε decreases as the noise grows:
  :func:`check_epsilon_decreasing_in_noise`).
- :func:`check_rdp_dominates_pld` — the RDP-converted ε is at least the PLD ε (the PLD is the
  tight one; the conversion can only lose), up to the PLD's discretization ``tol``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import norm
from torch import Tensor

from privfl.accounting.analysis import DEFAULT_ORDERS, pmf_rdp, rdp_to_epsilon
from privfl.accounting.ledger import PrivacyLedger, epsilon_after
from privfl.core import Mechanism, PrivacyGuarantee
from privfl.testing.privacy import _pmf, _public_draws, default_inputs, has_output_pmf

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
    "identical_across_seeds",
    "check_claim",
]


@dataclass
class UnbiasedResult:
    """Figures of :func:`check_unbiased`: the largest per-coordinate |z|, the |z| of the two projections
    (on the target's direction: a relative bias; on the all-ones direction: a common shift), the
    Bonferroni threshold they were compared with, and the sample mean."""

    max_abs_z: float
    threshold: float
    trials: int
    alpha: float
    mean: Tensor
    projection_z: tuple[float, float] = (0.0, 0.0)


def _unbiased_draws(mechanism: Mechanism, x: Tensor, trials: int, seed: int) -> tuple[Tensor, Tensor]:
    """(decoded draws ``[trials·m, d]`` as float64, the default target)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    fresh = copy.deepcopy(mechanism)  # stateful mechanisms: every draw is a fresh user, the caller's object untouched
    if mechanism.role == "frequency-oracle":
        if x.dim() != 1 or x.dtype != torch.int64:
            raise ValueError(f"x must be a [m] int64 tensor of category ids for {mechanism.name}, got "
                             f"{x.dtype} shape {tuple(x.shape)}")
        values = x.repeat(trials)
        out = fresh.decode(fresh.privatize(values, generator=g)).to(torch.float64)
        onehot = torch.nn.functional.one_hot(x, int(mechanism.domain().categories)).to(torch.float64).mean(dim=0)
        return out.reshape(trials, x.shape[0], -1).mean(dim=1), onehot
    if x.dim() != 1:
        raise ValueError(f"x must be one input row of shape [d], got shape {tuple(x.shape)}")
    rows = x.unsqueeze(0).expand(trials, -1).contiguous()
    target = mechanism.estimand(x.unsqueeze(0))[0]
    return fresh.decode(fresh.privatize(rows, generator=g)).to(torch.float64), target.to(torch.float64)


def identical_across_seeds(mechanism: Mechanism, x: Tensor, *, seed: int = 0, rows: int = 64) -> bool:
    """``True`` when ``decode(privatize(·))`` of ``rows`` copies of ``x`` varies between the rows (so the
    mechanism *is* random) yet is bit-for-bit the same under two different seeds: the mechanism ignores
    its generator (a fixed internal seed), and every statistic computed from its draws repeats itself."""
    draws = []
    for s in (seed, seed + 7919):
        g = torch.Generator(device=x.device).manual_seed(s)
        fresh = copy.deepcopy(mechanism)
        batch = x.repeat(rows) if x.dtype == torch.int64 and x.dim() == 1 else x.unsqueeze(0).expand(rows, -1)
        out = fresh.decode(fresh.privatize(batch.contiguous(), generator=g)).to(torch.float64)
        draws.append(out)
    varies = bool((draws[0] != draws[0][:1]).any())
    return varies and bool(torch.equal(draws[0], draws[1]))


def check_unbiased(
    mechanism: Mechanism,
    x: Tensor,
    *,
    trials: int = 2000,
    alpha: float = 1e-3,
    target: Tensor | None = None,
    seed: int = 0,
) -> UnbiasedResult:
    """``decode(privatize(x))`` averages to ``target`` over ``trials`` independent draws.

    ``target`` defaults to the mechanism's estimand (``mechanism.estimand``: the clipped input for a
    clipping mechanism, so an input outside the clip ball is compared with what the mechanism is
    unbiased for, not with the raw input — and a mechanism that skips its clip is caught there). Draws
    that vary between trials but repeat exactly under another seed fail (the mechanism ignores its
    generator: :func:`identical_across_seeds`).

    ``x`` is one input row ``[d]`` (vector mechanisms) or ``[m]`` category ids (frequency oracles, whose
    target is then the histogram of ``x``: each report decodes to an unbiased one-hot vector). It is
    privatized ``trials`` times as the rows of one matrix (rows are randomized independently by
    contract; stateful mechanisms run on a copy, every row a fresh user). Three kinds of test, all
    t-tests on the per-trial values, with a Bonferroni correction over the ``d + 2`` tests so that a
    correct mechanism fails with probability ≤ ``alpha`` (asymptotically; use trials ≥ 1000):

    - every coordinate: (mean − target)/(s/√trials);
    - the projection on the target's direction ``target/‖target‖`` — a relative bias (``x ↦ (1+b)x``)
      adds up over the coordinates there;
    - the projection on ``(1, …, 1)/√d`` — a common shift.

    Power: a relative bias ``b`` with per-coordinate noise σ is caught (|z| above the threshold) once
    ``b·‖x‖·√trials / σ`` exceeds about ``threshold + 2`` (≈ 5.9 for d = 10 at alpha = 1e-3). For
    instance a 1 % bias on ``x = 0.5·1`` in d = 100 with σ = 1 needs trials ≳ 1.7·10⁴ (the test suite
    catches it with 2·10⁴); coordinates whose sample variance is 0 must match the target exactly.
    """
    if not isinstance(mechanism, Mechanism):
        raise TypeError(f"mechanism must be a privfl Mechanism, got {type(mechanism).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 2:
        raise ValueError(f"trials must be an int >= 2, got {trials!r}")
    out, default_target = _unbiased_draws(mechanism, x, trials, seed)
    if identical_across_seeds(mechanism, x, seed=seed):
        raise AssertionError(f"{mechanism.name}: identical draws for seeds {seed} and {seed + 7919} although they vary "
                             "between trials: the mechanism ignores its generator, so its statistics are not "
                             "independent across seeds")
    target = default_target if target is None else target.to(torch.float64)
    d = out.shape[1]
    mean = out.mean(dim=0)
    sd = out.std(dim=0)
    diff = mean - target
    threshold = float(norm.ppf(1 - alpha / (2 * (d + 2))))
    zero = sd <= 1e-12 * mean.abs().clamp_min(1.0)  # deterministic up to rounding
    if bool((zero & (diff.abs() > 1e-9)).any()):
        bad = torch.nonzero(zero & (diff.abs() > 1e-9)).flatten()[:5].tolist()
        raise AssertionError(f"{mechanism.name}: deterministic coordinates {bad} differ from the target")
    z = torch.where(zero, torch.zeros_like(diff), diff / (sd.clamp_min(1e-300) / math.sqrt(trials)))
    max_z = float(z.abs().max()) if z.numel() else 0.0
    proj_z = []
    for w in (target, torch.ones_like(target)):
        norm_w = float(torch.linalg.vector_norm(w))
        if norm_w == 0:
            proj_z.append(0.0)
            continue
        s = out @ (w / norm_w)
        s_sd, s_mean = float(s.std()), float(s.mean())
        gap = s_mean - float(target @ (w / norm_w))
        if s_sd <= 1e-12 * max(1.0, abs(s_mean)):  # deterministic projection (e.g. decoded one-hots sum to 1)
            proj_z.append(0.0 if abs(gap) <= 1e-9 else math.inf)
        else:
            proj_z.append(gap / (s_sd / math.sqrt(trials)))
    if max_z > threshold:
        i = int(z.abs().argmax())
        raise AssertionError(
            f"{mechanism.name} looks biased: coordinate {i} mean {float(mean[i]):.6g} vs target "
            f"{float(target[i]):.6g} (|z| = {max_z:.2f} > {threshold:.2f}, family-wise error rate {alpha})"
        )
    for label, zz in zip(("the target's direction (relative bias)", "the all-ones direction (common shift)"),
                         proj_z):
        if abs(zz) > threshold:
            raise AssertionError(
                f"{mechanism.name} looks biased along {label}: |z| = {abs(zz):.2f} > {threshold:.2f} "
                f"({trials} trials, family-wise error rate {alpha})"
            )
    return UnbiasedResult(max_z, threshold, trials, alpha, mean, (proj_z[0], proj_z[1]))


@dataclass
class RDPResult:
    """Figures of :func:`check_rdp`: the orders, the curve, the pure ε, and — when the curve could be
    compared with exact output distributions — the largest Rényi divergence found (``exact``)."""

    orders: np.ndarray
    rdp: np.ndarray
    epsilon_pure: float
    exact: np.ndarray | None = None


def _pairwise_renyi(P: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """``max_{i != j} D_α(P_i ‖ P_j)`` for every order (rows of ``P`` are pmfs; ``[inputs, m, o]``: products
    of m independent components, whose divergence is the sum of the components' divergences)."""
    with np.errstate(divide="ignore"):
        logp = np.log(P)
    out = np.zeros(orders.shape)
    for k, a in enumerate(orders):
        terms = a * logp[:, None] + (1.0 - a) * logp[None, :]  # [i, j, (m,) o]
        terms = np.where((P > 0)[:, None], terms, -np.inf)
        bad = ((P > 0)[:, None] & (P == 0)[None, :]).any(axis=-1)
        with np.errstate(invalid="ignore"):
            d = logsumexp(terms, axis=-1) / (a - 1.0)
        d = np.where(bad, np.inf, d)
        if P.ndim == 3:
            d = d.sum(axis=-1)
        np.fill_diagonal(d, 0.0)
        out[k] = d.max()
    return out


def check_rdp(guarantee: PrivacyGuarantee | Mechanism, orders: Sequence[float] | np.ndarray = DEFAULT_ORDERS,
              *, rtol: float = 1e-9, inputs: Sequence[Any] | None = None) -> RDPResult:
    """The RDP curve is ≥ 0, non-decreasing in the order, ≤ the pure ε, and never below the exact divergence.

    Within ``rtol``: (1) ε_RDP(α) ≥ 0; (2) non-decreasing in α (true of every Rényi divergence); (3) ≤ the
    pure ε (pure ε-DP implies RDP ≤ ε at every order); (4) where a finite-output description exists, the
    curve is at least the exact Rényi divergence it claims to bound — of the guarantee's own
    ``pmf_pair`` and, given a :class:`Mechanism` with ``output_pmf`` and no public randomness, of every
    pair of inputs of its grid (``inputs``, default as in :func:`~privfl.testing.privacy.check_privacy_loss`).
    (4) catches a curve that under-states the leak; (1)–(3) a curve that is not a Rényi curve at all.
    """
    mech = guarantee if isinstance(guarantee, Mechanism) else None
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
    exact = None
    if g.pmf_pair is not None:
        exact = pmf_rdp(g.pmf_pair, orders)
    if mech is not None:
        if has_output_pmf(mech):
            grid = list(default_inputs(mech) if inputs is None else inputs)
            if _public_draws(mech, grid[0], 2, 0, torch.device("cpu")) == [None]:
                P = np.stack([_pmf(mech, x, None, {}) for x in grid])
                pairs = _pairwise_renyi(P, orders)
                exact = pairs if exact is None else np.maximum(exact, pairs)
    if exact is not None:
        short = rdp < exact * (1 - rtol) - 1e-10
        if np.any(short):
            i = int(np.argmax(short))
            raise AssertionError(f"{g.name}: RDP {rdp[i]:.6g} at order {orders[i]:g} is below the exact Rényi "
                                 f"divergence {exact[i]:.6g} of its output distributions (the curve under-states "
                                 "the leak)")
    return RDPResult(orders, rdp, g.epsilon_pure, exact)


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


@dataclass
class ClaimResult:
    """Figures of :func:`check_claim`: the mechanism's own ε(δ) and the independent one."""

    claimed: float
    independent: float
    delta: float
    rtol: float


def check_claim(mechanism: Mechanism | PrivacyGuarantee, independent_epsilon: float, *, delta: float = 0.0,
                rtol: float = 1e-6) -> ClaimResult:
    """The mechanism's ε for one release (pure ε for ``delta=0``, else ε(δ) by PLD where available, RDP
    otherwise) equals ``independent_epsilon`` — the value of the paper's formula at the mechanism's
    parameters, computed by the caller without the mechanism's code — within relative ``rtol``.

    Deterministic (no error rate). Catches a guarantee that reports a different formula from the
    paper's, which every self-referential check misses; combine it with
    ``check_privacy_loss(mechanism, eps=independent_epsilon)`` to test the behaviour against the paper.
    """
    g = mechanism.guarantee() if isinstance(mechanism, Mechanism) else mechanism
    if not isinstance(g, PrivacyGuarantee):
        raise TypeError(f"mechanism must be a Mechanism or PrivacyGuarantee, got {type(mechanism).__name__}")
    if isinstance(independent_epsilon, bool) or not isinstance(independent_epsilon, (int, float)) \
            or not independent_epsilon >= 0:
        raise ValueError(f"independent_epsilon must be a number >= 0, got {independent_epsilon!r}")
    if not (isinstance(delta, (int, float)) and 0 <= delta < 1):
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    if delta == 0:
        claimed = float(g.epsilon_pure)
    else:
        ledger = PrivacyLedger()
        ledger.record(g)
        claimed = ledger.epsilon(delta, method="pld" if ledger.supports("pld") else "rdp")
    ref = float(independent_epsilon)
    same = claimed == ref or (math.isfinite(claimed) and abs(claimed - ref) <= rtol * max(abs(ref), 1e-12))
    if not same:
        raise AssertionError(f"{g.name}: its guarantee claims ε = {claimed:.10g} at δ = {delta:g} but the independent "
                             f"formula gives {ref:.10g} (relative tolerance {rtol:g}): the guarantee does not report "
                             "the paper's analysis")
    return ClaimResult(claimed, ref, float(delta), float(rtol))
