"""``check_privacy_loss``: does a mechanism leak more than it claims? Exact where outputs are finite.

**Exact path** (mechanisms with ``output_pmf`` / ``report_outcomes``, see :class:`~privfl.core.Mechanism`):

1. For every input ``x`` of a grid (category ids ``0..k-1`` for frequency oracles, up to 64; 41 evenly
   spaced scalars in ``[-c, c]`` for per-coordinate mechanisms; or ``inputs=``) the exact pmf of the
   report is read from ``output_pmf(x)`` — a vector over outcomes, or a ``[components, outcomes]``
   table for a product of independent components (unary encodings: one Bernoulli per bit), whose
   loss is the sum of the components' losses. Every ordered pair ``(x, x')`` is a neighbouring pair (one
   user's value replaced). The **privacy loss** is ``max_{x, x', o} ln P(o | x) / P(o | x')``
   (``inf`` when an outcome possible under ``x`` is impossible under ``x'``); for ``delta > 0`` the
   check also computes the hockey-stick divergence ``max_{x, x'} Σ_o (P(o|x) − e^ε P(o|x'))⁺`` at the
   claimed ε and the exact ε(δ) of one release (the smallest ε whose divergence is ≤ δ, by bisection).
   It fails when the loss exceeds the claimed ε (δ = 0) or the divergence exceeds δ, beyond ``tol``.
2. Public randomness (OLH / LOLOHA hash seeds, dBitFlipPM's sampled buckets) is part of the report
   and independent of the input, so the loss is the maximum over public values of the conditional
   loss. The public values are taken from ``num_public`` of the mechanism's own reports: each
   conditional pmf is exact, and the maximum is the exact ε as soon as one draw separates the worst
   pair (for hashing: any draw under which the two values do not collide). For δ > 0 the divergence
   of the mixture is the average over these draws (a Monte Carlo estimate in the public part only);
   the check then fails only when that average exceeds δ by more than ``z_{1−alpha/pairs}`` standard
   errors (Bonferroni over the ordered pairs). ``num_public`` defaults to 32 draws (δ = 0) or 2,000 (δ > 0).
3. **Sampling cross-check**: ``privatize`` must really follow the declared pmf — otherwise a mechanism
   whose sampler disagrees with its pmf would pass. For the two inputs of the worst pair (and the
   first input) ``samples`` reports are drawn and compared with the pmf by Pearson's χ² test (cells
   with expected count < 5 pooled). With public randomness, each report's outcome is replaced by its
   rank in its own conditional pmf (sorted by probability), whose expected counts are the sums of the
   sorted conditional pmfs; the χ² statistic is then conservative (its covariance is dominated by the
   multinomial one). The tests run at a family-wise level ``alpha`` (Bonferroni): a correct
   mechanism fails this part with probability ≤ ``alpha`` (1e-3 by default; fixed seeds in our tests).
   ``options`` (e.g. ``stage="permanent"``) select another pmf for the exact part; the sampling
   check always tests the pmf of what ``privatize`` releases (no options).

**Empirical path** (no finite pmf): a threshold tester on samples of the mechanism's output for the
neighbouring inputs ``x = +C·e₁`` and ``x' = −C·e₁`` (``C`` the bound of the mechanism's declared ``domain()``;
replace-one, the worst pair of the clip ball; or ``inputs=(x, x')``), scored by the projection on
``x − x'``; and by default (``far=True``) also on pairs **far outside the domain**, ``±10C·e₁``
and, for an ℓ2 clip ball, ``±10C·u`` for a random unit ``u`` in 8 dimensions — inside the
clip ball a mechanism that never clips is indistinguishable from a correct one, outside it is not.
The ε lower bound is the audits' Clopper–Pearson bound
(:func:`privfl.accounting.empirical.epsilon_lower_bound`: threshold chosen on a held-out half) at
confidence ``1 − (1 − confidence)/pairs`` per pair (Bonferroni); the check fails when a lower bound
exceeds the claimed ε — so a correct mechanism fails with probability ≤ 1 − ``confidence``.
Scores that vary between trials but repeat exactly under another seed fail too (the generator is
ignored). On the exact path, ``privatize`` is also χ²-checked against ``output_pmf`` at ``10·c``.
Central mechanisms are sampled through ``aggregate``
(one row vs no row, add/remove), one call per trial.

``eps=None`` takes the claimed ε from ``mechanism.guarantee()`` (pure ε for δ = 0; PLD ε(δ) of one
release otherwise).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import chi2, norm
from torch import Tensor

from privfl.accounting.empirical import EmpiricalBound, epsilon_lower_bound
from privfl.accounting.ledger import epsilon_after
from privfl.core import Mechanism

__all__ = [
    "SamplingCheck",
    "PrivacyLossResult",
    "check_privacy_loss",
    "check_pmf_sampling",
    "exact_privacy_loss",
    "has_output_pmf",
    "default_inputs",
    "claimed_epsilon",
]

MAX_CATEGORIES = 64
GRID_POINTS = 41


@dataclass
class SamplingCheck:
    """Pearson χ² goodness of fit of ``samples`` reports of input ``x`` against the declared pmf."""

    x: Any
    samples: int
    statistic: float
    dof: int
    p_value: float
    level: float
    ranked: bool

    @property
    def ok(self) -> bool:
        return self.p_value >= self.level


@dataclass
class PrivacyLossResult:
    """What :func:`check_privacy_loss` measured.

    ``epsilon`` is the exact privacy loss (``method="exact"``; for δ > 0 the exact ε(δ) of one
    release) or the empirical ε lower bound (``method="empirical"``). ``hockey_stick`` is the largest
    divergence at the claimed ε (exact path). ``worst_pair`` the inputs that reach ``epsilon``.
    """

    mechanism: str
    method: str
    claimed_epsilon: float
    delta: float
    epsilon: float
    worst_pair: tuple[Any, Any]
    pairs: int = 0
    loss: float = math.nan
    hockey_stick: float | None = None
    public_draws: int = 0
    sampling: list[SamplingCheck] = field(default_factory=list)
    alpha: float = 0.0
    bound: EmpiricalBound | None = None

    @property
    def ratio(self) -> float:
        """``epsilon / claimed_epsilon`` (how much of the claimed budget is used or proved)."""
        return self.epsilon / self.claimed_epsilon if self.claimed_epsilon > 0 else math.inf


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def has_output_pmf(mechanism: Mechanism, inputs: Sequence[Any] | None = None) -> bool:
    """Whether the mechanism declares exact output pmfs (``exact_pmf``: ``output_pmf`` and ``report_outcomes``)
    and its ``output_pmf`` works for these parameters (a wrapper may raise ``NotImplementedError``).

    A pmf that cannot be enumerated for these parameters (e.g. a unary encoding with k > 12: 2^k
    outcomes) raises its own ``ValueError``, which is passed on rather than silently falling back.
    """
    if not mechanism.exact_pmf:
        return False
    try:
        x0 = (default_inputs(mechanism) if inputs is None else list(inputs))[0]
        mechanism.output_pmf(x0)
    except NotImplementedError:
        return False
    return True


def _categorical(mechanism: Mechanism) -> bool:
    return mechanism.role == "frequency-oracle"


def default_inputs(mechanism: Mechanism) -> list[Any]:
    """From the declared :meth:`~privfl.core.Mechanism.domain`: category ids ``0..min(k, 64)-1``, or 41
    scalars evenly spaced in ``[-b, b]`` (``b`` the domain's bound: ``c`` of a box, the clip radius)."""
    domain = mechanism.domain()
    if domain.categorical:
        return list(range(min(int(domain.categories), MAX_CATEGORIES)))
    if domain.bound is None:
        raise ValueError(f"{mechanism.name}: no default inputs (its input domain is {domain.kind}); "
                         "pass inputs=[...]")
    return [float(v) for v in np.linspace(-domain.bound, domain.bound, GRID_POINTS)]


def claimed_epsilon(mechanism: Mechanism, delta: float) -> float:
    """ε the mechanism's own guarantee claims for one release at ``delta``."""
    g = mechanism.guarantee()
    if delta == 0:
        return float(g.epsilon_pure)
    try:
        return float(epsilon_after(g, 1, delta=delta, method="pld", central=False))
    except Exception:  # noqa: BLE001 - guarantees without a PLD fall back to the RDP conversion
        return float(epsilon_after(g, 1, delta=delta, method="rdp", central=False))


def _batch(mechanism: Mechanism, x: Any, n: int, device: torch.device) -> Tensor:
    if _categorical(mechanism):
        return torch.full((n,), int(x), dtype=torch.int64, device=device)
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=torch.float64).reshape(1, -1).expand(n, -1).contiguous()
    return torch.full((n, 1), float(x), dtype=torch.float64, device=device)


def _draw_reports(mechanism: Mechanism, x: Any, n: int, seed: int, device: torch.device) -> Tensor:
    fresh = copy.deepcopy(mechanism)  # stateful mechanisms: fresh users, no side effect on the caller's object
    if fresh.stateful:
        fresh.reset()
    gen = torch.Generator(device=device).manual_seed(seed)
    return fresh.privatize(_batch(mechanism, x, n, device), generator=gen)


def _pmf(mechanism: Mechanism, x: Any, public: Any, options: dict[str, Any]) -> np.ndarray:
    """``[outcomes]`` pmf, or ``[components, outcomes]`` for a product of independent components."""
    p = mechanism.output_pmf(x, **options) if public is None else mechanism.output_pmf(x, public=public, **options)
    p = np.asarray(p, dtype=np.float64)
    sums = p.sum(axis=-1) if p.ndim in (1, 2) else np.array([np.nan])
    if p.ndim not in (1, 2) or np.any(p < 0) or not np.all(np.abs(sums - 1.0) <= 1e-9):
        raise AssertionError(f"{mechanism.name}: output_pmf({x!r}) is not a probability vector (or a [components, "
                             f"outcomes] table of them): shape {p.shape}, sums {np.unique(sums)[:3]!r}")
    return p


def _product_to_joint(P: np.ndarray, limit: int = 1 << 14) -> np.ndarray:
    """``[..., m, o]`` independent components → ``[..., o^m]`` joint pmf (for divergences of products)."""
    m, o = P.shape[-2], P.shape[-1]
    if o**m > limit:
        raise ValueError(f"the hockey-stick divergence of a product of {m} components with {o} outcomes each needs "
                         f"{o}^{m} joint outcomes (> {limit}); use delta=0 (pure ε composes exactly) or fewer "
                         "components")
    joint = P[..., 0, :]
    for c in range(1, m):
        joint = (joint[..., :, None] * P[..., c, None, :]).reshape(*P.shape[:-2], -1)
    return joint


def _public_draws(mechanism: Mechanism, x0: Any, num_public: int, seed: int, device: torch.device) -> list[Any]:
    _, public = mechanism.report_outcomes(_draw_reports(mechanism, x0, num_public, seed + 7919, device))
    if public is None:
        return [None]
    rows = torch.unique(public.cpu(), dim=0)
    return [tuple(int(v) for v in row) for row in rows]


def _loss_matrix(P: np.ndarray) -> np.ndarray:
    """``L[i, j] = max_o ln P[i, o] / P[j, o]`` (``inf`` where P[i, o] > 0 = P[j, o]).

    For a product of independent components (``P`` of shape ``[inputs, m, o]``) the largest log-ratio of
    a joint outcome is the sum over components of each component's largest log-ratio (exact).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(P)
        diff = logp[:, None] - logp[None, :]
    pos_i = (P > 0)[:, None]
    diff = np.where(pos_i, diff, -np.inf)  # outcomes impossible under x carry no loss
    diff = np.where(np.isnan(diff), -np.inf, diff)
    best = diff.max(axis=-1)
    return best.sum(axis=-1) if P.ndim == 3 else best


def exact_privacy_loss(mechanism: Mechanism, *, inputs: Sequence[Any] | None = None, delta: float = 0.0,
                       eps: float | None = None, options: dict[str, Any] | None = None, num_public: int = 32,
                       seed: int = 0, device: str | torch.device | None = None
                       ) -> tuple[float, tuple[Any, Any], float | None, float, int, float]:
    """(loss, worst pair, hockey-stick at ``eps`` or None, ε(δ), public draws, standard error of the
    hockey-stick over the public draws — 0 without public randomness) from ``output_pmf``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    inputs = list(default_inputs(mechanism) if inputs is None else inputs)
    if len(inputs) < 2:
        raise ValueError(f"inputs must hold at least 2 values (a neighbouring pair), got {inputs!r}")
    options = dict(options or {})
    publics = _public_draws(mechanism, inputs[0], num_public, seed, device)
    loss, worst = -math.inf, (inputs[0], inputs[1])
    mats = []
    for pub in publics:
        P = np.stack([_pmf(mechanism, x, pub, options) for x in inputs])
        mats.append(P)
        L = _loss_matrix(P)
        np.fill_diagonal(L, -np.inf)
        i, j = np.unravel_index(int(np.argmax(L)), L.shape)
        if L[i, j] > loss:
            loss, worst = float(L[i, j]), (inputs[i], inputs[j])
    loss = max(loss, 0.0)
    hs, hs_se = None, 0.0
    eps_delta = loss
    if delta > 0:
        stacked = np.stack(mats)  # [draws, inputs, outcomes] (or [draws, inputs, components, outcomes])
        if stacked.ndim == 4:
            stacked = _product_to_joint(stacked)
        off_diagonal = ~np.eye(len(inputs), dtype=bool)

        def per_draw(e: float) -> np.ndarray:  # [draws, inputs, inputs]
            H = np.clip(stacked[:, :, None, :] - math.exp(e) * stacked[:, None, :, :], 0.0, None).sum(axis=3)
            return H * off_diagonal

        def divergence(e: float) -> float:
            return float(per_draw(e).mean(axis=0).max())

        if eps is not None:
            H = per_draw(eps)
            mean = H.mean(axis=0)
            if len(mats) > 1:  # rank the pairs by a conservative estimate (mean − 2 se), not the noisy mean
                se = H.std(axis=0, ddof=1) / math.sqrt(len(mats))
                i, j = np.unravel_index(int(np.argmax(mean - 2.0 * se)), mean.shape)
                hs_se = float(se[i, j])
            else:
                i, j = np.unravel_index(int(np.argmax(mean)), mean.shape)
            hs = float(mean[i, j])
        lo, hi = 0.0, loss if math.isfinite(loss) else 60.0
        if divergence(lo) <= delta:
            eps_delta = 0.0
        else:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if divergence(mid) <= delta else (mid, hi)
            eps_delta = hi
    return loss, worst, hs, eps_delta, len(publics), hs_se


def _pearson(observed: np.ndarray, expected: np.ndarray) -> tuple[float, int, float]:
    """χ² statistic, degrees of freedom and p-value, pooling the cells with expected count < 5."""
    if np.any((expected <= 0) & (observed > 0)):
        return math.inf, 1, 0.0  # an outcome the pmf says is impossible was drawn
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    order = np.argsort(expected, kind="stable")
    observed, expected = observed[order], expected[order]
    cut = 0
    acc = 0.0
    while cut < expected.size and acc + expected[cut] < 5.0 and expected[cut] < 5.0:
        acc += expected[cut]
        cut += 1
    obs = list(observed[cut:])
    exp = list(expected[cut:])
    if cut:
        if acc >= 5.0 or not exp:
            obs.append(observed[:cut].sum())
            exp.append(acc)
        else:  # a pooled cell still below 5: merge it into the smallest remaining cell
            obs[0] += observed[:cut].sum()
            exp[0] += acc
    obs_a, exp_a = np.asarray(obs, dtype=np.float64), np.asarray(exp, dtype=np.float64)
    dof = max(1, obs_a.size - 1)
    if obs_a.size < 2:
        return 0.0, dof, 1.0
    stat = float(((obs_a - exp_a) ** 2 / exp_a).sum())
    return stat, dof, float(chi2.sf(stat, dof))


def check_pmf_sampling(mechanism: Mechanism, x: Any, *, samples: int = 20_000, level: float = 1e-3, seed: int = 0,
                       device: str | torch.device | None = None) -> SamplingCheck:
    """χ² test that ``privatize`` on ``samples`` copies of ``x`` follows ``output_pmf(x)`` (no assertion)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    outcome, public = mechanism.report_outcomes(_draw_reports(mechanism, x, samples, seed, device))
    outcome = outcome.cpu().to(torch.int64)
    if public is None and outcome.dim() == 2:  # a product: one χ² per component, summed (independent under H0)
        p = _pmf(mechanism, x, None, {})
        if p.ndim != 2 or outcome.shape[1] != p.shape[0]:
            raise AssertionError(f"{mechanism.name}: report_outcomes gave {tuple(outcome.shape)} outcomes but "
                                 f"output_pmf({x!r}) has shape {p.shape}")
        if int(outcome.min()) < 0 or int(outcome.max()) >= p.shape[1]:
            return SamplingCheck(x, samples, math.inf, 1, 0.0, level, False)
        stat, dof = 0.0, 0
        for c in range(p.shape[0]):
            observed = np.bincount(outcome[:, c].numpy(), minlength=p.shape[1]).astype(np.float64)
            s_c, d_c, _ = _pearson(observed, samples * p[c])
            stat, dof = stat + s_c, dof + d_c
        return SamplingCheck(x, samples, stat, dof, float(chi2.sf(stat, dof)), level, False)
    if public is None:
        p = _pmf(mechanism, x, None, {})
        if int(outcome.min()) < 0 or int(outcome.max()) >= p.size:
            return SamplingCheck(x, samples, math.inf, 1, 0.0, level, False)
        observed = np.bincount(outcome.numpy(), minlength=p.size).astype(np.float64)
        stat, dof, pv = _pearson(observed, samples * p)
        return SamplingCheck(x, samples, stat, dof, pv, level, False)
    uniq, inverse = torch.unique(public.cpu(), dim=0, return_inverse=True)
    pmfs = [_pmf(mechanism, x, tuple(int(v) for v in row), {}) for row in uniq]
    width = max(p.size for p in pmfs)
    sorted_p = np.zeros((len(pmfs), width))
    rank_of = np.full((len(pmfs), width), -1, dtype=np.int64)
    for u, p in enumerate(pmfs):
        order = np.argsort(-p, kind="stable")
        sorted_p[u, :p.size] = p[order]
        rank_of[u, order] = np.arange(p.size)
    inv = inverse.numpy()
    out = outcome.numpy()
    if np.any(out < 0) or np.any(out >= width):
        return SamplingCheck(x, samples, math.inf, 1, 0.0, level, True)
    ranks = rank_of[inv, out]
    if np.any(ranks < 0):
        return SamplingCheck(x, samples, math.inf, 1, 0.0, level, True)
    observed = np.bincount(ranks, minlength=width).astype(np.float64)
    expected = (np.bincount(inv, minlength=len(pmfs))[:, None] * sorted_p).sum(axis=0)
    stat, dof, pv = _pearson(observed, expected)
    return SamplingCheck(x, samples, stat, dof, pv, level, True)


# --------------------------------------------------------------------------------------------
# The public check
# --------------------------------------------------------------------------------------------
#: how far outside the declared domain the far-input pairs lie (in units of the clip bound)
FAR = 10.0
FAR_DIM = 8


def _domain_bound(mechanism: Mechanism) -> float | None:
    """The declared domain's bound (clip radius, box half-width); None for categories or unbounded."""
    return mechanism.domain().bound


def _empirical_pairs(mechanism: Mechanism, inputs: Sequence[Any] | None, far: bool,
                     seed: int) -> list[tuple[str, Tensor, Tensor]]:
    """The neighbouring pairs of the empirical path: the caller's, or ``±C·e₁`` and — with ``far`` — inputs
    far outside the declared domain, ``±10C·e₁`` and ``±10C·u`` (``u`` a seeded random unit vector in
    8 dimensions), which only a mechanism that really clips/clamps maps back to the same worst case."""
    if inputs is not None:
        if len(inputs) != 2:
            raise ValueError("inputs for a continuous mechanism must be one neighbouring pair (x, x_prime)")
        x, xp = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in inputs)
        return [("caller's pair", x, xp)]
    c = _domain_bound(mechanism)
    if c is None:
        raise ValueError(f"{mechanism.name}: its input domain is {mechanism.domain().kind}, with no bound to build "
                         "the worst pair from; pass inputs=(x, x_prime)")
    e1 = torch.tensor([c], dtype=torch.float64)
    pairs = [("±C·e1", e1, -e1)]
    if far:
        pairs.append((f"±{FAR:g}C·e1 (outside the domain)", FAR * e1, -FAR * e1))
        if mechanism.domain().kind == "l2-ball":  # any direction is a worst case
            u = torch.randn(FAR_DIM, generator=torch.Generator().manual_seed(seed + 4242), dtype=torch.float64)
            u = FAR * c * u / u.norm()
            pairs.append((f"±{FAR:g}C·u, random u in {FAR_DIM} dims (outside the domain)", u, -u))
    return pairs


def _scores(mechanism: Mechanism, x: Tensor, direction: Tensor, n: int, seed: int, device: torch.device,
            present: bool = True) -> np.ndarray:
    fresh = copy.deepcopy(mechanism)
    gen = torch.Generator(device=device).manual_seed(seed)
    direction = direction.to(device)
    if fresh.central:  # add/remove: the release with the row vs without it
        out = []
        row = x.to(device).reshape(1, -1)
        for _ in range(n):
            rows = row if present else row[:0]
            reports = copy.deepcopy(fresh).privatize(rows, generator=gen) if present else rows
            out.append(float(fresh.aggregate(reports, expected_rows=1.0, generator=gen).to(torch.float64)
                             @ direction))
        return np.asarray(out)
    reports = fresh.privatize(_batch(mechanism, x, n, device), generator=gen)
    values = reports if reports.is_floating_point() else fresh.decode(reports)
    return (values.to(torch.float64) @ direction).cpu().numpy()


def _seed_ignored(mechanism: Mechanism, x: Tensor, device: torch.device, seed: int, n: int = 64) -> bool:
    """Scores that vary between trials yet repeat exactly under another seed: the generator is ignored."""
    direction = torch.ones_like(x) / math.sqrt(x.numel())
    a = _scores(mechanism, x, direction, n, seed + 7919, device)
    b = _scores(mechanism, x, direction, n, seed + 15485863, device)
    return bool(np.ptp(a) > 0) and bool(np.array_equal(a, b))


def check_privacy_loss(
    mechanism: Mechanism,
    eps: float | None = None,
    delta: float = 0.0,
    *,
    inputs: Sequence[Any] | None = None,
    options: dict[str, Any] | None = None,
    samples: int | None = None,
    alpha: float = 1e-3,
    confidence: float = 0.95,
    tol: float = 1e-9,
    num_public: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    raise_on_failure: bool = True,
    far: bool = True,
) -> PrivacyLossResult:
    """Check that one release of ``mechanism`` leaks at most ``eps`` (at ``delta``); see the module docstring.

    ``samples``: reports per sampled input (exact path, default 20,000; 5,000 with public randomness)
    or trials per side (empirical path, default 100,000; 2,000 for central mechanisms, which are sampled
    one ``aggregate`` call at a time). ``alpha``: family-wise error rate of the sampling cross-check;
    ``confidence``: of the empirical lower bound; ``tol``: absolute tolerance on the exact comparison (1e-9).
    ``far`` (default): also test inputs far outside the declared domain (``10·C``; see the module
    docstring), so that a mechanism that forgets to clip is caught. ``eps``: pass the paper's formula
    here to check against an independent claim (the default reads the mechanism's own guarantee).
    Returns a :class:`PrivacyLossResult`; raises ``AssertionError`` when the check fails.
    """
    if not isinstance(mechanism, Mechanism):
        raise TypeError(f"mechanism must be a privfl Mechanism, got {type(mechanism).__name__}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise ValueError(f"delta must be a number in [0, 1), got {delta!r}")
    if eps is None:
        eps = claimed_epsilon(mechanism, float(delta))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or math.isnan(eps):
        raise ValueError(f"eps must be a number >= 0 (or None: the mechanism's own claim), got {eps!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    eps, delta = float(eps), float(delta)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = str(mechanism.name)
    failures: list[str] = []
    if has_output_pmf(mechanism, inputs):
        grid = list(default_inputs(mechanism) if inputs is None else inputs)
        loss, worst, hs, eps_delta, draws, hs_se = exact_privacy_loss(
            mechanism, inputs=grid, delta=delta, eps=eps, options=options, seed=seed,
            num_public=num_public or (32 if delta == 0 else 2_000),
            device=dev)
        result = PrivacyLossResult(name, "exact", eps, delta, loss if delta == 0 else eps_delta, worst,
                                   pairs=len(grid) * (len(grid) - 1), loss=loss, hockey_stick=hs,
                                   public_draws=draws, alpha=alpha)
        if delta == 0 and loss > eps + tol:
            failures.append(f"exact privacy loss {loss:.12g} > claimed ε = {eps:.12g} at inputs {worst[0]!r} vs "
                            f"{worst[1]!r}")
        # with public randomness the mixture's divergence is a mean over public draws: fail only when it
        # exceeds δ by more than z_{1-α} standard errors (one-sided test at level alpha; exact when se = 0)
        margin = float(norm.ppf(1 - alpha / max(1, len(grid) * (len(grid) - 1)))) * hs_se
        if delta > 0 and hs is not None and hs - margin > delta + tol:
            failures.append(f"hockey-stick divergence {hs:.6g} at the claimed ε = {eps:.6g} exceeds δ = {delta:.3g} "
                            f"(ε(δ) = {eps_delta:.6g}{f'; ± {hs_se:.2g} over public draws' if hs_se else ''})")
        public = draws > 1
        n = samples or (5_000 if public else 20_000)
        tested = list(dict.fromkeys([worst[0], worst[1], grid[0]]))
        bound_c = None if _categorical(mechanism) else _domain_bound(mechanism)
        if far and inputs is None and bound_c is not None:
            tested.append(FAR * bound_c)  # privatize must clamp it exactly as output_pmf does
        level = alpha / len(tested)
        for k, x in enumerate(tested):
            sc = check_pmf_sampling(mechanism, x, samples=n, level=level, seed=seed + 101 * (k + 1), device=dev)
            result.sampling.append(sc)
            if not sc.ok:
                failures.append(f"privatize does not follow output_pmf at input {x!r}: χ² = {sc.statistic:.4g} on "
                                f"{sc.dof} dof, p = {sc.p_value:.3g} < {sc.level:.3g} ({n} samples"
                                f"{', outcomes ranked within their public draw' if sc.ranked else ''})")
    else:
        pairs = _empirical_pairs(mechanism, inputs, far, seed)
        central = mechanism.central
        n = samples or (2_000 if central else 100_000)
        level = 1.0 - (1.0 - confidence) / len(pairs)  # Bonferroni: the family keeps 1 − confidence
        result = None
        for k, (label, x, xp) in enumerate(pairs):
            direction = (x - xp) / torch.linalg.vector_norm(x - xp).clamp_min(1e-300)
            s_in = _scores(mechanism, x, direction, n, seed + 10 * k, dev, present=True)
            if central:
                s_out = _scores(mechanism, x, direction, n, seed + 10 * k + 1, dev, present=False)
            else:
                s_out = _scores(mechanism, xp, direction, n, seed + 10 * k + 1, dev)
            bound = epsilon_lower_bound(s_in, s_out, delta=delta, confidence=level)
            if result is None or bound.epsilon > result.epsilon:
                result = PrivacyLossResult(name, "empirical", eps, delta, bound.epsilon,
                                           (x.tolist(), "absent" if central else xp.tolist()), pairs=len(pairs),
                                           bound=bound)
            if bound.epsilon > eps + tol:
                failures.append(f"empirical ε lower bound {bound.epsilon:.4g} on the pair {label} (at {level:.4%} "
                                f"confidence, {n} trials per side, TPR ≥ {bound.tpr_lower:.4g}, FPR ≤ "
                                f"{bound.fpr_upper:.4g}) exceeds the claimed ε = {eps:.4g} at δ = {delta:.3g}")
        if _seed_ignored(mechanism, pairs[0][1], dev, seed):
            failures.append("identical draws for two different seeds although they vary between trials: the "
                            "mechanism ignores its generator, so its statistics are not independent across seeds")
    if failures and raise_on_failure:
        raise AssertionError(f"{name}: privacy check failed:\n  - " + "\n  - ".join(failures))
    return result
