"""LOLOHA — longitudinal local hashing (Arcolezi, Pinzón, Palamidessi, Gambs, EDBT 2023).

"Frequency Estimation of Evolving Data Under Local Differential Privacy" (arXiv 2210.00262).
Each user draws a hash function ``H: [k] → [g]`` once (its public seed ``(a, b)``, sent with every
report; the family is the Carter–Wegman one of :mod:`privfl.mechanisms.ldp`). A value ``v`` is
hashed, the hashed value gets a **permanent** GRR on ``[g]`` with ``eps_inf`` — memoized per
*hashed* value, so a user holds at most ``g`` memo entries — and every collection releases an
**instantaneous** GRR on ``[g]`` of the memoized response, calibrated from ``eps_1``:
``p1 = e^{eps_inf} / (e^{eps_inf} + g − 1)``, ``p2`` from
``eps_IRR = ln((e^{eps_inf + eps_1} − 1) / (e^{eps_inf} − e^{eps_1}))`` (the paper's choice; see
:mod:`privfl.mechanisms.longitudinal` for why it is exact only at ``g = 2`` and for
``calibration="exact"``). Because values that hash alike share a memoized response, the
longitudinal budget spent is ``(#distinct memoized hashed values) · eps_inf <= g · eps_inf`` —
independent of ``k``, the point of the paper.

Estimator (paper, with ``q1 := 1/g`` at the server): ``C(v) = #{u : H_u(v) = y_u}``,
``f̂(v) = (C(v) − n q1 (p2 − q2) − n q2) / (n (p1 − q1)(p2 − q2))``. Here the ``1/g`` is replaced
by the family's exact collision term ``B = c·A + (1 − c)·P_other`` (``c`` = exact collision
probability, ``A`` / ``P_other`` = probability that the report equals the hash of the user's own /
of another value); with ``c = 1/g`` this is the paper's formula, and with the exact ``c`` the
estimator is exactly unbiased. Variance (exact): ``[f A(1−A) + (1−f) B(1−B)] / (n (A − B)²)``;
at ``f = 0`` it is the paper's ``σ(1 − σ) / (n (p1 − q1)² (p2 − q2)²)``.

Variants: ``biloloha`` (``g = 2``) and ``ololoha`` (``g = max(2, round(g*))`` with the paper's
closed-form optimum ``g*``, :func:`optimal_g`). ``loloha`` takes ``g`` (default: OLOLOHA's).
Reports: ``[n, 3]`` int64 rows ``(a, b, y)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from privfl.accounting.analysis import pmf_pure_epsilon
from privfl.core import PrivacyGuarantee
from privfl.mechanisms.ldp import (
    HASH_PRIME,
    K_HASHED,
    HashedReports,
    _guarantee,
    draw_hash_seeds,
    grr_perturb,
    grr_pmf_pair,
    hash_collision_probability,
    hash_values,
)
from privfl.mechanisms.longitudinal import (
    CALIBRATION,
    EPS_1,
    EPS_INF,
    LongitudinalOracle,
    eps_pair,
    grr_chain,
    instantaneous_grr_p,
)
from privfl.mechanisms.user_state import UserState
from privfl.params import Int
from privfl.registry import register

__all__ = ["LOLOHA", "BiLOLOHA", "OLOLOHA", "optimal_g"]

_DENSE_MEMO_MAX_G = 256  # up to this g the memo is a dense [users, g] table (fast); beyond, sparse


def optimal_g(eps_inf: float, alpha: float) -> int:
    """OLOLOHA's ``g = max(2, round(g*))`` with the paper's closed form (``alpha = eps_1 / eps_inf``).

    ``g* = [√(e^{4ε} − 14e^{2ε} − 12e^{2ε(α+1)} + 12e^{ε(α+1)} + 12e^{ε(α+3)} + 1) − e^{2ε} + 6e^{ε}
    − 6e^{αε} + 1] / [6(e^{ε} − e^{αε})]``, ``ε = eps_inf``. α = 0.4: ε = 1, 3, 5 → g = 2, 3, 8.
    Rounding is half-to-even, as in the authors' code.
    """
    e = float(eps_inf)
    if not (math.isfinite(e) and e > 0) or not (0 < alpha < 1):
        raise ValueError(f"optimal_g needs eps_inf > 0 and 0 < alpha < 1, got eps_inf={eps_inf!r}, alpha={alpha!r}")
    ex = math.exp
    radicand = (ex(4 * e) - 14 * ex(2 * e) - 12 * ex(2 * e * (alpha + 1)) + 12 * ex(e * (alpha + 1))
                + 12 * ex(e * (alpha + 3)) + 1)
    if radicand < 0:  # only for tiny eps_inf, where g* -> 2 anyway (rounding noise around 0)
        radicand = 0.0
    g_star = (math.sqrt(radicand) - ex(2 * e) + 6 * ex(e) - 6 * ex(alpha * e) + 1) / (6 * (ex(e) - ex(alpha * e)))
    if not math.isfinite(g_star):
        raise ValueError(f"optimal_g overflows for eps_inf={eps_inf!r}; pass g explicitly")
    return max(2, int(round(g_star)))


@register("mechanism", "loloha")
class LOLOHA(HashedReports, LongitudinalOracle):
    """LOLOHA (Arcolezi et al., EDBT 2023) with hashed domain size ``g`` (module docstring).

    ``eps_1`` defaults to ``0.4 · eps_inf`` (the paper's α); ``g`` defaults to OLOLOHA's optimum.
    """

    name = "loloha"
    public_key = "seed"
    param_space = {
        "k": K_HASHED,
        "eps_inf": EPS_INF,
        "eps_1": EPS_1,
        "g": Int(2, HASH_PRIME, typical=(2, 8), optional=True),
        "calibration": CALIBRATION,
    }
    public_width = 2

    def __init__(self, k: int, eps_inf: float, eps_1: float | None = None, g: int | None = None,
                 calibration: str = "paper"):
        self.k = int(k)
        self.eps_inf, self.eps_1 = eps_pair(eps_inf, eps_1)
        self.calibration = calibration
        self.g = optimal_g(self.eps_inf, self.eps_1 / self.eps_inf) if g is None else int(g)
        g = self.g
        self.p1 = math.exp(self.eps_inf) / (math.exp(self.eps_inf) + g - 1)
        self.q1 = (1 - self.p1) / (g - 1)
        self.p2 = instantaneous_grr_p(self.eps_inf, self.eps_1, g, self.calibration)
        self.q2 = (1 - self.p2) / (g - 1)
        self.same, self.other = grr_chain(self.p1, self.p2, g)
        self.collision = hash_collision_probability(g)

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "eps_inf": self.eps_inf, "eps_1": self.eps_1, "g": self.g,
                "calibration": self.calibration}

    def _new_state(self) -> UserState:
        dense = self.g <= _DENSE_MEMO_MAX_G
        return UserState(slots=self.g, public_width=2, payload_shape=(),
                         payload_dtype=torch.int16 if dense else torch.int64, dense=dense)

    def _draw_public(self, m, generator, device):
        return draw_hash_seeds(m, generator, device)

    def _slot(self, values, public):
        return hash_values(public, values, self.g)

    def _draw_permanent(self, values, slots, public, generator):
        return grr_perturb(slots, self.g, self.p1, generator)

    def _draw_instantaneous(self, payload, values, public, generator):
        y = grr_perturb(payload.to(torch.int64), self.g, self.p2, generator)
        return torch.cat([public, y[:, None]], dim=1)

    def budget_bound(self) -> float:
        return min(self.g, self.k) * self.eps_inf

    # -- decoding (reports, supports and outcomes: privfl.mechanisms.ldp.HashedReports) -------
    def support_probabilities(self) -> tuple[float, float]:
        return self.same, self.collision * self.same + (1 - self.collision) * self.other

    def transition_matrix(self, *, stage: str = "report", seed: tuple[int, int] = (1, 0), **public: Any) -> np.ndarray:
        """``[k, g]`` P(output | value) for the hash ``seed = (a, b)``: permanent response or first report."""
        p, q = (self.p1, self.q1) if stage == "permanent" else (self.same, self.other)
        return self._hash_transition(seed, p, q)

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = grr_pmf_pair(self.same, self.other, self.g, self.collision)
        perm = grr_pmf_pair(self.p1, self.q1, self.g, self.collision)
        return _guarantee(
            f"{self.name}(k={self.k}, eps_inf={self.eps_inf:g}, eps_1={self.eps_1:g}, g={self.g})", P, Q,
            "one report of a fresh value (hash, permanent GRR_g, instantaneous GRR_g); the hash seed is public; "
            "pmf_pair is the exact mixture over hash draws; the longitudinal budget is spent() (<= g * eps_inf)",
            eps_1=self.eps_1, eps_inf=self.eps_inf, g=self.g, permanent_pmf_pair=perm,
            permanent_epsilon=pmf_pure_epsilon(perm), longitudinal_bound=self.budget_bound(),
            collision=self.collision, bits_per_report=2 * 30 + math.ceil(math.log2(self.g)),
        )


@register("mechanism", "biloloha")
class BiLOLOHA(LOLOHA):
    """BiLOLOHA: LOLOHA with ``g = 2`` (Arcolezi et al., EDBT 2023); spends at most ``2 · eps_inf``."""

    name = "biloloha"
    param_space = {k: v for k, v in LOLOHA.param_space.items() if k != "g"}

    def __init__(self, k: int, eps_inf: float, eps_1: float | None = None, calibration: str = "paper"):
        super().__init__(k, eps_inf, eps_1, g=2, calibration=calibration)


@register("mechanism", "ololoha")
class OLOLOHA(LOLOHA):
    """OLOLOHA: LOLOHA with the paper's variance-optimal ``g`` (:func:`optimal_g`)."""

    name = "ololoha"
    param_space = {k: v for k, v in LOLOHA.param_space.items() if k != "g"}

    def __init__(self, k: int, eps_inf: float, eps_1: float | None = None, calibration: str = "paper"):
        super().__init__(k, eps_inf, eps_1, g=None, calibration=calibration)
