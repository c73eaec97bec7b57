"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.core import PreAggregator, check_updates
from privfl.defenses._common import accumulation_dtype
from privfl.defenses._overflow import overflow_safe
from privfl.params import Int, check_generator
from privfl.registry import register

__all__ = ["Bucketing"]


@register("preaggregator", "bucketing")
class Bucketing(PreAggregator):
    """Shuffle the rows (seeded by ``generator``), cut them into ``⌈n/s⌉`` buckets of ``s`` rows (the
    last one may be smaller) and return the bucket means: ``[n, d] → [⌈n/s⌉, d]``.

    ``s = 2`` is the paper's setting. Each faulty row spoils at most one bucket, so the rule applied
    after bucketing keeps the same ``f`` (it must accept ``⌈n/s⌉`` rows with that ``f``). A bucket
    holding a non-finite row is non-finite (a faulty bucket, which that rule then discards); finite
    buckets never see those values. Same generator state → same buckets.
    """

    name = "bucketing"
    randomized = True  # the buckets come from a random permutation (check_contract: seeds must matter)
    param_space = {
        "s": Int(1, None, typical=(1, 4)),
    }

    def __init__(self, s: int = 2):
        self.s = s

    @overflow_safe
    def __call__(self, updates: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        check_updates(updates)
        check_generator(generator, owner=self.name)
        n, d = updates.shape
        gen_device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(n, generator=generator, device=gen_device).to(updates.device)
        buckets = -(-n // self.s)
        bucket_of = torch.empty(n, dtype=torch.int64, device=updates.device)
        bucket_of[perm] = torch.arange(n, device=updates.device) // self.s
        counts = torch.bincount(bucket_of, minlength=buckets).to(accumulation_dtype(updates.dtype))
        acc = accumulation_dtype(updates.dtype)
        sums = torch.zeros(buckets, d, dtype=acc, device=updates.device).index_add_(0, bucket_of, updates.to(acc))
        return (sums / counts.unsqueeze(1)).to(updates.dtype)
