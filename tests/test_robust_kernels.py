"""The fast kernels behind Krum, Multi-Krum, Bulyan and NNM (privfl.defenses._common): the pruned sorting
network, the median-window mean, the one-pass finite check + Gram matrix, the chunked mixing product,
and Bulyan's host-side selection — each against an independent (brute-force or plain torch) computation,
ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import privfl
from privfl import kernels as K
from privfl.defenses import _common as C
from privfl.defenses.krum import krum_scores


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def closest_to_median_mean(X: np.ndarray, k: int) -> np.ndarray:
    """Brute force: per column, the mean of the k values smallest by (|v − median|, v)."""
    out = []
    for col in X.T.tolist():
        s = sorted(col)
        m = len(s)
        med = s[m // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2
        out.append(sum(sorted(s, key=lambda v: (abs(v - med), v))[:k]) / k)
    return np.array(out)


# --------------------------------------------------------------------------------------------
# Sorting network and median window
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3, 7, 16, 30, 31, 33, 64, 100, 128, 129])
def test_sorted_ranks_equal_torch_sort_with_ties(m):
    X = torch.randint(-4, 5, (m, 257), generator=_gen(m)).float()  # many ties
    before = X.clone()
    full = X.sort(dim=0).values
    for lo, hi in [(0, m - 1), (m // 4, (3 * m) // 4), (m // 2, m // 2)]:
        assert torch.equal(C.sorted_ranks(X, lo, hi), full[lo : hi + 1]), (m, lo, hi)
    assert torch.equal(X, before)  # the network never writes its input


def test_window_mean_closest_takes_the_strictly_closer_value_over_a_repeated_far_one():
    # median 1; the 4 closest values are 1, 1.2, 1.5 and one of the two 0s: mean 0.925. Choosing the
    # window by its farthest element alone ties [0, 0, 1, 1.2] with [0, 1, 1.2, 1.5] and took the first.
    v = torch.tensor([[0.0, 0.0, 1.0, 1.2, 1.5]], dtype=torch.float64)
    assert float(C.window_mean_closest(v, C.row_median(v), 4)) == pytest.approx(0.925, abs=1e-15)
    assert float(privfl.make("aggregator", "meamed", f=1)(v.T.contiguous())) == pytest.approx(0.925, abs=1e-15)


@pytest.mark.parametrize("m", list(range(1, 24)) + [30, 41])
def test_median_window_mean_equals_brute_force_with_ties(m):
    X = torch.randint(-3, 4, (m, 120), generator=_gen(100 + m)).double() / 2  # exact medians, many ties
    for k in sorted({1, min(2, m), max(1, m // 3), max(1, m // 2), max(1, m - 1), m}):
        ref = closest_to_median_mean(X.numpy(), k)
        assert np.allclose(C.median_window_mean(X, k).numpy(), ref, atol=1e-12), (m, k)
        S = X.T.sort(dim=1).values
        assert np.allclose(C.window_mean_closest(S, C.row_median(S), k).numpy(), ref, atol=1e-12), (m, k)


def test_median_window_mean_over_selected_rows_chunks_and_dtypes(monkeypatch):
    monkeypatch.setattr(C, "_NETWORK_CHUNK", 4096)  # several chunks, a ragged last one
    X = torch.randn(40, 3001, generator=_gen(7), dtype=torch.float64)
    rows = torch.tensor([0, 3, 5, 8, 13, 21, 22, 30, 31, 34, 35, 39])
    ref = closest_to_median_mean(X[rows].numpy(), 4)
    assert np.allclose(C.median_window_mean(X, 4, rows=rows).numpy(), ref, atol=1e-12)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        Y = X.to(dtype)
        out = C.median_window_mean(Y, 4, rows=rows)
        S = Y[rows].T.sort(dim=1).values
        assert out.dtype == dtype
        assert torch.allclose(out.double(), C.window_mean_closest(S, C.row_median(S), 4).double(), atol=1e-2)


# --------------------------------------------------------------------------------------------
# Bulyan: host-side selection and the whole rule
# --------------------------------------------------------------------------------------------
def _select_reference(D: torch.Tensor, f: int, theta: int) -> list[int]:
    """The iterated-Krum selection recomputing every score with krum_scores (the rule's definition)."""
    alive = torch.ones(D.shape[0], dtype=torch.bool)
    chosen = []
    for _ in range(theta):
        scores = krum_scores(D, f, alive)
        tied = scores <= scores.min() * (1 + 1e-12)
        total = torch.where(alive.unsqueeze(0), D, torch.zeros_like(D)).sum(dim=1)
        i = int(torch.argmin(torch.where(tied & alive, total, torch.full_like(total, float("inf")))))
        chosen.append(i)
        alive[i] = False
    return chosen


def test_bulyan_selection_equals_recomputed_krum_rounds():
    g = _gen(11)
    rule = privfl.make("aggregator", "bulyan", f=1)
    for trial in range(150):
        f = trial % 5
        n = 4 * f + 3 + int(torch.randint(0, 12, (1,), generator=g))
        X = torch.randn(n, 4, generator=g, dtype=torch.float64)
        if trial % 2:
            X = X.round()  # tied distances, computed exactly below
        D = (X[:, None] - X[None]).square().sum(-1)
        assert rule.select(D, f, n - 2 * f).tolist() == _select_reference(D, f, n - 2 * f), trial


@pytest.mark.parametrize("n, f", [(11, 2), (14, 2), (31, 7), (140, 1)])  # 140 − 2: the torch.sort path
def test_bulyan_equals_brute_force_with_ties(n, f):
    X = torch.randint(-3, 4, (n, 40), generator=_gen(n)).double()
    X[: f] += 50.0  # outliers
    theta = n - 2 * f
    chosen = sorted(_select_reference((X[:, None] - X[None]).square().sum(-1), f, theta))  # exact: integers
    ref = closest_to_median_mean(X[chosen].numpy(), theta - 2 * f)
    assert np.allclose(privfl.make("aggregator", "bulyan", f=f)(X).numpy(), ref, atol=1e-12)


# --------------------------------------------------------------------------------------------
# One pass: finite check + Gram matrix
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0.0, 1000.0])  # the uncentred and the centred first attempt
def test_finite_gram_and_distances_all_finite(offset):
    X = (offset + torch.randn(12, 5000, generator=_gen(3))).float()
    rows, f_left, kept, G, D = C.finite_gram_and_distances(X, 2, rule="t")
    assert rows is X and f_left == 2 and kept is None and G.dtype == torch.float64
    exact = torch.cdist(X.double(), X.double()).square()
    off = ~torch.eye(12, dtype=torch.bool)
    assert float(((D - exact).abs() / exact)[off].max()) < 1e-5
    # G is a Gram matrix of the rows about some centre: it reproduces the distances
    r = G.diagonal()
    assert torch.allclose(r[:, None] + r[None] - 2 * G, exact, rtol=1e-5, atol=1e-6 * float(exact.max()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_finite_gram_and_distances_finds_non_finite_rows(bad):
    X = torch.randn(9, 700, generator=_gen(4))
    X[2, 5] = bad
    X[6, 600] = bad
    rows, f_left, kept, _, D = C.finite_gram_and_distances(X, 3, rule="t")
    assert kept.tolist() == [0, 1, 3, 4, 5, 7, 8] and f_left == 1 and torch.equal(rows, X[kept])
    assert torch.allclose(D, torch.cdist(X[kept].double(), X[kept].double()).square(), rtol=1e-5)
    with pytest.raises(ValueError, match="2 row\\(s\\) \\[2, 6\\] contain NaN or Inf but f=1"):
        C.finite_gram_and_distances(X, 1, rule="t")


def test_finite_gram_and_distances_finds_non_finite_rows_outside_the_sampled_columns():
    # d = 10,000: the accuracy sample (32 runs of 64 columns) misses columns 100 and 9999, so the
    # uncentred products run first and must reveal the faulty rows through their diagonal entries
    X = torch.randn(9, 10_000, generator=_gen(9))
    X[1, 100] = float("nan")
    X[7, 9999] = float("inf")
    rows, f_left, kept, _, D = C.finite_gram_and_distances(X, 2, rule="t")
    assert kept.tolist() == [0, 2, 3, 4, 5, 6, 8] and f_left == 0
    assert torch.allclose(D, torch.cdist(X[kept].double(), X[kept].double()).square(), rtol=1e-5)


def test_a_misleading_column_sample_only_costs_a_recomputation():
    # the sample (32 runs of 64 columns) sees zero-mean rows and predicts uncentred products accurate;
    # unsampled columns 100..199 carry a huge common offset, so the a-posteriori check must reject them
    X = torch.randn(10, 10_000, generator=_gen(12))
    X[:, 100:200] += 1e4
    g = 2.0**-24 * C.column_chunk(X) ** 0.5
    assert K._uncentred_suffices(X, g)
    exact = torch.cdist(X.double(), X.double()).square()
    D = C.finite_gram_and_distances(X, 0, rule="t")[4]
    off = ~torch.eye(10, dtype=torch.bool)
    assert float(((D - exact).abs() / exact)[off].max()) < 1e-5
    naive = (X @ X.T).double()  # what trusting the uncentred float32 products would give
    r = naive.diagonal()
    assert float((((r[:, None] + r[None] - 2 * naive) - exact).abs() / exact)[off].max()) > 1e-3


def test_finite_gram_and_distances_survives_float32_overflow():
    X = torch.randn(6, 300, generator=_gen(5)) * 1e20  # finite, but squares overflow float32
    rows, _, kept, _, D = C.finite_gram_and_distances(X, 0, rule="t")
    exact = torch.cdist(X.double(), X.double()).square()
    assert kept is None and torch.isfinite(D).all()
    assert torch.allclose(D, exact, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Chunked mixing product, NNM
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_mix_rows_equals_the_product(dtype):
    X = torch.randn(7, 9001, generator=_gen(6)).to(dtype)  # 9001: a ragged last chunk
    W = torch.rand(5, 7, generator=_gen(7), dtype=torch.float64)
    out = C.mix_rows(W, X)
    ref = W @ X.double()
    assert out.dtype == dtype and out.shape == (5, 9001)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2}[dtype]
    assert torch.allclose(out.double(), ref, rtol=tol, atol=tol * 4)


def test_nnm_keeps_half_precision_and_matches_float64():
    X = torch.randn(10, 300, generator=_gen(8), dtype=torch.float64)
    nnm = privfl.make("preaggregator", "nnm", f=3)
    out16 = nnm(X.half())
    assert out16.dtype == torch.float16
    assert torch.allclose(out16.double(), nnm(X), atol=2e-2)
