"""Overflow-safe evaluation of scale-equivariant rules on rows near the dtype's largest value.

A robust rule's output lies within (or near) the convex hull of honest rows, so it is representable
whenever the rows are; only the intermediate sums (two middle values of a median, a trimmed sum, a
bucket mean) and the squared distances can overflow. :func:`overflow_safe` wraps the ``__call__`` of
a rule that is positively homogeneous, ``F(c·x) = c·F(x)`` for ``c > 0``: when the largest finite
``|x|`` exceeds a headroom bound it runs the rule on ``x / 2^k`` (exact: a power of two) and returns
``2^k·F(x / 2^k)``, finite entries clamped to the dtype's range. The bound leaves room for a sum of
``8n`` values and, for float64 (whose distances have no wider type), for squared distances summed
over ``n·d`` terms. Non-finite entries (faulty rows) pass through unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["overflow_safe", "headroom_scale"]


def headroom_scale(x: Tensor) -> float:
    """The power of two ``2^k ≥ 1`` by which ``x`` must be divided so that no intermediate overflows."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
        return 1.0
    n, d = (x.shape[0], x.shape[1]) if x.dim() == 2 else (1, x.numel())
    big = torch.finfo(x.dtype).max
    bound = big / (8.0 * max(n, 1))
    if x.dtype == torch.float64:
        bound = min(bound, math.sqrt(big / (8.0 * max(n, 1) * max(d, 1))))
    lo, hi = torch.aminmax(x)
    top = max(abs(float(lo)), abs(float(hi)))
    if not math.isfinite(top):  # NaN/±Inf rows: the largest finite magnitude
        finite = torch.isfinite(x)
        top = float(torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)).abs().amax())
    if top <= bound:
        return 1.0
    return 2.0 ** math.ceil(math.log2(top / bound))


def overflow_safe(call: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate ``__call__(self, updates, ...)`` of a positively homogeneous rule (see the module docstring)."""

    @functools.wraps(call)
    def wrapper(self, updates, *args, **kwargs):
        s = headroom_scale(updates)
        if s == 1.0:
            return call(self, updates, *args, **kwargs)
        out = call(self, updates / s, *args, **kwargs)
        big = torch.finfo(out.dtype).max
        scaled = (out.to(torch.float64) * s).clamp(-big, big).to(out.dtype)
        return torch.where(torch.isfinite(out), scaled, out)

    return wrapper
