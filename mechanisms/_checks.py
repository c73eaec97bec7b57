"""Tensor plumbing shared by the mechanism modules: the update-matrix check, clipping, the non-finite policies.

Constructor parameters are checked from each class's ``param_space`` (:mod:`privfl.params`), other
arguments with the same types (``privfl.params.Int(1, None).check(...)``, ``check_generator``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from privfl.core import check_updates


def updates(x: Tensor, name: str = "x") -> None:
    check_updates(x, name=name, min_rows=0)


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
