"""Simulated secure aggregation (Bonawitz et al., CCS 2017): pairwise masks in Z_M that cancel in the sum.

Neutral plumbing shared by DP-BREM+ (:mod:`privfl.mechanisms.dp_brem`) and the simulation's
secure-aggregation path (:mod:`privfl.fl.simulation`): the server learns only the sum of the
participants' encoded reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from privfl.core import check_updates
from privfl.params import Int, Ref, validated
from privfl.seeding import make_generator

__all__ = ["SecureAggregation"]


#: Fixed-point fraction bits and modulus bits (``modulus_bits >= frac_bits + 3``: values of magnitude
#: below 2 keep a sign bit and headroom), declared once (DP-BREM+ shares them).
FRAC_BITS = Int(0, 40, typical=(8, 24))
MODULUS_BITS = Int((8, Ref("frac_bits", 3)), 62)


@validated({"frac_bits": FRAC_BITS, "modulus_bits": MODULUS_BITS}, name="SecureAggregation")
class SecureAggregation:
    """Pairwise-masked summation in Z_M^d (Bonawitz et al., CCS 2017), fixed-point encoded.

    ``mask(values, ids, key)`` returns each client's masked report; ``sum(reports, ids, key,
    survivors)`` returns the exact sum of the survivors' encoded values (the uncancelled masks
    shared with dropped clients are regenerated from their pair seeds and removed). The pair seed of
    (a, b) is derived from ``(key, a, b)``; in a deployment it comes from a key agreement between a
    and b. Masks are generated pair by pair (O(n²) draws of d values per round).
    """

    def __init__(self, *, frac_bits: int = 20, modulus_bits: int = 48) -> None:
        self.frac_bits, self.modulus_bits = int(frac_bits), int(modulus_bits)
        self.modulus = 1 << self.modulus_bits

    def encode(self, values: Tensor) -> Tensor:
        """Fixed point in Z_M: round(v · 2^frac_bits) mod M (int64)."""
        fixed = torch.round(values.to(torch.float64) * float(1 << self.frac_bits)).to(torch.int64)
        limit = self.modulus >> 1
        if bool((fixed.abs() >= limit).any()):
            raise ValueError(f"values exceed the fixed-point range ±{limit / (1 << self.frac_bits):.3g}; "
                             "raise modulus_bits or lower frac_bits")
        return torch.remainder(fixed, self.modulus)

    def decode(self, encoded: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Z_M → signed fixed point → float."""
        v = torch.remainder(encoded, self.modulus)
        v = torch.where(v >= (self.modulus >> 1), v - self.modulus, v)
        return (v.to(torch.float64) / float(1 << self.frac_bits)).to(dtype)

    def _pair_mask(self, a: int, b: int, d: int, key: int, device: torch.device) -> Tensor:
        g = make_generator(key, "secagg-pair", min(a, b), max(a, b), device=device)
        return torch.randint(0, self.modulus, (d,), generator=g, dtype=torch.int64, device=device)

    def masks(self, ids: Sequence[int], d: int, *, key: int, device: torch.device | str = "cpu") -> Tensor:
        """``[n, d]`` masks: client a adds r_ab for b > a and subtracts r_ba for b < a (mod M); Σ ≡ 0."""
        ids = [int(i) for i in ids]
        out = torch.zeros(len(ids), d, dtype=torch.int64, device=device)
        for ia in range(len(ids)):
            for ib in range(ia + 1, len(ids)):
                r = self._pair_mask(ids[ia], ids[ib], d, key, out.device)
                sign = 1 if ids[ia] < ids[ib] else -1
                out[ia] += sign * r
                out[ib] -= sign * r
        return torch.remainder(out, self.modulus)

    def mask(self, values: Tensor, ids: Sequence[int], *, key: int) -> Tensor:
        """Each client's masked report (encode + its pairwise masks, mod M)."""
        check_updates(values, name="values", min_rows=0)
        if len(ids) != values.shape[0]:
            raise ValueError(f"ids must name one client per row: {len(ids)} ids for {values.shape[0]} rows")
        enc = self.encode(values)
        return torch.remainder(enc + self.masks(ids, values.shape[1], key=key, device=values.device), self.modulus)

    def sum(self, reports: Tensor, ids: Sequence[int], *, key: int, survivors: Tensor | None = None) -> Tensor:
        """Σ of the surviving clients' encoded values (Z_M^d); dropped clients' pair masks are removed."""
        ids = [int(i) for i in ids]
        alive = torch.ones(len(ids), dtype=torch.bool) if survivors is None else torch.as_tensor(survivors).bool()
        total = torch.remainder(reports[alive.to(reports.device)].sum(dim=0), self.modulus)
        dead = [ids[i] for i in range(len(ids)) if not alive[i]]
        live = [ids[i] for i in range(len(ids)) if alive[i]]
        for a in live:  # seed recovery: the survivors' masks shared with dropped clients
            for b in dead:
                r = self._pair_mask(a, b, reports.shape[1], key, reports.device)
                total = total - (r if a < b else -r)
        return torch.remainder(total, self.modulus)
