"""Compression baselines used as defenses against gradient inversion — with **no** privacy guarantee.

Their ``guarantee()`` is ``PrivacyGuarantee.none``: every ledger, table and plot reports ε = ∞ for
them, never a blank. Defense sweeps in the gradient-inversion literature (Zhu, Liu, Han, "Deep
Leakage from Gradients", NeurIPS 2019, §5: pruning, half precision, int8) use exactly these:

- ``top-k`` — magnitude pruning: in each tensor of the update (per-tensor quantile, when the
  simulation binds the model's :class:`~privfl.flat.ParamLayout`; else the whole row) the
  ``sparsity`` fraction of entries with the smallest |value| is set to zero, the ⌈(1−sparsity)·size⌉
  largest kept exactly. Biased (it is a compressor, not an estimator).
- ``quantize`` — stochastic uniform k-bit quantization (QSGD-style, Alistarh et al., NeurIPS 2017,
  with min–max scaling): per tensor, 2^k levels evenly spaced on [min, max]; each entry rounds to
  one of its two neighbouring levels with probabilities that make it unbiased.
- ``fp16`` — round to IEEE half precision and back (deterministic; finite values beyond ±65504 are
  clamped to the fp16 range first).

Non-finite input (``nonfinite = "raise"``): all three raise ``ValueError`` on a row holding NaN/±Inf —
they bound nothing, so silently zeroing (or, for fp16, clamping ±Inf to ±65504) would hide a faulty
client rather than contain it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privfl.core import Mechanism, PrivacyGuarantee
from privfl.flat import ParamLayout
from privfl.mechanisms import _checks
from privfl.params import Int, Real
from privfl.registry import register

__all__ = ["TopK", "Quantize", "FP16"]

NO_GUARANTEE = "compression only: no differential-privacy guarantee (ε = ∞)"


class _PerTensor(Mechanism):
    """Shared: the segments (tensors) of a row, set by :meth:`bind_layout`; whole row by default."""

    role = "compressor"
    binds_layout = True  # per tensor of the model's layout
    sizes: tuple[int, ...] | None = None
    nonfinite = "raise"

    def bind_layout(self, layout: ParamLayout) -> None:
        """Apply the compressor per tensor of ``layout`` (called by the simulation)."""
        if not isinstance(layout, ParamLayout):
            raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
        self.sizes = tuple(layout.numels)

    def _segments(self, d: int) -> list[tuple[int, int]]:
        sizes = self.sizes if self.sizes is not None else (d,)
        if sum(sizes) != d:
            raise ValueError(f"the bound layout has {sum(sizes)} entries per row but the updates have d={d}")
        out, lo = [], 0
        for s in sizes:
            out.append((lo, lo + s))
            lo += s
        return out

    def guarantee(self) -> PrivacyGuarantee:
        return PrivacyGuarantee.none(self.name, notes=NO_GUARANTEE)


@register("mechanism", "top-k")
class TopK(_PerTensor):
    """Magnitude pruning: zero the ``sparsity`` fraction of smallest-|x| entries of every tensor."""

    name = "top-k"
    param_space = {
        "sparsity": Real(0, 1, hi_open=True),
    }

    def __init__(self, sparsity: float = 0.9) -> None:
        self.sparsity = _checks.number("sparsity", sparsity, lo=0.0, hi=1.0, lo_open=False, hi_open=True)

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        _checks.updates(x)
        _checks.require_finite(x, self.name)
        out = torch.zeros_like(x)
        for lo, hi in self._segments(x.shape[1]):
            seg = x[:, lo:hi]
            k = math.ceil((1.0 - self.sparsity) * (hi - lo))
            if k <= 0 or seg.shape[0] == 0:
                continue
            idx = seg.abs().topk(k, dim=1, sorted=False).indices
            out[:, lo:hi].scatter_(1, idx, seg.gather(1, idx))
        return out

    def report_bytes(self, reports: Tensor) -> float:
        """Value (element size) plus a 32-bit index for every kept entry."""
        kept = sum(math.ceil((1.0 - self.sparsity) * (hi - lo)) for lo, hi in self._segments(reports.shape[1]))
        return kept * (reports.element_size() + 4)


@register("mechanism", "quantize")
class Quantize(_PerTensor):
    """Stochastic uniform ``bits``-bit quantization per tensor (unbiased, min–max scaled)."""

    name = "quantize"
    unbiased = True  # stochastic rounding between neighbouring levels
    randomized = True  # check_contract: different seeds must give different reports
    param_space = {
        "bits": Int(1, 16),
    }

    def __init__(self, bits: int = 8) -> None:
        self.bits = _checks.integer("bits", bits, lo=1, hi=16)

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        _checks.updates(x)
        _checks.generator(generator)
        _checks.require_finite(x, self.name)
        levels = (1 << self.bits) - 1
        out = torch.empty_like(x)
        if x.shape[0] == 0:
            return out
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        for lo, hi in self._segments(x.shape[1]):
            seg = x[:, lo:hi]
            mn, mx = seg.amin(dim=1, keepdim=True), seg.amax(dim=1, keepdim=True)
            # in halves, so that max − min cannot overflow for finite values near the dtype's max
            half = (mx / 2 - mn / 2) / levels  # half the level spacing
            safe = torch.where(half > 0, half, torch.ones_like(half))
            t = (seg / 2 - mn / 2) / safe
            low = t.floor()
            q = low + (u[:, lo:hi] < (t - low)).to(x.dtype)
            value = ((mn / 2 + q.clamp(0, levels) * half) * 2).clamp(mn, mx)
            out[:, lo:hi] = torch.where(half > 0, value, seg)
        return out

    def report_bytes(self, reports: Tensor) -> float:
        """``bits`` per entry plus a float32 min and scale per tensor."""
        return reports.shape[1] * self.bits / 8.0 + 8 * len(self._segments(reports.shape[1]))


@register("mechanism", "fp16")
class FP16(Mechanism):
    """Round to half precision and back (values clamped to the fp16 range first)."""

    name = "fp16"
    role = "compressor"
    nonfinite = "raise"
    param_space = {}  # no parameters

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        _checks.updates(x)
        _checks.require_finite(x, self.name)
        big = torch.finfo(torch.float16).max
        return x.clamp(-big, big).to(torch.float16).to(x.dtype)

    def report_bytes(self, reports: Tensor) -> float:
        return reports.shape[1] * 2.0

    def guarantee(self) -> PrivacyGuarantee:
        return PrivacyGuarantee.none(self.name, notes=NO_GUARANTEE)
