"""Registry: names per kind, error messages, parameter checks, duplicate registration; the mean rule."""

from __future__ import annotations

import pytest
import torch

import privfl
from privfl import registry
from privfl.core import Aggregator

EXPECTED = {
    "model": {"mlp", "lenet", "convnet", "resnet"},
    "dataset": {"digits", "lfw-faces", "natural-patches", "synthetic", "cifar10", "cifar100", "mnist"},
    "aggregator": {"mean"},
}


# --------------------------------------------------------------------------------------------
# available / get / make
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", registry.KINDS)
def test_available_is_sorted_list_of_str(kind):
    names = privfl.available(kind)
    assert isinstance(names, list)
    assert all(isinstance(n, str) for n in names)
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_known_names_present(kind):
    assert EXPECTED[kind] <= set(privfl.available(kind))


def test_available_returns_a_copy():
    names = privfl.available("model")
    names.append("not-a-model")
    assert "not-a-model" not in privfl.available("model")


def test_unknown_kind_lists_valid_kinds():
    for call in (lambda: privfl.available("widget"), lambda: privfl.make("widget", "mean")):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "widget" in msg
        for kind in registry.KINDS:
            assert kind in msg


def test_unknown_kind_in_register():
    with pytest.raises(ValueError, match="valid kinds"):
        registry.register("widget", "x")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        privfl.make("model", "transformer-xl")
    msg = str(info.value)
    assert "transformer-xl" in msg
    for name in privfl.available("model"):
        assert name in msg


def test_non_string_name_is_value_error():
    with pytest.raises(ValueError, match="unknown aggregator"):
        registry.get("aggregator", 3)  # type: ignore[arg-type]


def test_unknown_parameter_named_and_valid_ones_listed():
    with pytest.raises(ValueError) as info:
        privfl.make("model", "mlp", input_shape=(4,), num_classes=2, widht=3)
    msg = str(info.value)
    assert "'widht'" in msg
    for p in ("input_shape", "num_classes", "hidden"):
        assert p in msg


def test_missing_required_parameter():
    with pytest.raises(ValueError) as info:
        privfl.make("model", "mlp", input_shape=(4,))
    msg = str(info.value)
    assert "missing" in msg and "'num_classes'" in msg
    # a parameter with a default is not required
    model = privfl.make("model", "mlp", input_shape=(4,), num_classes=2)
    assert model(torch.zeros(3, 4)).shape == (3, 2)


def test_make_builds_the_registered_factory():
    agg = privfl.make("aggregator", "mean")
    assert isinstance(agg, Aggregator)
    assert type(agg) is registry.get("aggregator", "mean")
    params = registry.parameters("aggregator", "mean")
    assert set(params) == {"f"}


# --------------------------------------------------------------------------------------------
# register
# --------------------------------------------------------------------------------------------
@pytest.fixture
def scratch_name():
    """A name under "aggregator" that is removed again after the test."""
    name = "__test-scratch__"
    yield name
    registry._REGISTRY["aggregator"].pop(name, None)


def test_register_then_make(scratch_name):
    @registry.register("aggregator", scratch_name)
    class First(Aggregator):
        def __call__(self, updates):
            return updates[0]

    assert scratch_name in privfl.available("aggregator")
    assert isinstance(privfl.make("aggregator", scratch_name), First)
    # registering the very same factory again is harmless
    assert registry.register("aggregator", scratch_name)(First) is First


def test_register_different_factory_under_existing_name_raises(scratch_name):
    @registry.register("aggregator", scratch_name)
    class First(Aggregator):
        def __call__(self, updates):
            return updates[0]

    class Second(Aggregator):
        def __call__(self, updates):
            return updates[-1]

    with pytest.raises(ValueError, match="already registered"):
        registry.register("aggregator", scratch_name)(Second)
    assert registry.get("aggregator", scratch_name) is First


def test_register_cannot_hijack_builtin():
    mean_cls = registry.get("aggregator", "mean")

    def impostor(f: int = 0):
        return None

    with pytest.raises(ValueError, match="already registered"):
        registry.register("aggregator", "mean")(impostor)
    assert registry.get("aggregator", "mean") is mean_cls


# --------------------------------------------------------------------------------------------
# The mean aggregator
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_value_dtype_and_no_mutation(dtype):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(7, 13, generator=g, dtype=dtype)
    before = U.clone()
    out = privfl.make("aggregator", "mean")(U)
    assert out.dtype == dtype
    assert out.shape == (13,)
    assert torch.equal(out, U.mean(0))
    assert torch.equal(U, before)


def test_mean_single_row_is_that_row():
    U = torch.tensor([[1.0, -2.0, 3.5]])
    assert torch.equal(privfl.make("aggregator", "mean")(U), U[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_mean_rejects_non_finite_row(bad):
    U = torch.zeros(4, 3)
    U[2, 1] = bad
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        privfl.make("aggregator", "mean")(U)


@pytest.mark.parametrize("f", [-1, 0.0, 1.5, True, "0"])
def test_mean_rejects_invalid_f(f):
    # one error style: a wrong type is a TypeError, a negative count a ValueError
    with pytest.raises(ValueError if f == -1 else TypeError, match="mean: f must be int in"):
        privfl.make("aggregator", "mean", f=f)


@pytest.mark.parametrize("f", [0, 2])
def test_mean_ignores_declared_f(f):
    # The mean records f (to sit in robustness tables) but its output is always the plain mean.
    agg = privfl.make("aggregator", "mean", f=f)
    assert agg.f == f
    U = torch.arange(12.0).view(4, 3)
    assert torch.equal(agg(U), U.mean(0))


def test_mean_rejects_bad_shapes():
    agg = privfl.make("aggregator", "mean")
    with pytest.raises(ValueError):
        agg(torch.zeros(3))
    with pytest.raises(ValueError):
        agg(torch.zeros(0, 3))
    with pytest.raises(TypeError):
        agg(torch.zeros(2, 3, dtype=torch.int64))


def test_every_registry_rejects_a_second_definition_of_a_name():
    from privfl.evaluations import report, scenario

    scenario.load_extensions()
    existing_mode = next(iter(scenario.MODES))
    with pytest.raises(ValueError, match=f"mode {existing_mode!r} is already registered"):
        scenario.register_mode(existing_mode)(lambda s, seed, on_round=None: {})
    with pytest.raises(ValueError, match="extension 'privacy' is already registered"):
        scenario.register_extension(scenario.Extension(name="privacy"))
    name = next(iter(report.PLOTS))
    with pytest.raises(ValueError, match=f"plot {name!r} is already registered"):
        report.register_plot(name)(lambda run_dir, rows: [])
    with pytest.raises(ValueError, match="partition 'iid' is already registered"):
        registry.register("partition", "iid")(lambda labels, num_clients, *, generator: [])


def test_partitions_are_registered_components():
    assert {"iid", "dirichlet", "shards"} <= set(privfl.available("partition"))
    with pytest.raises(ValueError, match="unknown partition 'stripes'; valid partition names: dirichlet, iid"):
        from privfl.fl.partition import partition

        partition("stripes", torch.zeros(10, dtype=torch.int64), 2, generator=torch.Generator())
