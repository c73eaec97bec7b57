"""Norm clipping before aggregation: static clipping and ARC, adaptive robust clipping (Allouah,
Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Adaptive Gradient Clipping for Robust Federated
Learning", ICLR 2025; arXiv:2405.14432, whose 2024 versions were titled "The Vital Role of Gradient
Clipping in Byzantine-Resilient Distributed Learning").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privfl.core import PreAggregator, check_updates
from privfl.defenses._common import nonfinite_rows, require
from privfl.params import Int, Real
from privfl.registry import register

__all__ = ["StaticClipping", "ARC"]


def _row_norms(updates: Tensor) -> Tensor:
    """float64 row norms: computed in the input dtype (fast), rows that overflowed redone in float64."""
    norms = torch.linalg.vector_norm(updates, dim=1).to(torch.float64)
    redo = torch.isinf(norms) & torch.isfinite(updates).all(dim=1) if bool(torch.isinf(norms).any()) else None
    if redo is not None and bool(redo.any()):
        idx = torch.nonzero(redo).flatten()
        norms[idx] = torch.linalg.vector_norm(updates[idx].to(torch.float64), dim=1)
    return norms


def _scale_rows(updates: Tensor, scale: Tensor) -> Tensor:
    """``scale[i] · updates[i]`` as a new tensor (a factor of exactly 1 leaves a row bit-identical)."""
    return updates * scale.to(updates.dtype).unsqueeze(1)


@register("preaggregator", "clipping")
class StaticClipping(PreAggregator):
    """Static norm clipping: ``x_i ← x_i · min(1, τ/‖x_i‖)`` for every row, ``[n, d] → [n, d]``.

    ``τ`` (``tau``) is in the units of the updates. Non-finite rows pass through unchanged (the rule
    after clipping discards them). Deterministic: ``generator`` is unused.
    """

    name = "clipping"
    param_space = {
        "tau": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
    }

    def __init__(self, tau: float = 1.0):
        self.tau = float(tau)

    def __call__(self, updates: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        check_updates(updates)
        norms = _row_norms(updates)
        scale = torch.where(norms > self.tau, self.tau / norms, torch.ones_like(norms))
        scale = torch.where(torch.isfinite(norms), scale, torch.ones_like(norms))
        return _scale_rows(updates, scale)


@register("preaggregator", "arc")
class ARC(PreAggregator):
    """Adaptive robust clipping: the ``k = ⌊2(f/n)(n − f)⌋`` rows of largest norm are clipped to the
    norm of the ``(k + 1)``-th largest; the others are unchanged. ``[n, d] → [n, d]``.

    Needs ``n > 2f``. Non-finite rows pass through unchanged and count against ``f``: with ``b`` of
    them, ``k`` is computed for the ``n − b`` finite rows and ``f − b``. Ties in norm: lowest index
    first. Deterministic: ``generator`` is unused.
    """

    name = "arc"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    @staticmethod
    def clipped_count(n: int, f: int) -> int:
        """``k = ⌊2(f/n)(n − f)⌋`` (computed in integers: ``⌊2f(n − f)/n⌋``)."""
        return (2 * f * (n - f)) // n if n else 0

    def __call__(self, updates: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f, rule="arc", n=n, f=self.f, need="n > 2f")
        bad = nonfinite_rows(updates)
        b = int(bad.sum())
        if b > self.f:
            raise ValueError(
                f"arc: {b} row(s) contain NaN or Inf but f={self.f}; a non-finite row is faulty and counts "
                "against f, so at most f rows may be non-finite"
            )
        m, f_left = n - b, self.f - b
        k = self.clipped_count(m, f_left)
        if k == 0:
            return updates.clone()
        norms = _row_norms(updates)
        finite_norms = torch.where(bad, torch.full_like(norms, -math.inf), norms)
        order = torch.sort(finite_norms, descending=True, stable=True).indices
        threshold = finite_norms[order[k]]
        scale = torch.ones_like(norms)
        top = order[:k]
        scale[top] = torch.where(norms[top] > threshold, threshold / norms[top], torch.ones_like(norms[top]))
        return _scale_rows(updates, scale)
