"""Byzantine attacks: values against their papers' formulas (computed independently with numpy/scipy),
min-max / min-sum's binary search against the closed-form largest γ, seeded determinism, no mutation,
and each attack end to end in a federated run against a robust rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import privfl
from privfl.attacks.byzantine import alie_z
from privfl.fl.local import LocalSGD
from privfl.fl.partition import partition
from privfl.fl.simulation import FederatedSimulation

NAMES = ["sign-flip", "ipm", "alie", "min-max", "min-sum", "mimic", "gaussian", "nan", "inf"]


def honest(h: int = 16, d: int = 12, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (1.0 + torch.randn(h, d, generator=g, dtype=torch.float64)).to(dtype)


def attack(name: str, **kw):
    return privfl.make("byzantine_attack", name, **kw)


def test_all_names_registered():
    assert set(NAMES) | {"label-flip"} <= set(privfl.available("byzantine_attack"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_no_mutation_and_determinism(name, dtype):
    H = honest(dtype=dtype)
    before = H.clone()
    a = attack(name)
    out = a(H, 4, generator=torch.Generator().manual_seed(3))
    again = attack(name)(H, 4, generator=torch.Generator().manual_seed(3))
    assert out.shape == (4, 12) and out.dtype == dtype and out.device == H.device
    assert torch.equal(H, before)
    assert torch.equal(out.nan_to_num(), again.nan_to_num())
    assert attack(name)(H, 0, generator=torch.Generator().manual_seed(3)).shape == (0, 12)


def test_sign_flip_and_ipm():
    H = honest()
    mu = H.numpy().mean(0)
    assert np.allclose(attack("sign-flip")(H, 3).numpy(), np.tile(-mu, (3, 1)))
    assert np.allclose(attack("ipm")(H, 2).numpy(), np.tile(-0.1 * mu, (2, 1)))
    assert np.allclose(attack("ipm", epsilon=100)(H, 2).numpy(), np.tile(-100 * mu, (2, 1)))


@pytest.mark.parametrize("n,f", [(20, 4), (25, 5), (50, 10), (20, 2)])
def test_alie_z_formula(n, f):
    s = math.floor(n / 2 + 1) - f
    assert alie_z(n, f) == pytest.approx(norm.ppf((n - f - s) / (n - f)), rel=1e-12)


def test_alie_z_is_small_for_small_n_and_fixed_z_is_used():
    assert abs(alie_z(20, 4)) < 0.2  # the reason libraries offer a fixed z
    H = honest(h=16)
    X = H.numpy()
    for z, a in ((alie_z(20, 4), attack("alie")), (1.5, attack("alie", z=1.5))):
        ref = X.mean(0) - z * X.std(0, ddof=1)
        assert np.allclose(a(H, 4).numpy(), np.tile(ref, (4, 1)), atol=1e-12)
        assert a.last_z == pytest.approx(z)


def test_alie_without_finite_z_is_a_clear_error():
    with pytest.raises(ValueError, match="pass a fixed z"):
        attack("alie")(honest(h=2), 3)  # n = 5, f = 3: s = 0


def _closed_form_gamma(H: np.ndarray, p: np.ndarray, kind: str) -> float:
    mu = H.mean(0)
    a = ((mu - H) ** 2).sum(1)
    b = (mu - H) @ p
    c = p @ p
    D = ((H[:, None] - H[None]) ** 2).sum(-1)
    if kind == "min-max":  # largest γ with max_i (a_i − 2γ b_i + γ² c) <= max D
        T = D.max()
        return min((b_i + math.sqrt(b_i * b_i - c * (a_i - T))) / c for a_i, b_i in zip(a, b))
    T = D.sum(1).max()  # min-sum: Σ_i (a_i − 2γ b_i + γ² c) <= max_i Σ_j D_ij
    A, B, C = a.sum(), b.sum(), len(H) * c
    return (B + math.sqrt(B * B - C * (A - T))) / C


@pytest.mark.parametrize("kind", ["min-max", "min-sum"])
@pytest.mark.parametrize("perturbation", ["unit-vec", "std", "sign"])
def test_min_max_min_sum_binary_search_finds_the_largest_gamma(kind, perturbation):
    H = honest(h=10, d=6, seed=1) * 0.3
    a = attack(kind, perturbation=perturbation)
    out = a(H, 3)
    X = H.numpy()
    mu = X.mean(0)
    p = {"unit-vec": mu / np.linalg.norm(mu), "std": X.std(0, ddof=1), "sign": np.sign(mu)}[perturbation]
    exact = _closed_form_gamma(X, p, kind)
    expected = min(exact, 2 * 10.0)  # the paper's search cannot pass 2·gamma_init
    assert a.last_gamma == pytest.approx(expected, abs=2e-5)
    assert np.allclose(out.numpy(), np.tile(mu - a.last_gamma * p, (3, 1)))


def test_min_max_gamma_is_capped_by_the_search():
    H = honest(h=10, d=6, seed=2) * 100.0  # honest spread ≫ 20 in unit-vector units
    a = attack("min-max", perturbation="unit-vec")
    a(H, 2)
    assert 19.99 < a.last_gamma < 20.0


def test_mimic_fixed_and_heuristic():
    H = honest(h=9, d=5, seed=3)
    assert torch.equal(attack("mimic", target=4)(H, 3), H[4].expand(3, -1))
    with pytest.raises(ValueError, match="only 9 honest rows"):
        attack("mimic", target=9)(H, 1)
    X = H.numpy()
    centred = X - X.mean(0)
    v = np.linalg.svd(centred)[2][0]
    target = int(np.argmax(np.abs(centred @ v)))
    assert torch.equal(attack("mimic", target=None)(H, 2), H[target].expand(2, -1))


def test_gaussian_moments():
    # 4 × 5000 draws of N(0, 200²): the sample mean is within 5 standard errors with probability
    # 1 − 6e-7, the sample std within 2% (its standard error is 0.5%).
    out = attack("gaussian")(honest(), 4, generator=torch.Generator().manual_seed(0))
    big = attack("gaussian")(torch.zeros(2, 5000), 4, generator=torch.Generator().manual_seed(1)).double()
    assert abs(float(big.mean())) < 5 * 200 / math.sqrt(big.numel())
    assert float(big.std()) == pytest.approx(200.0, rel=0.02)
    assert not torch.equal(out, attack("gaussian")(honest(), 4, generator=torch.Generator().manual_seed(2)))


def test_nan_and_inf_rows():
    H = honest()
    assert torch.isnan(attack("nan")(H, 2)).all()
    assert torch.isposinf(attack("inf")(H, 2)).all()
    assert torch.isneginf(attack("inf", sign=-1)(H, 2)).all()


def test_label_flip():
    a = attack("label-flip")
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 9, 4])
    x2, y2 = a.poison(x, y, num_classes=10)
    assert x2 is x and torch.equal(y2, torch.tensor([9, 8, 7, 0, 5])) and torch.equal(y, torch.tensor([0, 1, 2, 9, 4]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        a.poison(x, y, num_classes=3)
    with pytest.raises(TypeError):
        a.poison(x, y.float(), num_classes=10)


@pytest.mark.parametrize("name,params", [("alie", {"z": 1.0}), ("ipm", {}), ("min-max", {}), ("mimic", {}),
                                         ("nan", {}), ("inf", {}), ("sign-flip", {}), ("gaussian", {}),
                                         ("label-flip", {}), ("min-sum", {})])
def test_attack_in_a_federated_run(name, params):
    ds = privfl.make("dataset", "digits")
    torch.manual_seed(0)
    model = privfl.make("model", "mlp", input_shape=ds.input_shape, num_classes=ds.num_classes, hidden=(16,))
    clients = partition("iid", ds.y_train, 11, generator=torch.Generator().manual_seed(0))
    sim = FederatedSimulation(
        model, ds, clients, local=LocalSGD(steps=2, batch_size=16, lr=0.1),
        aggregator=privfl.make("aggregator", "trimmed-mean", f=2),
        preaggregators=[privfl.make("preaggregator", "nnm", f=2)],
        byzantine_clients=[3, 8], byzantine_attack=attack(name, **params), eval_every=2,
    )
    history = sim.run(2)
    assert history[-1].byzantine == 2 and history[-1].accuracy is not None
    assert torch.isfinite(sim.weights).all()
