"""Distance-based selection: Krum, Multi-Krum and Bulyan.

All three work from the float64 matrix of squared pairwise distances
(:func:`privfl.defenses._common.pairwise_sq_distances`, ``O(n²)`` extra memory, never an
``[n, n, d]`` temporary). Non-finite rows are faulty: never selected, counted against ``f``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from privfl.core import Aggregator, check_updates
from privfl.defenses._common import (
    combine_rows,
    finite_gram_and_distances,
    median_window_mean,
    require,
)
from privfl.defenses._overflow import overflow_safe
from privfl.params import Int
from privfl.registry import register

__all__ = ["Krum", "MultiKrum", "Bulyan", "krum_scores"]


def krum_scores(D: Tensor, f: int, alive: Tensor | None = None) -> Tensor:
    """Krum scores from squared distances ``D`` (``[m, m]``): for each row, the sum of its squared
    distances to its ``r − f − 2`` nearest other rows, ``r`` the number of ``alive`` rows (all by
    default). Rows not alive score ``+inf``. A neighbourhood of size ``<= 0`` scores 0.
    """
    m = D.shape[0]
    if alive is None:
        alive = torch.ones(m, dtype=torch.bool, device=D.device)
    r = int(alive.sum())
    k = r - f - 2
    inf = torch.tensor(float("inf"), dtype=D.dtype, device=D.device)
    masked = torch.where(alive.unsqueeze(0) & alive.unsqueeze(1), D, inf)
    masked = masked + torch.diag(torch.full((m,), float("inf"), dtype=D.dtype, device=D.device))
    if k <= 0:
        scores = torch.zeros(m, dtype=D.dtype, device=D.device)
    else:
        scores = masked.topk(k, dim=1, largest=False).values.sum(dim=1)
    return torch.where(alive, scores, inf)


@register("aggregator", "krum")
class Krum(Aggregator):
    """Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

    Returns the row with the lowest score, the score of row ``i`` being the sum of its squared
    distances to its ``n − f − 2`` nearest other rows. Needs ``n > 2f + 2``. Ties: lowest row index.
    """

    name = "krum"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f + 2, rule="krum", n=n, f=self.f, need="n > 2f + 2")
        rows, f_left, _, _, D = finite_gram_and_distances(updates, self.f, rule="krum")
        scores = krum_scores(D, f_left)
        return rows[int(torch.argmin(scores))].clone()


@register("aggregator", "multi-krum")
class MultiKrum(Aggregator):
    """Multi-Krum (El Mhamdi, Guerraoui, Rouault, ICML 2018; Blanchard et al., NeurIPS 2017).

    Krum scores are computed once on all rows; the ``m`` rows with the lowest scores are averaged
    (unweighted). ``m`` defaults to ``n − f``; ``m = 1`` is Krum. Needs ``n > 2f + 2`` and
    ``1 <= m <= n − f``. Ties at the cut: lowest row index.
    """

    name = "multi-krum"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
        "m": Int(1, None, typical=(1, 3), optional=True),
    }

    def __init__(self, f: int = 0, m: int | None = None):
        self.f = f
        self.m = m

    @overflow_safe
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f + 2, rule="multi-krum", n=n, f=self.f, need="n > 2f + 2")
        m = n - self.f if self.m is None else self.m
        if m > n - self.f:
            raise ValueError(f"multi-krum: m must be in [1, n - f] = [1, {n - self.f}], got m={m} (n={n}, f={self.f})")
        rows, f_left, _, _, D = finite_gram_and_distances(updates, self.f, rule="multi-krum")
        scores = krum_scores(D, f_left)
        # stable sort: ties resolved by row index
        chosen = torch.sort(scores, stable=True).indices[:m]
        w = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
        w[chosen] = 1.0 / m
        return combine_rows(rows, w)


@register("aggregator", "bulyan")
class Bulyan(Aggregator):
    """Bulyan over Krum (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018).

    1. Select ``θ = n − 2f`` rows by iterated Krum: pick the Krum winner among the rows not yet
       selected (neighbourhood ``r − f − 2`` for ``r`` rows left), move it to the selection, repeat.
       Tied scores (the neighbourhood is empty in the last round when ``f = 1``) go to the row with
       the smallest sum of squared distances to the rows left.
    2. Per coordinate, average the ``β = θ − 2f`` selected values closest to the coordinate's median
       over the selection (the median as in :class:`~privfl.defenses.coordinatewise.Median`; at equal
       distances the smaller values are taken). Only the middle ranks this needs are ordered, by a
       sorting network on CPU (:func:`~privfl.defenses._common.median_window_mean`).

    Needs ``n ≥ 4f + 3``.
    """

    name = "bulyan"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    def select(self, D: Tensor, f: int, theta: int) -> Tensor:
        """Indices of the ``theta`` rows chosen by iterated Krum on squared distances ``D``.

        The rounds are sequential and tiny (``[m, m]``), so they run in numpy on a host copy of ``D``
        (torch's per-call overhead made them half a Gram matrix's time at d = 1e5, measured). Each
        row's distances are sorted once; a round's score sums the first ``r − f − 2`` entries still
        alive (``r`` rows left) — the same sums as :func:`krum_scores`, without re-sorting.
        """
        Dn = D.detach().to(device="cpu", dtype=torch.float64).numpy()
        m = Dn.shape[0]
        off = Dn.copy()
        np.fill_diagonal(off, np.inf)
        order = np.argsort(off, axis=1, kind="stable")
        near = np.take_along_axis(off, order, axis=1)  # each row's distances, ascending, itself last
        alive = np.ones(m, dtype=bool)
        chosen = []
        for t in range(theta):
            k = (m - t) - f - 2
            if k > 0:
                a = alive[order]
                scores = np.where(a & (np.cumsum(a, axis=1) <= k), near, 0.0).sum(axis=1)
            else:
                scores = np.zeros(m)
            scores = np.where(alive, scores, np.inf)
            # Ties (a neighbourhood of 0 rows in the last rounds when f = 1): prefer the row closest to
            # all remaining rows, so the choice does not depend on the rows' order.
            tied = scores <= scores.min() * (1 + 1e-12)
            total = np.where(alive[None, :], Dn, 0.0).sum(axis=1)
            i = int(np.argmin(np.where(tied & alive, total, np.inf)))
            chosen.append(i)
            alive[i] = False
        return torch.tensor(chosen, dtype=torch.int64, device=D.device)

    @overflow_safe
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n >= 4 * self.f + 3, rule="bulyan", n=n, f=self.f, need="n >= 4f + 3")
        rows, f_left, _, _, D = finite_gram_and_distances(updates, self.f, rule="bulyan")
        m = rows.shape[0]
        theta = m - 2 * f_left
        beta = theta - 2 * f_left
        if f_left == 0:  # θ = β = m: every row is selected and every value kept
            return combine_rows(rows, torch.full((m,), 1.0 / m, dtype=torch.float64))
        chosen = self.select(D, f_left, theta).sort().values
        return median_window_mean(rows, beta, rows=chosen)
