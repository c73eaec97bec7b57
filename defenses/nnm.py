"""Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.core import PreAggregator, check_updates
from privfl.defenses._common import (
    finite_gram_and_distances,
    mix_rows,
    require,
)
from privfl.params import Int
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
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

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
        # one pass for the distances, which also proves every row finite (or finds the faulty ones)
        rows, _, kept, _, D = finite_gram_and_distances(updates, self.f, rule="nnm")
        mixed = mix_rows(self.mixing_matrix(D, n - self.f), rows)
        if kept is None:
            return mixed
        out = updates.clone()
        out[kept] = mixed
        return out
