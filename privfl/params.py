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

- :class:`Instance` — an object of given classes (``Instance(str)`` for a free-form name).
- :class:`Registered` — the name of a registered component of a kind, or an instance of its base class.
- :class:`Sizes` — a tuple (or list) of ints ``>= 1`` (an input shape, hidden widths).

Any bound may be a :class:`Ref` to another parameter (``Ref("eps_inf")``: ``eps_1 < eps_inf``;
``Ref("k")``: ``d <= k``; ``Ref("frac_bits", offset=3)``: ``modulus_bits >= frac_bits + 3``), and
``optional=True`` says ``None`` is also accepted (the constructor then picks a default).
A rule between parameters that no bound expresses is a :class:`Constraint` in the class attribute
``param_constraints`` (checked after the parameters themselves, defaults included)::

    param_constraints = (Constraint(("granularity", "release_prob"),
                                    lambda v: v["granularity"] != "lora" or v["release_prob"] == 0.5,
                                    "granularity='lora' needs release_prob = 0.5"),)

Registered functions and classes outside :class:`privfl.core.Component` (datasets, partitions, models)
declare their space with the :func:`validated` decorator, which checks explicit arguments the same way.
Arguments of public functions (a ``generator``, a ``delta``, a count) are checked with the same
types: ``Int(1, None).check("num_clients", value, owner="iid")``, :func:`check_generator`,
:func:`check_delta` — one message style everywhere.
A declared space must agree with the constructor: in-range values construct, out-of-range ones raise
``ValueError``/``TypeError`` whose message names the parameter (the contract test checks both).
This module is plain Python; :meth:`Param.strategy` needs ``hypothesis``.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Ref",
    "Param",
    "Real",
    "Int",
    "Choice",
    "Instance",
    "Registered",
    "Sizes",
    "Constraint",
    "validated",
    "space_of",
    "constraints_of",
    "example_params",
    "invalid_values",
    "boundary_values",
    "params_strategy",
    "order",
    "check",
    "check_all",
    "check_fields",
    "check_generator",
    "check_delta",
    "DELTA",
    "PROBABILITY",
    "CONFIDENCE",
    "OPEN_UNIT",
    "POSITIVE",
    "NON_NEGATIVE",
    "COUNT",
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
    """A real number: Python or NumPy int/float scalars; never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    """An integer: Python or NumPy int scalars; never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
        return _is_int(value) or (value is None and self.optional)

    def bounds(self, values: Mapping[str, Any]) -> tuple[float, float]:
        lo, hi = _resolve(self.lo, values, lower=True), _resolve(self.hi, values, lower=False)
        return (-math.inf if lo is None else lo), (math.inf if hi is None else hi)

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        if value is None:
            return self.optional
        if not _is_int(value):
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


@dataclass(frozen=True, init=False)
class Instance(Param):
    """An object of one of ``classes`` (``Instance(str, optional=True)``: a name or None;
    ``Instance(torch.Generator, optional=True)``: a generator or None). No range: only its type."""

    classes: tuple[type, ...]
    optional: bool = False

    def __init__(self, *classes: type, optional: bool = False):
        if not classes or not all(isinstance(c, type) for c in classes):
            raise TypeError("Instance needs at least one class")
        object.__setattr__(self, "classes", tuple(classes))
        object.__setattr__(self, "optional", optional)

    def has_type(self, value: Any) -> bool:
        if value is None:
            return self.optional
        return isinstance(value, self.classes) and (bool in self.classes or not isinstance(value, bool))

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        return self.has_type(value)

    def describe(self) -> str:
        names = " or ".join(_class_name(c) for c in self.classes)
        return names + (" or None" if self.optional else "")

    def strategy(self, values: Mapping[str, Any]):
        from hypothesis import strategies as st

        if self.optional:
            return st.none()
        if str in self.classes:
            return st.text(min_size=1, max_size=8)
        raise ValueError(f"cannot draw values of {self.describe()}; fix the parameter in the strategy")

    def example(self, values: Mapping[str, Any]) -> Any:
        if self.optional:
            return None
        if str in self.classes:
            return "x"
        raise ValueError(f"no example value of {self.describe()}; give one explicitly")

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = [] if any(issubclass(float, c) for c in self.classes) else [1.5]
        if not self.optional:
            out.append(None)
        return out


def _class_name(cls: type) -> str:
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__.split('.')[0]}.{cls.__name__}"


@dataclass(frozen=True)
class Registered(Param):
    """The name of a component registered under ``kind`` (:func:`privfl.registry.available`), or an
    instance of ``base`` (a user's own object), e.g. an inversion attack's ``label_strategy``."""

    kind: str
    base: type | None = None
    optional: bool = False

    def names(self) -> list[str]:
        from privfl import registry

        return registry.available(self.kind)

    def has_type(self, value: Any) -> bool:
        if value is None:
            return self.optional
        return isinstance(value, str) or (self.base is not None and isinstance(value, self.base))

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        if isinstance(value, str):
            return value in self.names()
        return self.has_type(value)

    def describe(self) -> str:
        text = f"a registered {self.kind} name (one of {', '.join(map(repr, self.names()))})"
        if self.base is not None:
            text += f" or a {self.base.__name__}"
        return text + (" or None" if self.optional else "")

    def strategy(self, values: Mapping[str, Any]):
        from hypothesis import strategies as st

        base = st.sampled_from(self.names())
        return st.one_of(st.none(), base) if self.optional else base

    def example(self, values: Mapping[str, Any]) -> Any:
        return None if self.optional else self.names()[0]

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        return [f"no-such-{self.kind}", 1.5] + ([] if self.optional else [None])


@dataclass(frozen=True)
class Sizes(Param):
    """A tuple (or list) of ints ``>= 1`` with at least ``min_len`` entries (an input shape, layer widths)."""

    min_len: int = 1
    typical: tuple[int, ...] = (8,)
    optional: bool = False

    def has_type(self, value: Any) -> bool:
        if value is None:
            return self.optional
        return isinstance(value, (tuple, list)) and all(_is_int(s) for s in value)

    def contains(self, value: Any, values: Mapping[str, Any] | None = None) -> bool:
        if value is None:
            return self.optional
        return self.has_type(value) and len(value) >= self.min_len and all(s >= 1 for s in value)

    def describe(self) -> str:
        what = "a tuple of ints >= 1" + (f" with at least {self.min_len} entries" if self.min_len else "")
        return what + (" or None" if self.optional else "")

    def strategy(self, values: Mapping[str, Any]):
        from hypothesis import strategies as st

        return st.just(tuple(self.typical))

    def example(self, values: Mapping[str, Any]) -> Any:
        return tuple(self.typical)

    def invalid(self, values: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = [(1.5,), (0,) * max(self.min_len, 1)]
        if self.min_len:
            out.append(())
        return out + ([] if self.optional else [None])


@dataclass(frozen=True)
class Constraint:
    """A rule between parameters no single range expresses (a class's ``param_constraints``):
    ``holds(values)`` on the constructor's arguments (defaults included) must be true, else
    ``ValueError("<owner>: <rule>, got <name>=<value>, ...")`` naming the ``names`` involved. The rule
    is skipped while one of ``names`` is ``None`` ("the constructor chooses") unless ``reads_none``."""

    names: tuple[str, ...]
    holds: Callable[[Mapping[str, Any]], bool]
    rule: str
    reads_none: bool = False

    def applies(self, values: Mapping[str, Any]) -> bool:
        return self.reads_none or all(values.get(n) is not None for n in self.names)

    def check(self, values: Mapping[str, Any], *, owner: str | None = None) -> None:
        if not self.applies(values) or self.holds(values):
            return
        got = ", ".join(f"{n}={values[n]!r}" for n in self.names)
        raise ValueError(f"{owner + ': ' if owner else ''}{self.rule}, got {got}")


# --------------------------------------------------------------------------------------------
# Arguments of public functions: the same types, shared
# --------------------------------------------------------------------------------------------
#: δ of an (ε, δ) guarantee or target: a probability in [0, 1).
DELTA = Real(0, 1, hi_open=True)
#: A probability in [0, 1].
PROBABILITY = Real(0, 1)
#: A number strictly between 0 and 1 (a fraction, a significance level).
OPEN_UNIT = Real(0, 1, lo_open=True, hi_open=True)
#: The confidence level of a bound or an interval: in (0, 1).
CONFIDENCE = OPEN_UNIT
#: A finite real number > 0 (a noise multiplier, a sensitivity, an ε).
POSITIVE = Real(0, None, lo_open=True)
#: A finite real number >= 0.
NON_NEGATIVE = Real(0, None)
#: A count >= 1 (clients, coordinates, releases).
COUNT = Int(1, None)


def check_delta(delta: Any, *, name: str = "delta", owner: str | None = None, positive: bool = False) -> float:
    """``delta`` as a float in ``[0, 1)`` (``(0, 1)`` with ``positive``), else ``TypeError``/``ValueError``."""
    param = Real(0, 1, lo_open=positive, hi_open=True) if positive else DELTA
    return float(param.check(name, delta, owner=owner))


def check_generator(generator: Any, *, owner: str | None = None, device: Any = None, required: bool = False) -> Any:
    """``generator`` if it is a ``torch.Generator`` (or ``None`` unless ``required``), else ``TypeError``;
    with ``device`` (where the values live) a generator on another device type is a ``ValueError``."""
    import torch

    Instance(torch.Generator, optional=not required).check("generator", generator, owner=owner)
    if generator is not None and device is not None and torch.device(generator.device).type != torch.device(
            device).type:
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}generator must be on the values' device type ({torch.device(device)}), "
                         f"got a generator on {generator.device}")
    return generator


# --------------------------------------------------------------------------------------------
# Whole spaces
# --------------------------------------------------------------------------------------------
def validated(space: Mapping[str, Param], *, name: str | None = None,
              constraints: tuple[Constraint, ...] = ()) -> Callable[[Any], Any]:
    """Decorator for a registered function or a class outside :class:`privfl.core.Component`: declare
    ``param_space`` (and ``param_constraints``) on it and check every explicitly passed argument that
    the space declares before the body runs (:func:`check_all`) — the same path as components. ``name``
    (default: the function's or class's name) labels the errors."""

    def deco(target: Any) -> Any:
        inner = target.__init__ if isinstance(target, type) else target
        signature = inspect.signature(inner)
        skip = 1 if isinstance(target, type) else 0  # self

        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            explicit = dict(list(bound.arguments.items())[skip:])
            bound.apply_defaults()
            check_all(target if skip else wrapper, explicit, dict(list(bound.arguments.items())[skip:]))
            return inner(*args, **kwargs)

        holder = target if isinstance(target, type) else wrapper
        holder.param_space = dict(space)
        holder.param_constraints = tuple(constraints)
        holder.param_owner = name or target.__name__
        if isinstance(target, type):
            target.__init__ = wrapper
            return target
        return wrapper

    return deco


def space_of(component: Any) -> dict[str, Param] | None:
    """The declared ``param_space`` of a component class or instance, or of a :func:`validated` function
    (``None`` when undeclared)."""
    cls = component if isinstance(component, type) or _is_function(component) else type(component)
    space = getattr(cls, "param_space", None)
    if space is None:
        return None
    if not isinstance(space, Mapping) or not all(isinstance(p, Param) for p in space.values()):
        raise TypeError(f"{cls.__name__}.param_space must map parameter names to privfl.params.Param objects")
    return dict(space)


def _is_function(obj: Any) -> bool:
    return inspect.isfunction(obj) or inspect.ismethod(obj)


def constraints_of(component: Any) -> tuple[Constraint, ...]:
    """The declared ``param_constraints`` of a component class or instance (``()`` when none)."""
    cls = component if isinstance(component, type) or _is_function(component) else type(component)
    found = tuple(getattr(cls, "param_constraints", ()) or ())
    if not all(isinstance(c, Constraint) for c in found):
        raise TypeError(f"{cls.__name__}.param_constraints must hold privfl.params.Constraint objects")
    return found


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
    if _is_function(component):
        return str(getattr(component, "param_owner", None) or component.__name__)
    cls = component if isinstance(component, type) else type(component)
    return str(getattr(cls, "param_owner", None) or getattr(component, "name", None) or cls.__name__)


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


def check_all(component: Any, values: Mapping[str, Any], context: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """:func:`check` every declared parameter present in ``values`` (referenced ones first), then the
    class's ``param_constraints``. ``context`` holds every argument, defaults included (default:
    ``values``): the values that bounds (``Ref``) and constraints read."""
    space = space_of(component) or {}
    context = {**(context or {}), **values}
    owner = _owner(component)
    for name in order(space):
        if name in values:
            space[name].check(name, values[name], context, owner=owner)
    for constraint in constraints_of(component):
        constraint.check(context, owner=owner)
    return dict(values)


def check_fields(obj: Any) -> None:
    """Check a dataclass instance's fields against its class's ``param_space`` and ``param_constraints``
    (call it from ``__post_init__``): every declared field is checked, defaults included."""
    import dataclasses

    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    check_all(obj, {k: v for k, v in values.items() if k in (space_of(obj) or {})}, values)


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


def params_strategy(space: Mapping[str, Param], fixed: Mapping[str, Any] | None = None,
                    constraints: tuple[Constraint, ...] = ()):
    """Hypothesis strategy of valid keyword dicts (referenced parameters drawn first; dicts breaking one
    of ``constraints`` are filtered out)."""
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

    if not constraints:
        return build()
    return build().filter(lambda v: all(not c.applies(v) or c.holds(v) for c in constraints))
