"""Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.core import PreAggregator, check_updates
from privfl.defenses._common import (
    accumulation_dtype,
    check_f,
    nonfinite_rows,
    pairwise_sq_distances,
    require,
)
from privfl.registry import register

__all__ = ["NNM"]


@register("preaggregator", "nnm")
class NNM(PreAggregator):
    """Replace each row by the mean of its ``n − f`` nearest rows, itself included: ``[n, d] → [n, d]``.

    Then apply any aggregation rule with the same ``f``. Built from the float64 ``[n, n]`` distance
    matrix and one ``[n, n] × [n, d]`` product — never an ``[n, n − f, d]`` or ``[n, n, d]``
    temporary. Needs ``n > 2f``. Non-finite rows are never anyone's neighbour and are passed through
    unchanged (so the rule after NNM discards them and counts them against ``f``); more than ``f``
    of them is an error. Deterministic: ``generator`` is accepted for the contract and unused.
    """

    name = "nnm"

    def __init__(self, f: int = 0):
        self.f = check_f(f, rule="nnm")

    def mixing_matrix(self, D: Tensor, k: int) -> Tensor:
        """``W`` (``[m, m]``, float64) with ``1/k`` on each row's ``k`` nearest rows (itself included)."""
        m = D.shape[0]
        nearest = D.topk(k, dim=1, largest=False).indices
        W = torch.zeros(m, m, dtype=torch.float64, device=D.device)
        W.scatter_(1, nearest, 1.0 / k)
        return W

    def __call__(self, updates: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f, rule="nnm", n=n, f=self.f, need="n > 2f")
        bad = nonfinite_rows(updates)
        k_bad = int(bad.sum())
        if k_bad > self.f:
            rows = torch.nonzero(bad).flatten().tolist()
            raise ValueError(
                f"nnm: {k_bad} row(s) {rows[:10]} contain NaN or Inf but f={self.f}; a non-finite row is faulty and "
                "counts against f, so at most f rows may be non-finite"
            )
        acc = accumulation_dtype(updates.dtype)
        kept = torch.nonzero(~bad).flatten() if k_bad else None
        rows = updates if kept is None else updates.index_select(0, kept)
        W = self.mixing_matrix(pairwise_sq_distances(rows), n - self.f)
        mixed = (W.to(acc) @ rows.to(acc)).to(updates.dtype)
        if kept is None:
            return mixed
        out = updates.clone()
        out[kept] = mixed
        return out
