"""Components by short name: ``make(kind, name, **params)`` and ``available(kind)``.

One plain dict per kind. Component modules register themselves with :func:`register` when they
are imported; the registry imports the built-in component packages on first use, so
``privfl.available("aggregator")`` sees everything that ships with privfl.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

KINDS = (
    "mechanism",
    "aggregator",
    "preaggregator",
    "mixing",
    "privacy_attack",
    "membership_attack",
    "label_strategy",
    "byzantine_attack",
    "dataset",
    "model",
    "partition",
)

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
_BUILTIN_MODULES = (
    "privfl.data",
    "privfl.fl.partition",
    "privfl.models",
    "privfl.defenses",
    "privfl.mechanisms",
    "privfl.attacks",
)
_loaded = False

F = TypeVar("F", bound=Callable[..., Any])


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def add_unique(table: dict[str, Any], name: str, value: Any, what: str) -> None:
    """``table[name] = value``, refusing a second, different entry under the same name (``ValueError``).
    The same object — or the same qualified name from the same module, as when a module is imported
    again — replaces the entry. Every registry of privfl (components, evaluation modes, extensions,
    plots) registers through this one rule."""
    existing = table.get(name)
    if existing is not None and not same_definition(existing, value):
        raise ValueError(f"{what} {name!r} is already registered by {existing!r}")
    table[name] = value


def same_definition(a: Any, b: Any) -> bool:
    """``a is b``, or both defined by the same qualified name in the same module (a re-imported module)."""
    if a is b:
        return True
    qa, qb = getattr(a, "__qualname__", None), getattr(b, "__qualname__", None)
    return qa is not None and qa == qb and getattr(a, "__module__", None) == getattr(b, "__module__", None)


def register(kind: str, name: str) -> Callable[[F], F]:
    """Class/function decorator: make ``factory`` available as ``make(kind, name, ...)``."""
    _check_kind(kind)

    def deco(factory: F) -> F:
        add_unique(_REGISTRY[kind], name, factory, kind)
        return factory

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules that register their own components (used by specs' ``imports``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"imports: cannot import plugin module {module!r}: {exc}") from exc


def available(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _check_kind(kind)
    _ensure_loaded()
    return sorted(_REGISTRY[kind])


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` (``ValueError`` listing valid names when unknown)."""
    _check_kind(kind)
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY[kind]:
        valid = ", ".join(sorted(_REGISTRY[kind])) or "(none registered)"
        raise ValueError(f"unknown {kind} {name!r}; valid {kind} names: {valid}")
    return _REGISTRY[kind][name]


def signature_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword parameters a callable accepts."""
    return {
        p.name: p
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def parameters(kind: str, name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters ``make(kind, name, ...)`` accepts."""
    return signature_parameters(get(kind, name))


def check_keywords(valid: dict[str, inspect.Parameter], params: dict[str, Any], what: str) -> None:
    """Raise ``ValueError`` for unknown or missing keywords of ``what``, listing the valid ones."""
    unknown = sorted(set(params) - set(valid))
    allowed = ", ".join(
        p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in valid.values()
    ) or "(none)"
    if unknown:
        raise ValueError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {what}; valid parameters: {allowed}"
        )
    missing = [n for n, p in valid.items() if p.default is inspect.Parameter.empty and n not in params]
    if missing:
        raise ValueError(
            f"missing required parameter{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"for {what}; valid parameters: {allowed}"
        )


def check_params(kind: str, name: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` for unknown or missing parameters, listing the valid ones."""
    check_keywords(parameters(kind, name), params, f"{kind} {name!r}")


def make(kind: str, name: str, **params: Any) -> Any:
    """Build the component registered as ``name`` under ``kind`` with keyword ``params``."""
    check_params(kind, name, params)
    return get(kind, name)(**params)
