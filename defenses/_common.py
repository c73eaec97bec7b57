"""Machinery shared by the robust rules: the n/f requirement, the non-finite policy, sorted columns.

Distances and the accumulation dtype live in the neutral :mod:`privfl.kernels` (attacks use them too);
they are re-exported here for the rules.

**Non-finite policy** (every rule in :mod:`privfl.defenses`): a row holding NaN or ±Inf is faulty. It is
never selected and never averaged, and it counts against the declared ``f``: a rule with ``f`` declared
that receives ``k`` non-finite rows runs on the ``n − k`` finite rows with ``f − k`` faulty ones left.
More than ``f`` non-finite rows is a ``ValueError``. Pre-aggregators and mixing pass non-finite rows
through unchanged (so the rule after them still sees, and discards, them) and never mix them into
finite rows.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from privfl.core import check_updates
from privfl.kernels import (  # noqa: F401  (re-exported: the rules import them from here)
    _gram_and_distances,
    accumulation_dtype,
    column_chunk,
    gram_and_distances,
    pairwise_sq_distances,
)

__all__ = [
    "require",
    "nonfinite_rows",
    "finite_part",
    "pairwise_sq_distances",
    "gram_and_distances",
    "finite_gram_and_distances",
    "median_window_mean",
    "sorted_column_reduce",
    "column_chunk",
    "accumulation_dtype",
    "window_mean_closest",
    "row_median",
    "sorted_ranks",
    "combine_rows",
    "mix_rows",
]


# --------------------------------------------------------------------------------------------
# The rules' own n/f requirements (constructor parameters are checked from param_space)
# --------------------------------------------------------------------------------------------
def require(ok: bool, *, rule: str, n: int, f: int, need: str, f_name: str = "f", note: str = "") -> None:
    """Raise the rule's own requirement on ``n`` and ``f`` (e.g. ``need="n > 2f + 2"``)."""
    if not ok:
        raise ValueError(f"{rule}: needs {need}, got n={n} rows and {f_name}={f}{note}")


# --------------------------------------------------------------------------------------------
# Non-finite policy
# --------------------------------------------------------------------------------------------
def nonfinite_rows(updates: Tensor) -> Tensor:
    """Bool ``[n]``: rows holding NaN or ±Inf.

    One cheap pass (row sums: a row with a NaN/Inf has a non-finite sum); rows whose sum is not
    finite are then checked exactly, since a sum of huge finite values may overflow.
    """
    sums = updates.sum(dim=1)
    suspect = ~torch.isfinite(sums)
    if not bool(suspect.any()):
        return suspect
    idx = torch.nonzero(suspect).flatten()
    exact = ~torch.isfinite(updates.index_select(0, idx)).all(dim=1)
    out = torch.zeros_like(suspect)
    out[idx] = exact
    return out


def finite_part(updates: Tensor, f: int, *, rule: str, min_rows: int = 1) -> tuple[Tensor, int, Tensor | None]:
    """Validate ``updates`` and apply the non-finite policy.

    Returns ``(rows, f_left, kept)``: the finite rows (``updates`` itself, not a copy, when every row is
    finite), the faulty count left for them, and the kept row indices (``None`` when all are kept).
    """
    check_updates(updates, min_rows=min_rows)
    bad = nonfinite_rows(updates)
    k = int(bad.sum())
    if k == 0:
        return updates, f, None
    if k > f:
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"{rule}: {k} row(s) {rows[:10]} contain NaN or Inf but f={f}; a non-finite row is faulty and "
            f"counts against f, so at most f rows may be non-finite"
        )
    kept = torch.nonzero(~bad).flatten()
    return updates.index_select(0, kept), f - k, kept


def finite_gram_and_distances(
    updates: Tensor, f: int, *, rule: str, min_rows: int = 1
) -> tuple[Tensor, int, Tensor | None, Tensor, Tensor]:
    """:func:`finite_part` and :func:`gram_and_distances` of the finite rows, in one pass over ``updates``
    when every row is finite (a finite Gram matrix proves it: a NaN/±Inf makes its row's diagonal entry
    non-finite; otherwise the rows are checked and the Gram matrix recomputed on the finite ones).
    Returns ``(rows, f_left, kept, G, D)``."""
    check_updates(updates, min_rows=min_rows)
    out = _gram_and_distances(updates, "auto")
    if out is not None:
        return updates, f, None, *out
    rows, f_left, kept = finite_part(updates, f, rule=rule, min_rows=min_rows)
    return rows, f_left, kept, *gram_and_distances(rows)


# --------------------------------------------------------------------------------------------
# Coordinate-wise rules: sorted columns, chunk by chunk
# --------------------------------------------------------------------------------------------
def sorted_column_reduce(
    x: Tensor, reduce, *, out_dtype: torch.dtype | None = None, rows: Tensor | None = None
) -> Tensor:
    """``reduce(S)`` for ``S`` the column chunks of ``x`` sorted per coordinate, as ``[chunk, n]`` rows.

    Sorting a transposed contiguous chunk is ~2.5× faster on CPU than ``torch.sort`` along dim 0 and
    keeps the extra memory at ``O(n·chunk)``. ``reduce`` maps ``[c, n]`` sorted values to ``[c]``.
    ``rows`` (indices) restricts the work to those rows without copying the others.
    """
    n, d = x.shape
    out = torch.empty(d, dtype=out_dtype or x.dtype, device=x.device)
    chunk = column_chunk(x, None if rows is None else len(rows))
    for lo in range(0, d, chunk):
        block = x[:, lo : lo + chunk]
        if rows is not None:
            block = block.index_select(0, rows)
        block = block.T.contiguous().sort(dim=1).values
        out[lo : lo + chunk] = reduce(block)
    return out


def window_mean_closest(sorted_vals: Tensor, center: Tensor, k: int) -> Tensor:
    """Per row of ``sorted_vals`` (``[c, m]``, ascending), the mean of the ``k`` values closest to ``center``;
    at equal distances the smaller values are taken.

    The ``k`` values nearest a point form a contiguous window ``[a, a + k)`` of the sorted row. Sliding
    the window one step right swaps ``s_a`` for ``s_{a+k}``, worth it exactly when ``s_{a+k}`` is strictly
    closer: ``center − s_a > s_{a+k} − center``. That test holds for a prefix of the positions (its left
    side falls and its right side grows with ``a``), so the window starts at the number of positions
    where it holds. Exact, no data-dependent loop. (Taking the window whose farthest element is nearest
    is not enough: with a repeated value at the far end, two windows tie on it, and the leftmost may
    drop a strictly closer value.)
    """
    c, m = sorted_vals.shape
    acc = accumulation_dtype(sorted_vals.dtype)
    vals = sorted_vals.to(acc)
    cen = center.to(acc).unsqueeze(1)
    start = ((cen - vals[:, : m - k]) > (vals[:, k:] - cen)).sum(dim=1, keepdim=True)
    # gather the window itself (no prefix-sum differences: a far value outside the window would
    # otherwise cancel catastrophically)
    window = vals.gather(1, start + torch.arange(k, device=vals.device).unsqueeze(0))
    return window.mean(dim=1).to(sorted_vals.dtype)


def row_median(sorted_vals: Tensor) -> Tensor:
    """Median of each sorted row (mean of the two middle values for an even count)."""
    m = sorted_vals.shape[1]
    if m % 2:
        return sorted_vals[:, m // 2]
    acc = accumulation_dtype(sorted_vals.dtype)
    return ((sorted_vals[:, m // 2 - 1].to(acc) + sorted_vals[:, m // 2].to(acc)) / 2).to(sorted_vals.dtype)


# Sorting networks beat torch.sort on CPU for the few values per coordinate that robust rules sort: each
# comparator is two elementwise ops on whole rows of a cache-sized [m, chunk] block (~12× faster than
# sorting the transposed block for m = 30, measured). Beyond this many rows torch.sort is used.
_NETWORK_MAX_ROWS = 128
_NETWORK_CHUNK = 1 << 20  # values per block (4 MB in float32): fastest of 2^17..2^22 for m = 30, measured


@functools.lru_cache(maxsize=64)
def _selection_network(m: int, lo: int, hi: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Batcher's odd–even merge sort on ``m`` wires (Knuth, TAOCP vol. 3, §5.3.4; comparators touching
    the wires added to reach a power of two dropped — they hold +∞), pruned to what ranks ``lo..hi``
    need: ``(i, j, min_needed, max_needed)``, the minimum going to wire ``i < j``."""
    pairs = []
    p = 1
    while p < m:
        k = p
        while k >= 1:
            for j in range(k % p, m - k, 2 * k):
                for i in range(min(k, m - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed = set(range(lo, hi + 1))
    kept = []
    for i, j in reversed(pairs):
        a, b = i in needed, j in needed
        if a or b:
            needed |= {i, j}
            kept.append((i, j, a, b))
    return tuple(reversed(kept))


def _network_ranks(sources: list[Tensor], lo: int, hi: int) -> Tensor:
    """Ranks ``lo..hi`` of ``sources`` (``m`` equal-length 1-D tensors, finite, left untouched) by the
    pruned network: ``[hi − lo + 1, c]``. A wire is copied into a scratch row only when a comparator
    first writes it (so the first layer reads the input directly)."""
    m = len(sources)
    scratch = list(torch.empty(m + 1, sources[0].shape[0], dtype=sources[0].dtype, device=sources[0].device).unbind(0))
    wires = list(sources)
    own = [False] * m  # wire i lives in a scratch row
    for i, j, need_min, need_max in _selection_network(m, lo, hi):
        a, b = wires[i], wires[j]
        if need_min:
            t = scratch.pop()
            torch.minimum(a, b, out=t)
        if need_max:
            if own[j]:
                torch.maximum(a, b, out=b)
            else:
                wires[j] = torch.maximum(a, b, out=scratch.pop())
                own[j] = True
        if need_min:
            if own[i]:
                scratch.append(a)
            wires[i] = t
            own[i] = True
    return torch.stack(wires[lo : hi + 1])


def sorted_ranks(block: Tensor, lo: int, hi: int) -> Tensor:
    """Ranks ``lo..hi`` (inclusive) of each column of ``block`` (``[m, c]``, finite), ascending:
    ``[hi − lo + 1, c]``. CPU with at most 128 rows: a sorting network pruned to those ranks (Batcher's
    odd–even merge sort); more rows on CPU: ``torch.sort`` of the transposed block; other devices:
    ``torch.sort`` along dim 0. ``block`` is not modified.
    """
    m = block.shape[0]
    if block.device.type != "cpu":
        return block.sort(dim=0).values[lo : hi + 1]
    if m > _NETWORK_MAX_ROWS:
        return block.T.contiguous().sort(dim=1).values[:, lo : hi + 1].T
    return _network_ranks(list(block.unbind(0)), lo, hi)


def median_window_mean(x: Tensor, k: int, *, rows: Tensor | None = None) -> Tensor:
    """Per coordinate, the mean of the ``k`` values closest to the coordinate's median (as in
    :func:`row_median`; at equal distances the smaller values): ``[m, d] → [d]``, ``x`` finite, over
    ``rows`` (indices) when given. Same result as :func:`window_mean_closest` on fully sorted columns.

    With ``h = ⌊m/2⌋`` the window ``[a, a + k)`` of the sorted column starts in ``[a₀, a₁] = [max(0, h − k),
    min(h, m − k)]`` (further left the median lies strictly right of the window's end, further right
    it lies left of its start — up to values equal to the median, which leave the mean unchanged), so
    only ranks ``a₀ .. a₁ + k − 1`` are ordered. With ``P(a)``: "``s_{a+k}`` is strictly closer than
    ``s_a``" (true on a prefix of ``[a₀, a₁)``, see :func:`window_mean_closest`), the window holds, for
    each ``a`` in ``[a₀, a₁)``, exactly one of ``s_a`` (``P(a)`` false) and ``s_{a+k}`` (``P(a)`` true),
    plus the ranks ``[a₁, a₀ + k)``: a sum of selected values, no gather and no differences of values.
    Column chunks are cache-sized on CPU, up to ``privfl.kernels._DEVICE_CHUNK_VALUES`` values on other devices; extra
    memory ``O(m·chunk)``.
    """
    m = x.shape[0] if rows is None else len(rows)
    d = x.shape[1]
    acc = accumulation_dtype(x.dtype)
    h = m // 2
    a0, a1 = max(0, h - k), min(h, m - k)
    lo, hi = a0, a1 + k - 1  # ranks needed; S[r] below is rank lo + r
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    chunk = column_chunk(x, m) if x.device.type != "cpu" else max(256, min(d, _NETWORK_CHUNK // max(1, m)))
    network = x.device.type == "cpu" and m <= _NETWORK_MAX_ROWS
    picked = list(range(m)) if rows is None else [int(r) for r in rows]
    for c0 in range(0, d, chunk):
        block = x[:, c0 : c0 + chunk]
        if network:  # reads the rows in place: no gathered copy
            parts = block.unbind(0)
            S = _network_ranks([parts[r] for r in picked], lo, hi)
        else:
            S = sorted_ranks(block if rows is None else block.index_select(0, rows), lo, hi)
        if m % 2:
            med = S[h - lo].to(acc)
        else:
            med = ((S[h - 1 - lo].to(acc) + S[h - lo].to(acc)) / 2).to(x.dtype).to(acc)
        left, right = S[: a1 - a0].to(acc), S[k : a1 - a0 + k].to(acc)
        total = torch.where((med - left) > (right - med), right, left).sum(dim=0)
        if a0 + k > a1:
            total += S[a1 - a0 : k].to(acc).sum(dim=0)
        out[c0 : c0 + chunk] = (total / k).to(x.dtype)
    return out


def combine_rows(rows: Tensor, weights: Tensor) -> Tensor:
    """``Σ_i weights[i]·rows[i]`` (``[m] × [m, d] → [d]``) in at least float32, returned in ``rows.dtype``."""
    acc = accumulation_dtype(rows.dtype)
    return (weights.to(device=rows.device, dtype=acc) @ rows.to(acc)).to(rows.dtype)


def mix_rows(weights: Tensor, x: Tensor) -> Tensor:
    """``weights @ x`` (``[m, n] × [n, d] → [m, d]``) computed in at least float32, returned in ``x.dtype``.

    On CPU the product runs on column chunks written straight into the output (``x[:, chunk]`` and its
    output chunk stay in cache): the multiplication itself ran ~2× faster than one ``[m, n] × [n, d]``
    GEMM for n = 50, d = 1e6 (measured into an already-touched output); a fresh output's first touch
    (page faults, zeroing) costs the same either way.
    """
    acc = accumulation_dtype(x.dtype)
    w = weights.to(device=x.device, dtype=acc)
    if x.device.type != "cpu":
        return (w @ x.to(acc)).to(x.dtype)
    m, d = w.shape[0], x.shape[1]
    out = torch.empty(m, d, dtype=x.dtype, device=x.device)
    chunk = max(256, min(d, (1 << 17) // max(1, m, x.shape[0])))
    for lo in range(0, d, chunk):
        if acc == x.dtype:
            torch.mm(w, x[:, lo : lo + chunk], out=out[:, lo : lo + chunk])
        else:
            out[:, lo : lo + chunk] = w @ x[:, lo : lo + chunk].to(acc)
    return out
