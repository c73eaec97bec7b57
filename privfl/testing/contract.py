"""``check_contract``: the promises every privfl component makes, checked on any object (public).

One battery for every kind (like scikit-learn's ``check_estimator``), run by ``tests/test_contracts.py``
over the whole registry and callable on users' own components:

- **no input mutation** — the input is bit-for-bit unchanged after the call (NaN payloads included);
- **dtype and device kept** — floating outputs have the input's dtype, every output its device;
- **seeded determinism** — the same seed gives the same output (each call on a fresh deep copy, so
  stateful components start from the same state); for randomized components (``randomized=True``,
  mechanisms whose guarantee is private, and unbiased mechanisms that are not the identity — a
  stochastic quantizer) different seeds give different outputs;
- **non-finite policy** (mechanisms) — ``nonfinite`` is declared and holds: ``"zero"`` turns a NaN/Inf row
  into finite reports (and a finite server step, twice, for central mechanisms) and counts it in
  ``nonfinite_replaced``; ``"raise"`` raises ``ValueError``; ``"n/a"`` is for integer inputs only;
- **knowledge declared** (Byzantine attacks) — ``knowledge`` is ``"omniscient"``, ``"own-data"`` or ``"public"``;
- **clear errors on bad inputs** — a Python list, a wrongly shaped tensor (and, for frequency oracles,
  float ids or an id outside ``[0, k)``) raise ``ValueError``/``TypeError``, not some other exception;
- **clear errors on bad parameters** — from the declared ``param_space`` (:mod:`privfl.params`): its
  keys equal the constructor's keywords; a middle value and every closed end of each range construct;
  every out-of-range value (beyond each end, NaN, ∞, a string, ``None`` where not optional, another
  parameter's bound crossed) raises ``ValueError``/``TypeError`` whose message names the parameter.
  A component whose constructor takes parameters but declares no space fails with a message saying
  what to declare; one without constructor parameters needs no declaration (an empty space).

Kinds: :class:`~privfl.core.Mechanism` (``privatize``, and ``aggregate`` for central mechanisms),
:class:`~privfl.core.Aggregator`, :class:`~privfl.core.PreAggregator`, :class:`~privfl.core.Mixing`,
:class:`~privfl.core.ByzantineAttack`, :class:`~privfl.core.DataPoisoningAttack`. Each check returns a
:class:`ContractReport` and raises ``AssertionError`` listing every broken promise.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from privfl import params as P
from privfl.core import (
    BYZANTINE_KNOWLEDGE,
    Aggregator,
    ByzantineAttack,
    DataPoisoningAttack,
    Mechanism,
    Mixing,
    PreAggregator,
)

__all__ = ["ContractReport", "check_contract", "check_param_space", "component_kind"]

KINDS = ("mechanism", "aggregator", "preaggregator", "mixing", "byzantine_attack", "data_poisoning")


@dataclass
class ContractReport:
    """What :func:`check_contract` verified: ``checks`` passed (names), ``failures`` (empty when it passes),
    and how many valid / invalid parameter sets the constructor was tried with."""

    name: str
    kind: str
    checks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    valid_params_tried: int = 0
    invalid_params_rejected: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def component_kind(component: Any) -> str:
    """The contract ``component`` follows (one of :data:`KINDS`)."""
    for cls, kind in ((Mechanism, "mechanism"), (Aggregator, "aggregator"), (PreAggregator, "preaggregator"),
                      (Mixing, "mixing"), (ByzantineAttack, "byzantine_attack"),
                      (DataPoisoningAttack, "data_poisoning")):
        if isinstance(component, cls):
            return kind
    raise TypeError(f"check_contract needs a Mechanism, Aggregator, PreAggregator, Mixing, ByzantineAttack or "
                    f"DataPoisoningAttack instance, got {type(component).__name__}")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return bool(torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
                        and torch.equal(torch.isnan(a), torch.isnan(b)))
        return bool(torch.equal(a, b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _bytes(t: Tensor) -> Tensor:
    return t.detach().clone().contiguous().view(torch.uint8) if t.numel() else t.detach().clone()


def _unchanged(before: Tensor, after: Tensor) -> bool:
    now = _bytes(after)
    return before.shape == now.shape and bool(torch.equal(before, now))


def _gen(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _names_param(message: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


class _Checker:
    def __init__(self, report: ContractReport):
        self.report = report

    def expect(self, ok: bool, check: str, why: str) -> None:
        if ok:
            if check not in self.report.checks:
                self.report.checks.append(check)
        else:
            self.report.failures.append(f"{check}: {why}")

    def raises_clearly(self, call: Callable[[], Any], check: str, what: str) -> None:
        try:
            call()
        except (ValueError, TypeError):
            self.expect(True, check, "")
        except Exception as exc:  # noqa: BLE001 - reporting which exception escaped is the point
            self.expect(False, check, f"{what} raised {type(exc).__name__}: {exc} (expected ValueError/TypeError)")
        else:
            self.expect(False, check, f"{what} was accepted silently (expected ValueError/TypeError)")


# --------------------------------------------------------------------------------------------
# Parameter spaces
# --------------------------------------------------------------------------------------------
def _constructor_keywords(cls: type) -> dict[str, inspect.Parameter]:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return {}
    return {p.name: p for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def check_param_space(cls: type, *, report: ContractReport | None = None,
                      fixed: dict[str, Any] | None = None) -> ContractReport:
    """The declared ``param_space`` of ``cls`` agrees with its constructor (see the module docstring).

    ``fixed`` pins parameters the space leaves out (e.g. a required argument of a user's subclass).
    """
    report = report or ContractReport(getattr(cls, "name", cls.__name__), "params")
    chk = _Checker(report)
    keywords = _constructor_keywords(cls)
    space = P.space_of(cls)
    fixed = dict(fixed or {})
    if space is None:
        if keywords:
            chk.expect(False, "param space declared",
                       f"{cls.__name__} takes {', '.join(keywords)} but declares no param_space; add a class "
                       f"attribute param_space = {{{', '.join(repr(k) + ': ...' for k in keywords)}}} with "
                       "privfl.params.Real / Int / Choice giving each parameter's valid range")
            return report
        space = {}
    missing = sorted(set(keywords) - set(space) - set(fixed))
    extra = sorted(set(space) - set(keywords))
    chk.expect(not missing and not extra, "param space matches the constructor",
               f"{cls.__name__}.param_space lacks {missing} / declares unknown {extra}")
    if missing or extra:
        return report
    base = P.example_params(space, fixed)

    def construct(kwargs: dict[str, Any]) -> Exception | None:
        try:
            cls(**kwargs)
        except Exception as exc:  # noqa: BLE001
            return exc
        return None

    # a boundary value may move another parameter's range (Ref): the others are re-derived around it
    tried = [base] + [P.example_params(space, {**fixed, name: v}) for name, v in P.boundary_values(space, base)]
    for kwargs in tried:
        exc = construct(kwargs)
        report.valid_params_tried += 1
        chk.expect(exc is None, "declared-valid parameters construct",
                   f"{cls.__name__}({_show(kwargs)}) raised {type(exc).__name__}: {exc}")
    for name, value in P.invalid_values(space, base):
        kwargs = {**base, name: value}
        exc = construct(kwargs)
        what = f"{cls.__name__}({name}={value!r}) (declared: {space[name].describe()})"
        if exc is None:
            chk.expect(False, "out-of-range parameters rejected", f"{what} was accepted")
        elif not isinstance(exc, (ValueError, TypeError)):
            chk.expect(False, "out-of-range parameters rejected",
                       f"{what} raised {type(exc).__name__}: {exc} (expected ValueError/TypeError)")
        elif not _names_param(str(exc), name):
            chk.expect(False, "errors name the parameter", f"{what} raised {type(exc).__name__} without naming "
                       f"{name!r}: {exc}")
        else:
            report.invalid_params_rejected += 1
            chk.expect(True, "out-of-range parameters rejected", "")
            chk.expect(True, "errors name the parameter", "")
    return report


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# --------------------------------------------------------------------------------------------
# Per-kind behaviour
# --------------------------------------------------------------------------------------------
def _vector_input(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)


def _mechanism_input(mech: Mechanism, n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int) -> Tensor:
    domain = mech.domain()
    if domain.categorical:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, int(domain.categories), (n,), generator=g).to(device)
    scale = domain.bound if domain.bound is not None else 1.0
    return _vector_input(n, d, dtype, device, seed, scale)


def _randomized(mech: Mechanism, x: Tensor | None = None) -> bool:
    """Randomized: declared (``randomized = True``), private, or unbiased yet not the identity on ``x`` (a
    deterministic unbiased estimator is the identity, so a lossy unbiased one must draw randomness)."""
    declared = mech.randomized
    if declared is not None:
        return bool(declared)
    try:
        if mech.guarantee().is_private:
            return True
    except Exception:  # noqa: BLE001 - a broken guarantee is reported by the privacy checks
        return False
    if x is None or not mech.unbiased or mech.input_kind != "vectors":
        return False
    try:
        m = copy.deepcopy(mech)
        out = m.decode(m.privatize(x, generator=_gen(x.device, 0)))
        return not _same(out.to(torch.float64), m.estimand(x).to(torch.float64))
    except Exception:  # noqa: BLE001 - crashes are reported by the behaviour checks
        return False


NONFINITE_POLICIES = ("zero", "raise", "n/a")


def _check_nonfinite_policy(mech: Mechanism, chk: _Checker, x: Tensor, device: torch.device, seed: int) -> None:
    """The declared non-finite policy holds: ``"zero"`` — a NaN row and an Inf row give finite reports (and a
    finite server step with a NaN Byzantine row, for central mechanisms) and are counted; ``"raise"`` —
    ``ValueError``; ``"n/a"`` — only for integer inputs."""
    policy = mech.nonfinite
    categorical = mech.input_kind == "categories"
    chk.expect(policy in NONFINITE_POLICIES and (policy == "n/a") == categorical, "non-finite policy declared",
               f"nonfinite = {policy!r}; declare 'zero' (replace a NaN/Inf row by 0 before clipping, count it) or "
               "'raise' (ValueError) for vector mechanisms, 'n/a' for integer inputs")
    if categorical or policy not in ("zero", "raise"):
        return
    bad = x.clone()
    bad[0] = float("nan")
    if bad.shape[0] > 1:
        bad[1, 0] = float("inf")
    m = copy.deepcopy(mech)
    if policy == "raise":
        chk.raises_clearly(lambda: m.privatize(bad, generator=_gen(device, seed)), "non-finite policy holds",
                           "privatize(a NaN row) under nonfinite='raise'")
        return
    try:
        reports = m.privatize(bad, generator=_gen(device, seed))
        decoded = m.decode(reports)
        finite = bool(torch.isfinite(decoded).all()) if decoded.is_floating_point() else True
        chk.expect(finite, "non-finite policy holds", "privatize(a NaN row) gave non-finite reports under "
                   "nonfinite='zero'")
        if m.central:
            byz = torch.full((1, x.shape[1]), float("nan"), dtype=x.dtype, device=x.device)
            for _ in range(2):  # twice: the state after a faulty round must stay finite
                a = m.aggregate(reports, byzantine=byz, expected_rows=float(reports.shape[0] + 1),
                                generator=_gen(device, seed + 1))
            chk.expect(bool(torch.isfinite(a).all()), "non-finite policy holds",
                       "aggregate with a NaN Byzantine row gave a non-finite release under nonfinite='zero'")
        count = m.nonfinite_replaced
        chk.expect(isinstance(count, int) and count >= 2, "non-finite rows counted",
                   f"nonfinite_replaced = {count!r} after replacing at least 2 rows")
    except Exception as exc:  # noqa: BLE001
        chk.expect(False, "non-finite policy holds", f"privatize(a NaN row) raised {type(exc).__name__}: {exc} under "
                   "nonfinite='zero'")


def _check_mechanism(mech: Mechanism, chk: _Checker, *, n: int, d: int, dtypes: Sequence[torch.dtype],
                     device: torch.device, seed: int, randomized: bool | None) -> None:
    categorical = mech.input_kind == "categories"
    probe = None if categorical else _mechanism_input(mech, n, d, dtypes[0], device, seed)
    randomized = _randomized(mech, probe) if randomized is None else randomized
    central = mech.central
    _check_nonfinite_policy(mech, chk, probe if probe is not None else torch.zeros(0), device, seed)
    for dtype in ([torch.int64] if categorical else list(dtypes)):
        x = _mechanism_input(mech, n, d, dtype, device, seed)
        before = _bytes(x)

        def run(s: int, x: Tensor = x) -> Tensor:
            return copy.deepcopy(mech).privatize(x, generator=_gen(device, s))

        out = run(seed)
        chk.expect(_unchanged(before, x), "no input mutation", f"privatize modified its {dtype} input")
        chk.expect(isinstance(out, Tensor) and out.device == x.device, "device kept",
                   f"privatize returned {type(out).__name__} on {getattr(out, 'device', None)} for input on {x.device}")
        if isinstance(out, Tensor) and out.is_floating_point() and not categorical:
            chk.expect(out.dtype == x.dtype, "dtype kept", f"privatize turned {x.dtype} into {out.dtype}")
        chk.expect(_same(out, run(seed)), "same seed, same output", f"two privatize calls with seed {seed} differ")
        if randomized and not central:
            chk.expect(not _same(out, run(seed + 1)), "different seeds, different outputs",
                       f"privatize gave identical reports for seeds {seed} and {seed + 1}")
        decoded = copy.deepcopy(mech).decode(out)
        chk.expect(isinstance(decoded, Tensor) and decoded.device == x.device and decoded.shape[0] == x.shape[0],
                   "decode keeps rows and device", f"decode returned {getattr(decoded, 'shape', decoded)!r}")
        if central:  # the server step, on the mechanism that privatized (it may hold state from privatize)

            def pipeline(s: int, x: Tensor = x) -> tuple[Tensor, Tensor, Tensor]:
                m = copy.deepcopy(mech)
                reports = m.privatize(x, generator=_gen(device, s))
                rbefore = _bytes(reports)
                a = m.aggregate(reports, expected_rows=float(reports.shape[0]), generator=_gen(device, s + 1000))
                return a, rbefore, reports

            a, rbefore, reports = pipeline(seed)
            chk.expect(_unchanged(rbefore, reports), "no input mutation", "aggregate modified its reports")
            chk.expect(a.dtype == x.dtype and a.device == x.device, "dtype kept",
                       f"aggregate turned {x.dtype}/{x.device} updates into {a.dtype}/{a.device}")
            chk.expect(_same(a, pipeline(seed)[0]), "same seed, same output",
                       "two privatize + aggregate runs with one seed differ")
            if randomized:
                chk.expect(not _same(a, pipeline(seed + 1)[0]), "different seeds, different outputs",
                           f"privatize + aggregate gave identical outputs for seeds {seed} and {seed + 1}")
    fresh = copy.deepcopy(mech)
    chk.raises_clearly(lambda: copy.deepcopy(mech).privatize([[0.0]], generator=_gen(device, seed)),
                       "clear errors on bad inputs", "privatize(a Python list)")
    if categorical:
        k = int(mech.k)
        chk.raises_clearly(lambda: fresh.privatize(torch.zeros(3, device=device), generator=_gen(device, seed)),
                           "clear errors on bad inputs", "privatize(float category ids)")
        chk.raises_clearly(lambda: copy.deepcopy(mech).privatize(torch.tensor([0, k], device=device),
                                                                  generator=_gen(device, seed)),
                           "clear errors on bad inputs", f"privatize(an id = k = {k})")
    else:
        chk.raises_clearly(lambda: fresh.privatize(torch.zeros(d, device=device), generator=_gen(device, seed)),
                           "clear errors on bad inputs", "privatize(a 1-d tensor)")


def _rows_for(rule: Any, d: int) -> int:
    f = int(getattr(rule, "f", 0) or 0)
    s = int(getattr(rule, "s", 1) or 1)
    return max(4 * f + 5, 2 * s + 3, 7)


def _check_rule(rule: Any, kind: str, chk: _Checker, *, n: int | None, d: int, dtypes: Sequence[torch.dtype],
                device: torch.device, seed: int, randomized: bool | None) -> None:
    rows = n or _rows_for(rule, d)

    def call(r: Any, x: Tensor, s: int) -> Tensor:
        r = copy.deepcopy(r)
        if kind == "preaggregator":
            return r(x, generator=_gen(device, s))
        return r(x)

    for dtype in dtypes:
        x = _vector_input(rows, d, dtype, device, seed)
        before = _bytes(x)
        out = call(rule, x, seed)
        chk.expect(_unchanged(before, x), "no input mutation", f"the rule modified its {dtype} input")
        chk.expect(out.dtype == x.dtype and out.device == x.device, "dtype kept",
                   f"{dtype}/{x.device} in, {out.dtype}/{out.device} out")
        want = {"aggregator": (d,), "mixing": (rows, d)}.get(kind)
        chk.expect(want is None or tuple(out.shape) == want, "output shape",
                   f"expected shape {want}, got {tuple(out.shape)}")
        if kind == "preaggregator":
            chk.expect(out.dim() == 2 and out.shape[1] == d, "output shape", f"got {tuple(out.shape)}")
        chk.expect(_same(out, call(rule, x, seed)), "same seed, same output", "two calls on one input differ")
        if randomized:
            chk.expect(not _same(out, call(rule, x, seed + 1)), "different seeds, different outputs",
                       f"seeds {seed} and {seed + 1} gave identical outputs")
    chk.raises_clearly(lambda: call(rule, [[0.0, 1.0]] * rows, seed), "clear errors on bad inputs",
                       "a Python list")
    chk.raises_clearly(lambda: call(rule, torch.zeros(d, device=device), seed), "clear errors on bad inputs",
                       "a 1-d tensor")


def _check_byzantine(attack: ByzantineAttack, chk: _Checker, *, d: int, dtypes: Sequence[torch.dtype],
                     device: torch.device, seed: int, randomized: bool | None, f: int = 2, h: int = 7) -> None:
    knowledge = getattr(attack, "knowledge", None)
    chk.expect(knowledge in BYZANTINE_KNOWLEDGE, "knowledge declared",
               f"knowledge = {knowledge!r}; declare one of {BYZANTINE_KNOWLEDGE} (what the attack reads: it decides "
               "whether a central mechanism's ε is still a guarantee)")
    for dtype in dtypes:
        honest = _vector_input(h, d, dtype, device, seed)
        before = _bytes(honest)

        def run(s: int, honest: Tensor = honest) -> Tensor:
            return copy.deepcopy(attack)(honest, f, generator=_gen(device, s))

        out = run(seed)
        chk.expect(_unchanged(before, honest), "no input mutation", f"the attack modified its {dtype} honest rows")
        chk.expect(tuple(out.shape) == (f, d), "output shape", f"expected ({f}, {d}), got {tuple(out.shape)}")
        chk.expect(out.dtype == dtype and out.device == honest.device, "dtype kept",
                   f"{dtype}/{honest.device} in, {out.dtype}/{out.device} out")
        chk.expect(_same(out, run(seed)), "same seed, same output", "two calls with one seed differ")
        if randomized:
            chk.expect(not _same(out, run(seed + 1)), "different seeds, different outputs",
                       f"seeds {seed} and {seed + 1} gave identical rows")
    chk.raises_clearly(lambda: copy.deepcopy(attack)([[0.0] * d] * h, f), "clear errors on bad inputs",
                       "honest = a Python list")
    chk.raises_clearly(lambda: copy.deepcopy(attack)(_vector_input(h, d, torch.float64, device, seed), -1),
                       "clear errors on bad inputs", "f = -1")


def _check_poisoning(attack: DataPoisoningAttack, chk: _Checker, *, device: torch.device, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 4, 4, generator=g).to(device)
    y = torch.randint(0, 3, (8,), generator=g).to(device)
    bx, by = _bytes(x), _bytes(y)

    def run(s: int) -> tuple[Tensor, Tensor]:
        return copy.deepcopy(attack).poison(x, y, num_classes=3, generator=_gen(device, s))

    px, py = run(seed)
    chk.expect(_unchanged(bx, x) and _unchanged(by, y), "no input mutation", "poison modified its inputs")
    chk.expect(px.dtype == x.dtype and py.dtype == y.dtype and px.device == x.device, "dtype kept",
               f"({x.dtype}, {y.dtype}) in, ({px.dtype}, {py.dtype}) out")
    chk.expect(_same((px, py), run(seed)), "same seed, same output", "two calls with one seed differ")
    chk.raises_clearly(lambda: copy.deepcopy(attack).poison(x, y.double(), num_classes=3),
                       "clear errors on bad inputs", "float labels")


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------
def check_contract(
    component: Any,
    *,
    params: bool = True,
    fixed_params: dict[str, Any] | None = None,
    randomized: bool | None = None,
    n: int | None = None,
    d: int = 6,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    device: str | torch.device | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> ContractReport:
    """Run the contract battery on ``component`` (an instance); see the module docstring.

    ``params=False`` skips the parameter-space checks (``fixed_params`` pins constructor arguments the
    space leaves out). ``randomized`` (default: mechanisms whose guarantee is private, other components
    with a class attribute ``randomized = True``) requires different seeds to give different outputs.
    Inputs: ``n`` rows (default: enough for the rule's ``f``; 16 for mechanisms) of dimension ``d`` in
    each of ``dtypes``, on ``device`` (default CPU).
    Returns a :class:`ContractReport`; raises ``AssertionError`` listing every failure.
    """
    kind = component_kind(component)
    name = str(getattr(component, "name", type(component).__name__))
    report = ContractReport(name, kind)
    chk = _Checker(report)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be an int >= 1, got {d!r}")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be an int >= 1 or None, got {n!r}")
    declared_random = bool(getattr(component, "randomized", False)) if randomized is None else bool(randomized)
    try:
        if kind == "mechanism":
            _check_mechanism(component, chk, n=n or 16, d=d, dtypes=dtypes, device=device, seed=seed,
                             randomized=randomized)
        elif kind in ("aggregator", "preaggregator", "mixing"):
            _check_rule(component, kind, chk, n=n, d=d, dtypes=dtypes, device=device, seed=seed,
                        randomized=declared_random)
        elif kind == "byzantine_attack":
            _check_byzantine(component, chk, d=d, dtypes=dtypes, device=device, seed=seed,
                             randomized=declared_random)
        else:
            _check_poisoning(component, chk, device=device, seed=seed)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a valid call that crashes is a contract failure
        report.failures.append(f"a valid call raised {type(exc).__name__}: {exc}")
    if params:
        check_param_space(type(component), report=report, fixed=fixed_params)
    if raise_on_failure and report.failures:
        lines = "\n  - ".join(report.failures)
        raise AssertionError(f"{kind} {name!r} breaks its contract:\n  - {lines}")
    return report
