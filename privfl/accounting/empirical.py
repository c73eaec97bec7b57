"""Statistics of empirical privacy audits: exact binomial bounds and ε lower bounds from a distinguisher.

An (ε, δ)-DP mechanism M bounds every test that tries to tell two neighbouring inputs apart: for any
set of outputs R, ``P[M(D) ∈ R] ≤ e^ε P[M(D') ∈ R] + δ`` and the same with D, D' swapped. A test run
``n`` times on each side gives counts; Clopper–Pearson bounds on the two rates turn them into a lower
bound on ε that holds at a stated confidence (Jagielski, Ullman, Oprea, "Auditing Differentially
Private Machine Learning: How Private is Private SGD?", NeurIPS 2020; Nasr, Song, Thakurta, Papernot,
Carlini, "Adversary Instantiation: Lower Bounds for Differentially Private Machine Learning",
IEEE S&P 2021).

- :func:`clopper_pearson` — the exact binomial confidence interval (beta quantiles).
- :func:`epsilon_from_rates` — ε implied by a (TPR, FPR) pair at δ, both directions of the definition.
- :func:`epsilon_lower_bound` — the threshold distinguisher over scores, with the threshold chosen on a
  held-out split so that the bound is valid at the stated confidence despite the choice.
- :func:`gdp_mu_interval` / :func:`gdp_epsilon` — the Gaussian-DP estimator (Nasr et al., USENIX
  Security 2023): μ from the two score distributions, ε(δ) of μ-GDP.
- :func:`one_run_p_value` / :func:`one_run_epsilon_lower_bound` — the one-run audit's test (Steinke,
  Nasr, Jagielski, NeurIPS 2023, Corollary 5.4): ε from the number of correct guesses.

Everything here is plain numpy/scipy on scores already computed (on any device) by an audit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaincinv
from scipy.stats import binom, norm

from privfl.accounting.pld import gaussian_epsilon_exact
from privfl.params import NON_NEGATIVE, OPEN_UNIT, Choice, Int, check_delta

__all__ = [
    "DIRECTIONS",
    "EmpiricalBound",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "gdp_epsilon",
    "gdp_mu_interval",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
]

#: ``"<positive side>_<region>"``: the test says "positive" when the score is ``>= threshold`` (above)
#: or ``< threshold`` (below); TPR is the rate of that region on the positive side, FPR on the other.
DIRECTIONS = ("in_above", "in_below", "out_above", "out_below")

_SIDES = ("two-sided", "lower", "upper")
_SPLIT_SEED = 20231  # the selection/evaluation split's permutation (any fixed, score-independent seed)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _scores(values: Any, name: str) -> np.ndarray:
    """A finite 1-d float64 array from a tensor, array or sequence (copied; never modified)."""
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().to("cpu").double().numpy()
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-d array or tensor of real scores, got {type(values).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d (one score per trial), got shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"{name} must hold at least 2 scores, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {int(np.sum(~np.isfinite(arr)))} NaN/Inf score(s)")
    return arr


# --------------------------------------------------------------------------------------------
# Binomial bounds and the (TPR, FPR) → ε map
# --------------------------------------------------------------------------------------------
def clopper_pearson(k: Any, n: Any, confidence: float = 0.95, *, side: str = "two-sided") -> tuple[Any, Any]:
    """Exact (Clopper & Pearson, Biometrika 1934) confidence bounds on a binomial rate from ``k``
    successes in ``n`` trials: ``(lower, upper)``.

    ``side="two-sided"`` puts (1 − confidence)/2 in each tail; ``"lower"`` returns a one-sided lower
    bound at ``confidence`` (upper = 1), ``"upper"`` a one-sided upper bound (lower = 0). Lower bound
    = Beta(α; k, n − k + 1) quantile (0 at k = 0), upper = Beta(1 − α; k + 1, n − k) (1 at k = n).
    Vectorised: ``k`` and ``n`` broadcast; scalars in give floats out.
    """
    confidence = float(OPEN_UNIT.check("confidence", confidence))
    Choice(*_SIDES).check("side", side)
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(~np.isfinite(n_arr)) or np.any(n_arr < 1) or np.any(n_arr != np.floor(n_arr)):
        raise ValueError(f"n must hold integers >= 1, got {n!r}")
    if np.any(~np.isfinite(k_arr)) or np.any(k_arr < 0) or np.any(k_arr != np.floor(k_arr)):
        raise ValueError(f"k must hold integers >= 0, got {k!r}")
    if np.any(k_arr > n_arr):
        raise ValueError(f"k must be <= n, got k={k!r}, n={n!r}")
    alpha = 1.0 - confidence
    tail = alpha / 2.0 if side == "two-sided" else alpha
    k_arr, n_arr = np.broadcast_arrays(k_arr, n_arr)
    lower = np.zeros(k_arr.shape)
    upper = np.ones(k_arr.shape)
    if side != "upper":
        pos = k_arr > 0
        lower[pos] = betaincinv(k_arr[pos], n_arr[pos] - k_arr[pos] + 1.0, tail)
    if side != "lower":
        below = k_arr < n_arr
        upper[below] = betaincinv(k_arr[below] + 1.0, n_arr[below] - k_arr[below], 1.0 - tail)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def epsilon_from_rates(tpr: Any, fpr: Any, delta: float = 0.0) -> Any:
    """ε that a test with true-positive rate ``tpr`` and false-positive rate ``fpr`` proves at ``delta``.

    (ε, δ)-DP gives TPR ≤ e^ε·FPR + δ and, for the complementary region, 1 − FPR ≤ e^ε·(1 − TPR) + δ,
    so ε ≥ max(ln((TPR − δ)/FPR), ln((1 − FPR − δ)/(1 − TPR))). Returns that maximum, floored at 0
    (a test no better than chance proves nothing); ``inf`` when a rate's denominator is 0 and its
    numerator positive. Vectorised over broadcastable arrays.
    """
    delta = check_delta(delta)
    tpr_arr = np.asarray(tpr, dtype=np.float64)
    fpr_arr = np.asarray(fpr, dtype=np.float64)
    for name, arr in (("tpr", tpr_arr), ("fpr", fpr_arr)):
        if np.any(~(arr >= 0.0)) or np.any(arr > 1.0):
            raise ValueError(f"{name} must hold rates in [0, 1], got {arr!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.log(np.clip(tpr_arr - delta, 0.0, None)) - np.log(fpr_arr)
        backward = np.log(np.clip(1.0 - fpr_arr - delta, 0.0, None)) - np.log(1.0 - tpr_arr)
    eps = np.fmax(np.fmax(forward, backward), 0.0)  # fmax: a NaN (0/0) proves nothing
    return float(eps) if eps.ndim == 0 else eps


# --------------------------------------------------------------------------------------------
# Threshold distinguisher
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmpiricalBound:
    """An ε lower bound from a threshold test, valid with probability ≥ ``confidence``.

    ``direction`` (one of :data:`DIRECTIONS`) and ``threshold`` define the test; ``tpr_lower`` and
    ``fpr_upper`` are its Clopper–Pearson bounds on the evaluation split (each one-sided at
    1 − (1 − confidence)/2, so both hold together at ``confidence``); ``trials`` is the number of
    scores per side used (``(in, out)``) and ``evaluation_trials`` the part of them held out for
    the bound. ``tpr`` / ``fpr`` are the point estimates on the evaluation split.
    """

    epsilon: float
    threshold: float
    direction: str
    tpr_lower: float
    fpr_upper: float
    trials: tuple[int, int]
    confidence: float
    delta: float = 0.0
    tpr: float = math.nan
    fpr: float = math.nan
    evaluation_trials: tuple[int, int] = (0, 0)


def _region_counts(sorted_scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#scores >= t, #scores < t) for every threshold t, from scores sorted ascending."""
    below = np.searchsorted(sorted_scores, thresholds, side="left").astype(np.float64)
    return sorted_scores.size - below, below


def _direction_counts(
    sorted_in: np.ndarray, sorted_out: np.ndarray, thresholds: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """For each direction: (positive-side count in region, negative-side count in region, n_pos, n_neg)."""
    in_above, in_below = _region_counts(sorted_in, thresholds)
    out_above, out_below = _region_counts(sorted_out, thresholds)
    n_in, n_out = sorted_in.size, sorted_out.size
    return {
        "in_above": (in_above, out_above, n_in, n_out),
        "in_below": (in_below, out_below, n_in, n_out),
        "out_above": (out_above, in_above, n_out, n_in),
        "out_below": (out_below, in_below, n_out, n_in),
    }


def _bound_eps(k_pos: Any, n_pos: Any, k_neg: Any, n_neg: Any, tail: float, delta: float) -> tuple[Any, Any, Any]:
    """ln((TPR_lower − δ)/FPR_upper) floored at 0, with one-sided CP bounds at level 1 − tail each.

    Vectorised over arrays of counts (the guards keep the beta quantiles defined where ``np.where``
    discards them).
    """
    k_pos, k_neg = np.asarray(k_pos, dtype=np.float64), np.asarray(k_neg, dtype=np.float64)
    tpr_lower = np.where(k_pos > 0, betaincinv(np.maximum(k_pos, 1e-300), n_pos - k_pos + 1.0, tail), 0.0)
    fpr_upper = np.where(k_neg < n_neg, betaincinv(k_neg + 1.0, np.maximum(n_neg - k_neg, 1e-300), 1.0 - tail), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.log(np.clip(tpr_lower - delta, 0.0, None)) - np.log(fpr_upper)
    return np.fmax(eps, 0.0), tpr_lower, fpr_upper


def epsilon_lower_bound(
    scores_in: Any,
    scores_out: Any,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    selection_fraction: float = 0.25,
    selection_confidence: float = 0.999,
) -> EmpiricalBound:
    """ε lower bound from the best threshold test between ``scores_in`` (trials of M(D)) and
    ``scores_out`` (trials of M(D')), valid with probability ≥ ``confidence``.

    Test family: "positive" when the score is ≥ t or < t, with either side as the positive one
    (:data:`DIRECTIONS`) — both directions of the DP inequality, for neighbouring relations that are
    symmetric (add/remove, replace-one). ε_LB = ln((TPR_lower − δ)/FPR_upper), floored at 0.

    **Validity despite choosing the best threshold: a held-out split.** A fixed pseudo-random
    ``selection_fraction`` of each side's trials (a seeded permutation, independent of the scores: the
    result is deterministic, and valid even when the caller's scores arrive sorted) chooses the
    direction and threshold (the partition depends only on the multiset of scores): every distinct
    score of that split is tried (vectorised: sort once, count with ``searchsorted``), and the one
    maximising the same bound on
    the selection split, computed at the stricter ``selection_confidence``, wins — the stricter level
    favours thresholds whose counts are large enough to replicate, rather than the luckiest tail
    count (a heuristic that only affects power, never validity). The remaining trials
    then give one Clopper–Pearson lower bound on TPR and one upper bound on FPR, each one-sided at
    1 − (1 − confidence)/2, so that both hold together with probability ≥ ``confidence`` (union
    bound). Only one test is evaluated on the held-out trials, so no multiple-testing correction is
    needed.
    """
    s_in = _scores(scores_in, "scores_in")
    s_out = _scores(scores_out, "scores_out")
    delta = check_delta(delta)
    confidence = float(OPEN_UNIT.check("confidence", confidence))
    selection_fraction = float(OPEN_UNIT.check("selection_fraction", selection_fraction))
    selection_tail = (1.0 - float(OPEN_UNIT.check("selection_confidence", selection_confidence))) / 2.0
    n_sel_in, n_sel_out = int(s_in.size * selection_fraction), int(s_out.size * selection_fraction)
    if min(n_sel_in, n_sel_out, s_in.size - n_sel_in, s_out.size - n_sel_out) < 1:
        raise ValueError(
            f"selection_fraction={selection_fraction} leaves an empty selection or evaluation split for "
            f"{s_in.size} in / {s_out.size} out scores; allowed: a fraction leaving >= 1 score in each"
        )
    tail = (1.0 - confidence) / 2.0

    rng = np.random.default_rng(_SPLIT_SEED)
    # permute the sorted scores: the partition depends on the multiset of scores only, not their order
    s_in, s_out = np.sort(s_in)[rng.permutation(s_in.size)], np.sort(s_out)[rng.permutation(s_out.size)]
    sel_in, sel_out = np.sort(s_in[:n_sel_in]), np.sort(s_out[:n_sel_out])
    ev_in, ev_out = np.sort(s_in[n_sel_in:]), np.sort(s_out[n_sel_out:])
    thresholds = np.unique(np.concatenate([sel_in, sel_out]))

    best = (-1.0, DIRECTIONS[0], float(thresholds[0]))
    for direction, (k_pos, k_neg, n_pos, n_neg) in _direction_counts(sel_in, sel_out, thresholds).items():
        eps, _, _ = _bound_eps(k_pos, n_pos, k_neg, n_neg, selection_tail, delta)
        i = int(np.argmax(eps))
        if eps[i] > best[0]:
            best = (float(eps[i]), direction, float(thresholds[i]))

    _, direction, threshold = best
    counts = _direction_counts(ev_in, ev_out, np.array([threshold]))[direction]
    k_pos, k_neg, n_pos, n_neg = (float(np.asarray(c).reshape(-1)[0]) for c in counts)
    eps, tpr_lower, fpr_upper = _bound_eps(k_pos, n_pos, k_neg, n_neg, tail, delta)
    return EmpiricalBound(
        epsilon=float(eps),
        threshold=threshold,
        direction=direction,
        tpr_lower=float(tpr_lower),
        fpr_upper=float(fpr_upper),
        trials=(int(s_in.size), int(s_out.size)),
        confidence=confidence,
        delta=delta,
        tpr=k_pos / n_pos,
        fpr=k_neg / n_neg,
        evaluation_trials=(int(ev_in.size), int(ev_out.size)),
    )


# --------------------------------------------------------------------------------------------
# Gaussian-DP estimator
# --------------------------------------------------------------------------------------------
def gdp_mu_interval(scores_in: Any, scores_out: Any, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """(μ̂, μ_lower, μ_upper): the Gaussian-DP parameter fitted to two score distributions.

    Nasr, Hayes, Steinke, Balle, Tramèr, Jagielski, Carlini, Terzis, "Tight Auditing of Differentially
    Private Machine Learning", USENIX Security 2023: when the audit statistic is Gaussian under both
    hypotheses (white-box canary gradients under Gaussian noise), the mechanism behaves like μ-GDP with
    μ = |mean_in − mean_out| / σ. Here σ is the pooled standard deviation (equal variances, as for
    Gaussian noise on a fixed canary), so μ̂ is Cohen's d. The interval is the asymptotic normal
    one for d (Hedges & Olkin 1985: Var(d) ≈ 1/n_in + 1/n_out + d²/(2(n_in + n_out))), two-sided
    at ``confidence``; it relies on the scores being Gaussian — an estimate, not a worst-case bound.
    """
    s_in = _scores(scores_in, "scores_in")
    s_out = _scores(scores_out, "scores_out")
    confidence = float(OPEN_UNIT.check("confidence", confidence))
    n1, n0 = s_in.size, s_out.size
    pooled = ((n1 - 1) * s_in.var(ddof=1) + (n0 - 1) * s_out.var(ddof=1)) / (n1 + n0 - 2)
    if not pooled > 0:
        raise ValueError("scores_in and scores_out have zero variance: the Gaussian-DP fit needs spread scores")
    mu = abs(float(s_in.mean() - s_out.mean())) / math.sqrt(pooled)
    se = math.sqrt(1.0 / n1 + 1.0 / n0 + mu * mu / (2.0 * (n1 + n0)))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    return mu, max(mu - z * se, 0.0), mu + z * se


def gdp_epsilon(mu: float, delta: float) -> float:
    """ε(δ) of μ-GDP: the root of δ = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Dong, Roth, Su 2022, Cor. 2.13;
    the exact Gaussian-mechanism curve of Balle & Wang 2018); 0 for μ = 0."""
    NON_NEGATIVE.check("mu", mu)
    delta = check_delta(delta)
    if delta == 0.0:
        raise ValueError("delta must be > 0 for the ε(δ) of μ-GDP (ε is infinite at δ = 0 for μ > 0)")
    if float(mu) == 0.0:
        return 0.0
    return gaussian_epsilon_exact(float(mu), delta)


# --------------------------------------------------------------------------------------------
# One-run audit (Steinke, Nasr, Jagielski 2023)
# --------------------------------------------------------------------------------------------
def _one_run_counts(m: Any, r: Any, v: Any) -> tuple[int, int, int]:
    for name, value in (("m", m), ("r", r), ("v", v)):
        Int().check(name, value)
    if not 0 <= v <= r <= m or m < 1:
        raise ValueError(f"need 0 <= v <= r <= m and m >= 1 (correct guesses, guesses, canaries), "
                         f"got m={m}, r={r}, v={v}")
    return int(m), int(r), int(v)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``v`` correct guesses out of ``r``] under (ε, δ)-DP, with ``m`` canaries each included
    independently with probability ½ (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1)
    Training Run", NeurIPS 2023, Corollary 5.4):

        P[Binomial(r, q) ≥ v] + 2mδ · max_{i = 1..v} P[v > Binomial(r, q) ≥ v − i] / i,  q = e^ε / (1 + e^ε),

    capped at 1 (the δ term vanishes at δ = 0). Vectorised over the v terms.
    """
    m, r, v = _one_run_counts(m, r, v)
    NON_NEGATIVE.check("epsilon", epsilon)
    delta = check_delta(delta)
    q = 1.0 / (1.0 + math.exp(-float(epsilon)))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    between = binom.sf(v - i - 1, r, q) - tail  # P[v > Binomial >= v - i]
    return float(min(tail + 2.0 * m * delta * float(np.max(between / i)), 1.0))


def one_run_epsilon_lower_bound(m: int, r: int, v: int, *, delta: float = 0.0, significance: float = 0.05) -> float:
    """The largest ε that ``v`` correct guesses out of ``r`` (``m`` canaries) reject at level
    ``significance``: the root in ε of :func:`one_run_p_value` = ``significance`` (the p-value grows
    with ε), 0 when even ε = 0 is not rejected. Valid with probability ≥ 1 − ``significance``."""
    m, r, v = _one_run_counts(m, r, v)
    significance = float(OPEN_UNIT.check("significance", significance))
    delta = check_delta(delta)
    if one_run_p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    hi = 1.0
    while one_run_p_value(m, r, v, hi, delta) < significance:
        hi *= 2.0
        if hi > 1e4:
            return math.inf  # every guess right with overwhelming count: no finite ε explains it
    return float(brentq(lambda e: one_run_p_value(m, r, v, e, delta) - significance, 0.0, hi, xtol=1e-10))
