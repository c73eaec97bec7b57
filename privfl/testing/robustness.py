"""Testing robust aggregation: hypothesis strategies, adversarial inputs, property checks, κ bounds.

privfl's own tests use this module; it is public so that users test their own rules the same way::

    from privfl.testing.robustness import check_robust, kappa_krum
    report = check_robust(MyRule(f=3), f=3, kappa=kappa_krum(15, 3))   # AssertionError if violated
    report.max_ratio, report.worst

**(f, κ)-robustness** (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A
Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023, PMLR 206:1232–1300): a rule ``F`` is
(f, κ)-robust when for every input of ``n`` rows and every set ``S`` of ``n − f`` of them,
``‖F(x) − x̄_S‖² ≤ κ · (1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖²``. :func:`check_robust` measures the ratio of the
two sides on adversarial inputs — the honest set ``S`` is drawn (Gaussian, heavy-tailed, clustered, or
with an honest outlier) and ``f`` rows are placed by known attacks (ALIE, sign flip, IPM, mimic, far
outliers, coordinate-wise extremes) and by a search along directions (principal, random, the mean)
for the most harmful distance — and fails when the largest ratio found exceeds ``κ``. Any rule has
``κ ≥ f/(n − 2f)`` (:func:`kappa_lower_bound`).

**Non-finite fuzz** (:func:`fuzz_nonfinite`, run by :func:`check_robust` after the κ search): inputs
with at most ``f`` faulty rows (NaN, ±Inf, one NaN entry, ±dtype-max, huge-norm, duplicates) among
honest rows from 1e-3 up to the dtype's max, in float16/32/64; any non-finite output (for
pre-aggregators: more non-finite rows out than in) or exception fails.

**Bounds** (``kappa_*``): the published ones are from Allouah et al. (AISTATS 2023, Table 1 and
Lemma 1); the ones marked *derived* are proved in their docstrings (short arguments, looser than
what the rules achieve, but valid), for rules without a published (f, κ) constant.

Strategies (:func:`update_matrices`, :func:`adversarial_sets`) need ``hypothesis``; checks do not.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from privfl.core import Aggregator, Mixing, PreAggregator
from privfl.params import COUNT, NON_NEGATIVE, Int

NON_NEGATIVE_INT = Int(0, None)

__all__ = [
    "RobustnessReport",
    "AdversarialSet",
    "robustness_ratio",
    "check_robust",
    "adversarial_candidates",
    "honest_set",
    "apply_rule",
    "check_permutation_invariance",
    "check_translation_equivariance",
    "check_no_mutation",
    "check_dtype_device",
    "check_coordinate_range",
    "kappa_lower_bound",
    "kappa_trimmed_mean",
    "kappa_median",
    "kappa_median_published",
    "kappa_geometric_median",
    "kappa_krum",
    "kappa_nnm",
    "kappa_meamed",
    "kappa_mda",
    "kappa_multi_krum",
    "kappa_bulyan",
    "kappa_centered_clipping",
    "KAPPA",
    "kappa_of",
    "update_matrices",
    "adversarial_sets",
    "HONEST_KINDS",
    "Composed",
    "nonfinite_count",
    "FuzzReport",
    "fuzz_case",
    "fuzz_nonfinite",
    "FUZZ_DTYPES",
]

HONEST_KINDS = ("gaussian", "heavy-tailed", "clusters", "honest-outlier")


# --------------------------------------------------------------------------------------------
# κ bounds
# --------------------------------------------------------------------------------------------
def _check_nf(n: int, f: int, need: int = 2, *, strict: bool = True, extra: int = 0) -> None:
    """``n`` and ``f`` through the shared declarations, then the bound's requirement on them:
    ``n > need·f + extra`` (``strict``) or ``n >= need·f + extra``."""
    COUNT.check("n", n)
    NON_NEGATIVE_INT.check("f", f)
    if (n <= need * f + extra) if strict else (n < need * f + extra):
        rel = ">" if strict else ">="
        raise ValueError(f"need n {rel} {need}f{f' + {extra}' if extra else ''}, got n={n!r}, f={f!r}")


def kappa_lower_bound(n: int, f: int) -> float:
    """No rule is (f, κ)-robust with ``κ < f/(n − 2f)`` (Allouah et al., AISTATS 2023, Prop. 6)."""
    _check_nf(n, f)
    return f / (n - 2 * f)


def kappa_trimmed_mean(n: int, f: int) -> float:
    """Coordinate-wise trimmed mean (b = f): ``6f/(n − 2f) · (1 + f/(n − 2f))`` (Allouah et al. 2023, Table 1)."""
    _check_nf(n, f)
    r = f / (n - 2 * f)
    return 6 * r * (1 + r)


def kappa_median_published(n: int, f: int) -> float:
    """Coordinate-wise median: ``4(1 + f/(n − 2f))²`` (Allouah et al. 2023, Table 1)."""
    _check_nf(n, f)
    return 4 * (1 + f / (n - 2 * f)) ** 2


def kappa_median(n: int, f: int) -> float:
    """Coordinate-wise median, *derived*: ``(n − f)/(⌈n/2⌉ − f)`` (tighter than the published bound).

    Per coordinate (the ratio adds up over coordinates): with ``h = n − f`` honest values of mean μ and
    variance V, the median m has at least ``q = ⌈n/2⌉ − f`` honest values on each side (at least
    ``⌈n/2⌉`` of all values are ≥ m, at most f of them faulty; for even n, m ≤ the upper middle value).
    If m > μ those q values each exceed μ by at least m − μ, so ``q(m − μ)² ≤ Σ(x_i − μ)² = hV``.
    """
    _check_nf(n, f)
    return (n - f) / (math.ceil(n / 2) - f)


def kappa_geometric_median(n: int, f: int) -> float:
    """Geometric median: ``4(1 + f/(n − 2f))²`` (Allouah et al. 2023, Table 1)."""
    _check_nf(n, f)
    return 4 * (1 + f / (n - 2 * f)) ** 2


def kappa_krum(n: int, f: int) -> float:
    """Krum: ``6(1 + f/(n − 2f))`` (Allouah et al. 2023, Table 1; needs n > 2f + 2)."""
    _check_nf(n, f)
    return 6 * (1 + f / (n - 2 * f))


def kappa_nnm(n: int, f: int, kappa: float) -> float:
    """``F ∘ NNM`` for an (f, κ)-robust ``F``: ``8f/(n − f) · (κ + 1)`` (Allouah et al. 2023, Lemma 1)."""
    _check_nf(n, f)
    return 8 * f / (n - f) * (kappa + 1)


def kappa_meamed(n: int, f: int) -> float:
    """Meamed, *derived*: ``4(√(f·h) + f·√κ_m)² / h²`` with ``h = n − f``, ``κ_m`` = :func:`kappa_median`.

    Per coordinate: W, the h values closest to the median m, has b ≤ f faulty values and misses b
    honest ones (set T). ``mean(W) − μ = (1/h)[−Σ_T(x_i − μ) + Σ_{W faulty}(x_j − μ)]``. By
    Cauchy–Schwarz ``Σ_T|x_i − μ| ≤ √(b·hV)``. A faulty value in W is no farther from m than any
    excluded honest value; the one nearest μ is within ``√(hV/b)`` of μ, hence within
    ``√(hV/b) + |m − μ|`` of m; so ``|x_j − μ| ≤ √(hV/b) + 2|m − μ|``, and ``|m − μ| ≤ √(κ_m V)``.
    Summing and taking b = f (the worst case) gives ``|mean(W) − μ| ≤ (2/h)(√(fh) + f√κ_m)√V``.
    """
    _check_nf(n, f)
    h = n - f
    return 4 * (math.sqrt(f * h) + f * math.sqrt(kappa_median(n, f))) ** 2 / h**2


def kappa_mda(n: int, f: int) -> float:
    """MDA, *derived*: ``(√f + 2√2·f)² / (n − f)``.

    The chosen subset S* (h = n − f rows) has diameter at most Δ, the honest diameter (S is a
    candidate). With C = S* ∩ S and B = S* \\ S (b = |B| ≤ f), ``Σ_{S*}(x − μ) = −Σ_{S∖C}(x − μ) +
    Σ_B(x − μ)``; ``Σ_{S∖C}‖x − μ‖ ≤ √(b·hV)`` (Cauchy–Schwarz) and each faulty row is within Δ of a
    row of C, itself within Δ of μ, so ``‖x_j − μ‖ ≤ 2Δ``; and ``Δ² ≤ 2hV`` (the two rows at distance
    Δ each contribute to hV with ``‖x_p − μ‖² + ‖x_q − μ‖² ≥ Δ²/2``).
    """
    _check_nf(n, f)
    return (math.sqrt(f) + 2 * math.sqrt(2) * f) ** 2 / (n - f)


def kappa_multi_krum(n: int, f: int) -> float:
    """Multi-Krum with m = n − f, *derived* (loose): ``max_b (√(b·h) + b·ρ_b)² / h²`` where ``h = n − f``,
    ``k = n − f − 2`` and ``ρ_b² = 2[k·h·(h/b + 1)/(h − 1) + h] / (n − 2f − 1)``.

    A selected faulty row j (b of them, b ≤ f) beat an excluded honest row i, the one nearest μ
    (``‖x_i − μ‖² ≤ hV/b``), whose score is at most ``k/(h − 1)`` of its summed squared distances to
    the other honest rows, ``h(‖x_i − μ‖² + V)``. j's k nearest rows include at least
    ``n − 2f − 1`` honest ones L, so ``avg_L ‖x_j − x_l‖² ≤ score_j/(n − 2f − 1)`` and
    ``‖x_j − μ‖² ≤ 2·avg_L‖x_j − x_l‖² + 2·avg_L‖x_l − μ‖² ≤ ρ_b²V``. The honest rows left out
    contribute at most ``√(b·hV)`` (Cauchy–Schwarz), as for :func:`kappa_mda`. Needs n > 2f + 2.
    """
    _check_nf(n, f)
    if f == 0:
        return 0.0
    h, k = n - f, n - f - 2
    best = 0.0
    for b in range(1, f + 1):
        rho2 = 2 * (k * h * (h / b + 1) / (h - 1) + h) / (n - 2 * f - 1)
        best = max(best, (math.sqrt(b * h) + b * math.sqrt(rho2)) ** 2 / h**2)
    return best


def kappa_bulyan(n: int, f: int) -> float:
    """Bulyan, *derived* (loose): ``max_b h·(√(3f + b) + b(1/√(f + b) + 2/√(⌈θ/2⌉ − f)))² / β²``,
    ``h = n − f``, ``θ = n − 2f``, ``β = θ − 2f``, b ≤ f.

    Per coordinate, the β values W closest to the median m of the θ selected rows (≤ f faulty): the
    honest values missing from W number ``3f + b`` (b faulty values in W), contributing at most
    ``√((3f + b)hV)``; m is within ``√(hV/(⌈θ/2⌉ − f))`` of μ (as for :func:`kappa_median`, with
    ⌈θ/2⌉ − f honest selected values on each side); a faulty value in W is no farther from m than the
    nearest of the ``≥ f + b`` honest selected values left out of W, within ``√(hV/(f + b)) + |m − μ|``.
    Needs n ≥ 4f + 3.
    """
    _check_nf(n, f, 4, strict=False, extra=3)
    if f == 0:
        return 0.0
    h, theta = n - f, n - 2 * f
    beta = theta - 2 * f
    q = math.ceil(theta / 2) - f
    best = 0.0
    for b in range(0, f + 1):
        c = math.sqrt(3 * f + b) + b * (1 / math.sqrt(f + b) + 2 / math.sqrt(q))
        best = max(best, h * c * c / beta**2)
    return best


def kappa_centered_clipping(n: int, f: int) -> float:
    """Centered clipping (one iteration) from a centre ``v₀ = x̄_S`` with ``τ ≥ max_{i∈S}‖x_i − x̄_S‖``,
    *derived*: ``f²(n − f)/n²``. Honest rows are not clipped, so ``v₁ − μ = (1/n)Σ_B c_j(x_j − μ)`` with
    ``‖c_j(x_j − μ)‖ ≤ τ``; and ``τ² ≤ hV`` for the smallest admissible τ."""
    _check_nf(n, f)
    return f * f * (n - f) / n**2


#: The proven (f, κ) coefficient of each built-in rule, by registered name. Centered clipping's holds
#: only from a good centre (a property of the run, not of the rule alone), so it is not listed.
KAPPA: dict[str, Callable[[int, int], float]] = {
    "median": kappa_median,
    "trimmed-mean": kappa_trimmed_mean,
    "geometric-median": kappa_geometric_median,
    "krum": kappa_krum,
    "multi-krum": kappa_multi_krum,
    "bulyan": kappa_bulyan,
    "mda": kappa_mda,
    "meamed": kappa_meamed,
}


def kappa_of(rule: Aggregator, n: int) -> float | None:
    """The κ ``rule`` is proven to meet at ``n`` inputs with its declared ``f``: its own declaration
    (:meth:`privfl.core.Aggregator.kappa`) first, else :data:`KAPPA`; ``None`` when none is known."""
    value = rule.kappa(n) if isinstance(rule, Aggregator) else None
    if value is None and getattr(rule, "name", None) in KAPPA:
        value = KAPPA[rule.name](n, rule.f)
    return value


# --------------------------------------------------------------------------------------------
# Applying rules and measuring
# --------------------------------------------------------------------------------------------
def apply_rule(rule: Callable[..., Tensor], updates: Tensor, *, seed: int = 0) -> Tensor:
    """Apply an aggregator, pre-aggregator or mixing to ``updates`` on a fresh copy of the rule (so a
    stateful rule sees the same state every time); pre-aggregators get a generator seeded ``seed``."""
    fresh = copy.deepcopy(rule)
    if isinstance(fresh, PreAggregator):
        gen = torch.Generator(device=updates.device).manual_seed(seed)
        return fresh(updates, generator=gen)
    if isinstance(fresh, Mixing):
        return fresh(updates)
    return fresh(updates)


class Composed(Aggregator):
    """Pre-aggregators then an aggregator, as one rule (``Composed([nnm], trimmed_mean)``); the
    pre-aggregators draw from a generator seeded ``seed`` on every call."""

    name = "composed"

    def __init__(self, preaggregators: Sequence[PreAggregator], aggregator: Aggregator, *, seed: int = 0):
        self.preaggregators = list(preaggregators)
        self.aggregator = aggregator
        self.seed = seed
        self.f = getattr(aggregator, "f", 0)

    def __call__(self, updates: Tensor) -> Tensor:
        x = updates
        for k, pre in enumerate(self.preaggregators):
            x = pre(x, generator=torch.Generator(device=updates.device).manual_seed(self.seed + k))
        return self.aggregator(x)


def nonfinite_count(updates: Tensor) -> int:
    """Number of rows holding a NaN or ±Inf."""
    return int((~torch.isfinite(updates).all(dim=1)).sum())


# --------------------------------------------------------------------------------------------
# Non-finite fuzz: at most f faulty rows of NaN/±Inf/dtype-max/huge-norm/duplicates, any float dtype
# --------------------------------------------------------------------------------------------
FUZZ_DTYPES = (torch.float16, torch.float32, torch.float64)
_HONEST_SCALES = ("small", "unit", "large", "near-max", "offset-near-max")
_FAULTS = ("nan", "inf", "-inf", "one-nan", "dtype-max", "-dtype-max", "signs-dtype-max", "huge-norm",
           "duplicate", "1e38", "alie-far")


def fuzz_case(n: int, f: int, d: int, dtype: torch.dtype, generator: torch.Generator) -> tuple[Tensor, str]:
    """One fuzz input ``[n, d]`` of ``dtype``: ``n − k`` finite honest rows at a scale from 1e-3 up to the
    dtype's max (``"near-max"``: entries up to ±max; ``"offset-near-max"``: a common offset near max with a
    small spread) and ``k ≤ f`` faulty rows (NaN, ±Inf, one NaN entry, ±max, mixed-sign max, a huge-norm
    direction scaled to max, a duplicated honest row, 1e38 clamped to the dtype, ALIE far out) at random
    positions. Returns the rows and a description."""
    g = generator
    big = torch.finfo(dtype).max

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def u() -> float:
        return float(torch.rand((), generator=g, dtype=torch.float64))

    scale_kind = _HONEST_SCALES[ri(0, len(_HONEST_SCALES) - 1)]
    h = n - (k := ri(0, f))
    z = torch.randn(h, d, generator=g, dtype=torch.float64)
    if scale_kind == "small":
        x = 1e-3 * z
    elif scale_kind == "unit":
        x = 3.0 * torch.randn(d, generator=g, dtype=torch.float64) + z
    elif scale_kind == "large":
        x = (big ** u()) * z
    elif scale_kind == "near-max":
        x = big * (0.25 + 0.75 * u()) * z / max(1.0, float(z.abs().max()))
    else:
        x = big * (0.5 + 0.5 * u()) * (1.0 - 1e-3 * z.abs() / max(1.0, float(z.abs().max())))
        x = x * torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    honest = x.clamp(-big, big).to(dtype)
    mu = honest.to(torch.float64).mean(dim=0)
    bad = torch.empty(k, d, dtype=torch.float64)
    kinds = []
    for r in range(k):
        kind = _FAULTS[ri(0, len(_FAULTS) - 1)]
        kinds.append(kind)
        if kind in ("nan", "inf", "-inf"):
            bad[r] = float(kind)
        elif kind == "one-nan":
            bad[r] = mu
            bad[r, ri(0, d - 1)] = float("nan")
        elif kind == "dtype-max":
            bad[r] = big
        elif kind == "-dtype-max":
            bad[r] = -big
        elif kind == "signs-dtype-max":
            bad[r] = big * torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
        elif kind == "huge-norm":
            v = torch.randn(d, generator=g, dtype=torch.float64)
            bad[r] = big * v / v.abs().max()
        elif kind == "duplicate":
            bad[r] = honest[ri(0, h - 1)].to(torch.float64)
        elif kind == "1e38":
            bad[r] = min(1e38, big)
        else:  # ALIE far out: μ − z·σ with a large z
            sd = honest.to(torch.float64).std(dim=0) if h > 1 else torch.ones(d, dtype=torch.float64)
            bad[r] = (mu - 1e3 * torch.nan_to_num(sd, nan=1.0, posinf=big)).clamp(-big, big)
    rows = torch.cat([honest, bad.to(dtype)])[torch.randperm(n, generator=g)]
    return rows, f"{dtype}, n={n}, f={f}, d={d}, honest {scale_kind}, faulty {kinds or 'none'}"


@dataclass
class FuzzReport:
    """What :func:`fuzz_nonfinite` found: ``cases`` inputs, ``nonfinite`` outputs that held NaN/±Inf
    (for pre-aggregators and mixing: more non-finite rows out than in), ``errors`` calls that raised,
    and up to 5 ``examples`` (description and what went wrong)."""

    cases: int
    nonfinite: int
    errors: int
    examples: list[str]

    @property
    def ok(self) -> bool:
        return self.nonfinite == 0 and self.errors == 0


def fuzz_nonfinite(
    rule: Callable[..., Tensor] | None,
    f: int,
    *,
    n: int | None = None,
    cases: int = 200,
    d_max: int = 16,
    dtypes: Sequence[torch.dtype] = FUZZ_DTYPES,
    seed: int = 0,
    prepare: Callable[[Any, Tensor], Any] | None = None,
    raise_on_failure: bool = True,
) -> FuzzReport:
    """Feed ``rule`` ``cases`` inputs of :func:`fuzz_case` (``n`` rows, default ``4f + 3``; at most ``f``
    faulty; every dtype in ``dtypes``, values up to the dtype's max) and count outputs with NaN/±Inf.

    An aggregator fails on any non-finite output; a pre-aggregator or mixing when it returns more
    non-finite rows than it was given (a faulty row may spoil its own output row, which the rule after
    it discards, but finite rows must stay finite); any exception is an error (the inputs are within
    ``f``). ``prepare(rule, rows)`` gives the rule to use per case (stateful rules).
    """
    COUNT.check("cases", cases, owner="fuzz_nonfinite")
    Int(0, None).check("f", f, owner="fuzz_nonfinite")
    n = 4 * f + 3 if n is None else n
    gen = torch.Generator().manual_seed(seed)
    bad_out = errors = 0
    examples: list[str] = []
    for i in range(cases):
        dtype = dtypes[i % len(dtypes)]
        d = int(torch.randint(1, d_max + 1, (1,), generator=gen))
        rows, what = fuzz_case(n, f, d, dtype, gen)
        r = prepare(rule, rows) if prepare is not None else rule
        try:
            out = apply_rule(r, rows, seed=seed + i)
        except Exception as exc:  # noqa: BLE001 - any failure on a valid input is what the fuzz reports
            errors += 1
            if len(examples) < 5:
                examples.append(f"{what}: raised {type(exc).__name__}: {exc}")
            continue
        if out.dim() == 2 and isinstance(r, (PreAggregator, Mixing)):
            broken = nonfinite_count(out) > nonfinite_count(rows)
        else:
            broken = not bool(torch.isfinite(out).all())
        if broken:
            bad_out += 1
            if len(examples) < 5:
                examples.append(f"{what}: non-finite output")
    report = FuzzReport(cases, bad_out, errors, examples)
    if raise_on_failure and not report.ok:
        name = getattr(rule, "name", type(rule).__name__)
        raise AssertionError(f"{name}: {bad_out} non-finite output(s) and {errors} error(s) in {cases} fuzz cases "
                             f"within f={f}:\n  - " + "\n  - ".join(examples))
    return report


def robustness_ratio(output: Tensor, honest: Tensor) -> float:
    """``‖output − x̄_S‖² / ((1/|S|) Σ ‖x_i − x̄_S‖²)`` for honest rows ``honest`` (float64).

    0 when the output equals x̄_S; ``inf`` when the honest rows coincide but the output differs.
    """
    H = honest.to(torch.float64)
    mu = H.mean(dim=0)
    var = float((H - mu).square().sum(dim=1).mean())
    err = float((output.to(torch.float64) - mu).square().sum())
    if not math.isfinite(err):
        return math.inf
    if var == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / var


@dataclass
class RobustnessReport:
    """What :func:`check_robust` measured: the largest ratio, the attack that reached it, the bound."""

    max_ratio: float
    kappa: float
    worst: str
    evaluations: int
    n: int
    f: int
    fuzz: FuzzReport | None = None

    @property
    def ok(self) -> bool:
        within = self.max_ratio <= self.kappa * (1 + 1e-9) + 1e-12
        return within and (self.fuzz is None or self.fuzz.ok)


def honest_set(kind: str, h: int, d: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """``h`` honest rows of dimension ``d``: ``"gaussian"``, ``"heavy-tailed"`` (Student-t, 3 dof),
    ``"clusters"`` (two groups 4σ apart) or ``"honest-outlier"`` (one row 10σ away), around a random
    common mean (norm ≈ 5σ√d, so that sign-flip-like attacks are meaningful)."""
    if kind not in HONEST_KINDS:
        raise ValueError(f"kind must be one of {HONEST_KINDS}, got {kind!r}")
    g = generator
    center = 5.0 * torch.randn(d, generator=g, dtype=torch.float64)
    z = torch.randn(h, d, generator=g, dtype=torch.float64)
    if kind == "heavy-tailed":
        chi2 = torch.randn(h, 3, generator=g, dtype=torch.float64).square().sum(dim=1, keepdim=True) / 3
        z = z / chi2.sqrt()
    elif kind == "clusters":
        shift = torch.randn(d, generator=g, dtype=torch.float64)
        shift = 4.0 * shift / shift.norm() * math.sqrt(d)
        z[: h // 2] += shift
    elif kind == "honest-outlier":
        u = torch.randn(d, generator=g, dtype=torch.float64)
        z[0] += 10.0 * math.sqrt(d) * u / u.norm()
    return (center + z).to(dtype)


def _unit(v: Tensor) -> Tensor:
    norm = v.norm()
    return v / norm if norm > 0 else v


def adversarial_candidates(honest: Tensor, f: int, *, generator: torch.Generator) -> list[tuple[str, Tensor]]:
    """Named ``[f, d]`` blocks of faulty rows against the honest rows ``honest`` (float64).

    Known attacks (ALIE at several z, sign flip, IPM ε ∈ {0.1, 100}, mimic of the farthest honest row
    and pushed beyond it, far and huge outliers, coordinate-wise extremes just outside the honest
    range, rows split on both sides) and a grid of distances ``μ + t·s·v`` (``s`` the honest RMS
    deviation) along the principal direction, a random direction and the mean's direction.
    """
    H = honest.to(torch.float64)
    h, d = H.shape
    mu = H.mean(dim=0)
    dev = H - mu
    s = math.sqrt(float(dev.square().sum(dim=1).mean())) or 1.0
    sigma = H.std(dim=0) if h > 1 else torch.zeros(d, dtype=torch.float64)
    if h > 1:
        v1 = torch.linalg.svd(dev, full_matrices=False).Vh[0]
    else:
        v1 = _unit(torch.randn(d, generator=generator, dtype=torch.float64))
    u = _unit(torch.randn(d, generator=generator, dtype=torch.float64))
    m_dir = _unit(mu) if float(mu.norm()) > 0 else u
    far = int(dev.square().sum(dim=1).argmax())

    def rep(row: Tensor) -> Tensor:
        return row.unsqueeze(0).expand(f, d).clone()

    out: list[tuple[str, Tensor]] = []
    for z in (-3.0, -1.0, -0.5, 0.5, 1.0, 3.0):
        out.append((f"alie z={z}", rep(mu - z * sigma)))
    out += [("sign-flip", rep(-mu)), ("ipm 0.1", rep(-0.1 * mu)), ("ipm 100", rep(-100.0 * mu))]
    out.append(("mimic farthest", rep(H[far])))
    for t in (0.5, 1.0, 3.0):
        out.append((f"mimic pushed {t}", rep(H[far] + t * (H[far] - mu))))
    out += [("far outlier", rep(mu + 1e3 * s * u)), ("huge outlier", rep(mu + 1e8 * s * u))]
    hi, lo = H.max(dim=0).values, H.min(dim=0).values
    gap = (hi - lo).clamp_min(1e-12)
    out.append(("coordinate max", rep(hi + 1e-3 * gap)))
    alt = torch.where(torch.arange(d) % 2 == 0, hi + 1e-3 * gap, lo - 1e-3 * gap)
    out.append(("coordinate alternating", rep(alt)))
    out.append(("coordinate far", rep(hi + 10 * gap)))
    for name, v in (("principal", v1), ("random", u), ("mean", m_dir)):
        for t in torch.logspace(-1, 2.5, 15).tolist():
            out.append((f"line {name} t={t:.3g}", rep(mu + t * s * v)))
    for t in (0.5, 1.0, 2.0, 5.0):
        half = (f + 1) // 2
        rows = torch.cat([rep(mu + t * s * v1)[:half], rep(mu - t * s * v1)[: f - half]])
        out.append((f"split t={t}", rows))
    spread = mu + s * torch.randn(f, d, generator=generator, dtype=torch.float64) * 2.0
    out.append(("spread", spread))
    return out


def _place(honest: Tensor, bad: Tensor, *, generator: torch.Generator, front: bool) -> tuple[Tensor, Tensor]:
    """All rows with the faulty ones at random positions (or first); returns rows and honest indices."""
    h, f = honest.shape[0], bad.shape[0]
    n = h + f
    order = torch.arange(n) if front else torch.randperm(n, generator=generator)
    rows = torch.empty(n, honest.shape[1], dtype=honest.dtype)
    bad_pos, honest_pos = order[:f], order[f:]
    rows[bad_pos] = bad.to(honest.dtype)
    rows[honest_pos] = honest
    return rows, honest_pos.sort().values


def _nonfinite(bad: Tensor, generator: torch.Generator) -> Tensor:
    f = bad.shape[0]
    if f == 0:
        return bad
    k = int(torch.randint(1, f + 1, (1,), generator=generator))
    out = bad.clone()
    kinds = (float("nan"), float("inf"), -float("inf"))
    for r in range(k):
        choice = int(torch.randint(0, 4, (1,), generator=generator))
        if choice < 3:
            out[r] = kinds[choice]
        else:  # a single bad entry in an otherwise plausible row
            out[r, int(torch.randint(0, out.shape[1], (1,), generator=generator))] = float("nan")
    return out


def check_robust(
    aggregator: Callable[..., Tensor],
    f: int,
    kappa: float,
    *,
    n: int | None = None,
    d: int = 8,
    trials: int = 6,
    seed: int = 0,
    nonfinite: bool = False,
    dtype: torch.dtype = torch.float64,
    prepare: Callable[[Any, Tensor], Any] | None = None,
    raise_on_failure: bool = True,
    fuzz_cases: int | None = 100,
) -> RobustnessReport:
    """Measure the (f, κ)-robustness ratio of ``aggregator`` on adversarial inputs; fail above ``kappa``;
    then fuzz it with ``fuzz_cases`` non-finite / near-dtype-max inputs within ``f`` (:func:`fuzz_nonfinite`:
    float16/32/64, NaN, ±Inf, ±max, huge-norm and duplicated rows) and fail on any non-finite output.

    ``n`` rows (default ``4f + 3``, enough for every rule in privfl) of dimension ``d``; each of
    ``trials`` honest sets (kinds cycle through :data:`HONEST_KINDS`) faces every block of
    :func:`adversarial_candidates`, placed at random positions and again as the first rows; the
    distance along the worst line is then refined by a golden-section search. ``nonfinite`` turns
    1..f of the faulty rows into NaN/Inf rows (or rows with one NaN). ``prepare(rule, honest)``
    returns the rule to use for an honest set (e.g. to set a stateful rule's centre); the fuzz is then
    skipped (call :func:`fuzz_nonfinite` with a ``prepare`` that suits it). ``fuzz_cases=None`` (or 0)
    skips the fuzz. Returns a :class:`RobustnessReport` (``fuzz``: the :class:`FuzzReport`); raises
    ``AssertionError`` when the largest ratio exceeds ``kappa`` or the fuzz finds a non-finite output
    (unless ``raise_on_failure=False``).
    """
    Int(0, None).check("f", f, owner="check_robust")
    NON_NEGATIVE.check("kappa", kappa, owner="check_robust")
    n = 4 * f + 3 if n is None else n
    if n <= f:
        raise ValueError(f"n must exceed f, got n={n}, f={f}")
    gen = torch.Generator().manual_seed(seed)
    best, worst, evals = 0.0, "none", 0

    def evaluate(rule: Any, honest: Tensor, bad: Tensor, front: bool) -> float:
        nonlocal evals
        if nonfinite:
            bad = _nonfinite(bad, gen)
        rows, _ = _place(honest, bad, generator=gen, front=front)
        evals += 1
        return robustness_ratio(apply_rule(rule, rows.to(dtype), seed=seed), honest)

    for trial in range(trials):
        kind = HONEST_KINDS[trial % len(HONEST_KINDS)]
        honest = honest_set(kind, n - f, d, generator=gen, dtype=torch.float64)
        honest = honest.to(dtype).to(torch.float64)  # representable in the test dtype
        rule = prepare(aggregator, honest.to(dtype)) if prepare is not None else aggregator
        mu = honest.mean(dim=0)
        s = math.sqrt(float((honest - mu).square().sum(dim=1).mean())) or 1.0
        line_best: tuple[float, float, Tensor, str] | None = None  # ratio, t, direction, name
        for name, bad in adversarial_candidates(honest, f, generator=gen):
            for front in (False, True):
                r = evaluate(rule, honest, bad, front)
                if r > best:
                    best, worst = r, f"{kind}: {name}{' (first rows)' if front else ''}"
                if name.startswith("line ") and (line_best is None or r > line_best[0]):
                    t = float(name.split(" t=")[1])
                    v = (bad[0] - mu) / (t * s)
                    line_best = (r, t, v, name.split(" t=")[0])
        # refine the distance along the worst direction (golden section on log t)
        if f and line_best is not None:
            _, t0, v, label = line_best
            a, b = math.log(t0) - 0.6, math.log(t0) + 0.6
            phi = (math.sqrt(5) - 1) / 2
            for _ in range(10):
                c1, c2 = b - phi * (b - a), a + phi * (b - a)
                r1 = evaluate(rule, honest, (mu + math.exp(c1) * s * v).expand(f, -1), False)
                r2 = evaluate(rule, honest, (mu + math.exp(c2) * s * v).expand(f, -1), False)
                for r, c in ((r1, c1), (r2, c2)):
                    if r > best:
                        best, worst = r, f"{kind}: {label} t={math.exp(c):.4g} (refined)"
                if r1 > r2:
                    b = c2
                else:
                    a = c1
    report = RobustnessReport(best, float(kappa), worst, evals, n, f)
    if raise_on_failure and best > float(kappa) * (1 + 1e-9) + 1e-12:
        raise AssertionError(
            f"(f, κ)-robustness violated: ratio {best:.4g} > κ = {kappa:.4g} (n={n}, f={f}) under {worst}"
        )
    if fuzz_cases and prepare is None:
        report.fuzz = fuzz_nonfinite(aggregator, f, n=n, cases=fuzz_cases, seed=seed,
                                     raise_on_failure=raise_on_failure)
    return report


# --------------------------------------------------------------------------------------------
# Property checks
# --------------------------------------------------------------------------------------------
def _close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return bool(torch.allclose(a.to(torch.float64), b.to(torch.float64), rtol=rtol, atol=atol, equal_nan=True))


def check_permutation_invariance(
    rule: Callable[..., Tensor], updates: Tensor, *, seed: int = 0, rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    """Aggregators: ``F(P x) = F(x)``; pre-aggregators/mixing with one output per row: outputs permute
    with the rows. ``AssertionError`` otherwise."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(updates.shape[0], generator=g).to(updates.device)
    out = apply_rule(rule, updates, seed=seed)
    out_p = apply_rule(rule, updates[perm], seed=seed)
    if out.dim() == 2 and out.shape[0] == updates.shape[0]:
        out = out[perm]
    scale = float(updates[torch.isfinite(updates)].abs().max()) if bool(torch.isfinite(updates).any()) else 1.0
    if not _close(out_p, out, rtol, atol * max(1.0, scale)):
        diff = (out_p.to(torch.float64) - out.to(torch.float64)).abs().max()
        raise AssertionError(f"not permutation-invariant: max difference {float(diff):.3g}")


def check_translation_equivariance(
    rule: Callable[..., Tensor], updates: Tensor, shift: Tensor | None = None, *, seed: int = 0,
    rtol: float = 1e-5, atol: float = 1e-6,
) -> None:
    """``F(x + c) = F(x) + c`` (for pre-aggregators/mixing: every output row moves by ``c``)."""
    if shift is None:
        g = torch.Generator().manual_seed(seed + 1)
        shift = torch.randn(updates.shape[1], generator=g, dtype=torch.float64).to(updates.device, updates.dtype)
    out = apply_rule(rule, updates, seed=seed)
    out_s = apply_rule(rule, updates + shift, seed=seed)
    finite = updates[torch.isfinite(updates)]
    scale = max(1.0, float(finite.abs().max()) if finite.numel() else 1.0, float(shift.abs().max()))
    if not _close(out_s, out + shift, rtol, atol * scale):
        diff = (out_s.to(torch.float64) - (out + shift).to(torch.float64)).abs().max()
        raise AssertionError(f"not translation-equivariant: max difference {float(diff):.3g}")


def check_no_mutation(rule: Callable[..., Tensor], updates: Tensor, *, seed: int = 0) -> None:
    """The rule leaves its input bit-for-bit unchanged (NaN payloads included)."""
    before = updates.detach().clone()
    apply_rule(rule, updates, seed=seed)
    same = torch.equal(before.contiguous().view(torch.uint8), updates.contiguous().view(torch.uint8))
    if not same:
        raise AssertionError("the rule modified its input")


def check_dtype_device(rule: Callable[..., Tensor], updates: Tensor, *, seed: int = 0) -> Tensor:
    """The output has the input's dtype and device (returns it)."""
    out = apply_rule(rule, updates, seed=seed)
    if out.dtype != updates.dtype or out.device != updates.device:
        raise AssertionError(
            f"output dtype/device {out.dtype}/{out.device} differs from input {updates.dtype}/{updates.device}"
        )
    return out


def check_coordinate_range(rule: Callable[..., Tensor], updates: Tensor, honest: Tensor, *, seed: int = 0,
                           tol: float = 1e-6) -> None:
    """Every output coordinate lies within the range of the honest rows' values for that coordinate."""
    out = apply_rule(rule, updates, seed=seed).to(torch.float64)
    H = updates[honest].to(torch.float64)
    lo, hi = H.min(dim=0).values, H.max(dim=0).values
    slack = tol * (1.0 + torch.maximum(lo.abs(), hi.abs()))
    if not bool(((out >= lo - slack) & (out <= hi + slack)).all()):
        worst = torch.maximum(lo - out, out - hi).max()
        raise AssertionError(f"output leaves the honest coordinate range by {float(worst):.3g}")


# --------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------
@dataclass
class AdversarialSet:
    """Rows ``updates`` (``[n, d]``) of which ``honest`` (indices) are honest; ``f`` faulty rows; the
    attack family that built them."""

    updates: Tensor
    honest: Tensor
    f: int
    attack: str


def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover - hypothesis is a dev dependency
        raise ImportError("privfl.testing.robustness strategies need hypothesis (pip install hypothesis)") from exc
    return st


def update_matrices(
    *,
    min_rows: int = 1,
    max_rows: int = 12,
    min_dim: int = 1,
    max_dim: int = 16,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    outliers: bool = True,
    duplicates: bool = True,
    max_nonfinite: int = 0,
):
    """Strategy for ``[n, d]`` update matrices: random shapes and dtypes, scales from 1e-3 to 1e3 around
    a random offset, up to n/3 outlier rows (1e2–1e6 times farther), duplicated rows, and up to
    ``max_nonfinite`` rows with NaN/±Inf (whole rows or single entries). Values come from a seeded
    generator, so examples are cheap and reproducible."""
    st = _st()

    @st.composite
    def build(draw) -> Tensor:
        n = draw(st.integers(min_rows, max_rows))
        d = draw(st.integers(min_dim, max_dim))
        dtype = draw(st.sampled_from(list(dtypes)))
        seed = draw(st.integers(0, 2**31 - 1))
        scale = 10.0 ** draw(st.integers(-3, 3))
        offset = draw(st.sampled_from([0.0, 1.0, 10.0]))
        g = torch.Generator().manual_seed(seed)
        x = offset * torch.randn(d, generator=g, dtype=torch.float64) + scale * torch.randn(n, d, generator=g,
                                                                                            dtype=torch.float64)
        if outliers and n >= 3:
            k = draw(st.integers(0, n // 3))
            mag = 10.0 ** draw(st.integers(2, 6))
            if k:
                rows = torch.randperm(n, generator=g)[:k]
                x[rows] = x[rows] * mag + mag * scale
        if duplicates and n >= 2 and draw(st.booleans()):
            src, dst = torch.randperm(n, generator=g)[:2].tolist()
            x[dst] = x[src]
        x = x.to(dtype)
        if max_nonfinite:
            k = draw(st.integers(0, min(max_nonfinite, n)))
            rows = torch.randperm(n, generator=g)[:k].tolist()
            for r in rows:
                kind = draw(st.sampled_from(["nan", "inf", "-inf", "one-nan"]))
                if kind == "one-nan":
                    x[r, draw(st.integers(0, d - 1))] = float("nan")
                else:
                    x[r] = float(kind)
        return x

    return build()


def adversarial_sets(
    f: int,
    *,
    n: int | None = None,
    min_dim: int = 1,
    max_dim: int = 12,
    nonfinite: bool = False,
    dtypes: Sequence[torch.dtype] = (torch.float64,),
):
    """Strategy for :class:`AdversarialSet`: ``n`` rows (default ``4f + 3``), ``n − f`` honest (a kind of
    :data:`HONEST_KINDS`), ``f`` faulty ones from one block of :func:`adversarial_candidates`, at random
    positions; with ``nonfinite`` some faulty rows become NaN/Inf."""
    st = _st()
    n_rows = 4 * f + 3 if n is None else n

    @st.composite
    def build(draw) -> AdversarialSet:
        d = draw(st.integers(min_dim, max_dim))
        seed = draw(st.integers(0, 2**31 - 1))
        kind = draw(st.sampled_from(HONEST_KINDS))
        dtype = draw(st.sampled_from(list(dtypes)))
        g = torch.Generator().manual_seed(seed)
        honest = honest_set(kind, n_rows - f, d, generator=g).to(dtype).to(torch.float64)
        cands = adversarial_candidates(honest, f, generator=g)
        name, bad = cands[draw(st.integers(0, len(cands) - 1))]
        if nonfinite:
            bad = _nonfinite(bad, g)
        rows, honest_idx = _place(honest, bad, generator=g, front=draw(st.booleans()))
        return AdversarialSet(rows.to(dtype), honest_idx, f, f"{kind}: {name}")

    return build()
