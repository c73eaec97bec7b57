"""The plain average, FedAvg's server rule (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.core import Aggregator, check_updates
from privfl.defenses._common import nonfinite_rows
from privfl.defenses._overflow import overflow_safe
from privfl.params import Int
from privfl.registry import register


@register("aggregator", "mean")
class Mean(Aggregator):
    """Unweighted coordinate-wise mean of the rows: the non-robust baseline.

    ``f`` is recorded so the mean can stand in robustness tables beside the robust rules, but the
    mean tolerates no faulty input whatever ``f`` says (its breakdown point is 0).
    Following privfl's non-finite policy, a NaN/Inf row is an error here rather than a NaN
    aggregate: the mean has no way to discard a faulty row.

    Overflow: the mean of finite rows is always finite and exact up to rounding — rows whose values
    approach the dtype's max (e.g. 1e38 in float32, where a plain sum overflows to Inf) are divided
    by a power of two before summing and the result multiplied back (:mod:`privfl.defenses._overflow`).
    It is still the mean: one row at 1e38 drags the output to about 1e38/n.
    """

    name = "mean"
    plain_mean = True
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    @overflow_safe
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        bad = nonfinite_rows(updates)  # one row-sum pass, exact check only on suspect rows
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            raise ValueError(
                f"mean: rows {rows[:10]} contain NaN or Inf; the plain mean cannot discard faulty rows "
                "(use a robust aggregator, which treats non-finite rows as faulty)"
            )
        return updates.mean(dim=0)
