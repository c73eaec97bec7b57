"""RQM — the Randomized Quantization Mechanism.

Youn, Hu, Ziani, Abernethy, "Randomized Quantization is All You Need for Differential Privacy in
Federated Learning", FL-ICML workshop 2023 (arXiv 2306.11913). Scalar mechanism, applied to every
coordinate independently; parameters are the paper's symbols:

- ``c``: inputs are **clipped to [−c, c]** first (values outside are moved to the nearest end);
- ``delta`` (Δ > 0): range extension; the m levels are B(i) = −(c+Δ) + 2i(c+Δ)/(m−1), i = 0..m−1;
- ``m`` ≥ 2 levels; ``q`` ∈ (0, 1]: each *interior* level is kept independently with probability q
  (the two end levels are always kept);
- randomized rounding between the consecutive kept levels a < b around x: output b with probability
  (x − B(a))/(B(b) − B(a)), else a — unbiased for every kept set, so E[B(output)] = x.

The report is the level index (⌈log2 m⌉ bits per coordinate); :meth:`RQM.decode` maps it to B(i).

**Sampling without enumerating kept sets.** For x in the cell [B(j), B(j+1)], only the nearest kept
level below (among j, j−1, …, 1, then the always-kept 0) and above (j+1, …, m−2, then m−1) matter.
They are independent: the distance to the nearest kept interior level is geometric, P(g) = q(1−q)^g,
truncated at the end levels. Two geometric draws and one uniform per coordinate.

**Guarantee.** :meth:`RQM.output_pmf` gives the exact output distribution for any x (closed form
from the same two truncated geometric laws). ``guarantee()`` holds the pmfs of the extreme pair
(x, x') = (c, −c); a grid search over pairs in [−c, c]² (``tests/test_mechanisms_rqm.py``) finds no
pair with a larger Rényi divergence or log-ratio. From it: the RDP curve on any order grid (exact),
the pure ε = max log-ratio (m = 2: ln((2c+Δ)/Δ)), and the exact PLD. Δ = 0 would make the outputs
at ±c deterministic (ε = ∞), so Δ > 0 is required.

**Per coordinate → per vector.** The guarantee is **per coordinate** (``unit="coordinate"``). A
d-dimensional update whose coordinates may all change between neighbours is the d-fold composition
of independent per-coordinate releases: RDP(α) × d, pure ε × d, PLD self-composed d times. The
simulation records it so (``Mechanism.account``: ``count=d``, unit ``"client"``); RQM is a local
mechanism, so each participating client spends it in every round it joins (client sampling does not
amplify it). The per-coordinate figure alone is not a guarantee on the update.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from privfl.accounting import distributed
from privfl.accounting.guarantees import pmf_guarantee
from privfl.core import InputDomain, Mechanism, PrivacyGuarantee
from privfl.mechanisms import _checks
from privfl.params import Int, Real
from privfl.registry import register
from privfl.secure_rng import rand

__all__ = ["RQM", "index_dtype"]


@functools.lru_cache(maxsize=64)
def _rqm_sum_guarantee(n: int, c: float, delta: float, m: int, q: float) -> PrivacyGuarantee:
    mech = RQM(c=c, delta=delta, m=m, q=q)
    grid = distributed.EXACT_GRID
    rdp, pure, configs = distributed.rqm_sum_worst_rdp(mech, grid, n=n)
    label = distributed.unit_label(n)
    return PrivacyGuarantee(
        name=f"rqm (sum of {n})", rdp_curve=distributed.step_up_curve(grid, rdp, pure), epsilon_pure=pure,
        unit="coordinate",
        notes=f"{label}; per coordinate, worst case over all inputs ({configs} vertex configs)",
        extra={"participants": n, "unit_label": label, "c": c, "delta": delta, "m": m, "q": q},
    )


def index_dtype(num_levels: int) -> torch.dtype:
    """The smallest torch integer dtype that holds indices 0..num_levels−1."""
    return torch.uint8 if num_levels <= 256 else (torch.int16 if num_levels <= 32768 else torch.int32)


@register("mechanism", "rqm")
class RQM(_checks.CoordinateOutcomes, Mechanism):
    """Randomized Quantization Mechanism (Youn et al. 2023) with clip range ``c``, range extension
    ``delta`` (Δ > 0), ``m`` levels and interior keep probability ``q``.

    Defaults are the reference example (c = 1, Δ = c, m = 5, q = 0.5: pure ε 2.485 per coordinate).
    """

    name = "rqm"
    role = "client-vector"
    exact_pmf = True  # output_pmf(x) per coordinate; report_outcomes from CoordinateOutcomes
    secure_sum = True  # sum_guarantee(n): the exact guarantee inside the integer sum of n reports
    report_what = "level indices from RQM.privatize"  # report_outcomes: each coordinate's level
    supports_secure_rng = True
    rng = "seeded"  # privfl.secure_rng.with_rng(mech, "secure") for deployment
    unbiased = True  # for the input clamped to [−c, c] (estimand)
    nonfinite = "zero"  # a NaN/±Inf row becomes the zero vector before clamping, counted in nonfinite_replaced
    param_space = {
        "c": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "delta": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "m": Int(2, 1 << 20, typical=(2, 16)),
        "q": Real(0, 1, lo_open=True, typical=(0.05, 1.0)),
    }

    def __init__(self, c: float = 1.0, delta: float = 1.0, m: int = 5, q: float = 0.5) -> None:
        self.c = _checks.number("c", c, lo=0.0)
        self.delta = _checks.number(
            "delta", delta, lo=0.0, allowed="a finite number > 0 (Δ = 0 makes the outputs at ±c deterministic: ε = ∞)"
        )
        self.m = _checks.integer("m", m, lo=2, hi=1 << 20)
        self.q = _checks.number("q", q, lo=0.0, hi=1.0)
        self.step = 2.0 * (self.c + self.delta) / (self.m - 1)
        self.report_bits = max(1, math.ceil(math.log2(self.m)))
        self.nonfinite_replaced = 0

    def domain(self) -> InputDomain:
        """Every coordinate in ``[−c, c]`` (inputs are clamped to it)."""
        return InputDomain.box(self.c)

    def estimand(self, x: Tensor) -> Tensor:
        """``decode(privatize(x))`` is unbiased for ``x`` clamped to ``[−c, c]`` (non-finite rows: zero)."""
        return _checks.zero_nonfinite_rows(x)[0].clamp(-self.c, self.c)

    # ------------------------------------------------------------------ levels and exact pmf
    def levels(self) -> np.ndarray:
        """B(i) = −(c+Δ) + 2i(c+Δ)/(m−1), i = 0..m−1 (float64)."""
        return -(self.c + self.delta) + np.arange(self.m) * self.step

    def output_pmf(self, x: float) -> np.ndarray:
        """Exact output distribution (over level indices) for the scalar input ``x`` (clipped to [−c, c])."""
        x = float(np.clip(_checks.number("x", x), -self.c, self.c))
        m, q = self.m, self.q
        pos = (x + self.c + self.delta) / self.step
        j = int(min(max(math.floor(pos), 0), m - 2))
        below = np.zeros(m)  # law of the nearest kept level a <= j
        for g in range(j):  # levels j, j-1, ..., 1 are interior
            below[j - g] = q * (1 - q) ** g
        below[0] = (1 - q) ** j
        above = np.zeros(m)  # law of the nearest kept level b >= j+1
        for g in range(m - 2 - j):  # levels j+1, ..., m-2 are interior
            above[j + 1 + g] = q * (1 - q) ** g
        above[m - 1] = (1 - q) ** (m - 2 - j)
        pmf = np.zeros(m)
        for a in np.nonzero(below)[0]:
            for b in np.nonzero(above)[0]:
                w = below[a] * above[b]
                up = (pos - a) / (b - a)
                pmf[b] += w * up
                pmf[a] += w * (1.0 - up)
        return pmf

    # ------------------------------------------------------------------ the mechanism
    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        """Level indices ``[n, d]`` (uint8 for m ≤ 256), one independent RQM draw per coordinate."""
        _checks.updates(x)
        _checks.generator(generator)
        m = self.m
        # In-place arithmetic on a few [n, d] buffers: this is the hot path ([100, 1e6] in the benchmark).
        x, replaced = _checks.zero_nonfinite_rows(x)  # non-finite policy "zero" (counted)
        self.nonfinite_replaced += replaced
        pos = x.clamp(-self.c, self.c).add_(self.c + self.delta).div_(self.step)  # in (0, m-1), a new tensor
        j = pos.floor().clamp_(0, m - 2)
        if self.q < 1.0:
            log_keep_fail = math.log1p(-self.q)
            # geometric distances to the nearest kept interior level: g = floor(ln(1 − U)/ln(1 − q))
            a = rand(x.shape, generator=generator, dtype=x.dtype, device=x.device, rng=self.rng)
            a.neg_().log1p_().div_(log_keep_fail).floor_()
            a = torch.sub(j, a, out=a).clamp_(min=0)  # below: j − g, or the always-kept level 0
            b = rand(x.shape, generator=generator, dtype=x.dtype, device=x.device, rng=self.rng)
            b.neg_().log1p_().div_(log_keep_fail).floor_()
            b.add_(j).add_(1).clamp_(max=m - 1)  # above: j + 1 + g, or the always-kept level m − 1
            del j
        else:
            a, b = j, j + 1
        up = pos.sub_(a).div_(b - a)  # P(round up) = (x − B(a)) / (B(b) − B(a)), in level units
        r = rand(x.shape, generator=generator, dtype=x.dtype, device=x.device, rng=self.rng)
        return torch.where(r < up, b, a).to(index_dtype(m))

    def decode(self, reports: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Level values B(index) in ``dtype`` (default float32)."""
        if not isinstance(reports, Tensor) or reports.is_floating_point() or reports.dim() != 2:
            raise ValueError("reports must be an integer [n, d] tensor of level indices from RQM.privatize")
        return reports.to(dtype) * self.step - (self.c + self.delta)

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = self.output_pmf(self.c), self.output_pmf(-self.c)
        return pmf_guarantee(
            P, Q, name="rqm", unit="coordinate",
            notes="per coordinate, worst pair (c, −c); a d-dim update is the d-fold composition",
            c=self.c, delta=self.delta, m=self.m, q=self.q,
        )

    def report_bytes(self, reports: Tensor) -> float:
        """Bytes one client sends: ⌈log2 m⌉ bits per coordinate."""
        return reports.shape[1] * self.report_bits / 8.0

    # ------------------------------------------------------------------ under secure aggregation
    def sum_guarantee(self, n: int) -> PrivacyGuarantee:
        """One client's report inside the sum of ``n`` RQM reports (secure aggregation), per coordinate:
        the worst case over every client's input, proven by vertex enumeration
        (:func:`privfl.accounting.distributed.rqm_sum_worst_rdp`). ``n = 1``, or an enumeration beyond
        ``MAX_CONFIGURATIONS``, gives the local guarantee (valid for the sum by post-processing)."""
        n = _checks.integer("n", n, lo=1)
        verts = len(distributed.rqm_vertices(self))
        if n == 1 or math.comb(n - 1 + verts - 1, verts - 1) > distributed.MAX_CONFIGURATIONS:
            return self.guarantee()
        return _rqm_sum_guarantee(n, self.c, self.delta, self.m, self.q)

    def decode_sum(self, total: Tensor, count: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Σ of ``count`` clients' level values from the sum of their level indices."""
        return total.to(dtype) * self.step - count * (self.c + self.delta)

    def sum_bits(self, n: int) -> int:
        """Bits of a secure-aggregation modulus that holds the sum of ``n`` indices without wrap-around."""
        return max(1, math.ceil(math.log2(n * (self.m - 1) + 1)))

    def __repr__(self) -> str:
        return f"RQM(c={self.c}, delta={self.delta}, m={self.m}, q={self.q})"
