"""The public ``privfl.testing`` API: exact privacy checks hit the claimed ε, and every check can fail.

Targets (issue 7): the exact checks equal the claimed ε of GRR, LOLOHA's permanent report and RQM to
1e-9; deliberately broken mechanisms are caught — a Gaussian with half the noise it claims (empirical
Clopper–Pearson tester), a Laplace with scale 1/(2ε) claiming ε, an RQM with Δ = 0, an aggregator
that returns the first row (``check_robust``), an "unbiased" mechanism with a 1 % bias
(``check_unbiased``), a sampler that disagrees with its declared pmf — and the correct counterparts
pass at the same settings. Seeds are fixed; the stated error rates are those of the checks
(sampling χ² at a family-wise 1e-3, empirical bounds at 95 % confidence, unbiasedness at 1e-3).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import privfl
from privfl.accounting import pure_guarantee
from privfl.core import Aggregator, InputDomain, Mechanism, PrivacyGuarantee
from privfl.mechanisms.gaussian import GaussianMechanism
from privfl.mechanisms.ldp import GRR
from privfl.mechanisms.longitudinal import first_report_epsilon_grr
from privfl.mechanisms.rqm import RQM
from privfl.params import Choice, Int, Real, Ref, example_params, invalid_values
from privfl.testing import (
    check_contract,
    check_privacy_loss,
    check_rdp,
    check_robust,
    check_unbiased,
    mechanism_params,
    mechanisms,
    neighbouring_pairs,
)
from privfl.testing.robustness import kappa_trimmed_mean


# --------------------------------------------------------------------------------------------
# Exact checks equal the claimed ε
# --------------------------------------------------------------------------------------------
def test_exact_grr_equals_claimed_epsilon():
    result = check_privacy_loss(GRR(k=7, eps=1.7), eps=1.7)
    assert result.method == "exact" and result.pairs == 42
    assert abs(result.epsilon - 1.7) <= 1e-9
    assert len(result.sampling) >= 2 and all(s.ok for s in result.sampling)


def test_exact_loloha_permanent_report_equals_eps_inf_and_first_report_its_closed_form():
    mech = privfl.make("mechanism", "loloha", k=10, eps_inf=2.5, eps_1=1.0, g=4)
    perm = check_privacy_loss(mech, eps=2.5, options={"stage": "permanent"})
    assert abs(perm.epsilon - 2.5) <= 1e-9  # GRR_g with p1 = e^eps_inf / (e^eps_inf + g − 1)
    assert perm.public_draws > 1  # the hash seeds come from the mechanism's own reports
    first = first_report_epsilon_grr(2.5, 1.0, 4)  # the chain's likelihood ratio, computed independently
    report = check_privacy_loss(mech, eps=first)
    assert abs(report.epsilon - first) <= 1e-9
    with pytest.raises(AssertionError, match="exact privacy loss"):
        check_privacy_loss(mech, eps=first - 1e-6)  # a claim below the true loss fails


def test_exact_rqm_equals_claimed_epsilon():
    # c = 1, Δ = 1, m = 5, q = 0.5 (levels −2..2): by hand, P(level 1 | x = 1) = (1 − q)² q · (1/3) = 1/24
    # (nearest kept level below is 1, rounded down w.p. 1/3) and P(level 1 | x = −1) = q = 1/2: ε = ln 12
    default = RQM()
    result = check_privacy_loss(default, eps=default.guarantee().epsilon_pure)
    assert abs(result.epsilon - math.log(12.0)) <= 1e-9
    assert {result.worst_pair[0], result.worst_pair[1]} == {-1.0, 1.0}  # the grid search finds the extremes
    two = RQM(c=1.0, delta=0.5, m=2, q=0.3)  # m = 2 closed form ln((2c + Δ)/Δ)
    assert abs(check_privacy_loss(two, eps=math.log(5.0)).epsilon - math.log(5.0)) <= 1e-9


@pytest.mark.parametrize("name,kwargs,claimed", [
    ("olh", {"k": 9, "eps": 1.2}, 1.2),
    ("oue", {"k": 5, "eps": 0.8}, 0.8),
    ("oue", {"k": 40, "eps": 0.8}, 0.8),  # per-bit pmfs composed: no 2^k enumeration
    ("sue", {"k": 5, "eps": 0.8}, 0.8),
    ("rappor", {"k": 30, "eps_inf": 2.0, "eps_1": 0.7}, 0.7),
    ("pbm", {"c": 1.0, "m": 8, "theta": 0.1}, 8 * math.log(0.6 / 0.4)),
    ("dbitflippm", {"k": 6, "eps_inf": 2.0, "d": 3}, 2.0),
])
def test_exact_closed_forms(name, kwargs, claimed):
    result = check_privacy_loss(privfl.make("mechanism", name, **kwargs), eps=claimed)
    assert abs(result.epsilon - claimed) <= 1e-9


def test_exact_approximate_dp_matches_the_pld_of_the_worst_pair():
    mech = GRR(k=4, eps=2.0)
    result = check_privacy_loss(mech, delta=1e-3)  # claimed: the PLD ε(δ) of the guarantee
    p, q = mech.p, mech.q
    # exact ε(δ) of the GRR pair: Σ_o (P − e^ε Q)⁺ = p − e^ε q = δ  ⇒  ε = ln((p − δ)/q)
    assert abs(result.epsilon - math.log((p - 1e-3) / q)) <= 1e-9
    assert result.hockey_stick <= 1e-3 + 1e-9
    with pytest.raises(AssertionError, match="hockey-stick"):
        check_privacy_loss(mech, eps=result.epsilon - 0.01, delta=1e-3)


# --------------------------------------------------------------------------------------------
# Broken mechanisms are caught (and their correct counterparts pass)
# --------------------------------------------------------------------------------------------
class HalfNoiseGaussian(GaussianMechanism):
    """Claims noise_multiplier·clip_norm but adds half of it."""

    def privatize(self, x, *, generator=None, client_ids=None):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.clip(x) + 0.5 * self.noise_std * noise


@pytest.mark.slow
def test_gaussian_with_half_the_noise_is_caught_by_the_empirical_tester():
    # local Gaussian, replace-one neighbours ±C: claimed ε(1e-5) ≈ 1.99 for z = 4 (μ = 2/z);
    # with half the noise the true μ doubles. 100,000 trials per side, 95 % confidence.
    good = GaussianMechanism(clip_norm=1.0, noise_multiplier=4.0, local=True)
    ok = check_privacy_loss(good, delta=1e-5)
    assert ok.method == "empirical" and 0.4 * ok.claimed_epsilon < ok.epsilon <= ok.claimed_epsilon
    with pytest.raises(AssertionError, match="empirical ε lower bound"):
        check_privacy_loss(HalfNoiseGaussian(clip_norm=1.0, noise_multiplier=4.0, local=True), delta=1e-5)


class Laplace(Mechanism):
    """Scalar Laplace mechanism on [−c, c] (sensitivity 2c) claiming pure ε; ``scale_factor`` breaks it."""

    name = "laplace"
    role = "client-vector"
    param_space = {"eps": Real(0, None, lo_open=True), "c": Real(0, None, lo_open=True),
                   "scale_factor": Real(0, None, lo_open=True)}

    def __init__(self, eps: float = 1.0, c: float = 0.5, scale_factor: float = 1.0):
        self.eps, self.c, self.scale_factor = eps, c, scale_factor

    def domain(self) -> InputDomain:
        return InputDomain.box(self.c)

    def privatize(self, x, *, generator=None, client_ids=None):
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
        scale = self.scale_factor * 2 * self.c / self.eps
        return x.clamp(-self.c, self.c) - scale * torch.sign(u) * torch.log1p(-2 * u.abs())

    def guarantee(self) -> PrivacyGuarantee:
        return pure_guarantee(self.eps, name="laplace")


def test_laplace_with_half_the_scale_is_caught():
    # c = 0.5: sensitivity 1, correct scale 1/ε; broken scale 1/(2ε) makes it 2ε-DP.
    assert check_privacy_loss(Laplace(eps=1.0), samples=50_000).epsilon <= 1.0
    with pytest.raises(AssertionError, match="exceeds the claimed"):
        check_privacy_loss(Laplace(eps=1.0, scale_factor=0.5), samples=50_000)


class RQMWithoutRangeExtension(RQM):
    """RQM with Δ = 0, bypassing the constructor's validation."""

    def __init__(self, c: float = 1.0, m: int = 5, q: float = 0.5):
        super().__init__(c=c, delta=1.0, m=m, q=q)
        self.delta = 0.0
        self.step = 2.0 * self.c / (self.m - 1)


def test_rqm_with_zero_delta_is_caught():
    claimed = RQM().guarantee().epsilon_pure
    with pytest.raises(AssertionError, match="exact privacy loss inf"):
        check_privacy_loss(RQMWithoutRangeExtension(), eps=claimed)


class MisSampledGRR(GRR):
    """Declares GRR's pmf at ``eps`` but samples at 1.3·eps."""

    def privatize(self, values, *, generator=None, client_ids=None):
        return GRR(self.k, 1.3 * self.eps).privatize(values, generator=generator)


def test_sampler_that_disagrees_with_its_pmf_is_caught():
    with pytest.raises(AssertionError, match="does not follow output_pmf"):
        check_privacy_loss(MisSampledGRR(k=5, eps=1.0), eps=1.0)


class FirstRow(Aggregator):
    name = "first-row"

    def __init__(self, f: int = 0):
        self.f = f

    def __call__(self, updates):
        return updates[0].clone()


def test_aggregator_returning_the_first_row_is_caught():
    f, n = 2, 11
    assert check_robust(privfl.make("aggregator", "trimmed-mean", f=f), f, kappa_trimmed_mean(n, f)).ok
    with pytest.raises(AssertionError, match="robustness violated"):
        check_robust(FirstRow(f), f, kappa_trimmed_mean(n, f))


class OnePercentBias(GaussianMechanism):
    def privatize(self, x, *, generator=None, client_ids=None):
        return super().privatize(1.01 * x, generator=generator)


def test_one_percent_bias_is_caught_with_the_documented_trials():
    # σ = 1 per coordinate, x = 0.5·1 in d = 100: the documented rule needs trials ≳ 1.7e4
    x = torch.full((100,), 0.5, dtype=torch.float64)
    good = GaussianMechanism(clip_norm=10.0, noise_multiplier=0.1, local=True)
    assert check_unbiased(good, x, trials=20_000).max_abs_z < 4.5
    with pytest.raises(AssertionError, match="relative bias"):
        check_unbiased(OnePercentBias(clip_norm=10.0, noise_multiplier=0.1, local=True), x, trials=20_000)


def test_unbiased_frequency_oracle_and_a_biased_one():
    mech = privfl.make("mechanism", "oue", k=6, eps=1.0)
    result = check_unbiased(mech, torch.tensor([0, 1, 1, 5]), trials=4000)
    assert result.max_abs_z <= result.threshold

    class Shifted(GRR):
        def decode(self, reports):
            return super().decode(reports) + 0.05

    with pytest.raises(AssertionError, match="biased"):
        check_unbiased(Shifted(k=6, eps=1.0), torch.tensor([0, 1, 2]), trials=4000)


def test_rdp_curve_that_understates_the_leak_is_caught():
    mech = GRR(k=4, eps=1.0)
    g = mech.guarantee()
    under = PrivacyGuarantee(name="grr-halved", rdp_curve=lambda a: 0.5 * g.rdp(a), epsilon_pure=g.epsilon_pure,
                             pmf_pair=g.pmf_pair)
    with pytest.raises(AssertionError, match="under-states"):
        check_rdp(under)
    assert check_rdp(mech).exact is not None


# --------------------------------------------------------------------------------------------
# check_contract catches broken promises
# --------------------------------------------------------------------------------------------
class Mutating(GaussianMechanism):
    def privatize(self, x, *, generator=None, client_ids=None):
        out = super().privatize(x, generator=generator)
        x[0, 0] = 0.0
        return out


class IgnoresGenerator(GaussianMechanism):
    def privatize(self, x, *, generator=None, client_ids=None):
        return super().privatize(x, generator=None)


class PromotesDtype(Aggregator):
    name = "promotes"
    param_space = {"f": Int(0, None)}

    def __init__(self, f: int = 0):
        if not isinstance(f, int) or isinstance(f, bool) or f < 0:
            raise ValueError(f"f must be an int >= 0, got {f!r}")
        self.f = f

    def __call__(self, updates):
        return updates.double().mean(dim=0)


class LooseSpace(Aggregator):
    """Declares tau in (0, 10] but accepts anything; its error for f does not name the parameter."""

    name = "loose"
    param_space = {"f": Int(0, None), "tau": Real(0, 10, lo_open=True)}

    def __call__(self, updates):
        return updates.mean(dim=0)


def _loose_init(self, f: int = 0, tau: float = 1.0):
    if not isinstance(f, int) or f < 0:
        raise ValueError("bad value")
    self.f, self.tau = f, tau


# assigned after the class is made, so it bypasses the declared-space validation of privfl.core.Component
# (what a component that does not subclass the contracts looks like to check_contract)
LooseSpace.__init__ = _loose_init


class Undeclared(Aggregator):
    name = "undeclared"

    def __init__(self, f: int = 0, beta: float = 0.1):
        self.f, self.beta = f, beta

    def __call__(self, updates):
        return updates.mean(dim=0)


@pytest.mark.parametrize("component,match", [
    (Mutating(clip_norm=1.0, noise_multiplier=1.0, local=True), "no input mutation"),
    (IgnoresGenerator(clip_norm=1.0, noise_multiplier=1.0, local=True), "same seed, same output"),
    (PromotesDtype(), "dtype kept"),
    (LooseSpace(), "tau=20.0"),
    (LooseSpace(), "without naming 'f'"),
    (Undeclared(), "declares no param_space"),
])
def test_check_contract_catches(component, match):
    with pytest.raises(AssertionError, match=match):
        check_contract(component)


def test_check_contract_report_on_a_correct_component():
    report = check_contract(privfl.make("aggregator", "krum", f=1))
    assert report.ok and report.kind == "aggregator"
    assert {"no input mutation", "dtype kept", "same seed, same output", "clear errors on bad inputs",
            "out-of-range parameters rejected", "errors name the parameter"} <= set(report.checks)


# --------------------------------------------------------------------------------------------
# Parameter spaces and strategies
# --------------------------------------------------------------------------------------------
def test_param_space_references_and_invalid_values():
    space = {"eps_inf": Real(0, None, lo_open=True), "eps_1": Real(0, Ref("eps_inf"), lo_open=True, hi_open=True),
             "k": Int(2, None, typical=(2, 8)), "d": Int(1, Ref("k")), "mode": Choice("a", "b")}
    base = example_params(space)
    assert 0 < base["eps_1"] < base["eps_inf"] and 1 <= base["d"] <= base["k"]
    bad = dict(invalid_values(space, base))
    assert space["eps_1"].contains(base["eps_1"], base) and not space["eps_1"].contains(base["eps_inf"], base)
    assert not space["d"].contains(base["k"] + 1, base) and "mode" in bad


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.data())
def test_drawn_parameters_construct_every_registered_mechanism(data):
    name = data.draw(st.sampled_from(privfl.available("mechanism")))
    kwargs = data.draw(mechanism_params(name))
    mech = privfl.make("mechanism", name, **kwargs)
    assert isinstance(mech, Mechanism)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(mechanisms(input_kind="categories", private_only=True))
def test_mechanisms_strategy_draws_frequency_oracles(drawn):
    name, mech = drawn
    assert mech.input_kind == "categories" and mech.guarantee().is_private and name == mech.name


@settings(max_examples=60, deadline=None, derandomize=True)
@given(neighbouring_pairs(clip_norm=2.0))
def test_neighbouring_pairs_respect_the_stated_bound(pair):
    slack = 1e-5 * pair.bound
    assert float(torch.linalg.vector_norm(pair.difference().double())) <= pair.bound + slack
    if pair.relation == "add-remove":
        assert pair.x_prime.shape[0] == pair.x.shape[0] - 1
        assert torch.equal(torch.cat([pair.x[:pair.index], pair.x[pair.index + 1:]]), pair.x_prime)
    else:
        others = torch.ones(pair.x.shape[0], dtype=torch.bool)
        others[pair.index] = False
        assert torch.equal(pair.x[others], pair.x_prime[others])
    assert bool((torch.linalg.vector_norm(pair.x.double(), dim=1) <= 2.0 + 1e-5).all())


@settings(max_examples=30, deadline=None, derandomize=True)
@given(neighbouring_pairs(categories=5))
def test_categorical_neighbouring_pairs_differ_in_one_user(pair):
    assert pair.x.dtype == torch.int64 and pair.bound == 1.0
    if pair.relation == "replace-one":
        assert int((pair.x != pair.x_prime).sum()) == 1
    else:
        assert pair.x_prime.shape[0] == pair.x.shape[0] - 1


# --------------------------------------------------------------------------------------------
# The README example ("Testing your own mechanism") runs as written
# --------------------------------------------------------------------------------------------
def _readme_block(heading: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


README_EXAMPLE = _readme_block("Testing your own mechanism")


def test_readme_example_runs(capsys):
    scope: dict = {}
    exec(compile(README_EXAMPLE, "README: Testing your own mechanism", "exec"), scope)
    out = capsys.readouterr().out
    assert "exact privacy loss 1.000000000 (claimed 1.0), worst pair (-1.0, 1.0)" in out
    assert "errors name the parameter" in out
    broken = scope["OneBit"](c=1.0, eps=1.0)
    broken.gain *= 1.2  # now leaks more than ε = 1: the same calls fail
    with pytest.raises(AssertionError):
        scope["check_privacy_loss"](broken, eps=1.0)
    assert np.isclose(scope["loss"].epsilon, 1.0, atol=1e-12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_drawn_parameters_construct_every_registered_rule_and_attack(data):
    from privfl import registry
    from privfl.testing import component_params

    kind = data.draw(st.sampled_from(["aggregator", "preaggregator", "mixing", "byzantine_attack"]))
    name = data.draw(st.sampled_from(privfl.available(kind)))
    kwargs = data.draw(component_params(kind, name))
    assert registry.make(kind, name, **kwargs) is not None
