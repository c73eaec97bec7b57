"""One validation path: every parameter of every registered component is checked from its declared
``param_space`` (privfl.core.Component + privfl.params), with one error style — a wrong type raises
``TypeError``, a value out of range ``ValueError``, and the message reads
``"<component>: <parameter> must be <allowed>, got <type> <value>"``."""

from __future__ import annotations

import re

import pytest

import privfl
from privfl import params, registry

KINDS = ("mechanism", "aggregator", "preaggregator", "mixing", "byzantine_attack", "privacy_attack")
CASES = [
    (kind, name, p)
    for kind in KINDS
    for name in privfl.available(kind)
    for p in (params.space_of(registry.get(kind, name)) or {})
]


def _bad_values(space, base, p):
    """The declared space's own out-of-range values of ``p``, split into wrong type and wrong range."""
    param = space[p]
    values = [v for v in param.invalid(base) if not param.contains(v, base)]
    wrong_type = [v for v in values if not param.has_type(v)]
    wrong_range = [v for v in values if param.has_type(v)]
    return wrong_type[:1], wrong_range[:1]


@pytest.mark.parametrize(("kind", "name", "p"), CASES, ids=[f"{k}:{n}:{p}" for k, n, p in CASES])
def test_wrong_type_and_out_of_range_values_fail_alike(kind, name, p):
    factory = registry.get(kind, name)
    space = params.space_of(factory)
    base = params.example_params(space)
    wrong_type, wrong_range = _bad_values(space, base, p)
    assert wrong_type or wrong_range
    for value, error in [(v, TypeError) for v in wrong_type] + [(v, ValueError) for v in wrong_range]:
        with pytest.raises(error) as info:
            factory(**{**base, p: value})
        shape = rf"^{re.escape(factory.name)}: {p} must be .+, got {type(value).__name__} {re.escape(repr(value))}$"
        assert re.match(shape, str(info.value)), str(info.value)
        assert str(info.value).split(" must be ")[1].split(", got")[0] == _allowed(space[p], base)


def _allowed(param, base):
    text = param.describe()
    known = {r: base[r] for r in param.refs() if base.get(r) is not None}
    return text + (" (with " + ", ".join(f"{r}={v!r}" for r, v in known.items()) + ")" if known else "")


def test_param_check_message_and_types():
    space = params.Int(0, None)
    with pytest.raises(TypeError, match=r"^mean: f must be int in \[0, inf\], got str '3'$"):
        space.check("f", "3", owner="mean")
    with pytest.raises(ValueError, match=r"^mean: f must be int in \[0, inf\], got int -1$"):
        space.check("f", -1, owner="mean")
    with pytest.raises(TypeError, match="got bool True"):
        params.Real(0, 1).check("q", True)
    with pytest.raises(ValueError, match="got float nan"):
        params.Real(0, 1).check("q", float("nan"))
    assert params.Choice("a", "b").check("mode", "b") == "b"
    with pytest.raises(ValueError, match="one of 'a', 'b'"):
        params.Choice("a", "b").check("mode", "c")
    with pytest.raises(TypeError, match="one of 'a', 'b'"):
        params.Choice("a", "b").check("mode", 1)


def test_issue_examples_now_agree():
    # the drift the issue names: Mean(f="3") raised ValueError while check_int raised TypeError
    with pytest.raises(TypeError, match="f must be int"):
        privfl.make("aggregator", "mean", f="3")
    with pytest.raises(TypeError, match="f must be int"):
        privfl.make("aggregator", "krum", f="3")
