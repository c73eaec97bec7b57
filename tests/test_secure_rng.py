"""privfl.secure_rng: CSPRNG sources, exact discrete samplers (goodness of fit against the exact pmfs),
the grid-exact secure Gaussian, and the per-mechanism switch.

Secure draws cannot be seeded; each statistical test below rejects a correct sampler with probability
at most 1e-4 (chi-square p-value threshold)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import privfl
from privfl.secure_rng import SOURCES, SecureRandom, add_gaussian, grid_step, with_rng

P_MIN = 1e-4


def _chi2_pvalue(samples: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square test on the support cells with expected count >= 5 (the rest pooled)."""
    n = len(samples)
    observed = np.array([(samples == v).sum() for v in support], dtype=float)
    expected = n * pmf
    big = expected >= 5
    obs = np.append(observed[big], n - observed[big].sum())
    exp = np.append(expected[big], n - expected[big].sum())
    keep = exp > 0
    return float(stats.chisquare(obs[keep], exp[keep]).pvalue)


@pytest.mark.parametrize("source", SOURCES)
def test_sources_give_fresh_uniform_bits(source):
    rng = SecureRandom(source)
    a, b = rng.random_bytes(64), rng.random_bytes(64)
    assert len(a) == 64 and a != b
    u = rng.uniform(20000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > P_MIN
    k = rng.randbelow(7, 14000)
    assert _chi2_pvalue(k, np.arange(7), np.full(7, 1 / 7)) > P_MIN


def test_keystream_is_rekeyed_in_another_process():
    rng = SecureRandom("chacha20")
    rng.random_bytes(8)
    enc = rng._encryptor
    rng._pid = -1  # what a forked child sees: a pid that is not the one that keyed the stream
    rng.random_bytes(8)
    assert rng._encryptor is not enc


@pytest.mark.parametrize("sigma", [0.8, 2.5, 11.0])
def test_discrete_gaussian_matches_its_exact_pmf(sigma):
    draws = SecureRandom().discrete_gaussian(sigma, 30000)
    support = np.arange(-int(12 * sigma) - 2, int(12 * sigma) + 3)
    pmf = np.exp(-support.astype(float) ** 2 / (2 * sigma**2))
    pmf /= pmf.sum()
    assert _chi2_pvalue(draws, support, pmf) > P_MIN


def test_discrete_laplace_matches_its_exact_pmf():
    t = 3
    draws = SecureRandom().discrete_laplace(t, 30000)
    support = np.arange(-60, 61)
    pmf = np.exp(-np.abs(support) / t)
    pmf /= pmf.sum()
    assert _chi2_pvalue(draws, support, pmf) > P_MIN


def test_secure_gaussian_lies_on_the_grid_whatever_the_input():
    std = 0.37
    gamma = grid_step(std)
    assert 2**20 <= std / gamma < 2**21 and math.log2(gamma).is_integer()
    x = torch.randn(3, 500, dtype=torch.float64) * 0.1 + 1e-9  # arbitrary low bits
    out = add_gaussian(x, std, generator=None, rng="secure")
    steps = out / gamma
    assert torch.equal(steps, torch.round(steps))  # exact multiples of γ: the support does not depend on x
    assert abs(float((out - x).std()) / std - 1) < 0.05


def test_secure_gaussian_keeps_the_sensitivity_and_the_dtype():
    torch.manual_seed(0)
    rows = torch.randn(5, 300) * 3  # outside the ball: re-clipped in float64 before snapping
    mech = with_rng(privfl.make("mechanism", "gaussian", clip_norm=1.0, noise_multiplier=1e-6, local=True), "secure")
    out = mech.privatize(rows)
    assert out.dtype == torch.float32
    assert float(torch.linalg.vector_norm(out.double(), dim=1).max()) <= 1.0 + 1e-4  # σ = 1e-6: noise negligible
    total = with_rng(privfl.make("mechanism", "dp-fedavg", noise_multiplier=1.0), "secure").aggregate(
        rows, expected_rows=5.0)
    assert total.shape == (300,) and torch.isfinite(total).all()


def test_seeded_mode_is_unchanged_and_reproducible():
    x = torch.randn(4, 50)
    mech = privfl.make("mechanism", "gaussian", noise_multiplier=0.7, local=True)
    a = mech.privatize(x, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, mech.clip(x) + mech.noise_std * noise)
    secure = with_rng(mech, "secure")
    b1 = secure.privatize(x, generator=torch.Generator().manual_seed(3))
    b2 = secure.privatize(x, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(b1, b2)  # the generator is ignored: not recomputable from the seed
    assert mech.rng == "seeded" and secure.rng == "secure"  # with_rng copies


def test_secure_guarantee_is_the_discrete_gaussian_rdp_without_amplification():
    mech = with_rng(privfl.make("mechanism", "dp-fedavg", noise_multiplier=2.0), "secure")
    g = mech.guarantee()
    orders = np.array([2.0, 8.0, 32.0])
    assert np.allclose(g.rdp(orders), orders / (2 * 2.0**2))
    assert g.noise_multiplier is None
    local = with_rng(privfl.make("mechanism", "gaussian", noise_multiplier=2.0, local=True), "secure").guarantee()
    assert np.allclose(local.rdp(orders), orders / (2 * 1.0**2))  # replace-one: sensitivity 2·clip_norm


def test_secure_rqm_is_unbiased_and_random():
    from privfl.testing import check_unbiased

    mech = with_rng(privfl.make("mechanism", "rqm"), "secure")
    x = torch.tensor([0.9, -0.4, 0.0, 0.33])
    check_unbiased(mech, x, trials=3000, alpha=P_MIN)


def test_with_rng_errors():
    with pytest.raises(ValueError, match="rng"):
        with_rng(privfl.make("mechanism", "dp-fedavg"), "fast")
    with pytest.raises(ValueError, match="secure noise"):
        with_rng(privfl.make("mechanism", "pbm"), "secure")
    with pytest.raises(TypeError, match="Mechanism"):
        with_rng("gaussian", "secure")
    with pytest.raises(ValueError, match="source"):
        SecureRandom("mt19937")
    with pytest.raises(ValueError, match="sigma"):
        SecureRandom().discrete_gaussian(0.0, 3)


def test_the_core_never_imports_the_integrations():
    """privfl and every registered component load without Flower (integrations sit on top)."""
    import subprocess
    import sys

    code = ("import sys, privfl, privfl.cli, privfl.fl.simulation, privfl.secure_rng\n"
            "from privfl.registry import _ensure_loaded\n_ensure_loaded()\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('flwr', 'ray', 'privfl.integrations')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
