"""Machinery shared by the robust rules: argument checks, the non-finite policy, distances, sorted columns.

**Non-finite policy** (every rule in :mod:`privfl.defenses`): a row holding NaN or ±Inf is faulty. It is
never selected and never averaged, and it counts against the declared ``f``: a rule with ``f`` declared
that receives ``k`` non-finite rows runs on the ``n − k`` finite rows with ``f − k`` faulty ones left.
More than ``f`` non-finite rows is a ``ValueError``. Pre-aggregators and mixing pass non-finite rows
through unchanged (so the rule after them still sees, and discards, them) and never mix them into
finite rows.

**Distances** (:func:`pairwise_sq_distances`) are float64. The products are taken on a copy centred
on the coordinate mean, in column chunks, in float32 for float32 input (float64 for float64 input),
and accumulated in float64. Each squared distance then carries an a-posteriori error bound
``γ·(‖x̃_i‖ + ‖x̃_j‖)²`` (``x̃`` centred rows, ``γ = u·√chunk`` with ``u`` the unit roundoff, about
100× the error measured on Gaussian data). When that bound exceeds ``1e-4`` of the distance scale
that matters for row ``i`` or ``j`` (its median distance to the others) — cancellation, e.g. a huge
outlier dragging the mean far from the honest rows — the products are recomputed centred on the
most central row, and if still needed (float32 input), in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privfl.core import check_updates

__all__ = [
    "check_f",
    "check_int",
    "check_positive_float",
    "require",
    "nonfinite_rows",
    "finite_part",
    "pairwise_sq_distances",
    "gram_and_distances",
    "sorted_column_reduce",
    "column_chunk",
    "accumulation_dtype",
    "window_mean_closest",
    "row_median",
    "combine_rows",
]

_TOL = 1e-4


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def check_int(name: str, value: object, *, minimum: int, rule: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{rule}: {name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{rule}: {name} must be an int >= {minimum}, got {value}")
    return value


def check_f(f: object, *, rule: str) -> int:
    """``f``: the declared number of faulty inputs, an int >= 0."""
    return check_int("f", f, minimum=0, rule=rule)


def check_positive_float(name: str, value: object, *, rule: str, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{rule}: {name} must be a finite number > 0, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{rule}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


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


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------
def column_chunk(x: Tensor, rows: int | None = None) -> int:
    """Columns per chunk: a few MB on CPU (cache-sized), everything at once on a GPU."""
    if x.device.type != "cpu":
        return max(1, x.shape[1])
    rows = rows or x.shape[0]
    return max(256, min(x.shape[1], (1 << 18) // max(1, rows)))


def _gram(x: Tensor, center: Tensor | None, work: torch.dtype, chunk: int) -> Tensor:
    """float64 Gram matrix of the rows of ``x`` minus ``center`` (the column mean when ``None``)."""
    n, d = x.shape
    G = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for lo in range(0, d, chunk):
        block = x[:, lo : lo + chunk].to(work)
        c = block.mean(dim=0) if center is None else center[lo : lo + chunk].to(work)
        block = block - c
        G += (block @ block.T).to(torch.float64)
    return G


def _distances(G: Tensor) -> Tensor:
    r = G.diagonal()
    D = (r.unsqueeze(0) + r.unsqueeze(1) - 2.0 * G).clamp_min_(0.0)
    D = 0.5 * (D + D.T)  # exactly symmetric
    D.fill_diagonal_(0.0)
    return D


def _row_scale(D: Tensor) -> Tensor:
    """Per row, the median distance to the others: the scale at which decisions about the row are made."""
    n = D.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=D.dtype, device=D.device)
    off = D + torch.diag(torch.full((n,), float("inf"), dtype=D.dtype, device=D.device))
    return off.sort(dim=1).values[:, (n - 2) // 2]


def _reliable(D: Tensor, G: Tensor, gamma: float) -> bool:
    if gamma == 0.0 or D.shape[0] < 2:
        return True
    norms = G.diagonal().clamp_min(0.0).sqrt()
    err = gamma * (norms.unsqueeze(0) + norms.unsqueeze(1)) ** 2
    scale = _row_scale(D)
    ref = torch.maximum(D, torch.minimum(scale.unsqueeze(0), scale.unsqueeze(1)))
    ok = err <= _TOL * ref
    ok.fill_diagonal_(True)
    return bool(ok.all())


def gram_and_distances(x: Tensor, *, precision: str = "auto") -> tuple[Tensor, Tensor]:
    """``(G, D)``: the float64 Gram matrix of the rows of ``x`` centred on a point ``c`` (the column mean,
    or a central row when the mean is too far from the rows for the products to be accurate), and the
    float64 squared distances ``D``. ``x`` is ``[n, d]`` and finite.

    ``G`` serves rules that work with convex combinations ``z = Σ w_j x_j`` (``‖z − x_i‖² = wᵀGw −
    2(Gw)_i + G_ii`` whatever ``c``); its entries carry the same error bound as ``D``.
    Never builds an ``[n, n, d]`` temporary: extra memory is ``O(n² + n·chunk)``.
    ``precision="auto"`` follows the module's error-bounded scheme; ``"float64"`` forces float64 products.
    """
    if precision not in ("auto", "float64"):
        raise ValueError(f"precision must be 'auto' or 'float64', got {precision!r}")
    n, d = x.shape
    chunk = column_chunk(x)
    work = torch.float64 if (x.dtype == torch.float64 or precision == "float64") else torch.float32
    unit = 2.0**-53 if work == torch.float64 else 2.0**-24
    gamma = unit * math.sqrt(min(chunk, max(d, 1)))
    G = _gram(x, None, work, chunk)
    D = _distances(G)
    if _reliable(D, G, gamma):
        return G, D
    center = x[int(torch.argmin(_row_scale(D)))]
    G = _gram(x, center, work, chunk)
    D = _distances(G)
    if work == torch.float64 or _reliable(D, G, gamma):
        return G, D
    G = _gram(x, center, torch.float64, chunk)
    return G, _distances(G)


def pairwise_sq_distances(x: Tensor, *, precision: str = "auto") -> Tensor:
    """Squared Euclidean distances between the rows of ``x`` (``[n, d]``, finite) as float64 ``[n, n]``
    (see :func:`gram_and_distances`)."""
    return gram_and_distances(x, precision=precision)[1]


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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise."""
    return torch.promote_types(dtype, torch.float32)


def window_mean_closest(sorted_vals: Tensor, center: Tensor, k: int) -> Tensor:
    """Per row of ``sorted_vals`` (``[c, m]``, ascending), the mean of the ``k`` values closest to ``center``.

    The ``k`` values nearest a point form a contiguous window of the sorted row; the window whose
    farthest element is nearest wins (ties: the leftmost window). Exact, no data-dependent loop.
    """
    c, m = sorted_vals.shape
    acc = accumulation_dtype(sorted_vals.dtype)
    vals = sorted_vals.to(acc)
    cen = center.to(acc).unsqueeze(1)
    starts = m - k + 1
    left = cen - vals[:, :starts]  # distance of each window's first element (>= 0 when it lies left)
    right = vals[:, k - 1 :] - cen
    cost = torch.maximum(left, right)  # [c, starts]: farthest element of each window
    best = cost.argmin(dim=1, keepdim=True)
    # gather the window itself (no prefix-sum differences: a far value outside the window would
    # otherwise cancel catastrophically)
    window = vals.gather(1, best + torch.arange(k, device=vals.device).unsqueeze(0))
    return window.mean(dim=1).to(sorted_vals.dtype)


def row_median(sorted_vals: Tensor) -> Tensor:
    """Median of each sorted row (mean of the two middle values for an even count)."""
    m = sorted_vals.shape[1]
    if m % 2:
        return sorted_vals[:, m // 2]
    acc = accumulation_dtype(sorted_vals.dtype)
    return ((sorted_vals[:, m // 2 - 1].to(acc) + sorted_vals[:, m // 2].to(acc)) / 2).to(sorted_vals.dtype)


def combine_rows(rows: Tensor, weights: Tensor) -> Tensor:
    """``Σ_i weights[i]·rows[i]`` (``[m] × [m, d] → [d]``) in at least float32, returned in ``rows.dtype``."""
    acc = accumulation_dtype(rows.dtype)
    return (weights.to(device=rows.device, dtype=acc) @ rows.to(acc)).to(rows.dtype)
