"""Issue 12 §4: ``privfl.testing`` catches mechanisms that are wrong in common ways.

Held-out style: each broken twin (written against the public contract) is caught by the default
check; its correct twin passes, and keeps passing at the stated error rate over many seeds.
Every broken twin here passed the pre-fix defaults (and the correct Gaussian failed check_unbiased).
"""

from __future__ import annotations

import math

import pytest
import torch

from privfl import registry
from privfl.mechanisms.compression import Quantize
from privfl.mechanisms.gaussian import GaussianMechanism
from privfl.mechanisms.ldp import GRR
from privfl.testing import check_contract, check_privacy_loss, check_unbiased
from privfl.testing.mechanisms import check_claim, identical_across_seeds


class NoClipGaussian(GaussianMechanism):
    """Broken: never clips (the default pair ±C·e1 lies inside the clip ball, so it looked correct)."""

    def clip(self, x):
        return x.clone()


class FixedSeedGaussian(GaussianMechanism):
    """Broken: ignores its generator (a fixed internal seed) — every seed gives the same draws."""

    def privatize(self, x, *, generator=None, client_ids=None):
        return super().privatize(x, generator=torch.Generator(device=x.device).manual_seed(0))


class FixedSeedQuantize(Quantize):
    """Broken: a stochastic quantizer that ignores its generator (no privacy claim to flag it)."""

    def privatize(self, x, *, generator=None, client_ids=None):
        return super().privatize(x, generator=torch.Generator().manual_seed(0))


class BinaryFormulaGRR(GRR):
    """Broken: k-RR with the *binary* keep probability e^ε/(e^ε + 1); its guarantee faithfully reports what
    that pmf gives (ε + ln(k − 1)), so every self-referential check passes."""

    def __init__(self, k: int, eps: float):
        super().__init__(k, eps)
        self.p = math.exp(self.eps) / (math.exp(self.eps) + 1)
        self.q = (1 - self.p) / (self.k - 1)


LOCAL = dict(clip_norm=1.0, noise_multiplier=4.0, local=True)


def test_a_gaussian_that_never_clips_is_caught_by_the_default_privacy_check():
    good = check_privacy_loss(GaussianMechanism(**LOCAL), delta=1e-5, samples=20_000)
    assert good.pairs == 3 and good.epsilon <= good.claimed_epsilon
    with pytest.raises(AssertionError, match="outside the domain"):
        check_privacy_loss(NoClipGaussian(**LOCAL), delta=1e-5, samples=20_000)


def test_a_central_gaussian_that_never_clips_is_caught():
    central = dict(clip_norm=1.0, noise_multiplier=2.0, local=False)
    check_privacy_loss(GaussianMechanism(**central), delta=1e-5, samples=600)
    with pytest.raises(AssertionError, match="outside the domain"):
        check_privacy_loss(NoClipGaussian(**central), delta=1e-5, samples=600)


def test_check_unbiased_targets_the_estimand_outside_the_clip_ball():
    """Pre-fix: the correct Gaussian failed (|z| ≈ 9) and the non-clipping one passed."""
    x = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    check_unbiased(GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0, local=True), x, trials=4000)
    with pytest.raises(AssertionError, match="biased"):
        check_unbiased(NoClipGaussian(clip_norm=1.0, noise_multiplier=1.0, local=True), x, trials=4000)


def test_a_stochastic_quantizer_that_ignores_its_generator_fails_the_contract():
    check_contract(Quantize(bits=2), params=False)
    with pytest.raises(AssertionError, match="different seeds, different outputs"):
        check_contract(FixedSeedQuantize(bits=2), params=False)


def test_statistics_identical_across_seeds_are_flagged():
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)
    good, bad = GaussianMechanism(**LOCAL), FixedSeedGaussian(**LOCAL)
    assert not identical_across_seeds(good, x) and identical_across_seeds(bad, x)
    assert not identical_across_seeds(registry.make("mechanism", "fp16"), x)  # deterministic: nothing to flag
    check_unbiased(good, x, trials=1000)
    with pytest.raises(AssertionError, match="ignores its generator"):
        check_unbiased(bad, x, trials=1000)
    with pytest.raises(AssertionError, match="ignores its generator"):
        check_privacy_loss(bad, delta=1e-5, samples=2_000)


def test_an_independent_claim_catches_a_faithfully_reported_wrong_formula():
    """The paper's k-RR at ε is ε-LDP; pass that ε (computed without the mechanism) to the checks."""
    eps, k = 1.0, 4
    wrong, right = BinaryFormulaGRR(k, eps), GRR(k, eps)
    check_privacy_loss(wrong)  # self-referential: its own guarantee matches its behaviour
    check_claim(right, eps)
    check_privacy_loss(right, eps=eps)
    with pytest.raises(AssertionError, match="independent formula"):
        check_claim(wrong, eps)
    with pytest.raises(AssertionError, match="exact privacy loss"):
        check_privacy_loss(wrong, eps=eps)
    # the Gaussian: ε(δ) of one release from the analytic Gaussian mechanism (Balle & Wang 2018), not privfl's
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu = 1.0 / 2.0  # sensitivity / σ for DP-FedAvg at z = 2, one release
    eps_ref = brentq(lambda e: norm.cdf(mu / 2 - e / mu) - math.exp(e) * norm.cdf(-mu / 2 - e / mu) - 1e-5,
                     0.0, 50.0)
    check_claim(GaussianMechanism(clip_norm=1.0, noise_multiplier=2.0, local=False), eps_ref, delta=1e-5, rtol=1e-3)


def test_false_positive_rates_of_the_correct_twins_stay_at_the_stated_level():
    """Over 30 seeds at alpha = 0.1, the correct Gaussian fails check_unbiased at most 9 times
    (P[Binomial(30, 0.1) ≥ 10] ≈ 7e-4); over 12 seeds at confidence 0.8, check_privacy_loss (3 pairs,
    Bonferroni) fails at most 7 times (P[Binomial(12, 0.2) ≥ 8] ≈ 6e-4)."""
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0, local=True)
    x = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)
    fails = 0
    for seed in range(30):
        try:
            check_unbiased(mech, x, trials=1000, alpha=0.1, seed=seed)
        except AssertionError:
            fails += 1
    assert fails <= 9
    fails = 0
    for seed in range(12):
        r = check_privacy_loss(GaussianMechanism(**LOCAL), delta=1e-5, samples=3_000, confidence=0.8, seed=seed,
                               raise_on_failure=False)
        fails += r.epsilon > r.claimed_epsilon
    assert fails <= 7
