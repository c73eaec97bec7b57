"""Byzantine attacks on aggregation.

Model poisoning, ``attack(rows [h, d], f) -> malicious [f, d]``. Every attack declares what it reads
(``knowledge``, :class:`~privfl.core.ByzantineAttack`) and the simulation hands it exactly that:

- ``"omniscient"`` (sign flip, IPM, ALIE, min-max, min-sum, mimic): every honest row of the round
  (after worker momentum and any client-side mechanism);
- ``"own-data"`` (``ipm-own-data``, ``alie-own-data``, ``min-max-own-data``, ``min-sum-own-data``): only
  the Byzantine clients' own honest updates — each Byzantine client computes the update an honest
  client would send from its own data and the public model, and the statistics (mean, std,
  distances) are estimated from those rows, as the DP-BREM reference code does (Gu, Li, Xiong, USENIX
  Security 2025: its IPM/ALIE use the clipped gradients of the Byzantine clients' own batches, its
  min-max the momenta of those gradients). With a central DP mechanism these attacks keep the
  release a function of honest data only through the noisy sum, so the accounted ε stays valid;
- ``"public"`` (Gaussian, NaN, Inf): nothing but the shape (they are handed a zero matrix).
Data poisoning (label flipping) is a client-side transform: the Byzantine clients then follow the
protocol on poisoned data. All are registered as kind ``"byzantine_attack"``.

Attacks keep the honest rows' dtype and device, never modify them, and draw randomness only from
the ``generator`` they are given. Statistics (mean, std, distances) are computed in at least float32;
distances in float64.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm as _normal
from torch import Tensor

from privfl.core import ByzantineAttack, DataPoisoningAttack, check_updates
from privfl.kernels import accumulation_dtype, pairwise_sq_distances
from privfl.params import Choice, Int, Real
from privfl.registry import register

__all__ = [
    "SignFlip",
    "IPM",
    "ALIE",
    "MinMax",
    "MinSum",
    "Mimic",
    "GaussianAttack",
    "NaNAttack",
    "InfAttack",
    "LabelFlip",
    "IPMOwnData",
    "ALIEOwnData",
    "MinMaxOwnData",
    "MinSumOwnData",
    "alie_z",
]


def _check(honest: Tensor, f: int, attack: str, *, min_rows: int = 1) -> None:
    check_updates(honest, name="honest", min_rows=min_rows)
    Int(0, None).check("f", f, owner=attack)  # the number of malicious rows


def _repeat(row: Tensor, f: int, like: Tensor) -> Tensor:
    return row.to(like.dtype).unsqueeze(0).expand(f, -1).clone()


def _mean(honest: Tensor) -> Tensor:
    return honest.to(accumulation_dtype(honest.dtype)).mean(dim=0)


def _std(x: Tensor, mu: Tensor) -> Tensor:
    """Unbiased coordinate-wise standard deviation (3× faster on CPU than ``Tensor.std(dim=0)``)."""
    return ((x - mu).square().sum(dim=0) / (x.shape[0] - 1)).sqrt()


@register("byzantine_attack", "sign-flip")
class SignFlip(ByzantineAttack):
    """Sign flipping: every malicious row is ``−scale · mean(honest)`` (the omniscient form, as in
    Allouah et al., AISTATS 2023, and ByzFL; ``scale = 1``)."""

    name = "sign-flip"
    knowledge = "omniscient"
    param_space = {
        "scale": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
    }

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "sign-flip")
        return _repeat(-self.scale * _mean(honest), f, honest)


@register("byzantine_attack", "ipm")
class IPM(ByzantineAttack):
    """Inner-product manipulation, "Fall of Empires" (Xie, Koyejo, Gupta, UAI 2019):
    every malicious row is ``−ε · mean(honest)``. ``ε = 0.1`` (the default; fools median-like rules)
    and ``ε = 100`` (overwhelms averaging-like rules) are the usual settings."""

    name = "ipm"
    knowledge = "omniscient"
    param_space = {
        "epsilon": Real(0, None, lo_open=True, log=True, typical=(0.01, 100.0)),
    }

    def __init__(self, epsilon: float = 0.1):
        self.epsilon = float(epsilon)

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "ipm")
        return _repeat(-self.epsilon * _mean(honest), f, honest)


def alie_z(n: int, f: int) -> float:
    """ALIE's ``z_max`` (Baruch, Baruch, Goldberg, NeurIPS 2019), in the form of the authors' and
    Karimireddy et al.'s code: ``s = ⌊n/2 + 1⌋ − f`` supporters, ``z = Φ⁻¹((n − f − s)/(n − f))``.

    ``n`` counts all workers (honest + malicious). Raises when the formula has no finite value
    (``s <= 0`` or ``s >= n − f``); pass a fixed ``z`` to :class:`ALIE` then.
    """
    if not (isinstance(n, int) and isinstance(f, int)) or n < 1 or f < 0 or f >= n:
        raise ValueError(f"alie: need integers n > f >= 0, got n={n!r}, f={f!r}")
    s = math.floor(n / 2 + 1) - f
    p = (n - f - s) / (n - f)
    if not (0.0 < p < 1.0):
        raise ValueError(
            f"alie: the z formula has no finite value for n={n}, f={f} (s = ⌊n/2+1⌋ − f = {s}, "
            f"Φ⁻¹({p:.3g})); pass a fixed z, e.g. z=1.0"
        )
    return float(_normal.ppf(p))


@register("byzantine_attack", "alie")
class ALIE(ByzantineAttack):
    """A little is enough (Baruch, Baruch, Goldberg, NeurIPS 2019): every malicious row is
    ``μ − z·σ``, ``μ``/``σ`` the coordinate-wise mean and (unbiased) standard deviation of the honest rows.

    ``z=None`` (default) uses the paper's ``z_max`` (:func:`alie_z`, with ``n = h + f``), which is
    close to 0 for small ``n`` (n = 20, f = 4: z ≈ 0.16); a fixed ``z`` (e.g. 1.0) is the usual
    alternative. Needs at least 2 honest rows.
    """

    name = "alie"
    knowledge = "omniscient"
    param_space = {
        "z": Real(None, None, typical=(-3.0, 3.0), optional=True),
    }

    def __init__(self, z: float | None = None):
        self.z = None if z is None else float(z)
        self.last_z: float | None = None

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "alie", min_rows=2)
        z = self.z if self.z is not None else alie_z(honest.shape[0] + f, f)
        self.last_z = z
        x = honest.to(accumulation_dtype(honest.dtype))
        mu = x.mean(dim=0)
        return _repeat(mu - z * _std(x, mu), f, honest)


_PERTURBATIONS = ("unit-vec", "std", "sign")


class _ShejwalkarAttack(ByzantineAttack):
    """Shared part of min-max and min-sum (Shejwalkar, Houmansadr, "Manipulating the Byzantine:
    Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021).

    Malicious rows ``μ − γ·p`` (all equal), ``μ`` the honest mean and ``p`` the perturbation
    direction: ``"unit-vec"`` (``μ/‖μ‖``), ``"std"`` (coordinate-wise std, the default) or ``"sign"``
    (``sign(μ)``). ``γ`` is found by the paper's binary search: start at ``gamma_init`` (10), move up
    by half the current step when the condition holds and down when not, halving the step, until
    the last γ that held is within ``tol`` (1e-5) of the current one; that γ is used (0 if none held).
    The search cannot exceed ``2·gamma_init``.
    The condition only needs ``‖μ − x_i‖²``, ``⟨μ − x_i, p⟩`` and ``‖p‖²`` (float64), so the search
    costs ``O(h)`` per step.
    """

    name = "shejwalkar"
    knowledge = "omniscient"
    param_space = {
        "perturbation": Choice("std", "unit-vec", "sign"),
        "gamma_init": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "tol": Real(0, None, lo_open=True, log=True, typical=(1e-7, 1e-3)),
    }

    def __init__(self, perturbation: str = "std", gamma_init: float = 10.0, tol: float = 1e-5):
        if perturbation not in _PERTURBATIONS:
            raise ValueError(f"{self.name}: perturbation must be one of {_PERTURBATIONS}, got {perturbation!r}")
        self.perturbation = perturbation
        self.gamma_init, self.tol = float(gamma_init), float(tol)
        self.last_gamma: float | None = None

    def direction(self, honest: Tensor, mu: Tensor) -> Tensor:
        if self.perturbation == "unit-vec":
            norm = torch.linalg.vector_norm(mu.to(torch.float64))
            return mu / norm.to(mu.dtype) if norm > 0 else torch.zeros_like(mu)
        if self.perturbation == "std":
            return _std(honest.to(mu.dtype), mu) if honest.shape[0] > 1 else torch.zeros_like(mu)
        return torch.sign(mu)

    def satisfied(self, gamma: float, a: Tensor, b: Tensor, c: Tensor, D: Tensor) -> bool:
        raise NotImplementedError

    def search(self, a: Tensor, b: Tensor, c: Tensor, D: Tensor) -> float:
        gamma, step, succ = self.gamma_init, self.gamma_init, 0.0
        while abs(succ - gamma) > self.tol:
            if bool(self.satisfied(gamma, a, b, c, D)):
                succ = gamma
                gamma = gamma + step / 2
            else:
                gamma = gamma - step / 2
            step /= 2
        return succ

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, self.name)
        x = honest.to(accumulation_dtype(honest.dtype))
        mu = x.mean(dim=0)
        p = self.direction(x, mu)
        dev = (mu.unsqueeze(0) - x).to(torch.float64)  # [h, d]: μ − x_i
        a = dev.square().sum(dim=1)  # ‖μ − x_i‖²
        b = dev @ p.to(torch.float64)  # ⟨μ − x_i, p⟩
        c = p.to(torch.float64).square().sum()
        D = pairwise_sq_distances(honest)
        gamma = self.search(a, b, c, D)
        self.last_gamma = gamma
        return _repeat(mu - gamma * p, f, honest)


@register("byzantine_attack", "min-max")
class MinMax(_ShejwalkarAttack):
    __doc__ = (
        "Min-max: the largest γ whose malicious row is no farther from any honest row than the two most "
        "distant honest rows are from each other, ``max_i ‖μ − γp − x_i‖ ≤ max_{i,j} ‖x_i − x_j‖``.\n\n"
        + _ShejwalkarAttack.__doc__
    )

    name = "min-max"
    def satisfied(self, gamma, a, b, c, D):
        dist = a - 2 * gamma * b + gamma * gamma * c
        return dist.max() <= D.max()


@register("byzantine_attack", "min-sum")
class MinSum(_ShejwalkarAttack):
    __doc__ = (
        "Min-sum: the largest γ whose malicious row has a sum of squared distances to the honest rows no "
        "larger than any honest row's, ``Σ_i ‖μ − γp − x_i‖² ≤ max_i Σ_j ‖x_i − x_j‖²``.\n\n"
        + _ShejwalkarAttack.__doc__
    )

    name = "min-sum"
    def satisfied(self, gamma, a, b, c, D):
        total = (a - 2 * gamma * b + gamma * gamma * c).sum()
        return total <= D.sum(dim=1).max()


# --------------------------------------------------------------------------------------------
# Own-data variants: the same rules, fed only the Byzantine clients' own honest updates
# --------------------------------------------------------------------------------------------
_OWN_DATA_NOTE = (
    "\n\n**Own-data variant** (``knowledge = \"own-data\"``): the rows it receives are the Byzantine "
    "clients' own honest updates (every Byzantine client of the run, participating this round or not, "
    "as in the DP-BREM reference code), never the honest clients'; the honest statistics are estimated "
    "from them. Valid with central DP: the ε of the run stays a guarantee."
)


@register("byzantine_attack", "ipm-own-data")
class IPMOwnData(IPM):
    __doc__ = (IPM.__doc__ or "") + _OWN_DATA_NOTE + (
        " The DP-BREM reference code uses ``epsilon = 1``; the default stays the paper's 0.1.")
    name = "ipm-own-data"
    knowledge = "own-data"


@register("byzantine_attack", "alie-own-data")
class ALIEOwnData(ALIE):
    __doc__ = (
        "A little is enough from the Byzantine clients' own data: every malicious row is ``μ̂ − z·σ̂``, "
        "``μ̂``/``σ̂`` the coordinate-wise mean and (unbiased) std of the Byzantine clients' own honest "
        "updates (needs at least 2 Byzantine clients). ``z`` defaults to 1.0: the paper's ``z_max`` needs "
        "the number of workers, which own data does not reveal (pass ``z`` computed with "
        ":func:`alie_z` for your n, or the reference code's ``4·z_max``)." + _OWN_DATA_NOTE
    )
    name = "alie-own-data"
    knowledge = "own-data"
    param_space = {
        "z": Real(None, None, typical=(-3.0, 3.0)),
    }

    def __init__(self, z: float = 1.0):
        super().__init__(z=float(z))


@register("byzantine_attack", "min-max-own-data")
class MinMaxOwnData(MinMax):
    __doc__ = (MinMax.__doc__ or "") + _OWN_DATA_NOTE
    name = "min-max-own-data"
    knowledge = "own-data"


@register("byzantine_attack", "min-sum-own-data")
class MinSumOwnData(MinSum):
    __doc__ = (MinSum.__doc__ or "") + _OWN_DATA_NOTE
    name = "min-sum-own-data"
    knowledge = "own-data"


@register("byzantine_attack", "mimic")
class Mimic(ByzantineAttack):
    """Mimic (Karimireddy, He, Jaggi, ICLR 2022): every malicious row copies one honest worker,
    over-representing it to skew the aggregate under heterogeneity.

    ``target`` (an honest row index, default 0) fixes the copied worker. ``target=None`` applies the
    paper's heuristic on the current round alone: copy the honest row with the largest projection
    ``|⟨x_i − μ, z⟩|`` on the top principal direction ``z`` of the honest rows (the paper accumulates
    ``z`` over a warm-up phase; this version keeps no state between rounds).
    """

    name = "mimic"
    knowledge = "omniscient"
    param_space = {
        "target": Int(0, None, typical=(0, 2), optional=True),
    }

    def __init__(self, target: int | None = 0):
        self.target = target

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "mimic")
        h = honest.shape[0]
        if self.target is not None:
            if self.target >= h:
                raise ValueError(f"mimic: target={self.target} but there are only {h} honest rows")
            i = self.target
        else:
            D = pairwise_sq_distances(honest)
            G = -0.5 * (D - D.mean(0, keepdim=True) - D.mean(1, keepdim=True) + D.mean())  # centred Gram
            evals, evecs = torch.linalg.eigh(G)
            # projections of the centred rows on the top principal direction ∝ top eigenvector of G
            i = int(torch.argmax(evecs[:, -1].abs()))
        return honest[i].unsqueeze(0).expand(f, -1).clone()


@register("byzantine_attack", "gaussian")
class GaussianAttack(ByzantineAttack):
    """Gaussian noise: malicious rows drawn i.i.d. from ``N(mean, std²·I)`` (Blanchard et al.,
    NeurIPS 2017, used ``std = 200``, the default)."""

    name = "gaussian"
    knowledge = "public"
    randomized = True  # check_contract: different seeds must give different rows
    param_space = {
        "mean": Real(None, None, typical=(-10.0, 10.0)),
        "std": Real(0, None, lo_open=True, log=True, typical=(0.1, 500.0)),
    }

    def __init__(self, mean: float = 0.0, std: float = 200.0):
        self.mean, self.std = float(mean), float(std)

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "gaussian")
        device = generator.device if generator is not None else honest.device
        dtype = accumulation_dtype(honest.dtype)
        noise = torch.randn(f, honest.shape[1], generator=generator, device=device, dtype=dtype)
        return (self.mean + self.std * noise).to(device=honest.device, dtype=honest.dtype)


@register("byzantine_attack", "nan")
class NaNAttack(ByzantineAttack):
    """Every malicious row is all NaN (a crashed or buggy worker)."""

    name = "nan"
    knowledge = "public"
    param_space = {}  # no parameters

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "nan")
        return torch.full((f, honest.shape[1]), float("nan"), dtype=honest.dtype, device=honest.device)


@register("byzantine_attack", "inf")
class InfAttack(ByzantineAttack):
    """Every malicious row is all ``+Inf`` (``sign=-1``: ``−Inf``)."""

    name = "inf"
    knowledge = "public"
    param_space = {
        "sign": Choice(1, -1),
    }

    def __init__(self, sign: int = 1):
        self.sign = sign

    def __call__(self, honest: Tensor, f: int, *, generator: torch.Generator | None = None) -> Tensor:
        _check(honest, f, "inf")
        return torch.full((f, honest.shape[1]), self.sign * float("inf"), dtype=honest.dtype, device=honest.device)


@register("byzantine_attack", "label-flip")
class LabelFlip(DataPoisoningAttack):
    """Label flipping: a Byzantine client trains honestly on labels ``y → C − 1 − y`` (``C`` classes),
    as in Allouah et al. (AISTATS 2023) and Karimireddy et al. (ICML 2021: ``9 − y`` on CIFAR-10).
    Inputs are returned as they are (not copied); labels are a new tensor."""

    name = "label-flip"
    knowledge = "own-data"
    param_space = {}  # no parameters

    def poison(
        self, x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(y, Tensor) or y.is_floating_point():
            got = getattr(y, "dtype", type(y).__name__)
            raise TypeError(f"label-flip: y must be an integer tensor of class ids, got {got}")
        Int(1, None).check("num_classes", num_classes, owner=self.name)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            lo, hi = int(y.min()), int(y.max())
            raise ValueError(f"label-flip: labels must lie in [0, {num_classes}), got range [{lo}, {hi}]")
        return x, (num_classes - 1) - y
