"""The common contract test: every registered component, every kind, checked the same way.

Walks ``privfl.available(kind)`` for every kind of the registry, so a component is tested the day it is
registered. Each component is built from its declared ``param_space`` (a middle value of every typical
range) and run through :func:`privfl.testing.check_contract` (no input mutation, dtype/device kept,
seeded determinism, clear errors on bad inputs and on out-of-range parameters). Mechanisms are also
checked for their privacy claim (:func:`check_privacy_loss`: exact where the outputs are finite, an
empirical Clopper–Pearson bound otherwise), their RDP curve (:func:`check_rdp`) and, where they claim it,
unbiasedness (:func:`check_unbiased`).

A newly registered component whose constructor takes parameters but declares no ``param_space`` fails
here with a message naming what to declare (there is no silent default: a default range would make
the "out-of-range values are rejected" check meaningless). Kinds outside the contract battery are
listed in ``NOT_COVERED`` with the reason; a new kind fails until it is added to one list or the other.

Error rates (all seeds fixed, so a run is deterministic): the sampling cross-checks of
``check_privacy_loss`` run at a family-wise 1e-3 per mechanism, the empirical bounds at 95 %
confidence (a correct mechanism passes with probability ≥ 0.95), ``check_unbiased`` at 1e-3.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import privfl
from privfl import params, registry
from privfl.testing import (
    check_contract,
    check_privacy_loss,
    check_rdp,
    check_unbiased,
    mechanism_params,
)
from privfl.testing.privacy import has_output_pmf

CONTRACT_KINDS = ("mechanism", "aggregator", "preaggregator", "mixing", "byzantine_attack")
NOT_COVERED = {
    "privacy_attack": "optimisation attacks need a model and thousands of steps; tests/test_privacy_attacks.py",
    "membership_attack": "scores of logits/updates, not [n, d] maps; contract checks in tests/test_membership.py",
    "label_strategy": "label strategies are functions of an Observation; tests/test_privacy_attacks.py",
    "dataset": "datasets load files or generate data; tests/test_datasets.py",
    "model": "models are torch modules; tests/test_models.py",
    "partition": "partitions are functions of labels; tests/test_partition.py",
}

COMPONENTS = [(kind, name) for kind in CONTRACT_KINDS for name in privfl.available(kind)]
MECHANISMS = privfl.available("mechanism")


def build(kind: str, name: str):
    factory = registry.get(kind, name)
    space = params.space_of(factory)
    assert space is not None, (
        f"{kind} {name!r} declares no param_space: add a class attribute param_space = {{...}} "
        "(privfl.params.Real / Int / Choice) giving the valid range of every constructor parameter"
    )
    return factory(**params.example_params(space))


def test_every_kind_is_covered_or_listed():
    assert set(CONTRACT_KINDS) | set(NOT_COVERED) == set(registry.KINDS)
    assert not set(CONTRACT_KINDS) & set(NOT_COVERED)


@pytest.mark.parametrize("kind,name", COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_contract(kind, name):
    report = check_contract(build(kind, name))
    assert report.ok and report.valid_params_tried >= 1
    assert "no input mutation" in report.checks and "same seed, same output" in report.checks
    if params.space_of(registry.get(kind, name)):
        assert report.invalid_params_rejected >= 1


@pytest.mark.parametrize("name", MECHANISMS)
def test_mechanism_rdp_curve(name):
    check_rdp(build("mechanism", name))


def _privacy_applies(mech) -> bool:
    g = mech.guarantee()
    if has_output_pmf(mech):
        return True
    # continuous: only client-level local or add/remove central releases can be sampled one release at a time
    return g.is_private and g.unit == "client"


@pytest.mark.parametrize("name", MECHANISMS)
def test_mechanism_privacy_claim(name):
    mech = build("mechanism", name)
    if not _privacy_applies(mech):
        g = mech.guarantee()
        assert not g.is_private or g.unit == "record", f"{name}: no privacy check applies to its guarantee {g}"
        return
    if has_output_pmf(mech):
        result = check_privacy_loss(mech)  # pure ε claimed by the guarantee
        assert result.method == "exact"
        assert abs(result.epsilon - mech.guarantee().epsilon_pure) <= 1e-9 * max(1.0, result.epsilon)
        assert all(s.ok for s in result.sampling)
    else:
        result = check_privacy_loss(mech, delta=1e-5, samples=2_000 if mech.central else 20_000)
        assert result.method == "empirical" and 0 <= result.epsilon <= result.claimed_epsilon


@pytest.mark.parametrize("name", [n for n in MECHANISMS if registry.get("mechanism", n).unbiased])
def test_mechanism_unbiased_claim(name):
    mech = build("mechanism", name)
    domain = mech.domain()  # declared: categories, the clip ball's radius or the box's half-width
    if domain.categorical:
        x = torch.arange(min(int(domain.categories), 4))
    else:
        scale = domain.bound if domain.bound is not None else 1.0
        x = 0.5 * scale * torch.linspace(-1, 1, 5, dtype=torch.float64) / math.sqrt(5)
    result = check_unbiased(mech, x, trials=2000)
    assert result.max_abs_z <= result.threshold


NO_PUBLIC_PMF = [n for n in MECHANISMS if n in ("grr", "oue", "sue", "l-grr", "l-osue", "rappor", "rqm", "pbm")]


@settings(max_examples=12, deadline=None, derandomize=True)
@given(data=st.data())
def test_drawn_parameters_keep_their_exact_claim(data):
    """Mechanisms built from drawn parameters: exact loss = the claimed pure ε, and privatize follows the pmf."""
    name = data.draw(st.sampled_from(NO_PUBLIC_PMF))
    kwargs = data.draw(mechanism_params(name))
    mech = privfl.make("mechanism", name, **kwargs)
    result = check_privacy_loss(mech, samples=4_000)
    claimed = mech.guarantee().epsilon_pure
    assert abs(result.epsilon - claimed) <= 1e-9 * max(1.0, claimed)
