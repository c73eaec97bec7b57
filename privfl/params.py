"""Declared parameter spaces: the valid range of every constructor parameter of a component.

A component class declares ``param_space: ClassVar[dict[str, Param]]`` — one entry per keyword of its
constructor — so that tests and users can draw valid parameters (``privfl.testing.mechanism_params``),
build out-of-range ones that the constructor must reject with an error naming the parameter
(``privfl.testing.check_contract``), and read the allowed values without opening the code::

    class MyMechanism(Mechanism):
        role = "frequency-oracle"
        param_space = {"eps": Real(0, None, lo_open=True, log=True, typical=(0.1, 8)),
                       "k": Int(2, None, typical=(2, 16)),
                       "mode": Choice("paper", "exact")}

Kinds of parameter:

- :class:`Real` — a finite number in ``[lo, hi]`` (each end open or closed, ``None`` = unbounded);
  ``log=True`` draws on a log scale; ``typical=(a, b)`` is the range strategies draw from (default:
  the bounds, or a modest range around them when unbounded), so that drawn components stay cheap.
- :class:`Int` — an integer in ``[lo, hi]`` (closed ends), with the same ``typical``.
- :class:`Choice` — one of a fixed tuple of values (strings, bools, numbers).

Any bound may be a :class:`Ref` to another parameter (``Ref("eps_inf")``: ``eps_1 < eps_inf``;
``Ref("k")``: ``d <= k``; ``Ref("frac_bits", offset=3)``: ``modulus_bits >= frac_bits + 3``), and
``optional=True`` says ``None`` is also accepted (the constructor then picks a default).
A declared space must agree with the constructor: in-range values construct, out-of-range ones raise
``ValueError``/``TypeError`` whose message names the parameter (the contract test checks both).
This module is plain Python; :meth:`Param.strategy` needs ``hypothesis``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Ref",
    "Param",
    "Real",
    "Int",
    "Choice",
    "space_of",
    "example_params",
    "invalid_values",
    "boundary_values",
    "params_strategy",
    "order",
    "check",
    "check_all",
]

Bound = "float | int | Ref | None"


@dataclass(frozen=True)
class Ref:
    """A bound taken from another parameter's value (plus ``offset``): ``Ref("k")``, ``Ref("frac_bits", 3)``."""

    name: str
    offset: float = 0

    def resolve(self, values: Mapping[str, Any]) -> float | None:
        v = values.get(self.name)
        return None if v is None else v + self.offset


def _resolve(bound: Any, values: Mapping[str, Any], *, lower: bool) -> Any:
    """A bound's value; a tuple of bounds is their max (lower bounds) or min (upper bounds)."""
    if isinstance(bound, tuple):
        got = [b for b in (_resolve(x, values, lower=lower) for x in bound) if b is not None]
        return (max(got) if lower else min(got)) if got else None
    return bound.resolve(values) if isinstance(bound, Ref) else bound


def _refs(*bounds: Any) -> tuple[str, ...]:
    out: list[str] = []
    for b in bounds:
        if isinstance(b, tuple):
            out.extend(_refs(*b))
        elif isinstance(b, Ref):
            out.append(b.name)
    return tuple(out)


def _show(bound: Any, inf: str) -> str:
    if bound is None:
        return inf
    if isinstance(bound, tuple):
        return ("max(" if inf == "-inf" else "min(") + ", ".join(_show(b, inf) for b in bound) + ")"
    if isinstance(bound, Ref):
        return bound.name + (f"{bound.offset:+g}" if bound.offset else "")
    return f"{bound:g}"


class Param:
    """One parameter's valid values (subclasses: :class:`Real`, :class:`Int`, :class:`Choice`)."""

    optional: bool = False

    def refs(self) -> tuple[str, ...]:
        return ()

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def strategy(self, values: Mapping[str, Any]):  # pragma: no cover - overridden
        raise NotImplementedError

    def example(self, values: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        raise NotImplementedError

    def boundary(self, values: Mapping[str, Any]) -> list[Any]:
        """Valid values at the closed ends of the range (the constructor must accept them)."""
        return []

    def has_type(self, value: Any) -> bool:
        """``value`` has the parameter's type (its range aside); ``None`` only when ``optional``."""
        raise NotImplementedError

    def check(self, name: str, value: Any, values: Mapping[str, Any] | None = None, *, owner: str | None = None
              ) -> Any:
        """``value`` if allowed, else ``TypeError`` (wrong type) or ``ValueError`` (out of range). The message
        always reads ``"<owner>: <name> must be <allowed>, got <type> <value>"``."""
        if self.has_type(value):
            if self.contains(value, values):
                return value
            error: type[Exception] = ValueError
        else:
            error = TypeError
        where = f"{owner}: " if owner else ""
        allowed = self.describe()
        if values and self.refs():
            known = {r: values[r] for r in self.refs() if values.get(r) is not None}
            if known:
                allowed += " (with " + ", ".join(f"{r}={v!r}" for r, v in known.items()) + ")"
        raise error(f"{where}{name} must be {allowed}, got {type(value).__name__} {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Real(Param):
    """A finite real number in ``[lo, hi]`` (``lo_open`` / ``hi_open`` make an end open)."""

    lo: Any = None
    hi: Any = None
    lo_open: bool = False
    hi_open: bool = False
    log: bool = False
    typical: tuple[float, float] | None = None
    optional: bool = False

    def refs(self) -> tuple[str, ...]:
        return _refs(self.lo, self.hi)

    def has_type(self, value: Any) -> bool:
        return _is_number(value) or (value is None and self.optional)

    def bounds(self, values: Mapping[str, Any]) -> tuple[float, float]:
        lo, hi = _resolve(self.lo, values, lower=True), _resolve(self.hi, values, lower=False)
        return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        if value is None:
            return self.optional
        if not _is_number(value) or not math.isfinite(value):
            return False
        lo, hi = self.bounds(values or {})
        return (value > lo if self.lo_open else value >= lo) and (value < hi if self.hi_open else value <= hi)

    def describe(self) -> str:
        lo, hi = _show(self.lo, "-inf"), _show(self.hi, "inf")
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"real in {left}{lo}, {hi}{right}" + (" or None" if self.optional else "")

    def _draw_range(self, values: Mapping[str, Any]) -> tuple[float, float]:
        lo, hi = self.bounds(values)
        if self.typical is not None:
            a, b = self.typical
            a, b = max(a, lo), min(b, hi)
            a = min(a, b)  # a bound taken from another parameter may cut below the typical range
        else:
            a = lo if math.isfinite(lo) else (min(-10.0, hi - 10.0) if math.isfinite(hi) else -10.0)
            b = hi if math.isfinite(hi) else max(10.0, a + 10.0)
        return a, b

    def _inside(self, x: float, values: Mapping[str, Any]) -> float:
        """Nudge ``x`` strictly inside open ends (draws land on the typical range's ends)."""
        lo, hi = self.bounds(values)
        span = max(abs(lo) if math.isfinite(lo) else 1.0, abs(hi) if math.isfinite(hi) else 1.0, 1e-12)
        if self.lo_open and x <= lo:
            x = lo + 1e-6 * span
        if self.hi_open and x >= hi:
            x = hi - 1e-6 * span
        return x

    def strategy(self, values: Mapping[str, Any]):
        from hypothesis import strategies as st

        a, b = self._draw_range(values)
        if self.log and a > 0:
            base = st.floats(math.log(a), math.log(b)).map(math.exp)
        else:
            base = st.floats(a, b, allow_nan=False, allow_infinity=False)
        base = base.map(lambda x: self._inside(min(max(x, a), b), values))
        return st.one_of(st.none(), base) if self.optional else base

    def example(self, values: Mapping[str, Any]) -> float:
        a, b = self._draw_range(values)
        x = math.sqrt(a * b) if self.log and a > 0 else (a + b) / 2
        return self._inside(x, values)

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        lo, hi = self.bounds(values)
        out: list[Any] = [math.nan, math.inf, "1.0"]
        if math.isfinite(lo):
            out.append(lo if self.lo_open else lo - max(1.0, abs(lo)))
        if math.isfinite(hi):
            out.append(hi if self.hi_open else hi + max(1.0, abs(hi)))
        if not self.optional:
            out.append(None)
        return out

    def boundary(self, values: Mapping[str, Any]) -> list[Any]:
        lo, hi = self.bounds(values)
        out = []
        if math.isfinite(lo) and not self.lo_open:
            out.append(lo)
        if math.isfinite(hi) and not self.hi_open:
            out.append(hi)
        return out


@dataclass(frozen=True)
class Int(Param):
    """An integer in ``[lo, hi]`` (closed ends; ``None`` = unbounded)."""

    lo: Any = None
    hi: Any = None
    typical: tuple[int, int] | None = None
    optional: bool = False

    def refs(self) -> tuple[str, ...]:
        return _refs(self.lo, self.hi)

    def has_type(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)) or (value is None and self.optional)

    def bounds(self, values: Mapping[str, Any]) -> tuple[float, float]:
        lo, hi = _resolve(self.lo, values, lower=True), _resolve(self.hi, values, lower=False)
        return (-math.inf if lo is None else lo), (math.inf if hi is None else hi)

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        lo, hi = self.bounds(values or {})
        return lo <= value <= hi

    def describe(self) -> str:
        return f"int in [{_show(self.lo, '-inf')}, {_show(self.hi, 'inf')}]" + (" or None" if self.optional else "")

    def _draw_range(self, values: Mapping[str, Any]) -> tuple[int, int]:
        lo, hi = self.bounds(values)
        if self.typical is not None:
            a, b = max(self.typical[0], lo), min(self.typical[1], hi)
            a = min(a, b)  # a bound taken from another parameter may cut below the typical range
        else:
            a = lo if math.isfinite(lo) else (hi - 10 if math.isfinite(hi) else -10)
            b = hi if math.isfinite(hi) else a + 10
        return int(a), int(max(a, b))

    def strategy(self, values: Mapping[str, Any]):
        from hypothesis import strategies as st

        a, b = self._draw_range(values)
        base = st.integers(a, b)
        return st.one_of(st.none(), base) if self.optional else base

    def example(self, values: Mapping[str, Any]) -> int:
        a, b = self._draw_range(values)
        return (a + b) // 2

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        lo, hi = self.bounds(values)
        out: list[Any] = [1.5, "2"]
        if math.isfinite(lo):
            out.append(int(lo) - 1)
        if math.isfinite(hi):
            out.append(int(hi) + 1)
        if not self.optional:
            out.append(None)
        return out

    def boundary(self, values: Mapping[str, Any]) -> list[Any]:
        lo, hi = self.bounds(values)
        return [int(b) for b in (lo, hi) if math.isfinite(b)]


@dataclass(frozen=True, init=False)
class Choice(Param):
    """One of a fixed set of values. ``contextual`` values are valid too but never drawn by the
    strategies: they need context a generic property test does not give (e.g. FedRand's ``"lora"``
    needs a model with LoRA adapters bound first)."""

    options: tuple[Any, ...]
    optional: bool = False
    contextual: tuple[Any, ...] = ()

    def __init__(self, *options: Any, optional: bool = False, contextual: tuple[Any, ...] = ()):
        if not options:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", tuple(options))
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "contextual", tuple(contextual))

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        if value is None:
            return self.optional
        return any(value == o and type(value) is type(o) for o in self.options + self.contextual)

    def has_type(self, value: Any) -> bool:
        return any(type(value) is type(o) for o in self.options + self.contextual) or (value is None and self.optional)

    def describe(self) -> str:
        return ("one of " + ", ".join(map(repr, self.options + self.contextual))
                + (" or None" if self.optional else ""))

    def strategy(self, values: Mapping[str, Any]):
        from hypothesis import strategies as st

        base = st.sampled_from(self.options)
        return st.one_of(st.none(), base) if self.optional else base

    def example(self, values: Mapping[str, Any]) -> Any:
        return self.options[0]

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        if all(isinstance(o, str) for o in self.options):
            out.append("not-" + "-".join(self.options)[:40])
        elif all(isinstance(o, bool) for o in self.options):
            out.append("yes")
        else:
            numbers = [o for o in self.options if _is_number(o)]
            if numbers:
                out.append(max(numbers) + 1)
        if not self.optional:
            out.append(None)
        return out


# --------------------------------------------------------------------------------------------
# Whole spaces
# --------------------------------------------------------------------------------------------
def space_of(component: Any) -> dict[str, Param] | None:
    """The declared ``param_space`` of a component class or instance (``None`` when undeclared)."""
    cls = component if isinstance(component, type) else type(component)
    space = getattr(cls, "param_space", None)
    if space is None:
        return None
    if not isinstance(space, Mapping) or not all(isinstance(p, Param) for p in space.values()):
        raise TypeError(f"{cls.__name__}.param_space must map parameter names to privfl.params.Param objects")
    return dict(space)


def order(space: Mapping[str, Param]) -> list[str]:
    """Parameter names with every referenced parameter before the ones that refer to it."""
    done: list[str] = []
    pending = list(space)
    while pending:
        progressed = False
        for name in list(pending):
            if all(r in done or r not in space for r in space[name].refs()):
                done.append(name)
                pending.remove(name)
                progressed = True
        if not progressed:
            raise ValueError(f"param_space has circular references among {pending}")
    return done


def _owner(component: Any) -> str:
    return str(getattr(component, "name", None) or (component if isinstance(component, type) else type(component)
                                                     ).__name__)


def check(component: Any, name: str, value: Any, **others: Any) -> Any:
    """Validate one constructor argument of ``component`` (a class or instance) against its declared
    ``param_space[name]``: the one validation path of privfl's components. ``others`` are the values of
    parameters that ``name``'s bounds refer to (``Ref``). Returns ``value``; raises ``TypeError`` for a
    wrong type and ``ValueError`` for a value out of range, naming the component, the parameter, the
    allowed values and what it got."""
    space = space_of(component)
    if space is None or name not in space:
        raise KeyError(f"{_owner(component)} declares no parameter {name!r} in its param_space")
    return space[name].check(name, value, others, owner=_owner(component))


def check_all(component: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check` every declared parameter present in ``values`` (referenced ones first)."""
    space = space_of(component) or {}
    for name in order(space):
        if name in values:
            space[name].check(name, values[name], values, owner=_owner(component))
    return dict(values)


def example_params(space: Mapping[str, Param], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One valid keyword dict (a middle value of every typical range), with ``overrides`` applied."""
    values: dict[str, Any] = dict(overrides or {})
    for name in order(space):
        if name not in values:
            values[name] = space[name].example(values)
    return values


def invalid_values(space: Mapping[str, Param], base: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` pairs outside the declared range (the others kept at ``base``)."""
    return [(name, v) for name in order(space) for v in space[name].invalid(base)]


def boundary_values(space: Mapping[str, Param], base: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` pairs at the closed ends of each range (valid: the constructor must accept them)."""
    return [(name, v) for name in order(space) for v in space[name].boundary(base)]


def params_strategy(space: Mapping[str, Param], fixed: Mapping[str, Any] | None = None):
    """Hypothesis strategy of valid keyword dicts (referenced parameters drawn first)."""
    from hypothesis import strategies as st

    names = order(space)
    fixed = dict(fixed or {})

    @st.composite
    def build(draw) -> dict[str, Any]:
        values = dict(fixed)
        for name in names:
            if name not in values:
                values[name] = draw(space[name].strategy(values))
        return values

    return build()
