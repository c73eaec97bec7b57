"""Distributed DP under secure aggregation: DDG, Skellam, PBM and RQM sums (privfl.accounting.distributed).

Reference values: DDG and Skellam RDP from their papers' closed forms (worked by hand below, and
checked to upper-bound the exact Rényi divergence of the 1-d sum computed independently); PBM's
exact worst case equals the local guarantee at n = 1, dominates every enumerated input configuration
and approaches the Gaussian of the same variance (the PBM paper's claim); RQM's sum pmf equals
brute-force enumeration of all joint outcomes; ``check_privacy_loss`` on the sum (exact for PBM/RQM,
empirical Clopper–Pearson for DDG) never exceeds the accounted ε. Error rates: χ² cross-checks at
family-wise 1e-3, the empirical bound at 95 % confidence; all seeds fixed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import skellam

from privfl.accounting import distributed as dd
from privfl.accounting.analysis import pmf_rdp
from privfl.mechanisms.ddg import DistributedDiscreteGaussian, discrete_gaussian, hadamard
from privfl.mechanisms.pbm import PBM
from privfl.mechanisms.rqm import RQM
from privfl.mechanisms.skellam import DistributedSkellam
from privfl.testing import check_privacy_loss

ORDERS = np.array([1.5, 2.0, 4.0, 8.0, 16.0])


def _renyi(p: np.ndarray, q: np.ndarray, a: float) -> float:
    s = (p > 0) & (q > 0)
    return float(logsumexp(a * np.log(p[s]) + (1 - a) * np.log(q[s])) / (a - 1))


# ----------------------------------------------------------------------------- closed forms
def test_skellam_rdp_closed_form_by_hand():
    # Δ1 = Δ2 = 1, μ = 100, α = 2: 2/200 + min((3 + 6)/(4·100²), 3/200) = 0.01 + 0.000225
    assert dd.skellam_rdp([2.0], l2=1.0, l1=1.0, mu=100.0)[0] == pytest.approx(0.010225, rel=1e-12)
    # α = 10, Δ2 = 3, Δ1 = 5, μ = 4: 10·9/8 + min((19·9 + 30)/64, 15/8) = 11.25 + 1.875
    assert dd.skellam_rdp([10.0], l2=3.0, l1=5.0, mu=4.0)[0] == pytest.approx(13.125, rel=1e-12)


def test_skellam_rdp_bounds_the_exact_divergence_of_the_sum():
    mu, shift = 40.0, 3  # 1-d: Sk(μ) vs 3 + Sk(μ), exact pmfs from scipy
    k = np.arange(-400, 401)
    p, q = skellam.pmf(k, mu / 2, mu / 2), skellam.pmf(k - shift, mu / 2, mu / 2)
    bound = dd.skellam_rdp(ORDERS, l2=shift, l1=shift, mu=mu)
    exact = np.array([_renyi(p, q, a) for a in ORDERS])
    assert np.all(bound >= exact) and np.all(bound <= 1.5 * exact)  # valid and not loose


def test_ddg_tau_and_rdp_by_hand():
    s = 0.6  # τ for n = 3: 10(e^{−π²s²} + e^{−4π²s²/3})
    want = 10 * (math.exp(-math.pi**2 * s * s) + math.exp(-4 * math.pi**2 * s * s / 3))
    assert dd.ddg_tau(s, 3) == pytest.approx(want)
    assert dd.ddg_tau(s, 1) == 0.0
    # n = 1 (τ = 0): the discrete Gaussian's α Δ²/(2σ²) (Canonne, Kamath, Steinke 2020)
    assert np.allclose(dd.ddg_rdp(ORDERS, l2=2.0, l1=2.0, local_sigma=5.0, n=1, dim=8), ORDERS * 4 / 50)


def test_ddg_rdp_bounds_the_exact_divergence_of_the_sum():
    sigma, n, shift = 1.0, 4, 2  # sum of 4 discrete Gaussians N_Z(0, 1), computed exactly by convolution
    k = np.arange(-60, 61)
    one = np.exp(-k**2 / (2 * sigma**2))
    one /= one.sum()
    total = one
    for _ in range(n - 1):
        total = np.convolve(total, one)
    p, q = total[shift:], total[:-shift]
    exact = np.array([max(_renyi(p, q, a), _renyi(q, p, a)) for a in ORDERS])
    bound = dd.ddg_rdp(ORDERS, l2=shift, l1=shift, local_sigma=sigma, n=n, dim=1)
    assert np.all(bound >= exact - 1e-12)
    assert dd.ddg_tau(sigma, n) < 1e-3  # σ = 1 is already close to the continuous Gaussian of variance n


def test_rounded_norm_bounds():
    assert dd.rounded_l2_bound(10.0, dim=16, beta=0.0) == 14.0
    b = dd.rounded_l2_bound(10.0, dim=16, beta=math.exp(-0.5))
    assert b == pytest.approx(math.sqrt(100 + 4 + 1.0 * 12))
    assert dd.rounded_l1_bound(3.0, dim=100) == 9.0


# ----------------------------------------------------------------------------- PBM
def test_pbm_sum_n1_is_the_local_guarantee():
    mech = PBM(c=1.0, m=8, theta=0.2)
    assert np.allclose(dd.pbm_sum_rdp(ORDERS, n=1, m=8, theta=0.2), mech.guarantee().rdp(ORDERS))
    assert dd.pbm_sum_pure_epsilon(n=1, m=8, theta=0.2) == pytest.approx(mech.guarantee().epsilon_pure)


def test_pbm_sum_worst_case_dominates_enumerated_inputs():
    n, m, theta, c = 3, 2, 0.2, 1.0
    bound = dd.pbm_sum_rdp(ORDERS, n=n, m=m, theta=theta)
    mech = PBM(c=c, m=m, theta=theta)
    grid = np.linspace(-c, c, 5)
    seen = np.zeros(ORDERS.size)
    for x, xp, *others in itertools.product(grid, grid, grid, grid):
        if x == xp:
            continue
        rest = np.convolve(mech.output_pmf(others[0]), mech.output_pmf(others[1]))
        P, Q = np.convolve(rest, mech.output_pmf(x)), np.convolve(rest, mech.output_pmf(xp))
        seen = np.maximum(seen, pmf_rdp((P, Q), ORDERS))
    assert np.all(seen <= bound + 1e-12)
    assert np.all(seen >= 0.8 * bound)  # the relaxation is nearly attained by real inputs


def test_pbm_sum_matches_the_gaussian_of_the_same_variance():
    """The PBM paper's claim: privacy–accuracy of the Gaussian. Mean shift 2θm, variance nm(1/4 − θ²)."""
    n, m, theta = 40, 8, 0.05
    gauss = 2.0 * ORDERS[:3] * (2 * theta * m) ** 2 / (2 * 2.0 * n * m * (0.25 - theta**2))
    exact = dd.pbm_sum_rdp(ORDERS[:3], n=n, m=m, theta=theta)
    assert np.allclose(exact, gauss, rtol=0.1)
    assert np.all(exact < PBM(m=m, theta=theta).guarantee().rdp(ORDERS[:3]) / 10)  # far below local


def test_pbm_and_rqm_sum_guarantees_fall_with_n():
    for mech in (PBM(c=1.0, m=4, theta=0.1), RQM(c=1.0, delta=1.0, m=5, q=0.5)):
        eps = [mech.sum_guarantee(n).rdp([4.0])[0] for n in (1, 2, 5, 10)]
        assert all(a > b for a, b in zip(eps, eps[1:]))
        assert mech.sum_guarantee(1).rdp([4.0])[0] == pytest.approx(mech.guarantee().rdp([4.0])[0])


# ----------------------------------------------------------------------------- RQM
def test_rqm_sum_pmf_matches_brute_force_enumeration():
    mech = RQM(c=1.0, delta=0.5, m=4, q=0.6)
    inputs = [0.3, -1.0, 0.9]
    pmfs = [mech.output_pmf(x) for x in inputs]
    brute = np.zeros(len(inputs) * (mech.m - 1) + 1)
    for outcome in itertools.product(range(mech.m), repeat=len(inputs)):
        brute[sum(outcome)] += np.prod([p[o] for p, o in zip(pmfs, outcome)])
    assert np.allclose(dd.rqm_sum_pmf(mech, inputs), brute, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_rqm_worst_case_dominates_a_grid_of_inputs():
    mech = RQM(c=1.0, delta=1.0, m=5, q=0.5)
    worst, pure, configs = dd.rqm_sum_worst_rdp(mech, ORDERS, n=3)
    assert configs == math.comb(2 + 2, 2)  # vertices {-1, 0, 1}, two other clients
    grid = np.linspace(-1.0, 1.0, 5)
    top = np.zeros(ORDERS.size)
    top_pure = 0.0
    for x, xp, a, b in itertools.product(grid, grid, grid, grid):
        if x != xp:
            rdp, eps = dd.rqm_sum_rdp(mech, ORDERS, x=x, x_prime=xp, others=[a, b])
            top, top_pure = np.maximum(top, rdp), max(top_pure, eps)
    assert np.all(top <= worst + 1e-12) and top_pure <= pure + 1e-12
    assert np.allclose(top, worst) and top_pure == pytest.approx(pure)  # vertices are on the grid: attained


def test_check_privacy_loss_on_the_sum_exact():
    for mech, others in ((RQM(c=1.0, delta=1.0, m=5, q=0.5), [0.0, 1.0, -1.0]),
                         (PBM(c=1.0, m=4, theta=0.15), [0.2, -0.7, 1.0])):
        sum_mech = dd.SecureSum(mech, others)
        claimed = sum_mech.guarantee().epsilon_pure
        result = check_privacy_loss(sum_mech, eps=claimed, samples=4_000)
        assert result.method == "exact" and result.epsilon <= claimed + 1e-9
        assert all(s.ok for s in result.sampling)


# ----------------------------------------------------------------------------- DDG and Skellam mechanisms
def test_hadamard_is_orthonormal_and_self_inverse():
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = hadamard(x)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1)) and torch.allclose(hadamard(y), x)


def test_discrete_gaussian_moments():
    z = discrete_gaussian((200_000,), 3.0, generator=torch.Generator().manual_seed(1), device=torch.device("cpu"))
    # variance of N_Z(0, 9) is 9 up to e^{−2π²·9}: the sample variance within 4 standard errors
    se = 9.0 * math.sqrt(2.0 / z.numel())
    assert abs(z.double().mean().item()) < 4 * 3.0 / math.sqrt(z.numel())
    assert abs(z.double().var().item() - 9.0) < 4 * se


@pytest.mark.parametrize("cls", [DistributedDiscreteGaussian, DistributedSkellam])
def test_modular_sum_decodes_to_the_sum(cls):
    mech = cls(clip_norm=1.0, noise_multiplier=0.01, num_clients=8, bits=20)
    x = 0.1 * torch.randn(8, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # inside the ball
    reports = mech.privatize(x, generator=torch.Generator().manual_seed(3))
    total = torch.remainder(reports.sum(0), mech.modulus)
    est = mech.decode_sum(total, 8, dtype=torch.float64)
    truth = x.sum(0)
    assert (est - truth).norm() < 0.05 * truth.norm()


def test_ddg_sum_guarantee_falls_with_n_and_empirical_audit_of_the_sum():
    mech = DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=1.0, num_clients=4, bits=16)
    mech.bind_dim(1)
    eps = [mech.sum_guarantee(n).rdp([8.0])[0] for n in (1, 2, 4)]
    assert eps[0] > eps[1] > eps[2]
    sum_mech = dd.SecureSum(mech, [0.0, 0.0, 0.0])
    result = check_privacy_loss(sum_mech, delta=1e-5, samples=20_000)
    assert result.method == "empirical" and 0 <= result.epsilon <= result.claimed_epsilon


# ----------------------------------------------------------------------------- the simulation's secure aggregation path
@pytest.mark.slow
def test_simulation_secure_aggregation_sum_and_ledger():
    from privfl.evaluations.scenario import Scenario, build_simulation

    sc = Scenario(dataset="digits", partition="iid", partition_params={}, num_clients=10, sampling="uniform",
                  sample_rate=0.5, model="mlp", model_params={"hidden": []}, protocol="fedavg", rounds=2,
                  local_steps=2, batch_size=16, lr=0.05, mechanism="rqm",
                  mechanism_params={"c": 0.05, "delta": 0.5, "m": 5, "q": 0.5}, secure_aggregation=True,
                  device="cpu")
    sim = build_simulation(sc, 0)
    reports = torch.randint(0, 5, (5, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(sim._secure_sum(0, torch.arange(5), reports), reports.sum(0))  # masks cancel
    sim.run(2)
    g = sim.mechanism.sum_guarantee(5)
    want = sim.ledger.epsilon(1e-5)
    from privfl.accounting.analysis import DEFAULT_ORDERS, rdp_to_epsilon

    rounds_joined = int(sim.ledger._matrix.max())
    expected = rdp_to_epsilon(DEFAULT_ORDERS, rounds_joined * g.rdp(DEFAULT_ORDERS), 1e-5)[0]
    assert want == pytest.approx(min(expected, rounds_joined * g.epsilon_pure))
    assert sim.secure_aggregation_sizes == [5, 5]
    with pytest.raises(ValueError, match="secure_aggregation"):
        build_simulation(sc.replace(mechanism="dp-fedavg", mechanism_params={}), 0)


@pytest.mark.slow
def test_audit_names_the_secure_aggregation_unit():
    from privfl.evaluations.privacy import audit_scenario
    from privfl.evaluations.scenario import Scenario

    sc = Scenario(dataset="digits", partition="iid", partition_params={}, num_clients=10, sampling="uniform",
                  sample_rate=0.5, model="mlp", model_params={"hidden": []}, protocol="fedavg", rounds=3,
                  mechanism="skellam", mechanism_params={"noise_multiplier": 2.0, "num_clients": 5},
                  secure_aggregation=True, device="cpu")
    rows, what = audit_scenario(sc)
    assert "per client under secure aggregation with 5 participants" in what
    mech = sc.build_components(0)["mechanism"]
    mech.bind_dim(650)
    from privfl.accounting.analysis import DEFAULT_ORDERS, rdp_to_epsilon

    want = rdp_to_epsilon(DEFAULT_ORDERS, 3 * mech.sum_guarantee(5).rdp(DEFAULT_ORDERS), 1e-5)[0]
    assert rows[-1].epsilon_rdp == pytest.approx(want)
    local = rdp_to_epsilon(DEFAULT_ORDERS, 3 * mech.guarantee().rdp(DEFAULT_ORDERS), 1e-5)[0]
    assert want < local / 2  # the sum protects far better than one report alone
