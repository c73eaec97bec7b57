"""The contracts every privfl component follows (see docs/ARCHITECTURE.md).

A round's client updates are the rows of one tensor ``U`` of shape ``[n, d]``. Mechanisms,
aggregators and Byzantine attacks work on such tensors, keep the caller's dtype and device and
never modify their input. Components are small objects with one contract each; the harness in
:mod:`privfl.fl` and :mod:`privfl.evaluations` composes them.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from privfl import params

__all__ = [
    "PrivacyGuarantee",
    "InputDomain",
    "MechanismRole",
    "MECHANISM_ROLES",
    "Mechanism",
    "Aggregator",
    "PreAggregator",
    "Mixing",
    "Observation",
    "Reconstruction",
    "PrivacyAttack",
    "ByzantineAttack",
    "DataPoisoningAttack",
    "check_updates",
]


# --------------------------------------------------------------------------------------------
# Privacy guarantees
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivacyGuarantee:
    """What one release of a mechanism costs, as a pure function of its parameters.

    ``rdp_curve`` maps an array of Rényi orders (> 1) to the RDP ε at each order for one release;
    ``epsilon_pure`` is the pure-DP ε (``inf`` where none exists); ``pmf_pair`` holds, for
    finite-output mechanisms, the exact output distributions ``(P, Q)`` of the worst neighbouring
    pair, from which exact privacy-loss distributions and exact audits follow.
    ``noise_multiplier`` is set for Gaussian releases (σ / sensitivity) so accountants can use
    the closed forms of the (subsampled) Gaussian. ``unit`` says what neighbouring means
    (e.g. ``"client"``, ``"record"``, ``"coordinate"``). A guarantee of ``none()`` reports
    ε = ∞ everywhere: it is never silently treated as private.
    """

    name: str
    rdp_curve: Callable[[np.ndarray], np.ndarray] | None = None
    epsilon_pure: float = math.inf
    pmf_pair: tuple[np.ndarray, np.ndarray] | None = None
    noise_multiplier: float | None = None
    unit: str = "client"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def none(cls, name: str, notes: str = "no formal privacy guarantee") -> PrivacyGuarantee:
        return cls(name=name, notes=notes)

    @property
    def is_private(self) -> bool:
        return (
            self.rdp_curve is not None
            or math.isfinite(self.epsilon_pure)
            or self.pmf_pair is not None
            or self.noise_multiplier is not None
        )

    def rdp(self, orders: Sequence[float] | np.ndarray) -> np.ndarray:
        """RDP ε at each order for one release; ``inf`` where the mechanism gives none."""
        orders = np.asarray(orders, dtype=np.float64)
        if orders.ndim != 1 or np.any(orders <= 1):
            raise ValueError(f"orders must be a 1-d array of values > 1, got {orders!r}")
        if self.rdp_curve is not None:
            out = np.asarray(self.rdp_curve(orders), dtype=np.float64)
        else:
            out = np.full_like(orders, np.inf)
        # Pure ε-DP implies RDP ≤ ε at every order.
        return np.minimum(out, self.epsilon_pure)


# --------------------------------------------------------------------------------------------
# Components: parameters validated from their declaration
# --------------------------------------------------------------------------------------------
def _validated_init(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # only the most derived constructor checks: a parent's, called through super(), gets values the
        # subclass already checked (or derived itself)
        if next(c for c in type(self).__mro__ if "__init__" in c.__dict__) is cls:
            bound = signature.bind(self, *args, **kwargs)
            explicit = {k: v for k, v in list(bound.arguments.items())[1:] if k not in ("args", "kwargs")}
            params.check_all(type(self), explicit)
        init(self, *args, **kwargs)

    return __init__


class Component:
    """Base of every contract below: a subclass's constructor arguments are checked against its declared
    ``param_space`` (:func:`privfl.params.check_all`) before its ``__init__`` runs — one validation path
    and one error style for every component: ``TypeError`` for a wrong type, ``ValueError`` for a value
    out of range, the message naming the component, the parameter, what is allowed and what it got.
    Arguments left at their default are the constructor's own business (e.g. ``None`` = "choose")."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_privfl_validated", False):
            wrapped = _validated_init(cls, init)
            wrapped._privfl_validated = True  # type: ignore[attr-defined]
            cls.__init__ = wrapped  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------
# Mechanisms
# --------------------------------------------------------------------------------------------
#: What a mechanism is to the FL pipeline (:class:`Mechanism` ``role``; ``docs/ARCHITECTURE.md``):
#:
#: - ``"client-vector"`` — a local randomizer of ``[n, d]`` update rows (local Gaussian, PBM, RQM,
#:   DDG, Skellam): ``privatize`` adds the noise, the server aggregates ``decode(reports)``, every
#:   participating client's report is one release. Secure-aggregation mechanisms are client vectors
#:   that also declare ``secure_sum`` (their guarantee inside the sum of n reports).
#: - ``"frequency-oracle"`` — a local randomizer of ``[n]`` category ids (GRR, OLH, OUE, LOLOHA, …):
#:   ``estimate`` gives frequencies; one release per user report.
#: - ``"server-noise"`` — central DP (DP-FedAvg, DP-BREM): ``privatize`` only bounds each client's
#:   contribution and ``aggregate`` — the noisy sum — replaces the server's aggregator; one release per
#:   round concerning every client. (DP-BREM+ keeps this server step but its noise shares are added by
#:   the clients under secure aggregation: ``noise_location = "client"``.)
#: - ``"compressor"`` — no privacy claim (top-k, quantize, fp16, FedRand): ``privatize`` compresses,
#:   the guarantee is :meth:`PrivacyGuarantee.none` (ε = ∞ in every report).
MechanismRole = Literal["client-vector", "frequency-oracle", "server-noise", "compressor"]
MECHANISM_ROLES: tuple[str, ...] = get_args(MechanismRole)

DomainKind = Literal["categories", "l2-ball", "box", "unbounded"]


@dataclass(frozen=True)
class InputDomain:
    """The inputs a mechanism's guarantee is stated over — and so its sensitivity and worst cases.

    - ``"categories"``: category ids ``0..categories-1`` (frequency oracles; replace-one neighbours);
    - ``"l2-ball"``: rows of ℓ2 norm ≤ ``bound`` (the clip norm; replace-one sensitivity ``2·bound``,
      add/remove ``bound``); ``privatize`` maps any row onto it first;
    - ``"box"``: every coordinate in ``[−bound, bound]`` (per-coordinate mechanisms, ``c``);
    - ``"unbounded"``: no bound (compressors: no guarantee to state).

    The audits (:func:`privfl.evaluations.audit.neighbouring_pair`) and :mod:`privfl.testing` build
    their default worst-case inputs from it — on the boundary and ``10·bound`` outside it.
    """

    kind: DomainKind
    bound: float | None = None
    categories: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(DomainKind):
            raise ValueError(f"InputDomain.kind must be one of {', '.join(map(repr, get_args(DomainKind)))}, "
                             f"got {self.kind!r}")
        if self.kind == "categories":
            k = self.categories
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2 or self.bound is not None:
                raise ValueError(f"InputDomain('categories') needs categories = an int >= 2 and no bound, got "
                                 f"categories={k!r}, bound={self.bound!r}")
        elif self.kind in ("l2-ball", "box"):
            b = self.bound
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0 \
                    or self.categories is not None:
                raise ValueError(f"InputDomain({self.kind!r}) needs bound = a finite number > 0 and no categories, "
                                 f"got bound={b!r}, categories={self.categories!r}")
        elif self.bound is not None or self.categories is not None:
            raise ValueError("InputDomain('unbounded') takes no bound and no categories")

    @classmethod
    def of_categories(cls, k: int) -> InputDomain:
        return cls("categories", categories=int(k))

    @classmethod
    def l2_ball(cls, radius: float) -> InputDomain:
        return cls("l2-ball", bound=float(radius))

    @classmethod
    def box(cls, c: float) -> InputDomain:
        return cls("box", bound=float(c))

    @classmethod
    def unbounded(cls) -> InputDomain:
        return cls("unbounded")

    @property
    def categorical(self) -> bool:
        return self.kind == "categories"


NONFINITE_POLICIES = ("zero", "raise", "n/a", "undeclared")

#: capability flag → the members a class declaring it must implement (and a class implementing them
#: must declare): checked when the class is defined, so a declaration is never a guess.
_CAPABILITY_MEMBERS: dict[str, tuple[str, ...]] = {
    "exact_pmf": ("output_pmf", "report_outcomes"),
    "secure_sum": ("sum_guarantee", "decode_sum", "sum_bits"),
    "stateful": ("reset",),
    "binds_layout": ("bind_layout",),
    "binds_dim": ("bind_dim",),
    "per_participation": ("participation_guarantee",),
    "longitudinal": ("spent", "budget_bound"),
}


def _implements(cls: type, member: str) -> bool:
    """``cls`` has ``member`` as a concrete callable, other than the :class:`Mechanism` base's default."""
    value = getattr(cls, member, None)
    if value is None or getattr(value, "__isabstractmethod__", False):
        return False
    if isinstance(value, property):
        return True
    return callable(value) and value is not Mechanism.__dict__.get(member)


def _is_abstract(cls: type) -> bool:
    """Whether ``cls`` still has abstract methods (``ABCMeta`` sets ``__abstractmethods__`` only after
    ``__init_subclass__``, so it is computed here)."""
    names = {n for base in cls.__mro__ for n, v in vars(base).items() if getattr(v, "__isabstractmethod__", False)}
    return any(getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in names)


class Mechanism(Component, ABC):
    """A local randomizer with its decoder and its guarantee (like a ``torch.distributions``
    object: validated parameters, ``privatize`` draws, ``guarantee`` exposes the analysis).

    - ``privatize(x, *, generator)``: each row of ``x`` is randomized independently.
      Vector mechanisms take ``[n, d]`` floats; frequency oracles take ``[n]`` category ids.
    - ``decode(reports)``: one unbiased estimate per row (``[n, d]``), so robust aggregators can
      work on privatized rows; the default is the identity (reports are already vectors).
    - ``estimate(reports)``: the unbiased server-side estimate (mean vector, frequency vector).
    - ``guarantee()``: what one release costs.

    Stateful mechanisms keep per-client state in an explicit, serialisable object keyed by
    client id (``client_ids`` selects the rows' owners); never in globals.

    **Declarations.** What the simulation, the audits and :mod:`privfl.testing` do with a mechanism
    is read from what it declares, never guessed from its class or its attribute names; a user's
    mechanism that declares the same gets the same treatment as a built-in one. Checked when the
    class is defined (``TypeError`` naming the class and the declaration):

    - ``role`` (required on every concrete class; :data:`MechanismRole`). A class whose instances
      play one of several roles lists them in ``roles`` and defines ``role`` as a property
      (``gaussian``: ``local=True`` → ``"client-vector"``, ``local=False`` → ``"server-noise"``).
      ``central``, ``noise_location`` and ``input_kind`` follow from the role.
    - :meth:`domain` — the :class:`InputDomain` (clip ball, ``[−c, c]`` box, categories): the
      sensitivity bound of the analysis and the source of every default worst-case input.
      Required of frequency oracles.
    - Capability flags, each tied to the members it needs (a flag without its members, or the
      members without the flag, is refused):

      - ``exact_pmf``: ``output_pmf(x, *, public=None, **options) -> np.ndarray``, the exact
        probability of every outcome for one input ``x`` (a category id for frequency oracles, a
        scalar for per-coordinate mechanisms), given the report's public randomness ``public`` (a
        hash seed, sampled buckets; ``None`` where there is none; ``public_key`` names it) — or a
        ``[components, outcomes]`` table when the report is a product of independent components (the
        bits of a unary encoding) — and ``report_outcomes(reports) -> (outcome [N] or [N, components]
        int64, public [N, w] or None)``, which maps ``privatize``'s reports to indices into that pmf.
        With them ``check_privacy_loss`` computes the privacy loss exactly and the black-box audit
        scores by the exact likelihood ratio.
      - ``secure_sum``: ``sum_guarantee(n)``, ``decode_sum(total, count)``, ``sum_bits(n)`` — the
        guarantee inside a secure sum of n reports (pbm, rqm, ddg, skellam); client vectors only.
      - ``stateful``: ``reset()`` forgets every client (the checks run on fresh users).
      - ``binds_layout`` / ``binds_dim``: ``bind_layout(layout)`` (per-tensor compressors) /
        ``bind_dim(d)`` (a guarantee stated for the model's dimension) — called before the first round.
      - ``per_participation``: ``participation_guarantee(k)``, the release at a client's k-th
        participation (DP-BREM), which the accountant records instead of ``guarantee()``.
      - ``longitudinal``: ``spent(client_ids)`` and ``budget_bound()`` — a per-user budget ledger.

    - Plain declarations: ``unbiased`` (``decode(privatize(x))`` is unbiased for :meth:`estimand`
      on the domain: ``check_unbiased`` applies), ``randomized`` (``None``: private guarantees are),
      ``nonfinite`` (the non-finite policy), ``protocol`` (the FL protocol it needs),
      ``local_training`` (client-side settings it imposes), ``epsilon_unit`` (printed beside its ε),
      ``supports_secure_rng``; :meth:`report_bytes` (the size of a report on the wire).
    - ``param_space``: the valid range of every constructor parameter (:mod:`privfl.params`).
    """

    name: ClassVar[str] = "mechanism"
    #: the pipeline role (see :data:`MechanismRole`); a class with several lists them in ``roles``
    role: ClassVar[MechanismRole]
    #: every role the class's instances can play (set from ``role`` when the class declares one)
    roles: ClassVar[tuple[MechanismRole, ...]] = ()
    #: ``decode(privatize(x))`` is an unbiased estimate of ``estimand(x)`` on the input domain.
    unbiased: ClassVar[bool] = False
    #: different seeds give different reports (``None``: exactly when the guarantee is private)
    randomized: ClassVar[bool | None] = None
    #: What ``privatize``/``aggregate`` do with a row holding NaN/±Inf (vector mechanisms):
    #: ``"zero"`` — the row is replaced by the zero vector before clipping and counted in
    #: ``nonfinite_replaced`` (keeps the sensitivity bound); ``"raise"`` — ``ValueError``;
    #: ``"n/a"`` — integer input (category ids); ``"undeclared"`` (the base default) fails
    #: ``check_contract``. No mechanism's state may ever become non-finite.
    nonfinite: ClassVar[str] = "undeclared"
    #: rows replaced under ``nonfinite = "zero"`` so far
    nonfinite_replaced: int = 0
    #: capabilities (see the class docstring; each is checked against the members it needs)
    exact_pmf: ClassVar[bool] = False
    #: keyword of the report's public randomness in ``output_pmf`` options (None: there is none)
    public_key: ClassVar[str | None] = None
    secure_sum: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    binds_layout: ClassVar[bool] = False
    binds_dim: ClassVar[bool] = False
    per_participation: ClassVar[bool] = False
    longitudinal: ClassVar[bool] = False
    #: the FL protocol the mechanism needs (``"fedsgd"``/``"fedavg"``), or None for either
    protocol: ClassVar[str | None] = None
    #: client-side :class:`~privfl.fl.local.LocalSGD` settings the simulation must apply (e.g. DP-BREM's
    #: per-record clipping); empty: none
    local_training: ClassVar[dict[str, object]] = {}
    #: the unit printed beside the mechanism's ε in reports (None: the guarantee's ``unit``)
    epsilon_unit: ClassVar[str | None] = None
    #: the noise source can be switched to a CSPRNG with :func:`privfl.secure_rng.with_rng`
    supports_secure_rng: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = f"mechanism class {cls.__qualname__}"
        own_role = cls.__dict__.get("role")
        if isinstance(own_role, str):
            if own_role not in MECHANISM_ROLES:
                raise TypeError(f"{where}: role must be one of {', '.join(map(repr, MECHANISM_ROLES))}, "
                                f"got {own_role!r}")
            if "roles" not in cls.__dict__:
                cls.roles = (own_role,)
        roles = cls.roles
        if not isinstance(roles, tuple) or any(r not in MECHANISM_ROLES for r in roles):
            raise TypeError(f"{where}: roles must be a tuple of {', '.join(map(repr, MECHANISM_ROLES))}, "
                            f"got {roles!r}")
        role = getattr(cls, "role", None)
        if isinstance(role, str) and role not in roles:
            raise TypeError(f"{where}: role {role!r} is not among its roles {roles!r}")
        if cls.nonfinite not in NONFINITE_POLICIES:
            raise TypeError(f"{where}: nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, "
                            f"got {cls.nonfinite!r}")
        if cls.protocol not in (None, "fedavg", "fedsgd"):
            raise TypeError(f"{where}: protocol must be None, 'fedavg' or 'fedsgd', got {cls.protocol!r}")
        if cls.public_key is not None and not cls.exact_pmf:
            raise TypeError(f"{where}: public_key = {cls.public_key!r} names the public randomness of output_pmf, "
                            "so the class must declare exact_pmf = True")
        if _is_abstract(cls):
            return
        # ---- a concrete class: its declarations must be complete and match what it implements
        if not roles or not (isinstance(role, str) or isinstance(role, property)):
            raise TypeError(f"{where} declares no role: set role = one of {', '.join(map(repr, MECHANISM_ROLES))} "
                            "(or list several in roles and define role as a property)")
        for flag, members in _CAPABILITY_MEMBERS.items():
            declared = bool(getattr(cls, flag))
            present = [m for m in members if _implements(cls, m)]
            if declared and len(present) != len(members):
                missing = [m for m in members if m not in present]
                raise TypeError(f"{where} declares {flag} = True but does not implement {', '.join(missing)}")
            if not declared and present:
                raise TypeError(f"{where} implements {', '.join(present)} but does not declare {flag} = True "
                                f"(declare it so that the simulation, the audits and privfl.testing use "
                                f"{'them' if len(present) > 1 else 'it'})")
        if cls.secure_sum and "client-vector" not in roles:
            raise TypeError(f"{where} declares secure_sum, which only a 'client-vector' mechanism can have "
                            f"(roles {roles!r})")
        if "server-noise" in roles and cls.aggregate is Mechanism.aggregate:
            raise TypeError(f"{where} has the role 'server-noise' but does not implement aggregate() "
                            "(the server step that releases the noisy sum)")
        if "frequency-oracle" in roles:
            if len(roles) > 1:
                raise TypeError(f"{where}: a frequency oracle (category ids) cannot also have roles {roles!r}")
            if cls.domain is Mechanism.domain:
                raise TypeError(f"{where} is a frequency oracle but does not declare domain() "
                                "(InputDomain.of_categories(k): the categories its guarantee is stated over)")
            if cls.nonfinite != "n/a":
                raise TypeError(f"{where}: a frequency oracle takes integer ids: nonfinite must be 'n/a', "
                                f"got {cls.nonfinite!r}")
        elif cls.nonfinite == "n/a":
            raise TypeError(f"{where}: nonfinite = 'n/a' is for integer inputs (frequency oracles); a vector "
                            "mechanism declares 'zero' or 'raise'")

    # ---- derived from the role ----------------------------------------------------------------
    @property
    def central(self) -> bool:
        """The server step is :meth:`aggregate` (role ``"server-noise"``): it replaces the aggregator,
        and one release per round concerns every client (amplified by client sampling)."""
        return self.role == "server-noise"

    @property
    def input_kind(self) -> str:
        """``"categories"`` (``[n]`` int64 ids: frequency oracles) or ``"vectors"`` (``[n, d]`` floats)."""
        return "categories" if self.role == "frequency-oracle" else "vectors"

    @property
    def noise_location(self) -> str:
        """Where the noise the guarantee relies on is added: ``"server"`` (central DP: the rows the server
        and omniscient Byzantine clients read are *not* privatized, so a release that depends on honest
        rows through Byzantine rows is not covered) or ``"client"`` (every row leaving a client is already
        privatized or masked: anything computed from those rows is post-processing). Default: from
        the role (``"server-noise"`` → ``"server"``)."""
        return "server" if self.central else "client"

    # ---- declared hooks with their defaults ----------------------------------------------------
    def domain(self) -> InputDomain:
        """The inputs the guarantee is stated over (see :class:`InputDomain`); default: unbounded."""
        return InputDomain.unbounded()

    def estimand(self, x: Tensor) -> Tensor:
        """What ``decode(privatize(x))`` is unbiased for (``check_unbiased``'s target): ``x`` itself on
        the input domain; clipping mechanisms return the clipped input, so the target stays right for
        inputs outside the clip ball."""
        return x

    def report_bytes(self, reports: Tensor) -> float:
        """Bytes one client sends for its report (default: the report row's storage)."""
        if reports.dim() > 1:
            return float(reports[0].numel() * reports.element_size())
        return float(reports.element_size())

    def reset(self) -> None:
        """Forget every client's state (``stateful`` mechanisms; the default has none)."""

    def bind_layout(self, layout: Any) -> None:
        """Adopt the model's :class:`~privfl.flat.ParamLayout` (``binds_layout`` mechanisms; default: nothing)."""

    def bind_dim(self, dim: int) -> None:
        """Fix the update dimension the guarantee is stated for (``binds_dim`` mechanisms; default: nothing)."""

    # ---- the contract -------------------------------------------------------------------------
    @abstractmethod
    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor: ...

    def decode(self, reports: Tensor) -> Tensor:
        return reports

    def estimate(self, reports: Tensor) -> Tensor:
        return self.decode(reports).mean(dim=0)

    @abstractmethod
    def guarantee(self) -> PrivacyGuarantee: ...

    # ---- central noise and accounting (defaults keep a mechanism purely local) ----
    def aggregate(
        self,
        reports: Tensor,
        *,
        byzantine: Tensor | None = None,
        expected_rows: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Role ``"server-noise"``: the server step, ``[n, d]`` reports (+ Byzantine rows) → noisy ``[d]``.

        ``expected_rows`` is the public normaliser (``q·N`` under Poisson client sampling). Called
        every round, also with no participant, so that the release never depends on who took part.
        """
        raise NotImplementedError(f"{self.name} is a local mechanism; the server aggregates decode(reports)")

    def account(self, ledger: Any, *, clients: Tensor, sampling_rate: float, dim: int, round: int) -> None:
        """Record one round's releases in a :class:`~privfl.accounting.PrivacyLedger`.

        Default: a central mechanism is one release per round concerning every client, amplified
        by Poisson client sampling at ``sampling_rate``; a local one is one release per
        participating client. A guarantee with ``unit="coordinate"`` is composed over the ``dim``
        coordinates of the update (recorded with ``count=dim`` and unit ``"client"``).
        """
        g = self.guarantee()
        per_coordinate = g.unit == "coordinate"
        count = dim if per_coordinate else 1
        unit = "client" if per_coordinate else None
        if self.central:
            ledger.record(g, sampling_rate=sampling_rate, count=count, unit=unit, round=round)
        else:
            ledger.record(g, clients=clients, count=count, unit=unit, round=round)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------
def check_updates(updates: Tensor, *, name: str = "updates", min_rows: int = 1) -> None:
    """Validate a ``[n, d]`` update matrix at a public entry point."""
    if not isinstance(updates, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [n, d], got {type(updates).__name__}")
    if updates.dim() != 2:
        raise ValueError(f"{name} must have shape [n, d], got shape {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {updates.dtype}")
    if updates.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s), got {updates.shape[0]}")


class Aggregator(Component, ABC):
    """A server aggregation rule ``[n, d] -> [d]`` with a declared number ``f`` of faulty inputs.

    Rules are unweighted, never modify their input, keep dtype and device, and validate their
    own requirement on ``n`` and ``f``. Stateful rules hold explicit state cleared by ``reset()``.
    """

    name: ClassVar[str] = "aggregator"
    f: int = 0
    #: True only for the plain unweighted mean of the rows: the one rule a central mechanism's
    #: ``aggregate()`` (noise on the sum) may stand in for. The simulation reads this, not the class.
    plain_mean: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, updates: Tensor) -> Tensor: ...

    def reset(self) -> None:
        """Forget any state kept between calls (stateless rules: nothing to do)."""

    def kappa(self, n: int) -> float | None:
        """The (f, κ)-robustness coefficient (Allouah et al., AISTATS 2023) the rule is proven to meet at
        ``n`` inputs with its declared ``f``, or ``None`` (not proven, or a built-in rule whose bound is
        in :data:`privfl.testing.robustness.KAPPA`). A rule that returns a number gets the κ property
        tests of ``tests/test_robust_aggregators.py`` with no edit to the tests."""
        return None


class PreAggregator(Component, ABC):
    """A transform ``[n, d] -> [m, d]`` applied before any :class:`Aggregator` (NNM, bucketing)."""

    name: ClassVar[str] = "preaggregator"
    f: int = 0

    @abstractmethod
    def __call__(self, updates: Tensor, *, generator: torch.Generator | None = None) -> Tensor: ...


class Mixing(Component, ABC):
    """Decentralized mixing ``[n, d] -> [n, d]``: one output per node (e.g. MoNNA's NNA)."""

    name: ClassVar[str] = "mixing"
    f: int = 0

    @abstractmethod
    def __call__(self, models: Tensor, *, adjacency: Tensor | None = None) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# Privacy attacks
# --------------------------------------------------------------------------------------------
UpdateKind = Literal["gradient", "delta"]


@dataclass
class Observation:
    """Exactly what an honest-but-curious server is granted about one client in one round.

    ``update`` is the client's shared vector in the model's :class:`~privfl.flat.ParamLayout`
    order: the gradient (``kind="gradient"``, FedSGD) or the weight difference
    ``w_K - w_0`` after local training (``kind="delta"``, FedAvg), possibly privatized.
    ``update`` may also be ``[v, d]``: several independent victims of the same model.
    Optional facts (labels, lr, local steps, batch size) are ``None`` unless the threat model
    grants them; attacks call :meth:`require` for what they need.
    ``data_mean`` / ``data_std`` describe the input normalisation, so attacks can map between the
    model's input space and pixel space.
    """

    model: nn.Module
    update: Tensor
    kind: UpdateKind
    num_examples: int
    input_shape: tuple[int, ...]
    num_classes: int
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    labels: Tensor | None = None
    lr: float | None = None
    local_steps: int | None = None
    batch_size: int | None = None
    data_mean: tuple[float, ...] | None = None
    data_std: tuple[float, ...] | None = None
    round: int | None = None
    client: int | None = None

    GRANTABLE: ClassVar[tuple[str, ...]] = ("labels", "lr", "local_steps", "batch_size")

    def __post_init__(self) -> None:
        if self.kind not in ("gradient", "delta"):
            raise ValueError(f"kind must be 'gradient' or 'delta', got {self.kind!r}")
        if not isinstance(self.update, Tensor) or self.update.dim() not in (1, 2):
            raise ValueError("update must be a [d] or [victims, d] tensor")
        if self.num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {self.num_examples}")

    def require(self, *fields: str, attack: str = "this attack") -> None:
        """Raise a clear error when the threat model does not grant a field the attack needs."""
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"{attack} needs {', '.join(missing)} in the Observation, but the threat model does "
                f"not grant {'it' if len(missing) == 1 else 'them'}; grant it or choose an attack "
                f"or label strategy that does not need it"
            )


@dataclass
class Reconstruction:
    """What a privacy attack returns: data in the dataset's pixel space and (soft or hard) labels."""

    data: Tensor
    labels: Tensor | None = None
    loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PrivacyAttack(Component, ABC):
    """``attack(observation) -> Reconstruction``; uses nothing beyond what the observation grants."""

    name: ClassVar[str] = "privacy_attack"

    @abstractmethod
    def attack(self, observation: Observation, *, generator: torch.Generator | None = None) -> Reconstruction: ...


# --------------------------------------------------------------------------------------------
# Byzantine attacks
# --------------------------------------------------------------------------------------------
BYZANTINE_KNOWLEDGE = ("omniscient", "own-data", "public")


class ByzantineAttack(Component, ABC):
    """Model poisoning: ``rows [h, d] -> malicious [f, d]``.

    ``knowledge`` declares what the attack reads, and the simulation hands it exactly that:
    ``"omniscient"`` — the honest rows of the round; ``"own-data"`` — only the Byzantine clients' own
    honest updates (their data, the public model); ``"public"`` — nothing but the shape (a zero
    matrix). An omniscient attack against a central DP mechanism voids the ε (the release then
    depends on honest data through the Byzantine rows; see :mod:`privfl.accounting.ledger`).
    """

    name: ClassVar[str] = "byzantine_attack"
    knowledge: ClassVar[str] = "omniscient"

    @abstractmethod
    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor: ...


class DataPoisoningAttack(Component, ABC):
    """Data poisoning as a client-side transform: malicious clients train honestly on poisoned data."""

    name: ClassVar[str] = "data_poisoning"
    #: data poisoners train on their own (poisoned) data: they read no honest update
    knowledge: ClassVar[str] = "own-data"

    @abstractmethod
    def poison(
        self, x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]: ...
