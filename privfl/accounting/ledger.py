"""The privacy ledger: every privatized release is an event; ε(δ) by RDP or PLD, per client.

An event is *(clients, guarantee, sampling rate, count)*:

- **central** releases (``clients=None``): the trusted server's noisy aggregate, e.g. DP-FedAvg. They
  concern every client, and Poisson client sampling at ``sampling_rate`` amplifies them.
- **local** releases (``clients=[...]``): what the listed clients themselves sent, e.g. an RQM or an
  ε-LDP report. Subsampling does not amplify a local guarantee against a server that knows who
  took part, so record these for the clients that actually joined, with ``sampling_rate=1``;
  ``sampling_rate < 1`` is meant for sampling *inside* a client (DP-SGD's record sampling).

``epsilon(delta)`` composes the events of each client (its local events plus all central ones:
heterogeneous composition, releases of different mechanisms and rates) and returns the worst case
over clients; ``per_client_epsilon`` gives each client's figure. Clients with identical histories
share one computation, so a million users with a handful of distinct histories are cheap.

``unit`` says what neighbouring means (``"client"``, ``"record"``, ``"user"``). Guarantees of different
units are not composed together: ``epsilon`` asks for ``unit=`` when the ledger holds several.

**Threat model.** The events hold the mechanism's sensitivity for *one* client. That stays true
under Byzantine clients that read only their own data or public values, and under local
mechanisms (what an omniscient attacker reads is already privatized: post-processing). It is
false when an omniscient attack (IPM, ALIE, min-max, min-sum, mimic read the honest rows) meets a
mechanism that adds its noise at the server (DP-FedAvg, DP-BREM): the release then depends on
honest data through the Byzantine rows (``mimic`` copying one client f times makes the sensitivity
(f + 1)·Δ). :func:`threat_model_warning` detects that case; :meth:`PrivacyLedger.void` marks the
ledger, whose ``epsilon`` then raises instead of returning a number that is not a guarantee.

Local-DP mechanisms (frequency oracles, LOLOHA) record their reports like this::

    from privfl.accounting import PrivacyLedger, pure_guarantee, randomized_response_guarantee
    ledger = PrivacyLedger()
    # each listed user sent one ε-LDP report (exact GRR pair when it is k-RR: tighter PLD)
    ledger.record(randomized_response_guarantee(eps, k), clients=user_ids)
    # or, for any ε-LDP report (dominated by binary randomized response at ε):
    ledger.record(pure_guarantee(eps_inf, name="loloha-permanent"), clients=new_memo_users)
    ledger.epsilon(1e-5)                 # worst user, RDP (Balle et al. 2020 conversion)
    ledger.epsilon(1e-5, method="pld")   # worst user, privacy-loss distribution
    ledger.pure_epsilon(client=7)        # Σ ε of one user's pure-DP events (δ = 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from privfl.accounting.analysis import (
    DEFAULT_ORDERS,
    check_delta,
    check_orders,
    check_probability,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
    subsampled_pure_epsilon,
)
from privfl.accounting.pld import has_pld, pld_epsilon
from privfl.core import PrivacyGuarantee

__all__ = ["PrivacyEvent", "PrivacyLedger", "METHODS", "NOT_A_GUARANTEE", "VoidedGuaranteeError",
           "threat_model_warning", "epsilon_after"]

NOT_A_GUARANTEE = "not a DP guarantee: Byzantine clients read honest updates"


class VoidedGuaranteeError(ValueError):
    """``epsilon`` of a ledger whose releases are not covered by the accounted sensitivity."""


def threat_model_warning(mechanism: Any, attack: Any, *, byzantine: bool = True) -> str | None:
    """The reason the accounted ε is not a guarantee for this pairing, or ``None`` when it is one.

    ε is void when Byzantine clients are present (``byzantine``), the ``attack`` declares
    ``knowledge == "omniscient"`` (reads the honest rows) and ``mechanism`` has a guarantee whose noise
    is added at the server (``noise_location == "server"``: DP-FedAvg, DP-BREM). Own-data and public
    attacks, data poisoning, and local / secure-aggregation mechanisms (``"client"``) keep it valid.
    """
    if mechanism is None or attack is None or not byzantine:
        return None
    if getattr(attack, "knowledge", "omniscient") != "omniscient":
        return None
    if mechanism.noise_location != "server" or not mechanism.guarantee().is_private:
        return None
    name = getattr(attack, "name", type(attack).__name__)
    return (f"{NOT_A_GUARANTEE} (the omniscient attack {name!r} reads them and {mechanism.name!r} adds its noise "
            "at the server, so the release depends on honest data through the Byzantine rows beyond the "
            "accounted sensitivity; use an own-data or public attack, e.g. 'alie-own-data')")

METHODS = ("rdp", "pld")
_PROBE_ORDERS = np.array([1.5, 2.0, 8.0, 32.0, 256.0])


class PrivacyEvent(NamedTuple):
    """One recorded release: ``count`` releases of ``guarantee`` at ``sampling_rate`` concerning
    ``clients`` (``None``: every client, a central release). Immutable (a named tuple: cheap enough to
    record one per training step)."""

    guarantee: PrivacyGuarantee
    sampling_rate: float
    count: int
    clients: np.ndarray | None
    unit: str
    round: int | None = None


@dataclass
class _Component:
    guarantee: PrivacyGuarantee
    sampling_rate: float
    unit: str
    rdp: np.ndarray | None = None  # cached one-release RDP on the ledger's orders
    pure: float | None = None


def _fingerprint(g: PrivacyGuarantee) -> tuple:
    pmf = None if g.pmf_pair is None else (g.pmf_pair[0].tobytes(), g.pmf_pair[1].tobytes())
    probe = None
    if g.rdp_curve is not None and g.noise_multiplier is None and g.pmf_pair is None:
        probe = tuple(np.round(g.rdp(_PROBE_ORDERS), 12))
    return (g.name, g.noise_multiplier, g.epsilon_pure, pmf, probe, g.is_private)


def _undominated(rows: np.ndarray, limit: int = 1024) -> np.ndarray:
    """Drop histories whose counts are ≤ another history's everywhere: composing more releases never
    lowers ε, so the worst case is among the others (checked pairwise up to ``limit`` histories)."""
    if len(rows) <= 1 or len(rows) > limit:
        return rows
    le = np.all(rows[:, None, :] <= rows[None, :, :], axis=2)  # le[i, j]: i ≤ j everywhere
    np.fill_diagonal(le, False)
    return rows[~le.any(axis=1)]


class PrivacyLedger:
    """Records privacy events and answers ε(δ) per client and for the worst client.

    ``orders``: the Rényi orders used by the RDP method (default: Opacus' grid extended to 4096).
    """

    def __init__(self, *, orders: Sequence[float] | np.ndarray = DEFAULT_ORDERS) -> None:
        self.orders = check_orders(orders)
        # runs of identical consecutive records: [PrivacyEvent fields..., repeats]; the PrivacyEvent objects
        # are built when `events` is read (one object per record per step would cost more than the step)
        self._events: list[list] = []
        self._num_records = 0
        self._components: list[_Component] = []
        self._index: dict[tuple, int] = {}
        self._central_counts: list[int] = []  # counts per component, for every client (a list: cheap += per step)
        # (id(guarantee), sampling_rate, unit argument) → (guarantee, component, q, unit) of central records
        # already validated: a training loop recording one release per step skips the checks and the lookup
        self._recent: dict[tuple, tuple] = {}
        # counts per (client, component) of client-specific events; rows of clients never seen stay 0
        self._matrix = np.zeros((0, 0), dtype=np.int64)
        self._seen = np.zeros(0, dtype=bool)
        self._pld_cache: dict = {}
        #: why the recorded ε is not a DP guarantee (``None``: it is one); set by :meth:`void`
        self.void_reason: str | None = None

    def void(self, reason: str) -> None:
        """Mark the ledger's ε as not a guarantee (e.g. :func:`threat_model_warning`): ``epsilon`` raises
        :class:`VoidedGuaranteeError` with ``reason`` from now on; ``epsilon_ignoring_void`` still
        gives the figure the mechanism alone would have."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}")
        self.void_reason = reason

    # ------------------------------------------------------------------ recording
    def record(
        self,
        guarantee: PrivacyGuarantee,
        *,
        sampling_rate: float = 1.0,
        count: int = 1,
        clients: Iterable[int] | torch.Tensor | np.ndarray | None = None,
        unit: str | None = None,
        round: int | None = None,
    ) -> None:
        """Record ``count`` releases of ``guarantee``; ``clients=None`` means a central release
        concerning every client (Poisson client sampling at ``sampling_rate`` amplifies it).

        Cheap enough to call once per training step (about Opacus' ``RDPAccountant.step``, measured by
        ``benchmarks/accountant.py``): a repeated central record skips the checks already passed."""
        if clients is None and type(count) is int and count >= 0 and type(sampling_rate) is float:
            hit = self._recent.get((id(guarantee), sampling_rate, unit))
            if hit is not None and hit[0] is guarantee:
                _, idx, q, unit_ = hit
                self._central_counts[idx] += count
                last = self._events[-1] if self._events else None
                if (last is not None and last[0] is guarantee and last[1] == q and last[2] == count
                        and last[3] is None and last[4] == unit_ and last[5] == round):
                    last[6] += 1  # one more of the same run (inlined _append: this is the per-step path)
                    self._num_records += 1
                    return
                self._append(guarantee, q, count, None, unit_, round)
                return
        if not isinstance(guarantee, PrivacyGuarantee):
            raise TypeError(f"guarantee must be a PrivacyGuarantee, got {type(guarantee).__name__}")
        q = check_probability(sampling_rate, "sampling_rate")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        unit_arg = unit
        unit = guarantee.unit if unit is None else unit
        if not isinstance(unit, str) or not unit:
            raise ValueError(f"unit must be a non-empty string, got {unit!r}")
        ids: np.ndarray | None = None
        if clients is not None:
            if isinstance(clients, torch.Tensor):
                arr = clients.detach().cpu().numpy()
            elif isinstance(clients, np.ndarray):
                arr = clients
            else:
                arr = np.asarray(list(clients))
            if arr.size and (arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
                raise ValueError(f"clients must be a 1-d collection of int ids >= 0, got {clients!r}")
            ids = np.unique(arr.astype(np.int64))
        idx = self._component(guarantee, q, unit)
        self._append(guarantee, q, int(count), ids, unit, round)
        if ids is None:
            self._central_counts[idx] += int(count)
            if type(sampling_rate) is float and len(self._recent) < 64:
                self._recent[(id(guarantee), sampling_rate, unit_arg)] = (guarantee, idx, q, unit)
        elif ids.size:
            self._grow(int(ids.max()) + 1)
            self._matrix[ids, idx] += int(count)
            self._seen[ids] = True

    def _append(self, guarantee, q, count, ids, unit, round) -> None:
        self._num_records += 1
        if ids is None and self._events:
            last = self._events[-1]
            if (last[0] is guarantee and last[1] == q and last[2] == count and last[3] is None and last[4] == unit
                    and last[5] == round):
                last[6] += 1
                return
        self._events.append([guarantee, q, count, ids, unit, round, 1])

    def _grow(self, num_clients: int) -> None:
        rows, cols = self._matrix.shape
        if num_clients > rows or len(self._components) > cols:
            new_rows = max(num_clients, rows, 2 * rows if num_clients > rows else rows)
            grown = np.zeros((new_rows, len(self._components)), dtype=np.int64)
            grown[:rows, :cols] = self._matrix
            seen = np.zeros(new_rows, dtype=bool)
            seen[:rows] = self._seen
            self._matrix, self._seen = grown, seen

    def _component(self, g: PrivacyGuarantee, q: float, unit: str) -> int:
        key = (_fingerprint(g), q, unit)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self._components)
            self._index[key] = idx
            self._components.append(_Component(g, q, unit))
            self._central_counts.append(0)
            self._grow(self._matrix.shape[0])
        return idx

    # ------------------------------------------------------------------ queries
    @property
    def units(self) -> list[str]:
        return sorted({c.unit for c in self._components})

    @property
    def clients(self) -> list[int]:
        """Clients with client-specific (local) events."""
        return np.nonzero(self._seen)[0].tolist()

    @property
    def _central(self) -> np.ndarray:
        return np.array(self._central_counts, dtype=np.int64)

    def _counts(self, client: int | None) -> np.ndarray:
        counts = self._central
        if client is not None and 0 <= int(client) < self._matrix.shape[0]:
            counts = counts + self._matrix[int(client)]
        return counts

    def _histories(self, client: int | None) -> np.ndarray:
        """Distinct count vectors: of one client, or of every client (worst case)."""
        if client is not None:
            return self._counts(client)[None, :]
        if not self._seen.any():
            return self._central[None, :]
        rows = np.unique(self._matrix[self._seen] + self._central[None, :], axis=0)
        return _undominated(rows)

    def _select_unit(self, counts: np.ndarray, unit: str | None) -> np.ndarray:
        used = {self._components[i].unit for i in np.nonzero(counts)[0]}
        if unit is None:
            if len(used) > 1:
                raise ValueError(
                    f"the ledger holds events of several units {sorted(used)}; pass unit= one of them"
                )
            return counts
        mask = np.array([c.unit == unit for c in self._components], dtype=bool)
        return np.where(mask, counts, 0)

    def _component_rdp(self, i: int) -> np.ndarray:
        comp = self._components[i]
        if comp.rdp is None:
            g, q = comp.guarantee, comp.sampling_rate
            if not g.is_private:
                comp.rdp = np.full(self.orders.shape, np.inf)
            elif g.noise_multiplier is not None:
                comp.rdp = subsampled_gaussian_rdp(q, g.noise_multiplier, self.orders)
            elif q < 1.0 and math.isfinite(g.epsilon_pure) and g.pmf_pair is None and g.rdp_curve is None:
                from privfl.accounting.guarantees import pure_guarantee

                comp.rdp = pure_guarantee(subsampled_pure_epsilon(g.epsilon_pure, q)).rdp(self.orders)
            else:
                # Non-Gaussian releases are accounted without subsampling amplification (conservative).
                comp.rdp = g.rdp(self.orders)
        return comp.rdp

    def _component_pure(self, i: int) -> float:
        comp = self._components[i]
        if comp.pure is None:
            g = comp.guarantee
            comp.pure = subsampled_pure_epsilon(g.epsilon_pure, comp.sampling_rate) if g.is_private else math.inf
        return comp.pure

    def pure_epsilon(self, *, client: int | None = None, unit: str | None = None) -> float:
        """Σ of the pure ε of the events (basic composition, δ = 0); worst client when ``client`` is None."""
        worst = 0.0
        for counts in self._histories(client):
            counts = self._select_unit(counts, unit)
            total = sum(int(k) * self._component_pure(i) for i, k in enumerate(counts) if k)
            worst = max(worst, total)
        return worst

    def rdp(self, *, client: int | None = None, unit: str | None = None) -> np.ndarray:
        """The composed RDP curve on ``self.orders`` (worst client pointwise when ``client`` is None)."""
        worst = np.zeros(self.orders.shape)
        for counts in self._histories(client):
            counts = self._select_unit(counts, unit)
            worst = np.maximum(worst, self._rdp_of(counts))
        return worst

    def _rdp_of(self, counts: np.ndarray) -> np.ndarray:
        total = np.zeros(self.orders.shape)
        for i, k in enumerate(counts):
            if k:
                with np.errstate(invalid="ignore"):
                    total = total + int(k) * self._component_rdp(i)
        return total

    def _epsilon_of(self, counts: np.ndarray, delta: float, method: str) -> float:
        if not counts.any():
            return 0.0
        if any(not self._components[i].guarantee.is_private for i in np.nonzero(counts)[0]):
            return math.inf
        pure = sum(int(k) * self._component_pure(i) for i, k in enumerate(counts) if k)
        eps_rdp = rdp_to_epsilon(self.orders, self._rdp_of(counts), delta)[0]
        if method == "rdp":
            return float(min(eps_rdp, pure))
        comps = [(self._components[i].guarantee, self._components[i].sampling_rate, int(k))
                 for i, k in enumerate(counts) if k]
        eps_pld = pld_epsilon(comps, delta, epsilon_hint=min(eps_rdp, pure), cache=self._pld_cache)
        return float(min(eps_pld, pure))

    def epsilon(
        self, delta: float, *, method: str = "rdp", client: int | None = None, unit: str | None = None
    ) -> float:
        """ε at ``delta``: of ``client``'s history, or the worst case over clients (``client=None``).

        ``method="rdp"``: RDP composition and the Balle et al. 2020 conversion; ``"pld"``: the
        privacy-loss distribution (tighter; ``ValueError`` for guarantees that only have an RDP
        curve). Both are capped by basic composition of the pure ε where that is smaller.
        """
        if self.void_reason is not None:
            raise VoidedGuaranteeError(f"{self.void_reason}; no ε is reported (epsilon_ignoring_void gives "
                                       "the mechanism's figure without Byzantine reads, which is not a guarantee)")
        return self.epsilon_ignoring_void(delta, method=method, client=client, unit=unit)

    def epsilon_ignoring_void(
        self, delta: float, *, method: str = "rdp", client: int | None = None, unit: str | None = None
    ) -> float:
        """:meth:`epsilon` without the :meth:`void` check (for diagnostics only: not a guarantee when voided)."""
        delta = check_delta(delta)
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
        if method == "pld":
            bad = [c.guarantee.name for c in self._components if not has_pld(c.guarantee)]
            if bad:
                raise ValueError(f"method='pld' is not available for {sorted(set(bad))} (only an RDP curve); "
                                 "use method='rdp'")
        worst = 0.0
        for counts in self._histories(client):
            counts = self._select_unit(counts, unit)
            worst = max(worst, self._epsilon_of(counts, delta, method))
            if math.isinf(worst):
                break
        return worst

    def per_client_epsilon(self, delta: float, *, method: str = "rdp", unit: str | None = None) -> dict[int, float]:
        """ε of every client with local events (each composed with the central events)."""
        if self.void_reason is not None:
            raise VoidedGuaranteeError(f"{self.void_reason}; no ε is reported")
        cache: dict[bytes, float] = {}
        out = {}
        for c in self.clients:
            counts = self._select_unit(self._counts(c), unit)
            key = counts.tobytes()
            if key not in cache:
                cache[key] = self.epsilon(delta, method=method, client=c, unit=unit)
            out[c] = cache[key]
        return out

    def supports(self, method: str) -> bool:
        """Whether every recorded guarantee can be accounted with ``method``."""
        if method == "rdp":
            return True
        return all(has_pld(c.guarantee) for c in self._components)

    @property
    def events(self) -> list[PrivacyEvent]:
        """Every record, in order (a new list)."""
        return [PrivacyEvent(*row[:6]) for row in self._events for _ in range(row[6])]

    def __len__(self) -> int:
        return self._num_records

    def __repr__(self) -> str:
        return f"PrivacyLedger({self._num_records} events, {len(self._components)} distinct releases, " \
               f"{int(self._seen.sum())} clients with local events)"


def epsilon_after(
    guarantee: PrivacyGuarantee, rounds: int, *, sampling_rate: float = 1.0, delta: float = 1e-5,
    method: str = "rdp", central: bool = True,
) -> float:
    """ε(δ) after ``rounds`` releases of ``guarantee`` (central at ``sampling_rate``, or local for one client)."""
    ledger = PrivacyLedger()
    ledger.record(guarantee, sampling_rate=sampling_rate, count=rounds, clients=None if central else [0])
    return ledger.epsilon(delta, method=method)
