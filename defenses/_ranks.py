"""Exact coordinate-wise order statistics for the median, the trimmed mean and Meamed.

Each rule needs only a few ranks of each coordinate's values, never the full sorted column: on CPU
(at most 128 rows) they come from Batcher's network pruned to those ranks
(:func:`privfl.defenses._common.sorted_ranks`), run on column blocks of ~1M values so every comparator
(two elementwise ops on a row of the block) stays in cache; more rows, or another device, sort.

**Definitions, to the bit.** Values are ordered by IEEE 754 ``totalOrder`` restricted to finite numbers:
numeric order with ``−0.0`` before ``+0.0``. A comparator (min/max) or ``torch.sort`` treats ``±0.0`` as
equal and may return either sign for a rank holding a zero, so every rank found to be zero is then given
its ``totalOrder`` sign: rank ``r`` is ``−0.0`` exactly when fewer than ``r + 1`` of the column's values
have a clear sign bit, i.e. when ``r`` is below the count of values with the sign bit set (one extra pass,
taken only for blocks where some rank is zero). Then:

- median: rank ``h = ⌊m/2⌋`` for odd ``m``; for even ``m`` the midpoint of ranks ``h − 1`` and ``h``,
  computed in float64 and rounded once to the input dtype for inputs of at most 32 bits (the correctly
  rounded mean; float64's 53 bits make the double rounding innocuous), and for float64 input as
  ``(a + b)/2`` (``a/2 + b/2`` where ``a + b`` overflows);
- sums (trimmed mean, Meamed): the kept values added one at a time in ascending (``totalOrder``) order,
  in the accumulation dtype (float32 for half-precision inputs, the input dtype otherwise), starting from
  ``−0.0`` (the identity of addition, so ``−0.0`` sums stay ``−0.0``); the mean divides that sum by the
  count and rounds to the input dtype.

The tests check these bit for bit against ``torch.sort`` of the columns followed by the same formulas,
on matrices with ties and signed zeros, in every float dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.defenses._common import _NETWORK_CHUNK, accumulation_dtype, column_chunk, sorted_ranks

__all__ = ["column_ranks", "midpoint", "coordinate_median", "coordinate_trimmed_mean", "coordinate_meamed"]


def _chunk(x: Tensor) -> int:
    """Columns per block: ~1M values on CPU (the network's comparators stay in cache), the device's
    block size elsewhere."""
    m, d = x.shape
    if x.device.type != "cpu":
        return column_chunk(x, m)
    return max(256, min(d, _NETWORK_CHUNK // max(1, m)))


def column_ranks(block: Tensor, lo: int, hi: int) -> Tensor:
    """Ranks ``lo..hi`` (inclusive, ``totalOrder``: ``−0.0`` before ``+0.0``) of each column of ``block``
    (``[m, c]``, finite, left untouched): ``[hi − lo + 1, c]``."""
    S = sorted_ranks(block, lo, hi)
    zero = S == 0
    if not bool(zero.any()):
        return S
    negative = torch.signbit(block).sum(dim=0)  # values with the sign bit set: the first ranks
    r = torch.arange(lo, hi + 1, device=block.device).unsqueeze(1)
    signed = torch.where(r < negative, torch.tensor(-0.0, dtype=S.dtype, device=S.device),
                         torch.tensor(0.0, dtype=S.dtype, device=S.device))
    return torch.where(zero, signed, S)


def midpoint(a: Tensor, b: Tensor) -> Tensor:
    """``(a + b)/2`` in ``a``'s dtype: correctly rounded for dtypes of at most 32 bits (computed in
    float64), ``(a + b)/2`` for float64 (``a/2 + b/2`` where ``a + b`` overflows)."""
    if a.dtype != torch.float64:
        return ((a.to(torch.float64) + b.to(torch.float64)) / 2).to(a.dtype)
    s = a + b
    mid = s / 2
    over = torch.isinf(s)
    if bool(over.any()):
        mid = torch.where(over, a / 2 + b / 2, mid)
    return mid


def _blocks(x: Tensor):
    chunk = _chunk(x)
    for c0 in range(0, x.shape[1], chunk):
        yield c0, x[:, c0 : c0 + chunk]


def _neg_zero(like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.full(like.shape[-1:], -0.0, dtype=dtype, device=like.device)


def coordinate_median(x: Tensor) -> Tensor:
    """Per column of ``x`` (``[m, d]``, finite), the median as defined in the module docstring."""
    m, d = x.shape
    h = m // 2
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for c0, block in _blocks(x):
        if m % 2:
            out[c0 : c0 + block.shape[1]] = column_ranks(block, h, h)[0]
        else:
            S = column_ranks(block, h - 1, h)
            out[c0 : c0 + block.shape[1]] = midpoint(S[0], S[1])
    return out


def coordinate_trimmed_mean(x: Tensor, b: int) -> Tensor:
    """Per column of ``x`` (``[m, d]``, finite, ``m > 2b``), the mean of ranks ``b .. m − b − 1``, summed
    in ascending order (module docstring)."""
    m, d = x.shape
    acc = accumulation_dtype(x.dtype)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for c0, block in _blocks(x):
        S = column_ranks(block, b, m - b - 1)
        total = _neg_zero(block, acc)
        for row in S:
            total += row
        out[c0 : c0 + block.shape[1]] = (total / (m - 2 * b)).to(x.dtype)
    return out


def coordinate_meamed(x: Tensor, k: int) -> Tensor:
    """Per column of ``x`` (``[m, d]``, finite, ``m/2 ≤ k ≤ m`` as in every Meamed call), the mean of the
    ``k`` values closest to the median (:func:`coordinate_median`); at equal distances, the smaller values.

    The ``k`` closest values form a window ``[a, a + k)`` of the sorted column. Moving it one step right
    swaps ``s_a`` for ``s_{a+k}`` and is right exactly when ``P(a)``: ``med − s_a > s_{a+k} − med``
    (computed in the accumulation dtype); ``P`` holds on a prefix of ``[0, m − k)`` (its left side falls
    and its right side grows with ``a``, rounding included), so the window starts at the number of
    positions where it holds. As ``m − k ≤ k``, for each such ``a`` the window holds exactly one of ``s_a``
    (``P(a)`` false) and ``s_{a+k}`` (``P(a)`` true), and the ranks ``[m − k, k)`` are always in. The sum
    runs in ascending order: the ``s_a`` kept, the fixed ranks, the ``s_{a+k}`` taken (each added as
    ``−0.0`` where absent, which leaves the sum unchanged). No gather and no differences of values.
    Every rank is needed: the full network.
    """
    m, d = x.shape
    if not (m <= 2 * k and k <= m):
        raise ValueError(f"coordinate_meamed: k must be in [m/2, m], got k={k} for m={m} rows")
    acc = accumulation_dtype(x.dtype)
    h = m // 2
    steps = m - k  # starts 0 .. m − k
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for c0, block in _blocks(x):
        S = column_ranks(block, 0, m - 1)
        med = S[h] if m % 2 else midpoint(S[h - 1], S[h])
        med = med.to(acc)
        neg0 = _neg_zero(block, acc)
        total = neg0.clone()
        moved = [(med - S[a].to(acc)) > (S[a + k].to(acc) - med) for a in range(steps)]
        for a in range(steps):
            total += torch.where(moved[a], neg0, S[a].to(acc))
        for r in range(steps, k):
            total += S[r]
        for a in range(steps):
            total += torch.where(moved[a], S[a + k].to(acc), neg0)
        out[c0 : c0 + block.shape[1]] = (total / k).to(x.dtype)
    return out
