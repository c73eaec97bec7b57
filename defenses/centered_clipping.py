"""Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from privfl.core import Aggregator, check_updates
from privfl.defenses._common import (
    accumulation_dtype,
    check_f,
    check_int,
    check_positive_float,
    column_chunk,
    finite_part,
    require,
)
from privfl.params import Int, Real
from privfl.registry import register

__all__ = ["CenteredClipping"]


@register("aggregator", "centered-clipping")
class CenteredClipping(Aggregator):
    """``v ← v + (1/n) Σ_i (x_i − v)·min(1, τ/‖x_i − v‖)``, ``iterations`` (L) times, from ``v₀``.

    ``v₀`` is the previous aggregate, held in explicit state (:attr:`center`, zero before the first
    call; :meth:`reset` clears it, :meth:`state_dict`/:meth:`load_state_dict` save and restore it).
    The paper pairs the rule with worker momentum (``worker_momentum`` in a Scenario). Defaults
    ``tau=100, iterations=1`` are the authors' experimental settings (their code's ``Clipping(tau=100,
    n_iter=1)``); ``τ`` is in the units of the updates, so tune it to their scale. Needs ``n > 2f``.
    Non-finite rows are dropped (counted against ``f``) and the mean runs over the finite rows.
    """

    name = "centered-clipping"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
        "tau": Real(0, None, lo_open=True, log=True, typical=(0.1, 1000.0)),
        "iterations": Int(1, None, typical=(1, 5)),
    }

    def __init__(self, f: int = 0, tau: float = 100.0, iterations: int = 1):
        self.f = check_f(f, rule="centered-clipping")
        self.tau = check_positive_float("tau", tau, rule="centered-clipping")
        self.iterations = check_int("iterations", iterations, minimum=1, rule="centered-clipping")
        self.center: Tensor | None = None

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the previous aggregate: the next call starts from ``v₀ = 0``."""
        self.center = None

    def state_dict(self) -> dict[str, Any]:
        return {"center": None if self.center is None else self.center.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        center = state.get("center") if isinstance(state, dict) else None
        if center is not None and (not isinstance(center, Tensor) or center.dim() != 1):
            raise ValueError(f"centered-clipping: state['center'] must be a [d] tensor or None, got {center!r}")
        self.center = None if center is None else center.detach().clone()

    # ------------------------------------------------------------------ rule
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n, d = updates.shape
        require(n > 2 * self.f, rule="centered-clipping", n=n, f=self.f, need="n > 2f")
        rows, _, _ = finite_part(updates, self.f, rule="centered-clipping")
        acc = accumulation_dtype(rows.dtype)
        if self.center is None:
            v = torch.zeros(d, dtype=acc, device=rows.device)
        else:
            if self.center.shape != (d,):
                raise ValueError(
                    f"centered-clipping: the stored center has shape {tuple(self.center.shape)} but the updates have "
                    f"d={d}; call reset() when the model changes"
                )
            v = self.center.to(device=rows.device, dtype=acc).clone()
        m = rows.shape[0]
        chunk = column_chunk(rows)
        for _ in range(self.iterations):
            sq = torch.zeros(m, dtype=torch.float64, device=rows.device)
            for lo in range(0, d, chunk):
                diff = rows[:, lo : lo + chunk].to(acc) - v[lo : lo + chunk]
                sq += diff.to(torch.float64).square().sum(dim=1) if acc != torch.float64 else diff.square().sum(dim=1)
            norms = sq.sqrt()
            scale = torch.where(norms > self.tau, self.tau / norms.clamp_min(1e-300), torch.ones_like(norms))
            coef = (scale / m).to(acc)
            step = torch.empty_like(v)
            for lo in range(0, d, chunk):
                diff = rows[:, lo : lo + chunk].to(acc) - v[lo : lo + chunk]
                step[lo : lo + chunk] = coef @ diff
            v = v + step
        self.center = v.detach().clone()
        return v.to(rows.dtype)
