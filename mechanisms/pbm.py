"""PBM — the Poisson Binomial Mechanism.

Chen, Özgür, Kairouz, "The Poisson Binomial Mechanism for Unbiased Federated Learning with Secure
Aggregation", ICML 2022. Scalar mechanism applied to every coordinate; the baseline RQM is compared
with. Parameters: ``c`` (inputs **clipped to [−c, c]**), ``m`` (binomial trials, the message has
⌈log2(m+1)⌉ bits), ``theta`` θ ∈ (0, 1/4] (the paper's privacy knob; smaller θ = more private).

- Encode: p(x) = 1/2 + θ·x/c ∈ [1/2 − θ, 1/2 + θ]; send Z ~ Binomial(m, p(x)).
- Decode: x̂ = c/(m·θ) · (Z − m/2), unbiased: E[x̂] = x. Variance c²·p(1−p)/(m θ²).

**Guarantee implemented here: local, per client, per coordinate.** One client's Z at the extreme
pair x = c vs x' = −c has the exact pmfs Binomial(m, 1/2 + θ) and Binomial(m, 1/2 − θ); the Rényi
divergence between binomials with a common m grows as the two success probabilities move apart, so
this pair is the worst in [−c, c]². From it: exact RDP, pure ε = m·ln((1/2 + θ)/(1/2 − θ)) and the
exact PLD. As for RQM, a d-dimensional update composes over its d coordinates (``unit="coordinate"``).
**Under secure aggregation** (the paper's setting: the server sees only the sum of n clients' counts),
:meth:`PBM.sum_guarantee` gives one client's guarantee inside the sum: the exact worst case over every
client's input, computed by :func:`privfl.accounting.distributed.pbm_sum_rdp` (a vertex enumeration,
in place of the paper's closed-form bound); the simulation uses it with ``secure_aggregation=True``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor

from privfl.accounting import distributed
from privfl.accounting.guarantees import pmf_guarantee
from privfl.core import InputDomain, Mechanism, PrivacyGuarantee
from privfl.mechanisms import _checks
from privfl.mechanisms.rqm import index_dtype
from privfl.params import Int, Real
from privfl.registry import register

__all__ = ["PBM"]


@functools.lru_cache(maxsize=64)
def _pbm_sum_guarantee(n: int, m: int, theta: float, c: float) -> PrivacyGuarantee:
    grid = distributed.EXACT_GRID
    pure = distributed.pbm_sum_pure_epsilon(n=n, m=m, theta=theta)
    rdp = distributed.pbm_sum_rdp(grid, n=n, m=m, theta=theta)
    label = distributed.unit_label(n)
    return PrivacyGuarantee(
        name=f"pbm (sum of {n})", rdp_curve=distributed.step_up_curve(grid, rdp, pure), epsilon_pure=pure,
        unit="coordinate", notes=f"{label}; per coordinate, exact worst case over all inputs",
        extra={"participants": n, "unit_label": label, "c": c, "m": m, "theta": theta},
    )


@register("mechanism", "pbm")
class PBM(_checks.CoordinateOutcomes, Mechanism):
    """Poisson Binomial Mechanism (Chen, Özgür, Kairouz 2022): Z ~ Binomial(m, 1/2 + θx/c) per coordinate."""

    name = "pbm"
    role = "client-vector"
    exact_pmf = True  # output_pmf(x) per coordinate; report_outcomes from CoordinateOutcomes
    secure_sum = True  # sum_guarantee(n): the exact guarantee inside the integer sum of n reports
    report_what = "counts from PBM.privatize"  # report_outcomes: each coordinate's count Z
    unbiased = True  # for the input clamped to [−c, c] (estimand)
    nonfinite = "zero"  # a NaN/±Inf row becomes the zero vector before clamping, counted in nonfinite_replaced
    param_space = {
        "c": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "m": Int(1, 1 << 20, typical=(1, 32)),
        "theta": Real(0, 0.25, lo_open=True),
    }

    def __init__(self, c: float = 1.0, m: int = 16, theta: float = 0.25) -> None:
        self.c = _checks.number("c", c, lo=0.0)
        self.m = _checks.integer("m", m, lo=1, hi=1 << 20)
        self.theta = _checks.number("theta", theta, lo=0.0, hi=0.25)
        self.report_bits = max(1, math.ceil(math.log2(self.m + 1)))
        self.nonfinite_replaced = 0

    def domain(self) -> InputDomain:
        """Every coordinate in ``[−c, c]`` (inputs are clamped to it)."""
        return InputDomain.box(self.c)

    def estimand(self, x: Tensor) -> Tensor:
        """``decode(privatize(x))`` is unbiased for ``x`` clamped to ``[−c, c]`` (non-finite rows: zero)."""
        return _checks.zero_nonfinite_rows(x)[0].clamp(-self.c, self.c)

    def success_probability(self, x: Tensor | float):
        return 0.5 + self.theta * x / self.c

    def output_pmf(self, x: float) -> np.ndarray:
        """Exact pmf of Z over 0..m for the scalar input ``x`` (clipped to [−c, c])."""
        x = float(np.clip(_checks.number("x", x), -self.c, self.c))
        return binom.pmf(np.arange(self.m + 1), self.m, self.success_probability(x))

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        """Binomial counts ``[n, d]`` (uint8 for m ≤ 255)."""
        _checks.updates(x)
        _checks.generator(generator)
        x, replaced = _checks.zero_nonfinite_rows(x)  # non-finite policy "zero" (counted)
        self.nonfinite_replaced += replaced
        p = self.success_probability(x.clamp(-self.c, self.c))
        if p.dtype in (torch.float16, torch.bfloat16):  # torch.binomial has no half-precision kernel
            p = p.float()
        count = torch.full_like(p, float(self.m))
        z = torch.binomial(count, p, generator=generator)
        return z.to(index_dtype(self.m + 1))

    def decode(self, reports: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        if not isinstance(reports, Tensor) or reports.is_floating_point() or reports.dim() != 2:
            raise ValueError("reports must be an integer [n, d] tensor of counts from PBM.privatize")
        return (reports.to(dtype) - self.m / 2.0) * (self.c / (self.m * self.theta))

    def guarantee(self) -> PrivacyGuarantee:
        return pmf_guarantee(
            self.output_pmf(self.c), self.output_pmf(-self.c), name="pbm", unit="coordinate",
            notes="local (one client, n = 1), per coordinate, worst pair (c, −c); d-dim update = d-fold composition",
            c=self.c, m=self.m, theta=self.theta,
        )

    def report_bytes(self, reports: Tensor) -> float:
        return reports.shape[1] * self.report_bits / 8.0

    # ------------------------------------------------------------------ under secure aggregation
    def sum_guarantee(self, n: int) -> PrivacyGuarantee:
        """One client's report inside the sum of ``n`` PBM reports (secure aggregation), per coordinate:
        the exact worst case over every client's input (:func:`privfl.accounting.distributed.pbm_sum_rdp`).
        ``n = 1`` (or n·m > 4096, beyond the exact computation) gives the local guarantee."""
        n = _checks.integer("n", n, lo=1)
        if n == 1 or n * self.m > 4096:
            return self.guarantee()
        return _pbm_sum_guarantee(n, self.m, self.theta, self.c)

    def decode_sum(self, total: Tensor, count: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Σ of ``count`` clients' unbiased estimates from the sum of their counts: c/(mθ)·(Σ Z − count·m/2)."""
        return (total.to(dtype) - count * self.m / 2.0) * (self.c / (self.m * self.theta))

    def sum_bits(self, n: int) -> int:
        """Bits of a secure-aggregation modulus that holds the sum of ``n`` counts without wrap-around."""
        return max(1, math.ceil(math.log2(n * self.m + 1)))

    def __repr__(self) -> str:
        return f"PBM(c={self.c}, m={self.m}, theta={self.theta})"
