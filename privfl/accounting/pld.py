"""Privacy-loss-distribution (PLD) accounting through Google's ``dp-accounting`` package.

The PLD of a composition is the convolution of the per-release PLDs (computed with FFTs by
dp-accounting), which gives ε(δ) without the slack of the RDP conversion (Koskela, Jälkö, Honkela,
AISTATS 2020; Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, PETS 2022, "Connect the dots").
Pessimistic discretization throughout: the reported ε is an upper bound.

What has a PLD here:

- Gaussian releases (``noise_multiplier`` set), optionally Poisson-subsampled (exact add and
  remove PLDs). Gaussian releases without subsampling compose in closed form: k releases with
  multipliers z_i are one Gaussian release with z = (Σ 1/z_i²)^(−1/2), whose ε(δ) is computed
  exactly (Balle & Wang 2018) when nothing else is composed with it.
- Finite-output releases with an exact worst pair ``pmf_pair`` (RQM, PBM, randomized response):
  both directions, ``P‖Q`` and ``Q‖P``.
- Releases with an exact worst-case privacy profile (``extra["privacy_profile"]``, a
  :class:`~privfl.accounting.distributed.PrivacyProfile`: PBM and RQM sums under secure aggregation,
  where no single input pair is the worst at every ε): pessimistic connect-the-dots from the profile.
- Pure ε-DP releases: through the randomized-response pair at ε (which dominates them).

Subsampling of non-Gaussian releases: pure ε is amplified to ln(1 + q(e^ε − 1)); a ``pmf_pair`` is
accounted without amplification (sampling rate treated as 1, which over-states ε, never under).
A guarantee of ``none`` gives ε = ∞. A guarantee with only an RDP curve has no PLD: ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as _pld
from scipy.optimize import brentq
from scipy.stats import norm

from privfl.accounting.analysis import subsampled_pure_epsilon
from privfl.core import PrivacyGuarantee
from privfl.params import check_delta

__all__ = ["Component", "pld_epsilon", "component_pld", "choose_interval", "gaussian_epsilon_exact", "has_pld",
           "DEFAULT_INTERVAL"]

DEFAULT_INTERVAL = 1e-4
#: The largest PLD support (number of grid points) we let a composition reach before the
#: discretization interval is coarsened; coarser is still pessimistic, just less tight.
MAX_SUPPORT = 1_000_000

Component = tuple[PrivacyGuarantee, float, int]  # (guarantee, sampling rate, count)


def has_pld(guarantee: PrivacyGuarantee) -> bool:
    """Whether :func:`pld_epsilon` can account this guarantee (``none`` counts: its ε is ∞)."""
    return (
        not guarantee.is_private
        or guarantee.noise_multiplier is not None
        or guarantee.pmf_pair is not None
        or math.isfinite(guarantee.epsilon_pure)
    )


def _rr_log_pmfs(epsilon: float) -> tuple[dict[int, float], dict[int, float]]:
    # binary randomized response at ε: P = (e^ε, 1)/(1 + e^ε), Q = (1, e^ε)/(1 + e^ε)
    hi = -math.log1p(math.exp(-epsilon))
    lo = -epsilon + hi
    return {0: hi, 1: lo}, {0: lo, 1: hi}


def _log_pmf(a: np.ndarray) -> dict[int, float]:
    with np.errstate(divide="ignore"):
        return {i: float(v) for i, v in enumerate(np.log(a))}


def component_pld(guarantee: PrivacyGuarantee, sampling_rate: float, interval: float):
    """The PLD (dp-accounting object) of one release of ``guarantee`` at ``sampling_rate``."""
    if guarantee.noise_multiplier is not None:
        return _pld.from_gaussian_mechanism(
            standard_deviation=guarantee.noise_multiplier,
            sensitivity=1.0,
            sampling_prob=sampling_rate,
            value_discretization_interval=interval,
        )
    profile = guarantee.extra.get("privacy_profile")
    if profile is not None and sampling_rate == 1.0:
        pmf = profile.pld_pmf(interval)
        if pmf is not None:
            return _pld.PrivacyLossDistribution(pmf)
    if guarantee.pmf_pair is not None and (sampling_rate == 1.0 or not math.isfinite(guarantee.epsilon_pure)):
        p, q = guarantee.pmf_pair
        # Both directions, P‖Q (remove) and Q‖P (add), unless the pair is symmetric (the outcomes'
        # (P, Q) pairs are the (Q, P) pairs permuted, e.g. RQM, PBM, randomized response): one suffices.
        forward = np.array(sorted(zip(p.tolist(), q.tolist())))
        backward = np.array(sorted(zip(q.tolist(), p.tolist())))
        symmetric = forward.shape == backward.shape and bool(np.allclose(forward, backward, rtol=1e-12, atol=1e-15))
        return _pld.from_two_probability_mass_functions(
            _log_pmf(q), _log_pmf(p), value_discretization_interval=interval, symmetric=symmetric
        )
    if math.isfinite(guarantee.epsilon_pure):
        eps = subsampled_pure_epsilon(guarantee.epsilon_pure, sampling_rate)
        lower, upper = _rr_log_pmfs(eps)
        return _pld.from_two_probability_mass_functions(lower, upper, value_discretization_interval=interval)
    raise ValueError(
        f"guarantee {guarantee.name!r} has no privacy-loss distribution (only an RDP curve); "
        "use method='rdp'"
    )


def _merge_gaussians(components: Sequence[Component]) -> list[Component]:
    """Unsampled Gaussian releases compose exactly into one Gaussian release."""
    inv_sq, rest = 0.0, []
    for g, q, k in components:
        if g.noise_multiplier is not None and q == 1.0:
            inv_sq += k / g.noise_multiplier**2
        else:
            rest.append((g, q, k))
    if inv_sq > 0:
        merged = PrivacyGuarantee(name="gaussian(composed)", noise_multiplier=inv_sq**-0.5)
        rest.append((merged, 1.0, 1))
    return rest


def _loss_variance(g: PrivacyGuarantee, q: float) -> float:
    """The variance of one release's privacy loss (exact for a ``pmf_pair``; 2·KL otherwise, which is
    exact for the Gaussian, with KL taken as the RDP at order 1.01). Sizes the composed PLD's support."""
    if g.pmf_pair is not None and math.isfinite(g.epsilon_pure):
        p, qq = g.pmf_pair
        both = (p > 0) & (qq > 0)
        loss = np.log(p[both]) - np.log(qq[both])
        mean = float(np.sum(p[both] * loss))
        return float(np.sum(p[both] * (loss - mean) ** 2))
    if g.noise_multiplier is not None:
        from privfl.accounting.analysis import subsampled_gaussian_rdp

        return 2.0 * float(subsampled_gaussian_rdp(q, g.noise_multiplier, [1.01])[0])
    eps = subsampled_pure_epsilon(g.epsilon_pure, q)
    return eps * eps


def choose_interval(epsilon_hint: float | None, total_count: int, spread: float = 0.0) -> float:
    """Discretization for a composition of ``total_count`` releases whose ε is at most ``epsilon_hint``.

    Pessimistic rounding moves each release's privacy loss up by less than one interval, so the
    composed ε is over-stated by at most about ``total_count × interval``; the interval is chosen so
    that this stays below 1e-4 × ε, but coarse enough that the composed support (about ``spread``
    wide) fits in ``MAX_SUPPORT`` points; never finer than 1e-4, and rounded to 1e-4 × 2^j so that
    successive rounds reuse cached PLDs.
    """
    if epsilon_hint is None or not math.isfinite(epsilon_hint) or epsilon_hint <= 0:
        return DEFAULT_INTERVAL
    accuracy = 1e-4 * epsilon_hint / max(total_count, 1)
    support = spread / MAX_SUPPORT
    if max(accuracy, support) <= DEFAULT_INTERVAL:
        return DEFAULT_INTERVAL
    if accuracy >= support:  # round down: at least as accurate as asked
        return DEFAULT_INTERVAL * 2.0 ** math.floor(math.log2(accuracy / DEFAULT_INTERVAL))
    return DEFAULT_INTERVAL * 2.0 ** math.ceil(math.log2(support / DEFAULT_INTERVAL))  # round up: fits the grid


def gaussian_epsilon_exact(mu: float, delta: float) -> float:
    """Exact ε(δ) of the Gaussian mechanism with sensitivity/σ = μ: the root of
    δ = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Balle & Wang, ICML 2018, Theorem 8) — the PLD of an
    unsampled Gaussian composition in closed form."""

    def gap(eps: float) -> float:  # in log space: e^ε overflows for the ε of weak local noise
        a = norm.logcdf(-eps / mu + mu / 2)
        b = eps + norm.logcdf(-eps / mu - mu / 2)
        return float(math.exp(a) * -math.expm1(min(b - a, 0.0))) - delta

    if gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2.0
    return float(brentq(gap, 0.0, hi, xtol=1e-12))


def pld_epsilon(components: Sequence[Component], delta: float, *, interval: float | None = None,
                epsilon_hint: float | None = None, cache: dict | None = None) -> float:
    """ε(δ) of the composition of ``count`` releases of each ``(guarantee, sampling_rate, count)``.

    ``interval`` is the PLD discretization; by default :func:`choose_interval` from ``epsilon_hint``
    (any upper bound on ε, e.g. the RDP-converted one). ``cache`` (a dict the caller keeps) holds
    the per-release PLDs between calls, keyed by (guarantee identity, rate, interval).
    """
    delta = check_delta(delta, positive=True)
    active = [(g, float(q), int(k)) for g, q, k in components if k > 0]
    if not active:
        return 0.0
    if any(not g.is_private for g, _, _ in active):
        return math.inf
    for g, _, _ in active:  # disjoint supports: every output identifies the input (dp-accounting cannot build it)
        pair = g.pmf_pair
        if g.noise_multiplier is None and pair is not None and not np.any((pair[0] > 0) & (pair[1] > 0)):
            return math.inf
    for g, _, _ in active:
        if not has_pld(g):
            component_pld(g, 1.0, DEFAULT_INTERVAL)  # raises the explanatory ValueError
    if interval is None:
        spread = 20.0 * math.sqrt(sum(k * _loss_variance(g, q) for g, q, k in active))
        interval = choose_interval(epsilon_hint, sum(k for _, _, k in active), spread)
    merged = _merge_gaussians(active)
    if len(merged) == 1 and merged[0][0].noise_multiplier is not None and merged[0][1] == 1.0:
        return gaussian_epsilon_exact(1.0 / merged[0][0].noise_multiplier, delta)
    total = None
    for g, q, k in merged:
        key = (id(g), q, interval)
        pld = None if cache is None else cache.get(key, (None, None))[1]
        if pld is None:
            pld = component_pld(g, q, interval)
            if cache is not None and g.name != "gaussian(composed)":
                cache[key] = (g, pld)  # keep g alive so its id is not reused
        if k > 1:
            pld = pld.self_compose(k)
        total = pld if total is None else total.compose(pld)
    return float(max(total.get_epsilon_for_delta(delta), 0.0))
