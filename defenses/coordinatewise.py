"""Coordinate-wise robust rules: median, trimmed mean, Meamed.

Each coordinate is aggregated on its own from the ``n`` values the rows give it. Rows are
unweighted; non-finite rows follow the package policy (faulty, dropped, counted against ``f``;
see :mod:`privfl.defenses._common`). Only the ranks each rule needs are computed, by a pruned
sorting network over cache-sized column blocks on CPU (a sort elsewhere), and the results are
defined to the bit (ordering of ``±0.0``, summation order, midpoint rounding): see
:mod:`privfl.defenses._ranks`.
"""

from __future__ import annotations

import math

from torch import Tensor

from privfl.core import Aggregator, check_updates
from privfl.defenses._common import finite_part, require
from privfl.defenses._overflow import overflow_safe
from privfl.defenses._ranks import coordinate_meamed, coordinate_median, coordinate_trimmed_mean
from privfl.params import Int, Real
from privfl.registry import register

__all__ = ["Median", "TrimmedMean", "Meamed"]


@register("aggregator", "median")
class Median(Aggregator):
    """Coordinate-wise median (Yin, Chen, Kannan, Bartlett, ICML 2018).

    The statistical median of each coordinate: the middle value for an odd number of finite rows,
    the mean of the two middle values for an even number (``torch.median`` returns the lower one),
    correctly rounded below 64 bits.
    Needs ``n > 2f``; then every coordinate lies within the range of the honest values.
    """

    name = "median"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    @overflow_safe
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f, rule="median", n=n, f=self.f, need="n > 2f")
        rows, _, _ = finite_part(updates, self.f, rule="median")
        return coordinate_median(rows)


@register("aggregator", "trimmed-mean")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin, Chen, Kannan, Bartlett, ICML 2018).

    Per coordinate, drop the ``b`` largest and ``b`` smallest values and average the ``n − 2b`` left.
    Two conventions, named: ``b = f`` (the default, ``beta=None``) or ``b = ⌊β·n⌋`` when ``beta``
    (a fraction in ``[0, 0.5)``) is given. Needs ``n > 2b``. Non-finite rows count against ``b``.
    The kept values are summed in ascending order (see :mod:`privfl.defenses._ranks`).
    """

    name = "trimmed-mean"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
        "beta": Real(0, 0.5, hi_open=True, optional=True),
    }

    def __init__(self, f: int = 0, beta: float | None = None):
        self.f = f
        self.beta = None if beta is None else float(beta)

    def trimmed(self, n: int) -> int:
        """``b``, the number of values dropped at each end of a coordinate for ``n`` rows."""
        return self.f if self.beta is None else int(math.floor(self.beta * n))

    @overflow_safe
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        b = self.trimmed(n)
        require(n > 2 * b, rule="trimmed-mean", n=n, f=b, need="n > 2b", f_name="b",
                note=" (b values are trimmed at each end of a coordinate; b = f unless beta is given)")
        rows, b_left, _ = finite_part(updates, b, rule="trimmed-mean")
        return coordinate_trimmed_mean(rows, b_left)


@register("aggregator", "meamed")
class Meamed(Aggregator):
    """Meamed, mean around the median (Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", 2018).

    Per coordinate, the mean of the ``n − f`` values closest to the coordinate's median (the median
    as in :class:`Median`). Needs ``n > 2f``. Ties in distance to the median are broken towards the
    smaller values. Unlike the median it may leave the honest range (it averages values near the
    median, some of which may be faulty).
    """

    name = "meamed"
    param_space = {
        "f": Int(0, None, typical=(0, 3)),
    }

    def __init__(self, f: int = 0):
        self.f = f

    @overflow_safe
    def __call__(self, updates: Tensor) -> Tensor:
        check_updates(updates)
        n = updates.shape[0]
        require(n > 2 * self.f, rule="meamed", n=n, f=self.f, need="n > 2f")
        rows, f_left, _ = finite_part(updates, self.f, rule="meamed")
        return coordinate_meamed(rows, rows.shape[0] - f_left)
