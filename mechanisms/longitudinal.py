"""Longitudinal LDP frequency oracles with memoization: L-GRR, L-OSUE, RAPPOR (L-SUE), dBitFlipPM.

A user who reports the same value many times must not leak more each time. *Memoization*
(Erlingsson, Pihur, Korolova, "RAPPOR", CCS 2014) draws a **permanent** randomized response once
per (user, value) with budget ``eps_inf`` and caches it; every collection then releases an
**instantaneous** re-randomization of the cached response, calibrated so the *first* report alone
is ``eps_1``-LDP (``eps_1 < eps_inf``). Over any number of collections a user's reports reveal at
most ``eps_inf`` per distinct memoized value, so the **longitudinal budget spent** is
``(#distinct memoized values) × eps_inf`` — the per-user ledger of :meth:`LongitudinalOracle.spent`.

- :class:`LGRR` — L-GRR (Arcolezi, Couchot, Al Bouna, Xiao, "Improving the utility of locally
  differentially private protocols for longitudinal and multidimensional frequency estimates",
  Digital Communications and Networks 2022): GRR on ``[k]`` twice. Bound ``k · eps_inf``.
- :class:`LOSUE` — L-OSUE (same paper): permanent OUE, instantaneous SUE. Bound ``k · eps_inf``.
- :class:`RAPPOR` — L-SUE = RAPPOR's permanent + instantaneous randomized responses on a one-hot
  encoding (Erlingsson et al. 2014; parameters from Arcolezi et al. 2022). Bound ``k · eps_inf``.
- :class:`DBitFlipPM` — dBitFlipPM (Ding, Kulkarni, Yekhanin, "Collecting Telemetry Data
  Privately", NeurIPS 2017): each user samples ``d`` of the ``k`` buckets once and reports one
  bit per sampled bucket (randomized response with ``eps_inf / 2``), memoized per *pattern*
  (which sampled bucket, if any, holds the value). No instantaneous step. Bound
  ``min(d + 1, k) · eps_inf``.

LOLOHA (the same framework on a hashed domain) lives in :mod:`privfl.mechanisms.loloha`.

Instantaneous GRR calibration (L-GRR, LOLOHA). Chaining GRR(``eps_inf``) and GRR(``eps_IRR``) on
``d`` outputs gives the first report the likelihood ratio
``(e^{eps_inf + eps_IRR} + d − 1) / (e^{eps_inf} + e^{eps_IRR} + d − 2)``. The papers set
``e^{eps_IRR} = (e^{eps_inf + eps_1} − 1) / (e^{eps_inf} − e^{eps_1})``, which makes that ratio
exactly ``e^{eps_1}`` for ``d = 2`` and *smaller* for ``d > 2`` (conservative: the first report
is ``eps_1'``-LDP with ``eps_1' < eps_1``, at a cost in utility). ``calibration="paper"``
(default) reproduces the papers; ``calibration="exact"`` solves for the ``eps_IRR`` that makes
the first report exactly ``eps_1``-LDP: ``e^{eps_IRR} = (e^{eps_inf+eps_1} + (d−2) e^{eps_1} −
d + 1) / (e^{eps_inf} − e^{eps_1})``. ``guarantee().epsilon_pure`` is always the exact ε of the
first report, computed from the chain.

Per-user state (:class:`~privfl.mechanisms.user_state.UserState`, its own module) is explicit, keyed by
client id and serialisable
(:meth:`LongitudinalOracle.state_dict`); users join on their first report, may skip collections
(their state stays), leave with :meth:`LongitudinalOracle.export_users` and resume with
:meth:`LongitudinalOracle.import_users`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from privfl.accounting.analysis import pmf_pure_epsilon
from privfl.core import PrivacyGuarantee
from privfl.mechanisms.ldp import (
    K_SMALL,
    FrequencyOracle,
    _guarantee,
    bernoulli_bits,
    bits_to_index,
    check_category,
    check_client_ids,
    check_eps,
    check_generator,
    check_k,
    check_reports,
    check_values,
    column_counts,
    grr_perturb,
    grr_pmf_pair,
    ue_bit_pmfs,
    ue_pmf_pair,
)
from privfl.mechanisms.user_state import UserState, pack_bits, unpack_bits
from privfl.params import Choice, Int, Real, Ref
from privfl.registry import register

__all__ = [
    "UserState",
    "LongitudinalOracle",
    "LGRR",
    "LOSUE",
    "RAPPOR",
    "DBitFlipPM",
    "pack_bits",
    "unpack_bits",
    "instantaneous_grr_p",
    "first_report_epsilon_grr",
    "DEFAULT_ALPHA",
]

DEFAULT_ALPHA = 0.4  # eps_1 = alpha * eps_inf when eps_1 is not given (the LOLOHA paper's experiments)
_CHUNK_ELEMENTS = 1 << 21
_KEY_LIMIT = (1 << 62)


# --------------------------------------------------------------------------------------------
# Calibration of the two-stage (chained) randomized responses
# --------------------------------------------------------------------------------------------
def check_eps_pair(eps_inf: Any, eps_1: Any) -> tuple[float, float]:
    """``0 < eps_1 < eps_inf``; ``eps_1=None`` means ``DEFAULT_ALPHA · eps_inf``."""
    eps_inf = check_eps(eps_inf, name="eps_inf")
    eps_1 = DEFAULT_ALPHA * eps_inf if eps_1 is None else check_eps(eps_1, name="eps_1")
    if not eps_1 < eps_inf:
        raise ValueError(f"eps_1 (first-report budget) must be < eps_inf (permanent budget): got eps_1={eps_1!r} "
                         f">= eps_inf={eps_inf!r}; allowed: 0 < eps_1 < eps_inf")
    return eps_inf, eps_1


def check_calibration(calibration: Any) -> str:
    if calibration not in ("paper", "exact"):
        raise ValueError(f"calibration must be 'paper' (the papers' instantaneous GRR) or 'exact' (first report "
                         f"exactly eps_1-LDP), got {calibration!r}")
    return calibration


def instantaneous_grr_p(eps_inf: float, eps_1: float, d: int, calibration: str = "paper") -> float:
    """``p2`` of the instantaneous GRR on ``d`` outputs (see the module docstring)."""
    ei, e1 = math.exp(eps_inf), math.exp(eps_1)
    if calibration == "paper":
        x = (ei * e1 - 1) / (ei - e1)
    else:
        x = (ei * e1 + (d - 2) * e1 - d + 1) / (ei - e1)
    return x / (x + d - 1)


def grr_chain(p1: float, p2: float, d: int) -> tuple[float, float]:
    """P(report = own value) and P(report = a given other value) after GRR(p1) then GRR(p2) on ``[d]``."""
    q1, q2 = (1 - p1) / (d - 1), (1 - p2) / (d - 1)
    return p1 * p2 + (1 - p1) * q2, q1 * p2 + (1 - q1) * q2


def first_report_epsilon_grr(eps_inf: float, eps_1: float, d: int, calibration: str = "paper") -> float:
    """Exact ε of the first report of the GRR chain (``<= eps_1``; ``= eps_1`` for d = 2 or 'exact')."""
    p1 = math.exp(eps_inf) / (math.exp(eps_inf) + d - 1)
    same, other = grr_chain(p1, instantaneous_grr_p(eps_inf, eps_1, d, calibration), d)
    return math.log(same / other)


#: Declared parameters the memoizing protocols share (one declaration each; used in their ``param_space``).
EPS_INF = Real(0, None, lo_open=True, log=True, typical=(0.2, 6.0))
EPS_1 = Real(0, Ref("eps_inf"), lo_open=True, hi_open=True, log=True, typical=(0.05, 6.0), optional=True)
CALIBRATION = Choice("paper", "exact")


# --------------------------------------------------------------------------------------------
# The longitudinal protocol base class
# --------------------------------------------------------------------------------------------
class LongitudinalOracle(FrequencyOracle):
    """A memoizing frequency oracle: permanent response per (user, memo slot), instantaneous per report.

    Subclasses define the memo slot of a value (:meth:`_slot`), the permanent and instantaneous
    randomizers, the per-user public randomness (if any), the guarantee and the ledger's bound.
    ``client_ids`` (``[n]`` distinct int64 ids, default ``0..n-1``) names the users of a call.
    """

    name: ClassVar[str] = "longitudinal"
    stateful = True  # the per-user store (reset() forgets every user)
    longitudinal = True  # spent(client_ids) and budget_bound(): a per-user budget ledger
    eps_inf: float
    public_width: ClassVar[int] = 0

    # -- subclasses -------------------------------------------------------------------------
    def _new_state(self) -> UserState:
        raise NotImplementedError

    def _slot(self, values: Tensor, public: Tensor) -> Tensor:
        return values

    def _draw_public(self, m: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return torch.empty(m, 0, dtype=torch.int64, device=device)

    def _draw_permanent(self, values: Tensor, slots: Tensor, public: Tensor,
                        generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _draw_instantaneous(self, payload: Tensor, values: Tensor, public: Tensor,
                            generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def budget_bound(self) -> float:
        """The most any user can ever spend: (max number of memo slots a user can fill) × eps_inf."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> UserState:
        if getattr(self, "_state", None) is None:
            self._state = self._new_state()
        return self._state

    def reset(self) -> None:
        """Forget every user (a new population)."""
        self._state = None

    def _check_ids_fit(self, ids: Tensor) -> None:
        limit = _KEY_LIMIT // max(1, self.state.slots)
        if int(ids.max()) >= limit:
            raise ValueError(f"client_ids must be < {limit} for this protocol (memo keys are id · slots + slot), "
                             f"got {int(ids.max())}")

    def privatize(self, values: Tensor, *, generator: torch.Generator | None = None,
                  client_ids: Tensor | None = None) -> Tensor:
        """One collection: each listed user reports its current value (joining on its first report)."""
        values = check_values(values, self.k)
        device = values.device
        generator = check_generator(generator, device)
        ids = check_client_ids(client_ids, values.shape[0], device)
        self._check_ids_fit(ids)
        state = self.state.to(device)
        rows, present = state.rows(ids)
        if not bool(present.all()):
            new_ids = ids[~present]
            state.join(new_ids, self._draw_public(new_ids.shape[0], generator, device))
            rows, _ = state.rows(ids)
        public = state.public[rows]
        slots = self._slot(values, public)
        found, payload = state.lookup(rows, ids, slots)
        miss = ~found
        if bool(miss.any()):
            fresh = self._draw_permanent(values[miss], slots[miss], public[miss], generator)
            state.store(rows[miss], ids[miss], slots[miss], fresh)
            payload[miss] = fresh.to(payload.dtype)
        return self._draw_instantaneous(payload, values, public, generator)

    def state_dict(self) -> dict[str, Any]:
        """Parameters and every user's state (``load_state_dict`` restores it)."""
        return {"protocol": self.name, "params": self._params(), "users": self.state.to_dict()}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or not {"protocol", "params", "users"} <= set(data):
            raise ValueError("state must be a mapping from state_dict() with keys protocol, params, users")
        self._check_same(data)
        self._state = UserState.from_dict(data["users"])

    def export_users(self, client_ids: Tensor, *, remove: bool = True) -> dict[str, Any]:
        """These users' state (seed, memo, ledger) as a mapping; ``remove=True`` makes them leave."""
        ids = self._ids_arg(client_ids)
        out = {"protocol": self.name, "params": self._params(), "users": self.state.to_dict(ids)}
        if remove:
            self.state.remove(ids)
        return out

    def import_users(self, data: dict[str, Any]) -> None:
        """Resume users exported by :meth:`export_users` (of a protocol with the same parameters)."""
        if not isinstance(data, dict) or not {"protocol", "params", "users"} <= set(data):
            raise ValueError("data must be a mapping from export_users() with keys protocol, params, users")
        self._check_same(data)
        self.state.merge(UserState.from_dict(data["users"]))

    def _ids_arg(self, client_ids: Tensor) -> Tensor:
        if not isinstance(client_ids, Tensor) or client_ids.dtype != torch.int64 or client_ids.dim() != 1:
            raise TypeError("client_ids must be a [n] int64 tensor")
        return client_ids.to(self.state.device)

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_same(self, data: dict[str, Any]) -> None:
        if data["protocol"] != self.name or data["params"] != self._params():
            raise ValueError(f"state belongs to {data['protocol']} {data['params']}, not to "
                             f"{self.name} {self._params()}")

    # -- the longitudinal ledger ------------------------------------------------------------
    def permanent_guarantee(self) -> PrivacyGuarantee:
        """One permanent (memoized) response: the release whose count is the longitudinal budget."""
        g = self.guarantee()
        P, Q = g.extra["permanent_pmf_pair"]
        return _guarantee(f"{g.name}:permanent", P, Q,
                          "one memoized permanent response (eps_inf); every report of that value is its "
                          "post-processing", eps_inf=self.eps_inf)

    def account(self, ledger: Any, *, clients: Tensor | None = None, sampling_rate: float = 1.0,
                dim: int | None = None, round: int | None = None) -> None:
        """Record in ``ledger`` the permanent responses drawn since the last call (all users, or ``clients``).

        Memoization makes every report post-processing of the user's permanent responses, so a
        user's longitudinal cost is the composition of its permanent responses: one event with
        :meth:`permanent_guarantee` per memoized value (``ledger.pure_epsilon(client=u)`` then equals
        ``spent(u)``). Reports of already memoized values add nothing. ``sampling_rate`` and ``dim``
        are accepted for the :class:`~privfl.core.Mechanism` interface and not used (a local
        report is not amplified by client sampling).
        """
        state = self.state
        if state.num_users == 0:
            return
        if clients is None:
            rows = torch.arange(state.num_users, device=state.device)
        else:
            rows, present = state.rows(torch.as_tensor(clients, dtype=torch.int64).to(state.device))
            rows = rows[present]
        new = state.memo_count[rows] - state.ledgered[rows]
        if not bool((new > 0).any()):
            return
        g = self.permanent_guarantee()
        for c in torch.unique(new[new > 0]).tolist():
            ledger.record(g, clients=state.ids[rows[new == c]].cpu(), count=int(c), round=round)
        state.ledgered[rows] = state.memo_count[rows]

    def spent(self, client_ids: Tensor | None = None) -> Tensor:
        """Longitudinal budget spent per user: ``memo_count · eps_inf`` (float64).

        ``client_ids=None``: every known user, in sorted id order (``self.state.ids``); otherwise
        the listed users (users never seen have spent 0).
        """
        state = self.state
        counts = state.memo_count
        if client_ids is not None:
            ids = self._ids_arg(client_ids)
            rows, present = state.rows(ids)
            counts = torch.where(present, counts[rows] if counts.numel() else torch.zeros_like(ids),
                                 torch.zeros_like(ids))
        return counts.to(torch.float64) * self.eps_inf

    def budget(self, client_ids: Tensor | None = None) -> dict[str, float]:
        """``{"users", "mean", "max", "bound", "eps_inf"}`` of the spent budgets (0 when nobody reported)."""
        spent = self.spent(client_ids)
        return {
            "users": int(spent.numel()),
            "mean": float(spent.mean()) if spent.numel() else 0.0,
            "max": float(spent.max()) if spent.numel() else 0.0,
            "bound": self.budget_bound(),
            "eps_inf": self.eps_inf,
        }


# --------------------------------------------------------------------------------------------
# Chained GRR: L-GRR (LOLOHA reuses the pieces on its hashed domain)
# --------------------------------------------------------------------------------------------
@register("mechanism", "l-grr")
class LGRR(LongitudinalOracle):
    """L-GRR (Arcolezi et al., Digital Communications and Networks 2022): memoized GRR on ``[k]``.

    Permanent GRR with ``p1 = e^{eps_inf} / (e^{eps_inf} + k − 1)`` per (user, value), instantaneous
    GRR with ``p2`` from ``eps_1`` (``calibration``, module docstring). Reports: ``[n]`` int64 ids.
    ``eps_1`` defaults to ``0.4 · eps_inf``. Longitudinal bound ``k · eps_inf``.
    """

    name = "l-grr"
    param_space = {
        "k": Int(2, None, typical=(2, 12)),
        "eps_inf": EPS_INF,
        "eps_1": EPS_1,
        "calibration": CALIBRATION,
    }

    def __init__(self, k: int, eps_inf: float, eps_1: float | None = None, calibration: str = "paper"):
        self.k = check_k(k)
        self.eps_inf, self.eps_1 = check_eps_pair(eps_inf, eps_1)
        self.calibration = check_calibration(calibration)
        self.p1 = math.exp(self.eps_inf) / (math.exp(self.eps_inf) + self.k - 1)
        self.p2 = instantaneous_grr_p(self.eps_inf, self.eps_1, self.k, self.calibration)
        self.same, self.other = grr_chain(self.p1, self.p2, self.k)

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "eps_inf": self.eps_inf, "eps_1": self.eps_1, "calibration": self.calibration}

    def _new_state(self) -> UserState:
        return UserState(slots=self.k, public_width=0, payload_shape=(), payload_dtype=torch.int64, dense=False)

    def _draw_permanent(self, values, slots, public, generator):
        return grr_perturb(values, self.k, self.p1, generator)

    def _draw_instantaneous(self, payload, values, public, generator):
        return grr_perturb(payload, self.k, self.p2, generator)

    def budget_bound(self) -> float:
        return self.k * self.eps_inf

    def support_probabilities(self) -> tuple[float, float]:
        return self.same, self.other

    def _reports(self, reports: Tensor) -> Tensor:
        reports = check_reports(reports, dim=1)
        if int(reports.min()) < 0 or int(reports.max()) >= self.k:
            raise ValueError(f"reports must be category ids in [0, {self.k})")
        return reports.to(torch.int64)

    def support_counts(self, reports: Tensor) -> Tensor:
        return torch.bincount(self._reports(reports), minlength=self.k)

    def support_indicator(self, reports: Tensor) -> Tensor:
        reports = self._reports(reports)
        return reports[:, None] == torch.arange(self.k, device=reports.device)

    def transition_matrix(self, *, stage: str = "report", **public: Any) -> np.ndarray:
        """``[k, k]`` P(output | value) of the permanent response or of the first report."""
        p, q = (self.p1, (1 - self.p1) / (self.k - 1)) if stage == "permanent" else (self.same, self.other)
        m = np.full((self.k, self.k), q)
        np.fill_diagonal(m, p)
        return m

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        return self._reports(reports), None

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = grr_pmf_pair(self.same, self.other, self.k)
        perm = grr_pmf_pair(self.p1, (1 - self.p1) / (self.k - 1), self.k)
        return _guarantee(
            f"l-grr(k={self.k}, eps_inf={self.eps_inf:g}, eps_1={self.eps_1:g})", P, Q,
            "one report of a fresh value (permanent then instantaneous GRR); repeated reports of a memoized value "
            "leak at most eps_inf in total; the longitudinal budget is spent() (<= k * eps_inf)",
            eps_1=self.eps_1, eps_inf=self.eps_inf, permanent_pmf_pair=perm,
            permanent_epsilon=pmf_pure_epsilon(perm), longitudinal_bound=self.budget_bound(),
            bits_per_report=math.ceil(math.log2(self.k)),
        )


# --------------------------------------------------------------------------------------------
# Chained unary encodings: L-OSUE and RAPPOR
# --------------------------------------------------------------------------------------------
class _LongitudinalUE(LongitudinalOracle):
    """Permanent UE ``(p1, q1)`` memoized per (user, value), packed 8 bits per byte; instantaneous
    SUE ``(p2, q2 = 1 − p2)`` on the memoized vector. Reports: ``[n, k]`` uint8 bit vectors."""

    param_space = {  # L-OSUE and RAPPOR
        "k": K_SMALL,
        "eps_inf": EPS_INF,
        "eps_1": EPS_1,
    }

    p1: float
    q1: float
    p2: float
    q2: float

    def _init(self, k: int, eps_inf: float, eps_1: float | None) -> None:
        self.k = check_k(k)
        self.eps_inf, self.eps_1 = check_eps_pair(eps_inf, eps_1)

    def _finish(self) -> None:
        self.same = self.p1 * self.p2 + (1 - self.p1) * self.q2
        self.other = self.q1 * self.p2 + (1 - self.q1) * self.q2

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "eps_inf": self.eps_inf, "eps_1": self.eps_1}

    def _new_state(self) -> UserState:
        return UserState(slots=self.k, public_width=0, payload_shape=((self.k + 7) // 8,), payload_dtype=torch.uint8,
                         dense=False)

    def _rows_per_chunk(self) -> int:
        return max(1, _CHUNK_ELEMENTS // self.k)

    def _draw_permanent(self, values, slots, public, generator):
        step = self._rows_per_chunk()
        cats = torch.arange(self.k, device=values.device)
        out = []
        for start in range(0, values.shape[0], step):
            onehot = values[start:start + step, None] == cats
            out.append(pack_bits(bernoulli_bits(onehot, self.p1, self.q1, generator)))
        return torch.cat(out)

    def _draw_instantaneous(self, payload, values, public, generator):
        step = self._rows_per_chunk()
        out = torch.empty(values.shape[0], self.k, dtype=torch.uint8, device=values.device)
        for start in range(0, values.shape[0], step):
            memo = unpack_bits(payload[start:start + step], self.k)
            out[start:start + step] = bernoulli_bits(memo, self.p2, self.q2, generator)
        return out

    def budget_bound(self) -> float:
        return self.k * self.eps_inf

    def support_probabilities(self) -> tuple[float, float]:
        return self.same, self.other

    def _reports(self, reports: Tensor) -> Tensor:
        reports = check_reports(reports, dim=2, width=self.k)
        if reports.dtype != torch.bool and (int(reports.min()) < 0 or int(reports.max()) > 1):
            raise ValueError("reports must be bit vectors (entries 0 or 1)")
        return reports

    def support_counts(self, reports: Tensor) -> Tensor:
        return column_counts(self._reports(reports))

    def support_indicator(self, reports: Tensor) -> Tensor:
        return self._reports(reports).bool()

    def transition_matrix(self, *, stage: str = "report", **public: Any) -> np.ndarray:
        """``[k, 2^k]`` over all bit vectors (column index bit ``j`` = report bit ``j``; k <= 12)."""
        if self.k > 12:
            raise ValueError(f"transition_matrix enumerates 2^k outputs; k={self.k} is too large (max 12)")
        a, b = (self.p1, self.q1) if stage == "permanent" else (self.same, self.other)
        bits = (np.arange(2**self.k)[None, :] >> np.arange(self.k)[:, None]) & 1
        m = np.empty((self.k, 2**self.k))
        for v in range(self.k):
            prob1 = np.full(self.k, b)
            prob1[v] = a
            m[v] = np.prod(np.where(bits == 1, prob1[:, None], 1 - prob1[:, None]), axis=0)
        return m

    def output_pmf(self, v: int, *, public: Any = None, stage: str = "report", **options: Any) -> np.ndarray:
        """``[k, 2]`` per-bit pmfs of the first report (or of the permanent response, ``stage="permanent"``)."""
        if public is not None:
            raise ValueError(f"{self.name} reports carry no public randomness, got public={public!r}")
        a, b = (self.p1, self.q1) if stage == "permanent" else (self.same, self.other)
        return ue_bit_pmfs(self.k, check_category(v, self.k), a, b)

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[n, k]`` bits: outcome of each component of :meth:`output_pmf`."""
        return self._reports(reports).to(torch.int64), None

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = ue_pmf_pair(self.same, self.other)
        perm = ue_pmf_pair(self.p1, self.q1)
        return _guarantee(
            f"{self.name}(k={self.k}, eps_inf={self.eps_inf:g}, eps_1={self.eps_1:g})", P, Q,
            "one report of a fresh value (permanent then instantaneous unary encoding); pmf_pair over the two bits "
            "where neighbours differ; the longitudinal budget is spent() (<= k * eps_inf)",
            eps_1=self.eps_1, eps_inf=self.eps_inf, permanent_pmf_pair=perm,
            permanent_epsilon=pmf_pure_epsilon(perm), longitudinal_bound=self.budget_bound(),
            bits_per_report=self.k,
        )


@register("mechanism", "l-osue")
class LOSUE(_LongitudinalUE):
    """L-OSUE (Arcolezi et al. 2022): permanent OUE (``p1 = 1/2, q1 = 1/(e^{eps_inf} + 1)``), then
    instantaneous SUE with ``p2`` solving ``ε(first report) = eps_1``:
    ``p2 = (1 − q1 − 1/(e^{eps_1} + 1)) / (1 − 2 q1)`` (equal to the paper's closed form)."""

    name = "l-osue"

    def __init__(self, k: int, eps_inf: float, eps_1: float | None = None):
        self._init(k, eps_inf, eps_1)
        self.p1, self.q1 = 0.5, 1 / (math.exp(self.eps_inf) + 1)
        self.p2 = (1 - self.q1 - 1 / (math.exp(self.eps_1) + 1)) / (1 - 2 * self.q1)
        self.q2 = 1 - self.p2
        self._finish()


@register("mechanism", "rappor")
class RAPPOR(_LongitudinalUE):
    """RAPPOR = L-SUE (Erlingsson, Pihur, Korolova, CCS 2014): permanent SUE
    (``p1 = e^{eps_inf/2} / (e^{eps_inf/2} + 1)``), instantaneous SUE with ``p2`` solving
    ``ε(first report) = eps_1``: ``p2 = (a + p1 − 1) / (2 p1 − 1)``, ``a = e^{eps_1/2}/(e^{eps_1/2} + 1)``
    (equal to the closed form of Arcolezi et al. 2022). One category per user, no Bloom filter
    (``k`` bits, one per category)."""

    name = "rappor"

    def __init__(self, k: int, eps_inf: float, eps_1: float | None = None):
        self._init(k, eps_inf, eps_1)
        self.p1 = math.exp(self.eps_inf / 2) / (math.exp(self.eps_inf / 2) + 1)
        self.q1 = 1 - self.p1
        a = math.exp(self.eps_1 / 2) / (math.exp(self.eps_1 / 2) + 1)
        self.p2 = (a + self.p1 - 1) / (2 * self.p1 - 1)
        self.q2 = 1 - self.p2
        self._finish()


# --------------------------------------------------------------------------------------------
# dBitFlipPM
# --------------------------------------------------------------------------------------------
@register("mechanism", "dbitflippm")
class DBitFlipPM(LongitudinalOracle):
    """dBitFlipPM (Ding, Kulkarni, Yekhanin, NeurIPS 2017) with buckets = categories (``b = k``).

    Each user samples ``d`` distinct buckets ``J`` once (uniformly; public, sent with reports). For
    a value ``v`` its *pattern* is the position of ``v`` in ``J`` (or "none"); the memoized response
    for a pattern is one bit per sampled bucket: 1 w.p. ``p = e^{eps_inf/2}/(e^{eps_inf/2} + 1)`` at
    the value's own bucket and w.p. ``q = 1 − p`` elsewhere. Every report *is* the memoized
    response (no instantaneous step), so one report is ``eps_inf``-LDP and a user spends at most
    ``min(d + 1, k) · eps_inf`` in total. ``d=1`` (default) is 1BitFlipPM; ``d=k`` reports all buckets.
    With ``d = 1`` neighbouring values differ in at most one reported bit, so one report is in fact
    ``eps_inf / 2``-LDP: ``guarantee()`` (and hence the :class:`~privfl.accounting.PrivacyLedger`) give
    that exact figure, while :meth:`spent` counts the nominal ``eps_inf`` per pattern, as the paper does.
    Reports: ``[n, d]`` int32 entries ``2 · bucket + bit``. Estimator
    ``f̂(v) = k/(n d) · Σ_{u: v ∈ J_u} (bit_u(v) − q)/(p − q)`` (unbiased).
    """

    name = "dbitflippm"
    public_key = "sampled"
    param_space = {
        "k": Int(2, None, typical=(2, 10)),
        "eps_inf": EPS_INF,
        "d": Int(1, Ref("k"), typical=(1, 4)),
    }

    def __init__(self, k: int, eps_inf: float, d: int = 1):
        self.k = check_k(k)
        self.eps_inf = check_eps(eps_inf, name="eps_inf")
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or not 1 <= d <= self.k:
            raise ValueError(f"d (sampled buckets per user) must be an integer in [1, k] = [1, {self.k}], got {d!r}")
        self.d = int(d)
        self.p = math.exp(self.eps_inf / 2) / (math.exp(self.eps_inf / 2) + 1)
        self.q = 1 - self.p

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "eps_inf": self.eps_inf, "d": self.d}

    def _new_state(self) -> UserState:
        return UserState(slots=self.d + 1, public_width=self.d, payload_shape=((self.d + 7) // 8,),
                         payload_dtype=torch.uint8, dense=False)

    def _draw_public(self, m, generator, device):
        if self.d == 1:
            return torch.randint(0, self.k, (m, 1), generator=generator, device=device)
        step = max(1, _CHUNK_ELEMENTS // self.k)
        parts = [torch.rand(min(step, m - s), self.k, generator=generator, device=device).topk(self.d, dim=1).indices
                 for s in range(0, m, step)]
        return torch.cat(parts) if parts else torch.empty(0, self.d, dtype=torch.int64, device=device)

    def _slot(self, values, public):
        hit = public == values[:, None]
        return torch.where(hit.any(dim=1), hit.to(torch.int64).argmax(dim=1), torch.full_like(values, self.d))

    def _draw_permanent(self, values, slots, public, generator):
        own = slots[:, None] == torch.arange(self.d, device=values.device)
        return pack_bits(bernoulli_bits(own, self.p, self.q, generator))

    def _draw_instantaneous(self, payload, values, public, generator):
        bits = unpack_bits(payload, self.d).to(torch.int64)
        return (2 * public + bits).to(torch.int32)

    def budget_bound(self) -> float:
        return min(self.d + 1, self.k) * self.eps_inf

    def permanent_guarantee(self) -> PrivacyGuarantee:
        """The memoized response is the report itself: the same release as :meth:`guarantee`."""
        return self.guarantee()

    def _reports(self, reports: Tensor) -> tuple[Tensor, Tensor]:
        reports = check_reports(reports, dim=2, width=self.d).to(torch.int64)
        if int(reports.min()) < 0 or int(reports.max()) >= 2 * self.k:
            raise ValueError(f"reports must be entries 2 * bucket + bit with bucket in [0, {self.k})")
        return reports >> 1, reports & 1

    def estimate(self, reports: Tensor) -> Tensor:
        buckets, bits = self._reports(reports)
        n = buckets.shape[0]
        sampled = torch.bincount(buckets.flatten(), minlength=self.k).to(torch.float64)
        ones = torch.bincount(buckets.flatten(), weights=bits.flatten().to(torch.float64), minlength=self.k)
        return self.k / (n * self.d) * (ones - self.q * sampled) / (self.p - self.q)

    def decode(self, reports: Tensor) -> Tensor:
        buckets, bits = self._reports(reports)
        out = torch.zeros(buckets.shape[0], self.k, dtype=torch.float64, device=buckets.device)
        contrib = self.k / self.d * (bits.to(torch.float64) - self.q) / (self.p - self.q)
        return out.scatter_(1, buckets, contrib)

    def variance(self, n: int, freqs: Any = None) -> Tensor:
        """Exact: ``k/(n d) · [p q / (p − q)² + f (1 − d/k)]`` per category (``freqs=None``: f = 0)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an integer >= 1 (number of users), got {n!r}")
        f = torch.zeros(self.k, dtype=torch.float64) if freqs is None else torch.as_tensor(freqs, dtype=torch.float64)
        if f.shape != (self.k,):
            raise ValueError(f"freqs must have shape [k] = [{self.k}], got {tuple(f.shape)}")
        rho = self.d / self.k
        return (self.p * self.q / (self.p - self.q) ** 2 + f * (1 - rho)) / (n * rho)

    def transition_matrix(self, *, sampled: tuple[int, ...] | None = None, **public: Any) -> np.ndarray:
        """``[k, 2^d]`` P(bits | value) given the user's sampled buckets (default ``0..d-1``; d <= 12)."""
        if self.d > 12:
            raise ValueError(f"transition_matrix enumerates 2^d outputs; d={self.d} is too large (max 12)")
        sampled = tuple(range(self.d)) if sampled is None else tuple(sampled)
        bits = (np.arange(2**self.d)[None, :] >> np.arange(self.d)[:, None]) & 1
        m = np.empty((self.k, 2**self.d))
        for v in range(self.k):
            prob1 = np.array([self.p if j == v else self.q for j in sampled])
            m[v] = np.prod(np.where(bits == 1, prob1[:, None], 1 - prob1[:, None]), axis=0)
        return m

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        """The reported bits (as an index, bit ``j`` = sampled bucket ``j``) given the sampled buckets."""
        buckets, bits = self._reports(reports)
        return bits_to_index(bits), buckets

    def guarantee(self) -> PrivacyGuarantee:
        k, d, p, q = self.k, self.d, self.p, self.q
        both = d * (d - 1) / (k * (k - 1))
        one = d * (k - d) / (k * (k - 1))
        neither = (k - d) * (k - d - 1) / (k * (k - 1))
        # outcomes: neither sampled | only v sampled (bit 1, 0) | only v' sampled (bit 1, 0) | both (4 bit pairs)
        P = np.array([neither, one * p, one * (1 - p), one * q, one * (1 - q),
                      both * p * q, both * p * (1 - q), both * (1 - p) * q, both * (1 - p) * (1 - q)])
        Q = np.array([neither, one * q, one * (1 - q), one * p, one * (1 - p),
                      both * q * p, both * q * (1 - p), both * (1 - q) * p, both * (1 - q) * (1 - p)])
        keep = (P > 0) | (Q > 0)
        return _guarantee(
            f"dbitflippm(k={k}, eps_inf={self.eps_inf:g}, d={d})", P[keep], Q[keep],
            "every report is the memoized response: eps_inf-LDP per report, at most min(d+1, k) * eps_inf in total; "
            "pmf_pair is the exact mixture over the sampled buckets",
            eps_inf=self.eps_inf, longitudinal_bound=self.budget_bound(), bits_per_report=d * (1 + math.ceil(
                math.log2(k))),
        )

