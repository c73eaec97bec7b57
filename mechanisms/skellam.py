r"""The distributed Skellam mechanism for federated learning with secure aggregation.

Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
NeurIPS 2021 (arXiv 2110.04995). The same client pipeline as DDG (:mod:`privfl.mechanisms.ddg`: clip to
ℓ2 norm c, randomized Hadamard rotation, scale by 1/γ, conditional randomized rounding, mod 2^bits),
with Skellam noise: each client adds Sk(λ) = Poisson(λ/2) − Poisson(λ/2) per coordinate, λ the
variance of its share on the integer grid ((z·c/√n)²/γ²); Skellam is closed under summation, so n
honest clients leave Sk(nλ) on the sum. γ follows the same heuristic, with k = 3 standard deviations
as in the authors' code.

**Guarantees** (neighbouring = one client's update replaced; ℓ2/ℓ1 sensitivities twice the rounded
bounds): ``sum_guarantee(n)`` is the paper's RDP of Sk(μ), μ = nλ
(:func:`~privfl.accounting.distributed.skellam_rdp`); ``guarantee()`` the local one (n = 1). No client
sampling amplification is claimed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privfl.accounting import distributed
from privfl.mechanisms.ddg import _PARAMS, IntegerSecAggMechanism
from privfl.registry import register

__all__ = ["DistributedSkellam"]


@register("mechanism", "skellam")
class DistributedSkellam(IntegerSecAggMechanism):
    """Distributed Skellam (Agarwal, Kairouz, Liu 2021); defaults: 16 bits, β = e^{−1/2}, k = 3."""

    name = "skellam"
    param_space = dict(_PARAMS)

    def __init__(self, clip_norm: float = 1.0, noise_multiplier: float = 1.0, num_clients: int = 10,
                 bits: int = 16, beta: float = math.exp(-0.5), k_stddevs: float = 3.0) -> None:
        super().__init__(clip_norm, noise_multiplier, num_clients, bits, beta, k_stddevs)

    def noise(self, shape, sigma_int, *, generator, device) -> Tensor:
        rate = torch.full(shape, sigma_int * sigma_int / 2.0, dtype=torch.float64, device=device)
        a = torch.poisson(rate, generator=generator)
        b = torch.poisson(rate, generator=generator)
        return (a - b).to(torch.int64)

    def _rdp(self, orders, *, n: int, d: int):
        l2, l1 = self.integer_sensitivities(d)
        mu = n * (self.local_std * self.scale(d)) ** 2
        return distributed.skellam_rdp(orders, l2=2 * l2, l1=2 * l1, mu=mu)
