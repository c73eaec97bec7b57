"""Deterministic, order-independent randomness.

Every stochastic step draws from its own generator, seeded by hashing the run's seed with the
step's name and coordinates (``derive_seed(seed, "batches", round)``). Results therefore do not
depend on the order in which cells, rounds or clients are computed, nor on parallelism.
"""

from __future__ import annotations

import hashlib

import torch

from privfl.params import Int

__all__ = ["derive_seed", "make_generator"]


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from ``seed`` and any printable ``keys`` (stable across runs and platforms)."""
    Int().check("seed", seed)
    text = "/".join([str(seed), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def make_generator(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g
