"""Numerical kernels shared across component families (defenses, attacks, evaluations).

A neutral module: it imports only torch, so any layer may use it without depending on another
component family (see docs/ARCHITECTURE.md, "Layering").

**Distances** (:func:`pairwise_sq_distances`) are float64. The products are taken in column chunks,
in float32 for float32 input (float64 for float64 input), and accumulated in float64: on the rows as
they are when a sample of ~2,048 columns predicts that accurate enough, otherwise on a copy centred
on the coordinate mean. Each squared distance then carries an a-posteriori error bound
``γ·(‖x̃_i‖ + ‖x̃_j‖)²`` (``x̃`` the rows as multiplied, ``γ = u·√chunk`` with ``u`` the unit roundoff,
about 100× the error measured on Gaussian data). When that bound exceeds ``1e-4`` of the distance
scale that matters for row ``i`` or ``j`` (its median distance to the others) — cancellation, e.g.
rows far from the origin, or a huge outlier dragging the mean far from the honest rows — the
products are recomputed centred on the coordinate mean, then on the most central row, and if still
needed (float32 input), in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "column_chunk",
    "gram_and_distances",
    "pairwise_sq_distances",
]

_TOL = 1e-4
_SAMPLE_COLUMNS = 2048


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------
# On a GPU one block of at most this many values (256 MB in float32): every column at once for the usual
# sizes (n = 50 rows up to d = 1.3e6), bounded extra memory for larger models.
_DEVICE_CHUNK_VALUES = 1 << 26


def column_chunk(x: Tensor, rows: int | None = None) -> int:
    """Columns per chunk: a few MB on CPU (cache-sized); on a GPU up to ``_DEVICE_CHUNK_VALUES`` values."""
    rows = rows or x.shape[0]
    if x.device.type != "cpu":
        return max(1, min(x.shape[1], _DEVICE_CHUNK_VALUES // max(1, rows)))
    return max(256, min(x.shape[1], (1 << 18) // max(1, rows)))


def _gram(x: Tensor, center: Tensor | None, work: torch.dtype, chunk: int, *, raw: bool = False) -> Tensor:
    """float64 Gram matrix of the rows of ``x`` minus ``center`` (the column mean when ``None``; nothing
    subtracted when ``raw``)."""
    n, d = x.shape
    G = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for lo in range(0, d, chunk):
        block = x[:, lo : lo + chunk].to(work)
        if not raw:
            block = block - (block.mean(dim=0) if center is None else center[lo : lo + chunk].to(work))
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


def _uncentred_suffices(x: Tensor, gamma: float) -> bool:
    """Whether uncentred products look accurate enough, by a margin of 2, on a sample of 2,048 columns
    in 32 evenly spaced runs (the error bound and the distances both grow linearly with the columns
    summed, so their ratio carries over to all of ``x``). Non-finite samples answer ``False``. Only a
    guess of which products to try first: the a-posteriori check on the full products still decides."""
    n, d = x.shape
    if n < 2:
        return True
    if d <= _SAMPLE_COLUMNS:
        s = x.to(accumulation_dtype(x.dtype))
    else:
        run = _SAMPLE_COLUMNS // 32
        s = torch.cat([x[:, i * (d // 32) : i * (d // 32) + run] for i in range(32)], dim=1)
        s = s.to(accumulation_dtype(x.dtype))
    norms = s.square().sum(dim=1).sqrt().to(torch.float64)
    c = s - s.mean(dim=0)  # centred: accurate enough in float32 for a prediction
    D = _distances((c @ c.T).to(torch.float64))
    scale = _row_scale(D)
    ref = torch.maximum(D, torch.minimum(scale.unsqueeze(0), scale.unsqueeze(1)))
    ok = gamma * (norms.unsqueeze(0) + norms.unsqueeze(1)) ** 2 <= 0.5 * _TOL * ref
    ok.fill_diagonal_(True)
    return bool(ok.all())


def _gram_and_distances(x: Tensor, precision: str) -> tuple[Tensor, Tensor] | None:
    """:func:`gram_and_distances`, or ``None`` when the first Gram matrix is not finite: ``x`` holds
    NaN/±Inf (uncentred: the faulty rows' diagonal entries are non-finite; mean-centred: every entry is,
    as a non-finite value makes its column's mean, hence the whole centred column, non-finite), or the
    products overflowed."""
    n, d = x.shape
    chunk = column_chunk(x)
    work = torch.float64 if (x.dtype == torch.float64 or precision == "float64") else torch.float32
    unit = 2.0**-53 if work == torch.float64 else 2.0**-24
    gamma = unit * math.sqrt(min(chunk, max(d, 1)))
    if _uncentred_suffices(x, gamma):  # saves the centring pass (~20% of the time, measured)
        G = _gram(x, None, work, chunk, raw=True)
        if not bool(torch.isfinite(G).all()):
            return None
        D = _distances(G)
        if _reliable(D, G, gamma):
            return G, D
    G = _gram(x, None, work, chunk)
    if not bool(torch.isfinite(G).all()):
        return None
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


def gram_and_distances(x: Tensor, *, precision: str = "auto") -> tuple[Tensor, Tensor]:
    """``(G, D)``: the float64 Gram matrix of the rows of ``x`` centred on a point ``c`` (the origin when
    the rows are near enough to it for the products to be accurate, else the column mean, or a central
    row when the mean is too far from the rows), and the float64 squared distances ``D``. ``x`` is
    ``[n, d]`` and finite.

    ``G`` serves rules that work with convex combinations ``z = Σ w_j x_j`` (``‖z − x_i‖² = wᵀGw −
    2(Gw)_i + G_ii`` whatever ``c``); its entries carry the same error bound as ``D``.
    Never builds an ``[n, n, d]`` temporary: extra memory is ``O(n² + n·chunk)``.
    ``precision="auto"`` follows the module's error-bounded scheme; ``"float64"`` forces float64 products
    (also taken when float32 products overflow).
    """
    if precision not in ("auto", "float64"):
        raise ValueError(f"precision must be 'auto' or 'float64', got {precision!r}")
    out = _gram_and_distances(x, precision)
    if out is None and precision != "float64":
        out = _gram_and_distances(x, "float64")
    if out is None:  # beyond float64's range: the plain products, non-finite entries and all
        G = _gram(x, None, torch.float64, column_chunk(x))
        out = G, _distances(G)
    return out


def pairwise_sq_distances(x: Tensor, *, precision: str = "auto") -> Tensor:
    """Squared Euclidean distances between the rows of ``x`` (``[n, d]``, finite) as float64 ``[n, n]``
    (see :func:`gram_and_distances`)."""
    return gram_and_distances(x, precision=precision)[1]
