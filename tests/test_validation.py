"""One validation path: every parameter of every registered component is checked from its declared
``param_space`` (privfl.core.Component, privfl.params.validated for datasets, partitions and models),
with one error style — a wrong type raises ``TypeError``, a value out of range ``ValueError``, and the
message reads ``"<component>: <parameter> must be <allowed>, got <type> <value>"``. Public functions'
arguments (generator, δ, confidence, counts) use the same types (privfl.params)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import privfl
from privfl import params, registry

KINDS = tuple(registry.KINDS)
# arguments that are data, not parameters: checked in the body (shape, dtype), never declared
DATA_ARGS = {"partition": {"labels", "generator"}}
FIXED = {"partition": {"labels": torch.arange(40) % 4, "generator": torch.Generator().manual_seed(0)}}
FACTORIES = [(kind, name) for kind in KINDS for name in privfl.available(kind)]
CASES = [
    (kind, name, p)
    for kind, name in FACTORIES
    for p in (params.space_of(registry.get(kind, name)) or {})
]


def _keywords(factory) -> set[str]:
    return set(registry.signature_parameters(factory)) - {"self"}


@pytest.mark.parametrize(("kind", "name"), FACTORIES, ids=[f"{k}:{n}" for k, n in FACTORIES])
def test_every_registered_factory_declares_every_parameter(kind, name):
    factory = registry.get(kind, name)
    space = params.space_of(factory)
    assert space is not None, f"{kind} {name!r} declares no param_space"
    assert set(space) == _keywords(factory) - DATA_ARGS.get(kind, set())


def _bad_values(param, base):
    """The declared space's own out-of-range values, split into wrong type and wrong range."""
    values = [v for v in param.invalid(base) if not param.contains(v, base)]
    return [v for v in values if not param.has_type(v)], [v for v in values if param.has_type(v)]


def _allowed(param, base):
    text = param.describe()
    known = {r: base[r] for r in param.refs() if base.get(r) is not None}
    return text + (" (with " + ", ".join(f"{r}={v!r}" for r, v in known.items()) + ")" if known else "")


@pytest.mark.parametrize(("kind", "name", "p"), CASES, ids=[f"{k}:{n}:{p}" for k, n, p in CASES])
def test_wrong_type_and_out_of_range_values_fail_alike(kind, name, p):
    factory = registry.get(kind, name)
    space = params.space_of(factory)
    base = params.example_params(space)
    wrong_type, wrong_range = _bad_values(space[p], base)
    assert wrong_type, f"{name}.{p}: the declared space offers no wrong-type value to test"
    bounded = isinstance(space[p], (params.Real, params.Int)) or (
        isinstance(space[p], (params.Choice, params.Registered))
        and all(isinstance(o, str) for o in getattr(space[p], "options", ("x",))))
    assert wrong_range or not bounded, f"{name}.{p}: a bounded parameter offers no out-of-range value to test"
    owner = params._owner(factory)
    for value, error in [(v, TypeError) for v in wrong_type] + [(v, ValueError) for v in wrong_range]:
        with pytest.raises(Exception) as info:
            factory(**{**FIXED.get(kind, {}), **base, p: value})
        assert type(info.value) is error, f"{name}({p}={value!r}) raised {type(info.value).__name__}: {info.value}"
        got = f"got {type(value).__name__} {value!r}"
        assert str(info.value) == f"{owner}: {p} must be {_allowed(space[p], base)}, {got}"


@pytest.mark.parametrize(("factory", "kwargs", "message"), [
    (lambda **k: privfl.make("mechanism", "fedrand", **k), dict(granularity="lora", release_prob=0.3),
     "fedrand: granularity='lora' releases one of A/B with probability 1/2: release_prob must be 0.5, "
     "got granularity='lora', release_prob=0.3"),
    (lambda **k: privfl.make("mechanism", "ddg", **k), dict(bits=8, num_clients=10_000),
     "ddg: bits is too small for num_clients and k_stddevs: need 2^(2·bits) > num_clients·k_stddevs², "
     "got bits=8, num_clients=10000, k_stddevs=4.0"),
    (lambda **k: privfl.make("dataset", "synthetic", **k), dict(n_samples=5, n_classes=3),
     "synthetic: n_samples must be >= 2·n_classes (two samples per class), got n_samples=5, n_classes=3"),
    (lambda **k: privfl.make("model", "resnet", input_shape=(3, 8, 8), num_classes=2, **k), dict(depth=10),
     "resnet: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got depth=10"),
])
def test_declared_constraints_between_parameters(factory, kwargs, message):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    assert str(info.value) == message


def test_refs_read_defaults_too():
    # modulus_bits >= frac_bits + 3 holds against frac_bits' default (20) when only modulus_bits is given
    with pytest.raises(ValueError, match=r"^dp-brem-plus: modulus_bits must be int in \[max\(8, frac_bits\+3\), 62\] "
                                         r"\(with frac_bits=20\), got int 10$"):
        privfl.make("mechanism", "dp-brem-plus", modulus_bits=10)
    from privfl.secagg import SecureAggregation

    with pytest.raises(ValueError, match=r"^SecureAggregation: modulus_bits must be .*got int 12$"):
        SecureAggregation(frac_bits=10, modulus_bits=12)


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
    import numpy as np

    assert params.Int(1, None).check("n", np.int64(3)) == 3  # NumPy scalars are numbers too; bools never
    with pytest.raises(TypeError, match="got bool"):
        params.Int(1, None).check("n", np.bool_(True))


def test_issue_examples_now_agree():
    # the drift the issue names: Mean(f="3") raised ValueError while check_int raised TypeError
    for rule in ("mean", "krum", "trimmed-mean"):
        with pytest.raises(TypeError) as info:
            privfl.make("aggregator", rule, f="3")
        assert str(info.value) == f"{rule}: f must be int in [0, inf], got str '3'"
    from privfl.defenses.mean import Mean

    with pytest.raises(TypeError, match=r"^mean: f must be int in \[0, inf\], got str '3'$"):
        Mean(f="3")  # built directly, not through the registry: the same path


# --------------------------------------------------------------------------------------------
# Public functions: the shared validators of privfl.params
# --------------------------------------------------------------------------------------------
def test_shared_generator_and_delta_checks():
    with pytest.raises(TypeError, match=r"^iid: generator must be torch.Generator, got int 0$"):
        privfl.make("partition", "iid", labels=torch.arange(10), num_clients=2, generator=0)
    with pytest.raises(TypeError, match=r"^bucketing: generator must be torch.Generator or None, got int 3$"):
        privfl.make("preaggregator", "bucketing")(torch.zeros(4, 2), generator=3)
    grr = privfl.make("mechanism", "grr", k=4, eps=1.0)
    with pytest.raises(TypeError, match=r"^grr: generator must be torch.Generator or None, got str 'x'$"):
        grr.privatize(torch.zeros(3, dtype=torch.int64), generator="x")
    with pytest.raises(ValueError, match=r"^f: delta must be real in \[0, 1\), got float 1.0$"):
        params.check_delta(1.0, owner="f")
    with pytest.raises(ValueError, match=r"^delta must be real in \(0, 1\), got float 0.0$"):
        params.check_delta(0.0, positive=True)
    with pytest.raises(TypeError, match=r"^delta must be real in \[0, 1\), got str '1e-5'$"):
        params.check_delta("1e-5")


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), [
    ("iid", dict(num_clients=0), ValueError, "iid: num_clients must be int in [1, inf], got int 0"),
    ("iid", dict(num_clients=2.0), TypeError, "iid: num_clients must be int in [1, inf], got float 2.0"),
    ("dirichlet", dict(num_clients=2, alpha=0.0), ValueError,
     "dirichlet: alpha must be real in (0, inf), got float 0.0"),
    ("shards", dict(num_clients=2, shards_per_client=True), TypeError,
     "shards: shards_per_client must be int in [1, inf], got bool True"),
])
def test_partition_arguments(name, kwargs, error, message):
    fn = registry.get("partition", name)
    with pytest.raises(error) as info:
        fn(torch.arange(20) % 3, generator=torch.Generator(), **kwargs)
    assert str(info.value) == message


def test_audit_arguments():
    from privfl.evaluations.audit import accounted_epsilon, black_box_audit, canary_audit

    m = privfl.make("mechanism", "gaussian", clip_norm=1.0, noise_multiplier=1.0, local=True)
    cases = [
        (lambda: black_box_audit(m, trials=4), ValueError,
         "black_box_audit: trials must be int in [8, inf], got int 4"),
        (lambda: black_box_audit(m, trials=100, delta=1.0), ValueError,
         "black_box_audit: delta must be real in [0, 1), got float 1.0"),
        (lambda: black_box_audit(m, trials=100, confidence=1), ValueError,
         "black_box_audit: confidence must be real in (0, 1), got int 1"),
        (lambda: black_box_audit("gaussian"), TypeError,
         "black_box_audit: mechanism must be privfl.Mechanism, got str 'gaussian'"),
        (lambda: canary_audit(privfl.make("mechanism", "dp-fedavg"), rounds=1.5), TypeError,
         "canary_audit: rounds must be int in [1, inf], got float 1.5"),
        (lambda: accounted_epsilon(m, 1e-5, releases=0), ValueError,
         "accounted_epsilon: releases must be int in [1, inf], got int 0"),
    ]
    for call, error, message in cases:
        with pytest.raises(error) as info:
            call()
        assert str(info.value) == message


def test_accounting_delta_and_rates():
    from privfl.accounting import analysis, empirical
    from privfl.accounting.ledger import PrivacyLedger

    ledger = PrivacyLedger()
    with pytest.raises(ValueError, match=r"^delta must be real in \(0, 1\), got int 0$"):
        ledger.epsilon(0)
    with pytest.raises(TypeError, match=r"^sampling_rate must be real in \(0, 1\], got bool True$"):
        analysis.subsampled_gaussian_rdp(True, 1.0, [2.0])
    with pytest.raises(ValueError, match=r"^noise_multiplier must be real in \(0, inf\), got float -1.0$"):
        analysis.gaussian_rdp(-1.0, [2.0])
    with pytest.raises(ValueError, match=r"^delta must be real in \(0, 1\), got float 1.5$"):
        analysis.gaussian_epsilon_rdp(sampling_rate=0.1, noise_multiplier=1.0, steps=1, delta=1.5)
    with pytest.raises(TypeError, match=r"^steps must be int in \[0, inf\], got float 1.0$"):
        analysis.gaussian_epsilon_rdp(sampling_rate=0.1, noise_multiplier=1.0, steps=1.0, delta=1e-5)
    with pytest.raises(ValueError, match=r"^delta must be real in \[0, 1\), got float -0.1$"):
        empirical.gdp_epsilon(1.0, -0.1)
    assert math.isfinite(empirical.gdp_epsilon(1.0, 1e-5))


def test_validated_functions_keep_their_signature():
    # the decorator keeps names, docstrings and signatures (the registry and the spec loader read them)
    fn = registry.get("partition", "dirichlet")
    assert fn.__name__ == "dirichlet" and "Hsu" in fn.__doc__
    assert list(inspect.signature(fn).parameters) == ["labels", "num_clients", "alpha", "generator"]
