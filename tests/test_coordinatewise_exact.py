"""Coordinate-wise median, trimmed mean and Meamed are bitwise equal to their definitions
(privfl.defenses._ranks): columns sorted independently here by IEEE totalOrder (integer keys of the bit
patterns, so −0.0 sorts before +0.0), then the documented formulas. Hypothesis draws the shapes, the
trim and a seed for the values: ties, ±0.0, the dtype's largest and smallest magnitudes, every float dtype,
several column blocks; plus fixed cases for the >128-row (sort) path and against torch.median itself.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import privfl
from privfl.defenses import _ranks as R

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}


def total_order_sort(X: torch.Tensor) -> torch.Tensor:
    """Columns of ``X`` sorted by totalOrder: the bits as signed ints, negatives' magnitude bits flipped."""
    bits = X.view(INT_OF[X.dtype]).to(torch.int64)
    width = 8 * X.element_size()
    keys = torch.where(bits < 0, bits ^ ((1 << (width - 1)) - 1), bits)
    return X.gather(0, keys.argsort(dim=0, stable=True))


def acc_of(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def ref_midpoint(a, b):
    if a.dtype != torch.float64:
        return ((a.double() + b.double()) / 2).to(a.dtype)
    s = a + b
    return torch.where(torch.isinf(s), a / 2 + b / 2, s / 2)


def ref_median(S):
    m = S.shape[0]
    return S[m // 2] if m % 2 else ref_midpoint(S[m // 2 - 1], S[m // 2])


def ascending_sum(rows, acc):
    total = torch.full(rows.shape[1:], -0.0, dtype=acc)
    for row in rows:
        total = total + row.to(acc)
    return total


def ref_trimmed(S, b):
    m = S.shape[0]
    acc = acc_of(S.dtype)
    return (ascending_sum(S[b : m - b], acc) / (m - 2 * b)).to(S.dtype)


def ref_meamed(S, k):
    """Over every start a in [0, m − k): the window moves right while s_{a+k} is strictly closer."""
    m = S.shape[0]
    acc = acc_of(S.dtype)
    med = ref_median(S).to(acc)
    A = S.to(acc)
    start = torch.zeros(S.shape[1], dtype=torch.int64)
    for a in range(m - k):
        start += ((med - A[a]) > (A[a + k] - med)).long()
    window = S.gather(0, start.unsqueeze(0) + torch.arange(k).unsqueeze(1))
    return (ascending_sum(window, acc) / k).to(S.dtype)


def draw_matrix(m, d, dtype, seed, style):
    g = torch.Generator().manual_seed(seed)
    fi = torch.finfo(dtype)
    if style == "normal":
        return torch.randn(m, d, generator=g).to(dtype)
    # few distinct values: ties, signed zeros, the extremes (their midpoints overflow a + b)
    pool = torch.tensor([-0.0, 0.0, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -3.0, fi.max, -fi.max, fi.tiny, -fi.tiny],
                        dtype=torch.float64).to(dtype)
    if style == "zeros":
        pool = pool[:5]
    return pool[torch.randint(0, len(pool), (m, d), generator=g)]


def bitwise_equal(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(INT_OF[a.dtype]), b.view(INT_OF[b.dtype]))


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 40), d=st.integers(1, 600), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       style=st.sampled_from(["normal", "pool", "zeros"]), frac=st.floats(0, 1), small_blocks=st.booleans())
def test_rules_equal_their_definitions_bitwise(m, d, dtype, seed, style, frac, small_blocks):
    with pytest.MonkeyPatch.context() as mp:
        if small_blocks:  # several column blocks, the last one partial
            mp.setattr(R, "_NETWORK_CHUNK", 256 * m)
        check_definitions(m, d, dtype, seed, style, frac)


def check_definitions(m, d, dtype, seed, style, frac):
    X = draw_matrix(m, d, dtype, seed, style)
    before = X.clone()
    S = total_order_sort(X)
    b = int(frac * (m - 1) / 2)  # m > 2b
    k = m - int(frac * m / 2)  # m/2 ≤ k ≤ m, as in every Meamed call
    assert bitwise_equal(R.coordinate_median(X), ref_median(S))
    assert bitwise_equal(R.coordinate_trimmed_mean(X, b), ref_trimmed(S, b))
    assert bitwise_equal(R.coordinate_meamed(X, k), ref_meamed(S, k))
    assert bitwise_equal(X, before)  # input untouched


@pytest.mark.parametrize("m", [129, 131])
def test_sort_path_beyond_the_network_is_bitwise_equal_too(m):
    for dtype in (torch.float32, torch.float16):
        X = draw_matrix(m, 300, dtype, m, "pool")
        S = total_order_sort(X)
        assert bitwise_equal(R.coordinate_median(X), ref_median(S))
        assert bitwise_equal(R.coordinate_trimmed_mean(X, 20), ref_trimmed(S, 20))
        assert bitwise_equal(R.coordinate_meamed(X, m - 20), ref_meamed(S, m - 20))


def test_signed_zero_ranks_follow_total_order():
    X = torch.tensor([[0.0, -0.0, 0.0], [-0.0, -0.0, 0.0], [0.0, 0.0, -0.0]])
    got = R.column_ranks(X, 0, 2)
    want = torch.tensor([[-0.0, -0.0, -0.0], [0.0, -0.0, 0.0], [0.0, 0.0, 0.0]])
    assert bitwise_equal(got, want)
    # all −0.0: the median, trimmed mean and Meamed are −0.0, not +0.0
    Z = torch.full((4, 3), -0.0)
    for out in (R.coordinate_median(Z), R.coordinate_trimmed_mean(Z, 1), R.coordinate_meamed(Z, 2)):
        assert bitwise_equal(out, torch.full((3,), -0.0))


@pytest.mark.parametrize("m", [3, 25, 51])
def test_odd_median_is_torch_median_and_aggregators_use_the_kernels(m):
    X = torch.randn(m, 1000, generator=torch.Generator().manual_seed(m))
    assert bitwise_equal(privfl.make("aggregator", "median", f=1)(X), torch.median(X, 0).values)
    S = total_order_sort(X)
    f = m // 3
    assert bitwise_equal(privfl.make("aggregator", "trimmed-mean", f=f)(X), ref_trimmed(S, f))
    assert bitwise_equal(privfl.make("aggregator", "meamed", f=f)(X), ref_meamed(S, m - f))
    # a non-finite row is dropped and counted against f: the same as the rule on the finite rows
    Y = X.clone()
    Y[0, 5] = float("nan")
    T = total_order_sort(X[1:])
    assert bitwise_equal(privfl.make("aggregator", "median", f=1)(Y), ref_median(T))
    assert bitwise_equal(privfl.make("aggregator", "meamed", f=f)(Y), ref_meamed(T, m - 1 - (f - 1)))


def test_even_median_is_the_correctly_rounded_midpoint():
    big = torch.finfo(torch.float32).max
    X = torch.tensor([[big, 1.0, 1.0], [big, 2.0, 2.0 ** -149]])
    assert bitwise_equal(R.coordinate_median(X), torch.tensor([big, 1.5, 0.5]))  # no overflow; exact halves
    lower, upper = torch.tensor(1.0), torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    mid = R.coordinate_median(torch.stack([lower, upper]).unsqueeze(1))  # a tie: round half to even
    assert bitwise_equal(mid, lower.reshape(1))
