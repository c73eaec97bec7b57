"""Nearest-neighbour averaging, NNA: the mixing step of MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang,
Pinot, Stephan, "Robust Collaborative Learning with Linear Gradient Overhead", ICML 2023).

The MoNNA protocol itself (local Polyak momentum, exchange over a graph, NNA) runs in
:mod:`privfl.fl.decentralized`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.core import Mixing, check_updates
from privfl.defenses._common import accumulation_dtype, nonfinite_rows, pairwise_sq_distances
from privfl.params import Int
from privfl.registry import register

__all__ = ["NNA"]


@register("mixing", "nna")
class NNA(Mixing):
    """Each node averages the ``r_i − f`` received models closest to its own, ``r_i`` being the number
    of models it receives (its own included): ``[n, d] → [n, d]``.

    ``adjacency[i, j]`` (bool ``[n, n]``) says node ``i`` receives node ``j``'s model; the diagonal is
    always taken as true (a node has its own model); ``None`` is the complete graph. The counts are
    the paper's: in its algorithm and experiments (the authors' code) a node receives ``n − f``
    models — its own, ``n − 2f − 1`` other honest ones drawn at random and all ``f`` Byzantine ones —
    and averages the ``n − 2f`` closest to its own; on the complete graph a node receives all ``n``
    and averages ``n − f``. Distances are float64 (:mod:`privfl.defenses._common`).

    Non-finite models are faulty: never selected, counted against ``f`` per receiving node (more than
    ``f`` received → ``ValueError``). A node whose own model is non-finite is itself faulty: its row is
    returned unchanged. Needs ``r_i > f`` for every node with a finite model.
    """

    name = "nna"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    def _adjacency(self, adjacency: Tensor | None, n: int, device: torch.device) -> Tensor:
        if adjacency is None:
            return torch.ones(n, n, dtype=torch.bool, device=device)
        if not isinstance(adjacency, Tensor):
            raise TypeError(
                f"nna: adjacency must be a bool tensor of shape [n, n] or None, got {type(adjacency).__name__}"
            )
        if adjacency.shape != (n, n):
            raise ValueError(f"nna: adjacency must have shape [{n}, {n}] for {n} models, got {tuple(adjacency.shape)}")
        if adjacency.dtype != torch.bool:
            zero_one = bool(((adjacency == 0) | (adjacency == 1)).all())
            if adjacency.is_floating_point() or adjacency.is_complex() or not zero_one:
                raise ValueError("nna: adjacency must be boolean (or 0/1 integers)")
            adjacency = adjacency != 0
        adjacency = adjacency.to(device).clone()
        adjacency.fill_diagonal_(True)
        return adjacency

    def weights(self, D: Tensor, adjacency: Tensor, bad: Tensor) -> Tensor:
        """Mixing matrix ``W`` (``[n, n]`` float64, rows sum to 1 for finite nodes, 0 for faulty ones)."""
        n = D.shape[0]
        usable = adjacency & ~bad.unsqueeze(0)
        received = adjacency.sum(dim=1)
        bad_received = (adjacency & bad.unsqueeze(0)).sum(dim=1)
        own_ok = ~bad
        over = own_ok & (bad_received > self.f)
        if bool(over.any()):
            i = int(torch.nonzero(over)[0])
            raise ValueError(
                f"nna: node {i} received {int(bad_received[i])} non-finite model(s) but f={self.f}; a non-finite "
                "model is faulty and counts against f"
            )
        keep = received - self.f
        short = own_ok & (keep < 1)
        if bool(short.any()):
            i = int(torch.nonzero(short)[0])
            raise ValueError(
                f"nna: node {i} receives {int(received[i])} model(s) (its own included) but needs more than f={self.f}"
            )
        masked = torch.where(usable, D, torch.full_like(D, float("inf")))
        order = masked.argsort(dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n, device=D.device).expand(n, n).contiguous())
        chosen = (rank < keep.unsqueeze(1)) & usable & own_ok.unsqueeze(1)
        return chosen.to(torch.float64) / keep.clamp_min(1).unsqueeze(1).to(torch.float64)

    def __call__(self, models: Tensor, *, adjacency: Tensor | None = None) -> Tensor:
        check_updates(models, name="models")
        n = models.shape[0]
        adj = self._adjacency(adjacency, n, models.device)
        bad = nonfinite_rows(models)
        finite = torch.nonzero(~bad).flatten()
        D = torch.full((n, n), float("inf"), dtype=torch.float64, device=models.device)
        rows = models.index_select(0, finite) if len(finite) < n else models
        if len(finite):
            D[finite.unsqueeze(1), finite.unsqueeze(0)] = pairwise_sq_distances(rows)
        W = self.weights(D, adj, bad)
        acc = accumulation_dtype(models.dtype)
        mixed = (W[:, finite].to(acc) @ rows.to(acc)).to(models.dtype)
        if bool(bad.any()):
            mixed[bad] = models[bad]
        return mixed
