"""Gaussian (DP-FedAvg / local), compression baselines, DP-BREM and DP-BREM+ (secure aggregation)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2, ks_2samp, kstest

import privfl
from privfl.accounting import PrivacyLedger, gaussian_guarantee
from privfl.flat import ParamLayout
from privfl.mechanisms.compression import FP16, Quantize, TopK
from privfl.mechanisms.dp_brem import DPBREM, DPBREMPlus, SecureAggregation
from privfl.mechanisms.gaussian import GaussianMechanism
from privfl.testing import (
    check_epsilon_decreasing_in_noise,
    check_epsilon_monotone,
    check_rdp_dominates_pld,
    check_unbiased,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------------
def test_central_gaussian_clips_and_noises_the_sum_once():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=2.0, local=False)
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    clipped = mech.privatize(x, generator=gen())
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))  # central: no client noise
    # the noise on the sum has std z·S: sample many aggregates with one row each (sum = row)
    draws = torch.stack([mech.aggregate(clipped, expected_rows=1.0, generator=gen(s)) for s in range(4000)])
    noise = draws - clipped.sum(0)
    # variance test: 2·4000·s²/σ² ~ χ²(8000) per coordinate pair; two-sided 1e-4 bounds
    stat = float((noise**2).sum() / 4.0)
    assert chi2.ppf(5e-5, 8000) < stat < chi2.ppf(1 - 5e-5, 8000)
    # Byzantine rows are clipped by the server too
    byz = torch.tensor([[100.0, 0.0]])
    quiet = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.0, local=False)
    assert torch.allclose(quiet.aggregate(clipped, byzantine=byz, expected_rows=3.0),
                          (clipped.sum(0) + torch.tensor([1.0, 0.0])) / 3.0)


def test_local_gaussian_guarantee_uses_the_diameter():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0, local=True)
    assert not mech.central
    assert mech.guarantee().noise_multiplier == 0.5
    out = mech.privatize(torch.zeros(2000, 50), generator=gen())
    assert float(out.std()) == pytest.approx(1.0, rel=0.02)
    check_unbiased(mech, torch.full((10,), 0.05), trials=4000)


def test_gaussian_validation_and_zero_noise_has_no_guarantee():
    with pytest.raises(ValueError, match="clip_norm"):
        GaussianMechanism(clip_norm=0.0, local=True)
    with pytest.raises(ValueError, match="noise_multiplier"):
        GaussianMechanism(noise_multiplier=-1.0, local=False)
    with pytest.raises(TypeError, match="local"):
        GaussianMechanism(local="yes")  # type: ignore[arg-type]
    assert not GaussianMechanism(noise_multiplier=0.0, local=False).guarantee().is_private


def test_gaussian_role_is_explicit():
    # the central role's privatize() only clips: `gaussian` without `local` must not silently pick it
    with pytest.raises(ValueError, match="local is required.*dp-fedavg"):
        privfl.make("mechanism", "gaussian", clip_norm=1.0, noise_multiplier=1.0)
    central = privfl.make("mechanism", "dp-fedavg", clip_norm=1.0, noise_multiplier=2.0)
    assert central.central and not central.local and central.name == "dp-fedavg"
    assert central.guarantee().noise_multiplier == 2.0
    assert "local" not in privfl.registry.parameters("mechanism", "dp-fedavg")


@settings(max_examples=8, deadline=None)
@given(z=st.floats(0.5, 4.0), q=st.floats(0.01, 1.0))
def test_property_gaussian_epsilon_monotone(z, q):
    check_epsilon_monotone(gaussian_guarantee(z), rounds=(1, 3, 10, 100), sampling_rates=(q / 2, q))


@settings(max_examples=4, deadline=None)
@given(z=st.floats(0.7, 3.0), q=st.floats(0.05, 1.0))
def test_property_rdp_epsilon_at_least_pld(z, q):
    check_rdp_dominates_pld(gaussian_guarantee(z), rounds=10, sampling_rate=q)


def test_epsilon_decreases_with_noise():
    check_epsilon_decreasing_in_noise(gaussian_guarantee, [0.6, 0.9, 1.5, 3.0], rounds=20, sampling_rate=0.1)
    check_epsilon_decreasing_in_noise(gaussian_guarantee, [0.6, 0.9, 1.5, 3.0], rounds=20, method="pld")


def test_checks_can_fail():
    """The public checks catch a biased mechanism and a non-monotone accounting."""

    class Biased(GaussianMechanism):
        name = "biased"

        def privatize(self, x, *, generator=None, client_ids=None):
            return super().privatize(x, generator=generator) + 0.05

    with pytest.raises(AssertionError, match="biased"):
        check_unbiased(Biased(clip_norm=10.0, noise_multiplier=0.01, local=True), torch.zeros(5), trials=4000)
    with pytest.raises(AssertionError, match="decrease"):
        check_epsilon_decreasing_in_noise(lambda s: gaussian_guarantee(1.0 / s), [0.5, 1.0, 2.0])


# --------------------------------------------------------------------------------------------
# Compression baselines: no guarantee, ε = ∞
# --------------------------------------------------------------------------------------------
def test_topk_per_tensor():
    layout = ParamLayout(names=("a", "b"), shapes=((4,), (6,)))
    mech = TopK(sparsity=0.5)
    mech.bind_layout(layout)
    x = torch.tensor([[1.0, -4.0, 2.0, 0.5, 9.0, -8.0, 0.1, 0.2, 7.0, 0.3]])
    out = mech.privatize(x)
    assert out.tolist() == [[0.0, -4.0, 2.0, 0.0, 9.0, -8.0, 0.0, 0.0, 7.0, 0.0]]
    assert x[0, 1] == -4.0  # input untouched
    assert mech.report_bytes(out) == 5 * 8


def test_quantize_unbiased_and_fp16():
    check_unbiased(Quantize(bits=2), torch.linspace(-1, 1, 9), trials=4000)
    out = Quantize(bits=2).privatize(torch.linspace(-1, 1, 9).unsqueeze(0), generator=gen())
    assert len(torch.unique(out)) <= 4
    x = torch.tensor([[1.0 / 3.0, 1e6]], dtype=torch.float64)
    y = FP16().privatize(x)
    assert y.dtype == torch.float64 and y[0, 0] == float(torch.tensor(1 / 3).half()) and y[0, 1] == 65504.0


@pytest.mark.parametrize("mech", [TopK(0.9), Quantize(4), FP16()])
def test_compression_reports_infinite_epsilon(mech):
    g = mech.guarantee()
    assert not g.is_private and g.epsilon_pure == math.inf
    ledger = PrivacyLedger()
    ledger.record(g, clients=[0])
    assert ledger.epsilon(1e-5) == math.inf and ledger.epsilon(1e-5, method="pld") == math.inf


# --------------------------------------------------------------------------------------------
# DP-BREM
# --------------------------------------------------------------------------------------------
def test_dp_brem_momentum_centered_clipping_and_noise():
    mech = DPBREM(clip_norm=0.5, noise_multiplier=0.0 + 1e-12, record_clip=1.0, batch_size=4, momentum=0.9)
    g1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    m1 = mech.privatize(g1, client_ids=torch.tensor([3, 7]))
    assert torch.allclose(m1, 0.1 * g1)
    agg = mech.aggregate(m1, generator=gen())
    assert torch.allclose(agg, (0.1 * g1).sum(0) / 2, atol=1e-9)  # inside the C-ball: no clipping
    m2 = mech.privatize(g1[1:], client_ids=torch.tensor([7]))
    assert torch.allclose(m2, 0.1 * g1[1:] + 0.9 * 0.1 * g1[1:])
    big = torch.tensor([[10.0, 0.0]])
    center = agg.clone()
    agg2 = mech.aggregate(big, generator=gen())
    step = big[0] - center
    assert torch.allclose(agg2, center + 0.5 * step / step.norm(), atol=1e-6)  # one centered-clipping step
    assert mech.state.joined[[3, 7]].tolist() == [1, 2]


def test_dp_brem_sensitivity_and_accounting():
    mech = DPBREM(clip_norm=10.0, noise_multiplier=1.2, record_clip=2.0, batch_size=8, momentum=0.5)
    assert mech.noise_std == pytest.approx(1.2 * 2.0 / 8)
    assert mech.sensitivity(1) == pytest.approx(0.5 * 0.25) and mech.sensitivity(3) == pytest.approx(0.875 * 0.25)
    assert DPBREM(clip_norm=0.01, record_clip=2.0, batch_size=8).sensitivity(5) == pytest.approx(0.02)
    ledger = PrivacyLedger()
    for _ in range(3):
        mech.privatize(torch.zeros(2, 4), client_ids=torch.tensor([0, 1]))
        mech.account(ledger, clients=torch.tensor([0, 1]), sampling_rate=1.0, dim=4, round=0)
    mech.privatize(torch.zeros(1, 4), client_ids=torch.tensor([1]))
    mech.account(ledger, clients=torch.tensor([1]), sampling_rate=1.0, dim=4, round=1)
    # client 1: participations k = 1..4, Gaussian releases with μ_k = Δ_k / s; composition μ² = Σ μ_k²
    s = mech.noise_std
    mu2 = sum((mech.sensitivity(k) / s) ** 2 for k in range(1, 5))
    direct = PrivacyLedger()
    direct.record(gaussian_guarantee(mu2**-0.5, unit="record"), count=1)
    assert ledger.epsilon(1e-5, method="pld") == pytest.approx(direct.epsilon(1e-5, method="pld"), rel=1e-9)
    assert ledger.epsilon(1e-5, client=0) < ledger.epsilon(1e-5, client=1)
    assert ledger.units == ["record"]
    assert mech.guarantee().noise_multiplier == pytest.approx(1.2)  # steady state: Δ = R/B


def test_dp_brem_state_is_explicit_and_serialisable():
    mech = DPBREM()
    mech.privatize(torch.ones(2, 3), client_ids=torch.tensor([0, 4]))
    mech.aggregate(mech.privatize(torch.ones(1, 3), client_ids=torch.tensor([4])), generator=gen())
    from privfl.mechanisms.dp_brem import MomentumState

    restored = MomentumState.from_state_dict(mech.state.state_dict())
    assert torch.equal(restored.momentum, mech.state.momentum) and torch.equal(restored.center, mech.state.center)
    mech.reset()
    assert mech.state.momentum is None
    with pytest.raises(ValueError, match="client_ids"):
        mech.privatize(torch.ones(2, 3), client_ids=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="momentum"):
        DPBREM(momentum=1.0)


# --------------------------------------------------------------------------------------------
# DP-BREM+: secure aggregation
# --------------------------------------------------------------------------------------------
def test_secure_aggregation_sum_is_exact_and_masks_cancel():
    sa = SecureAggregation(frac_bits=20, modulus_bits=48)
    values = torch.randn(5, 300, dtype=torch.float64, generator=gen(1))
    ids = [2, 9, 4, 11, 0]
    reports = sa.mask(values, ids, key=1234)
    total = sa.sum(reports, ids, key=1234)
    assert torch.equal(total, torch.remainder(sa.encode(values).sum(0), sa.modulus))  # exact in Z_M
    assert torch.allclose(sa.decode(total, torch.float64), values.sum(0), atol=5 * 2.0**-21)
    assert torch.equal(torch.remainder(sa.masks(ids, 300, key=1234).sum(0), sa.modulus), torch.zeros(300).long())
    # dropout: clients 9 and 0 drop after masking; the server removes their pair masks via seed recovery
    alive = torch.tensor([True, False, True, True, False])
    total = sa.sum(reports, ids, key=1234, survivors=alive)
    assert torch.allclose(sa.decode(total, torch.float64), values[alive].sum(0), atol=5 * 2.0**-21)


def test_server_view_of_one_client_is_uniform_whatever_its_value():
    """KS tests at level 1e-3 each (3 tests: family-wise error rate ≤ 3e-3 for a correct protocol)."""
    sa = SecureAggregation(frac_bits=20, modulus_bits=48)
    d = 4000
    others = torch.randn(2, d, dtype=torch.float64, generator=gen(2))
    small = torch.cat([torch.zeros(1, d, dtype=torch.float64), others])
    large = torch.cat([torch.full((1, d), 1000.0, dtype=torch.float64), others])
    view_small = sa.mask(small, [0, 1, 2], key=77)[0].double() / sa.modulus
    view_large = sa.mask(large, [0, 1, 2], key=78)[0].double() / sa.modulus
    assert kstest(view_small.numpy(), "uniform").pvalue > 1e-3
    assert kstest(view_large.numpy(), "uniform").pvalue > 1e-3
    assert ks_2samp(view_small.numpy(), view_large.numpy()).pvalue > 1e-3
    # while the sum is exact
    assert torch.allclose(sa.decode(sa.sum(sa.mask(large, [0, 1, 2], key=78), [0, 1, 2], key=78), torch.float64),
                          large.sum(0), atol=1e-5)


def test_dp_brem_plus_matches_dp_brem_without_noise():
    """With negligible noise, the securely aggregated centre equals DP-BREM's over several rounds."""
    kw = dict(clip_norm=0.3, noise_multiplier=1e-9, record_clip=1.0, batch_size=4, momentum=0.8)
    plain, secure = DPBREM(**kw), DPBREMPlus(**kw)
    ids = torch.tensor([0, 2, 5, 6])
    for t in range(3):
        x = torch.randn(4, 50, generator=gen(t))
        a = plain.aggregate(plain.privatize(x, client_ids=ids), generator=gen(10 + t))
        reports = secure.privatize(x, client_ids=ids, generator=gen(20 + t))
        assert reports.dtype == torch.int64
        assert float(secure.decode(reports).abs().mean()) > 1e3  # per-client view: masked garbage
        b = secure.aggregate(reports, generator=gen(30 + t))
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(plain.state.momentum, secure.state.momentum)


def test_dp_brem_plus_noise_shares_sum_to_at_least_the_central_noise():
    mech = DPBREMPlus(clip_norm=1.0, noise_multiplier=2.0, record_clip=1.0, batch_size=1, momentum=0.0,
                      min_honest=0.5)
    n, d = 10, 3000
    x = torch.zeros(n, d)
    s = mech.aggregate(mech.privatize(x, client_ids=torch.arange(n), generator=gen(5)))
    # centre starts at 0, all rows 0: m̄ = (Σ shares)/n, shares ~ N(0, s²/h) with h = 5 → var = n·s²/h / n²
    expected_var = n * (mech.noise_std**2 / 5) / n**2
    assert float(s.var()) == pytest.approx(expected_var, rel=0.1)
    assert n * (mech.noise_std**2 / 5) >= mech.noise_std**2


def test_dp_brem_plus_aggregate_equals_clipped_sum_rule():
    kw = dict(clip_norm=0.5, noise_multiplier=1e-9, record_clip=1.0, batch_size=2, momentum=0.0)
    secure = DPBREMPlus(**kw)
    x = torch.tensor([[1.0, 0.0], [0.1, 0.1]])
    byz = torch.tensor([[0.0, -9.0]])
    out = secure.aggregate(secure.privatize(x, client_ids=torch.tensor([0, 1]), generator=gen()), byzantine=byz)
    expected = (torch.tensor([0.5, 0.0]) + torch.tensor([0.1, 0.1]) + torch.tensor([0.0, -0.5])) / 3
    assert torch.allclose(out, expected, atol=1e-5)


def test_secure_aggregation_validation():
    with pytest.raises(ValueError, match="modulus_bits"):
        SecureAggregation(frac_bits=30, modulus_bits=31)
    with pytest.raises(ValueError, match="fixed-point range"):
        SecureAggregation(frac_bits=20, modulus_bits=24).encode(torch.tensor([[100.0]]))
    with pytest.raises(ValueError, match="ids"):
        SecureAggregation().mask(torch.zeros(2, 3), [0], key=1)
    with pytest.raises(ValueError, match="min_honest"):
        DPBREMPlus(min_honest=0.0)

