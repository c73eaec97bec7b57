r"""The distributed discrete Gaussian mechanism (DDG) for federated learning with secure aggregation.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021 (arXiv 2102.06387), Algorithms 1–2. Client i, update x_i ∈ R^d:

1. clip to ℓ2 norm ``clip_norm`` = c; zero-pad to D = 2^⌈log2 d⌉;
2. flatten with a random rotation shared by all clients (the randomized Hadamard transform
   H·diag(s)/√D, public random signs s — privfl keeps one fixed public rotation per dimension);
3. scale by 1/γ and round to the integer grid with **conditional randomized rounding**: unbiased
   randomized rounding, redrawn until the ℓ2 norm is at most the bound of
   :func:`~privfl.accounting.distributed.rounded_l2_bound` (β = ``beta``; after 100 redraws, rounding
   toward zero, whose norm never grows, is used — probability ≤ β^100);
4. add discrete Gaussian noise N_Z(0, σ²) per coordinate (exact sampler of Canonne, Kamath, Steinke,
   NeurIPS 2020, by rejection from the discrete Laplace) and reduce **mod M = 2^bits** (modular
   clipping: the secure-aggregation ring);
5. server: sum mod M, map to [−M/2, M/2), multiply by γ, rotate back, drop the padding.

Parameters are stated in input units as for DP-FedAvg: ``noise_multiplier`` z sets the std of the
**aggregate** noise to z·c when ``num_clients`` = n honest clients take part (each client's share has
std z·c/√n, i.e. σ = z·c/(γ√n) on the integer grid). γ follows the paper's heuristic (Sec. 4.2, as in
the authors' code): 2^bits = 2k·√(c²n²/D + n(γ²/4 + (zc)²/n))/γ with k = ``k_stddevs``, so that k
standard deviations of the aggregate fit in the ring (a ``ValueError`` names ``bits`` when 2^(2·bits)
≤ n·k²). Wrap-around beyond that is post-processing: it costs accuracy, never privacy.

**Guarantees** (:mod:`privfl.accounting.distributed`, neighbouring = one client's update replaced,
ℓ2 sensitivity twice the rounded norm bound): ``guarantee()`` is what one client's report reveals on
its own (n = 1: the discrete Gaussian with its own share; local, valid without secure aggregation);
``sum_guarantee(n)`` is one client's contribution inside the sum of n honest reports (secure
aggregation), the paper's RDP bound with τ. Both are for the dimension d bound by ``bind_dim`` /
``bind_layout`` or seen by the last ``privatize`` (d = 1 before any). Not claimed: amplification by
client sampling (the server knows who took part). torch's generator is not a CSPRNG; this simulates
the arithmetic and information flow of the protocol, not a secure implementation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privfl.accounting import distributed
from privfl.core import InputDomain, Mechanism, PrivacyGuarantee
from privfl.mechanisms import _checks
from privfl.params import Int, Real
from privfl.registry import register
from privfl.seeding import make_generator

__all__ = ["DistributedDiscreteGaussian", "IntegerSecAggMechanism", "hadamard", "discrete_gaussian"]

_ROUNDING_TRIES = 100


def hadamard(x: Tensor) -> Tensor:
    """Orthonormal Walsh–Hadamard transform of each row (length a power of two); its own inverse."""
    n, size = x.shape
    h = 1
    y = x
    while h < size:
        y = y.reshape(n, size // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(n, size) / math.sqrt(size)


def discrete_gaussian(shape: tuple[int, ...], sigma: float, *, generator: torch.Generator | None,
                      device: torch.device) -> Tensor:
    """N_Z(0, σ²) samples (int64) by rejection from the discrete Laplace with scale t = ⌊σ⌋ + 1
    (Canonne, Kamath, Steinke 2020, Algorithm 3), vectorised: every round of draws fills the
    entries still missing."""
    out = torch.zeros(shape, dtype=torch.int64, device=device)
    missing = torch.ones(shape, dtype=torch.bool, device=device)
    t = math.floor(sigma) + 1
    while bool(missing.any()):
        k = int(missing.sum())
        u = torch.rand(3, k, generator=generator, dtype=torch.float64, device=device)
        g1 = torch.floor(-t * torch.log1p(-u[0]))  # geometric: P(g) ∝ e^{−g/t}
        g2 = torch.floor(-t * torch.log1p(-u[1]))
        y = g1 - g2
        accept = u[2] < torch.exp(-((y.abs() - sigma * sigma / t) ** 2) / (2.0 * sigma * sigma))
        idx = missing.nonzero(as_tuple=True)
        vals = out[idx]
        vals[accept] = y[accept].to(torch.int64)
        out[idx] = vals
        still = missing.clone()
        still[idx] = ~accept
        missing = still
    return out


class IntegerSecAggMechanism(Mechanism):
    """Shared pipeline of DDG and Skellam: clip, rotate, scale, conditional rounding, integer noise
    (:meth:`noise`, per family), mod 2^bits; decode = centre, unscale, rotate back."""

    role = "client-vector"
    secure_sum = True  # sum_guarantee(n): the distributed guarantee inside the modular sum of n reports
    binds_layout = True
    binds_dim = True  # the guarantee is stated for the model's (padded) dimension
    unbiased = False  # modular wrap-around and the norm-conditioned rounding bias it (slightly)
    nonfinite = "zero"  # a NaN/±Inf row becomes the zero vector before clipping, counted in nonfinite_replaced
    k_default = 4.0

    def __init__(self, clip_norm: float, noise_multiplier: float, num_clients: int, bits: int, beta: float,
                 k_stddevs: float) -> None:
        self.clip_norm = _checks.number("clip_norm", clip_norm, lo=0.0)
        self.noise_multiplier = _checks.number("noise_multiplier", noise_multiplier, lo=0.0)
        self.num_clients = _checks.integer("num_clients", num_clients, lo=1, hi=1 << 20)
        self.bits = _checks.integer("bits", bits, lo=8, hi=40)
        self.beta = _checks.number("beta", beta, lo=0.0, hi=1.0, lo_open=False, hi_open=True)
        self.k_stddevs = _checks.number("k_stddevs", k_stddevs, lo=0.0)
        if 2.0 ** (2 * self.bits) <= self.num_clients * self.k_stddevs**2:
            raise ValueError(f"bits = {bits} is too small for num_clients = {num_clients} and k_stddevs = "
                             f"{k_stddevs}: need 2^(2·bits) > num_clients·k_stddevs²")
        self.modulus = 1 << self.bits
        self.dim: int | None = None
        self.nonfinite_replaced = 0

    # ------------------------------------------------------------------ geometry
    def domain(self) -> InputDomain:
        """The clip ball: rows of ℓ2 norm ≤ ``clip_norm``."""
        return InputDomain.l2_ball(self.clip_norm)

    def bind_dim(self, dim: int) -> None:
        """Fix the update dimension d the guarantee is stated for."""
        self.dim = _checks.integer("dim", dim, lo=1)

    def bind_layout(self, layout) -> None:
        self.bind_dim(int(layout.dim))

    def padded(self, d: int) -> int:
        return 1 << max(0, math.ceil(math.log2(d)))

    @property
    def local_std(self) -> float:
        """Std of one client's noise share in input units: z·c/√n."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.num_clients)

    def scale(self, d: int) -> float:
        """1/γ from the paper's heuristic (k standard deviations of the aggregate fit in the ring)."""
        c, n, k, big_d = self.clip_norm, self.num_clients, self.k_stddevs, self.padded(d)
        # 2^b = 2k √(c²n²/D + n(γ²/4 + s²)) / γ  ⇔  1/γ = √(2^{2b} − n k²) / (2k √(c²n²/D + n s²))
        return math.sqrt(2.0 ** (2 * self.bits) - n * k * k) / (
            2.0 * k * math.sqrt(c * c * n * n / big_d + n * self.local_std**2))

    def integer_sensitivities(self, d: int) -> tuple[float, float]:
        """(ℓ2, ℓ1) bounds of one client's rounded integer vector (before noise), dimension D."""
        big_d = self.padded(d)
        l2 = distributed.rounded_l2_bound(self.clip_norm * self.scale(d), dim=big_d, beta=self.beta)
        return l2, distributed.rounded_l1_bound(l2, dim=big_d)

    def _signs(self, size: int, device: torch.device) -> Tensor:
        g = make_generator(0, "ddg-rotation", size)
        return (torch.randint(0, 2, (size,), generator=g) * 2 - 1).to(device=device, dtype=torch.float64)

    def rotate(self, x: Tensor) -> Tensor:
        big_d = self.padded(x.shape[1])
        pad = torch.zeros(x.shape[0], big_d, dtype=torch.float64, device=x.device)
        pad[:, : x.shape[1]] = x
        return hadamard(pad * self._signs(big_d, x.device))

    def unrotate(self, y: Tensor, d: int) -> Tensor:
        return (hadamard(y) * self._signs(y.shape[1], y.device))[:, :d]

    # ------------------------------------------------------------------ client and server
    def noise(self, shape: tuple[int, ...], sigma_int: float, *, generator, device) -> Tensor:
        raise NotImplementedError

    def _round(self, z: Tensor, bound: float, generator) -> Tensor:
        floor = torch.floor(z)
        frac = z - floor
        out = torch.zeros_like(z)
        todo = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        for _ in range(_ROUNDING_TRIES):
            if not bool(todo.any()):
                break
            u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            cand = floor + (u < frac).to(z.dtype)
            ok = todo & (torch.linalg.vector_norm(cand, dim=1) <= bound)
            out[ok] = cand[ok]
            todo &= ~ok
        out[todo] = torch.trunc(z[todo])  # never longer than z itself
        return out

    def privatize(self, x: Tensor, *, generator: torch.Generator | None = None,
                  client_ids: Tensor | None = None) -> Tensor:
        """Integer reports in [0, 2^bits) (int64), ``[n, D]`` with D the padded dimension."""
        _checks.updates(x)
        _checks.generator(generator)
        n, d = x.shape
        self.dim = d
        s = self.scale(d)
        x, replaced = _checks.zero_nonfinite_rows(x)  # non-finite policy "zero" (counted)
        self.nonfinite_replaced += replaced
        z = self.rotate(_checks.clip_rows(x.to(torch.float64), self.clip_norm)) * s
        bound = distributed.rounded_l2_bound(self.clip_norm * s, dim=self.padded(d), beta=self.beta)
        rounded = self._round(z, bound, generator).to(torch.int64)
        noisy = rounded + self.noise(tuple(rounded.shape), self.local_std * s, generator=generator,
                                     device=x.device)
        return torch.remainder(noisy, self.modulus)

    def _centred(self, values: Tensor) -> Tensor:
        v = torch.remainder(values, self.modulus)
        return torch.where(v >= self.modulus // 2, v - self.modulus, v)

    def decode(self, reports: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """One estimate per report: centre mod M, multiply by γ, rotate back (``[n, d]``)."""
        if not isinstance(reports, Tensor) or reports.is_floating_point() or reports.dim() != 2:
            raise ValueError(f"reports must be an integer [n, D] tensor from {type(self).__name__}.privatize")
        d = self.dim if self.dim is not None else reports.shape[1]
        y = self._centred(reports).to(torch.float64) / self.scale(d)
        return self.unrotate(y, d).to(dtype)

    def decode_sum(self, total: Tensor, count: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The sum of the clients' updates from the modular sum of their reports ([D] → [d])."""
        return self.decode(total.reshape(1, -1), dtype)[0]

    def sum_bits(self, n: int) -> int:
        return self.bits

    def report_bytes(self, reports: Tensor) -> float:
        return reports.shape[1] * self.bits / 8.0

    # ------------------------------------------------------------------ guarantees
    def _rdp(self, orders, *, n: int, d: int):
        raise NotImplementedError

    def _guarantee(self, n: int) -> PrivacyGuarantee:
        d = self.dim or 1
        label = distributed.unit_label(n) if n > 1 else "local (one client's report on its own)"
        return PrivacyGuarantee(
            name=f"{self.name} (sum of {n})" if n > 1 else f"{self.name} (local)",
            rdp_curve=lambda orders: self._rdp(orders, n=n, d=d),
            unit="client",
            notes=f"{label}; replace-one neighbours, d = {d}",
            extra={"participants": n, "unit_label": label, "dim": d},
        )

    def guarantee(self) -> PrivacyGuarantee:
        return self._guarantee(1)

    def sum_guarantee(self, n: int) -> PrivacyGuarantee:
        """One client's contribution inside the sum of ``n`` honest reports (secure aggregation)."""
        return self._guarantee(_checks.integer("n", n, lo=1))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(clip_norm={self.clip_norm}, noise_multiplier={self.noise_multiplier}, "
                f"num_clients={self.num_clients}, bits={self.bits}, beta={self.beta}, k_stddevs={self.k_stddevs})")


_PARAMS = {
    "clip_norm": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
    "noise_multiplier": Real(0, None, lo_open=True, typical=(0.3, 4.0)),
    "num_clients": Int(1, 1 << 20, typical=(1, 100)),
    "bits": Int(8, 40, typical=(12, 24)),
    "beta": Real(0, 1, hi_open=True, typical=(0.0, 0.9)),
    "k_stddevs": Real(0, None, lo_open=True, typical=(2.0, 6.0)),
}


@register("mechanism", "ddg")
class DistributedDiscreteGaussian(IntegerSecAggMechanism):
    """Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021); defaults: 16 bits, β = e^{−1/2},
    k = 4 as in the paper's experiments/code. See the module docstring."""

    name = "ddg"
    param_space = dict(_PARAMS)

    def __init__(self, clip_norm: float = 1.0, noise_multiplier: float = 1.0, num_clients: int = 10,
                 bits: int = 16, beta: float = math.exp(-0.5), k_stddevs: float = 4.0) -> None:
        super().__init__(clip_norm, noise_multiplier, num_clients, bits, beta, k_stddevs)

    def noise(self, shape, sigma_int, *, generator, device) -> Tensor:
        return discrete_gaussian(shape, sigma_int, generator=generator, device=device)

    def _rdp(self, orders, *, n: int, d: int):
        l2, l1 = self.integer_sensitivities(d)
        big_d = self.padded(d)
        sigma = self.local_std * self.scale(d)
        return distributed.ddg_rdp(orders, l2=2 * l2, l1=2 * l1, local_sigma=sigma, n=n, dim=big_d)
