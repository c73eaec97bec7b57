"""Minimum-diameter averaging, MDA (El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely
Distributed Byzantine Machine Learning", PODC 2020; Rousseeuw's minimum-volume idea, 1985).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from privfl.core import Aggregator, check_updates
from privfl.defenses._common import (
    combine_rows,
    finite_part,
    pairwise_sq_distances,
    require,
)
from privfl.params import Int
from privfl.registry import register

__all__ = ["MDA"]


@register("aggregator", "mda")
class MDA(Aggregator):
    """Average of the ``n − f`` rows forming the subset of smallest diameter (exact search).

    Every subset of ``n − f`` rows is examined (``C(n, f)`` of them), so the search is guarded:
    more than ``max_subsets`` subsets raises a ``ValueError`` rather than running for hours.
    Several subsets often share the smallest diameter (the diameter is set by one pair); the tie is
    broken by the smallest sum of squared pairwise distances within the subset, then by row index,
    so the rule stays permutation-invariant. Needs ``n > 2f``.
    """

    name = "mda"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
        "max_subsets": Int(1, None, typical=(1, 1_000_000)),
    }

    def __init__(self, f: int = 0, max_subsets: int = 200_000):
        self.f = f
        self.max_subsets = max_subsets

    def subset(self, D: Tensor, f: int) -> Tensor:
        """Bool mask of the kept rows (``m − f`` of ``m``) for squared distances ``D``."""
        m = D.shape[0]
        keep = torch.ones(m, dtype=torch.bool, device=D.device)
        if f == 0:
            return keep
        count = math.comb(m, f)
        if count > self.max_subsets:
            raise ValueError(
                f"mda: the exact search visits C({m}, {f}) = {count:,} subsets, more than max_subsets="
                f"{self.max_subsets:,}; raise max_subsets (time grows linearly with it) or use another rule"
            )
        removed = torch.tensor(list(itertools.combinations(range(m), f)), dtype=torch.int64, device=D.device)
        step = max(1, (1 << 21) // (m * m))
        best_diam = torch.empty(count, dtype=torch.float64, device=D.device)
        best_sum = torch.empty(count, dtype=torch.float64, device=D.device)
        for lo in range(0, count, step):
            r = removed[lo : lo + step]
            kept = torch.ones(len(r), m, dtype=torch.bool, device=D.device)
            kept.scatter_(1, r, False)
            pair = kept.unsqueeze(2) & kept.unsqueeze(1)
            Dk = D.unsqueeze(0) * pair
            best_diam[lo : lo + step] = Dk.amax(dim=(1, 2))
            best_sum[lo : lo + step] = Dk.sum(dim=(1, 2))
        diam_min = best_diam.min()
        tied = best_diam <= diam_min * (1 + 1e-12)
        choice = int(torch.argmin(torch.where(tied, best_sum, torch.full_like(best_sum, float("inf")))))
        keep[removed[choice]] = False
        return keep

    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f, rule="mda", n=n, f=self.f, need="n > 2f")
        rows, f_left, _ = finite_part(updates, self.f, rule="mda")
        keep = self.subset(pairwise_sq_distances(rows), f_left) if f_left else None
        m = rows.shape[0]
        w = torch.full((m,), 1.0 / m, dtype=torch.float64, device=rows.device)
        if keep is not None:
            w = keep.to(torch.float64) / float(keep.sum())
        return combine_rows(rows, w)
