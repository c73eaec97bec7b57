"""Parameter checks shared by the mechanism modules (errors name the argument, the value and what is allowed)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from privfl.core import check_updates


def number(name: str, value: object, *, lo: float | None = None, hi: float | None = None, lo_open: bool = True,
           hi_open: bool = False, allowed: str | None = None) -> float:
    """A finite real number within (lo, hi] (bounds' openness configurable)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        if allowed is None:
            left = "any" if lo is None else f"{'(' if lo_open else '['}{lo}"
            right = "" if hi is None else f"{hi}{')' if hi_open else ']'}"
            allowed = f"a finite number in {left}, {right or '∞)'}" if lo is not None else "a finite number"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def integer(name: str, value: object, *, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return int(value)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def updates(x: Tensor, name: str = "x") -> None:
    check_updates(x, name=name, min_rows=0)


def generator(g: object) -> None:
    if g is not None and not isinstance(g, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(g).__name__}")


def _batched(x: Tensor) -> bool:
    """Whether ``x`` is a torch.vmap batched tensor (data-dependent Python branches are not allowed then)."""
    return bool(torch._C._functorch.is_batchedtensor(x))


def clip_rows(x: Tensor, clip_norm: float) -> Tensor:
    """Each row scaled to ℓ2 norm at most ``clip_norm`` (rows already inside are unchanged); a new tensor.

    Rows of finite values whose norm overflows the dtype (entries near its max) are scaled by their
    largest entry first, so they are clipped along their direction rather than to zero or NaN."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    factor = torch.clamp(clip_norm / norms.clamp_min(torch.finfo(x.dtype).tiny), max=1.0)
    out = x * factor
    over = torch.isinf(norms) & torch.isfinite(x).all(dim=1, keepdim=True)
    # ‖x‖ beyond the dtype: x/max|x| has a norm in [1, √d], then scale to clip_norm (no branch under vmap)
    if _batched(x) or bool(over.any()):
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        unit = x / scale
        fixed = unit * (clip_norm / torch.linalg.vector_norm(unit, dim=1, keepdim=True))
        out = torch.where(over, fixed, out)
    return out


def zero_nonfinite_rows(x: Tensor) -> tuple[Tensor, int]:
    """The ``"zero"`` non-finite policy: rows holding NaN/±Inf replaced by the zero vector (a new tensor
    only when some row is replaced); returns the rows and how many were replaced."""
    if x.numel() == 0:
        return x, 0
    bad = ~torch.isfinite(x).all(dim=1)
    if _batched(x):  # under torch.vmap (batched audits): replace without a data-dependent count
        return torch.where(bad.unsqueeze(1), torch.zeros((), dtype=x.dtype, device=x.device), x), 0
    k = int(bad.sum())
    if k == 0:
        return x, 0
    return torch.where(bad.unsqueeze(1), torch.zeros((), dtype=x.dtype, device=x.device), x), k


def require_finite(x: Tensor, mechanism: str) -> None:
    """The ``"raise"`` non-finite policy: ``ValueError`` naming the rows that hold NaN/±Inf."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        rows = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten().tolist()
        raise ValueError(f"{mechanism}: x rows {rows[:10]} contain NaN or Inf; this mechanism's non-finite policy "
                         "is to raise (it cannot bound a faulty row without hiding it)")


class CoordinateOutcomes:
    """``report_outcomes`` of a per-coordinate mechanism (RQM, PBM): every coordinate of the integer
    reports is one outcome of ``output_pmf`` (of that coordinate's input); no public randomness.
    ``report_what`` names the reports in errors."""

    report_what: ClassVar[str] = "outcome indices"

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, None]:
        if not isinstance(reports, Tensor) or reports.is_floating_point():
            got = reports.dtype if isinstance(reports, Tensor) else type(reports).__name__
            raise TypeError(f"reports must be an integer tensor of {self.report_what}, got {got}")
        return reports.reshape(-1).to(torch.int64), None
