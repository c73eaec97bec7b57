"""Secure noise for deployment: a CSPRNG source, exact discrete draws, and one switch per mechanism.

Simulations draw every random number from a ``torch.Generator`` seeded from the run's seed
(:mod:`privfl.seeding`): anyone who knows the seed regenerates the noise, which is what
reproducible research needs and what a deployment must never do. A mechanism whose class sets
``supports_secure_rng = True`` can be switched to a secure source with :func:`with_rng`
(``with_rng(mechanism, "secure")``); its draws then go through :func:`rand` and
:func:`add_gaussian`, which ignore the generator and read :class:`SecureRandom` instead.

**Source.** :class:`SecureRandom` reads the OS CSPRNG (``source="os"``: ``os.urandom``) or a
ChaCha20 / AES-256-CTR keystream from ``cryptography`` keyed with 32 fresh bytes of ``os.urandom``
(``"chacha20"``, the default: the same security, one system call per key instead of per draw).
A keyed source re-keys itself in a forked child process, so two workers never share a keystream.

**Uniforms and discrete draws.** 64-bit words → uniforms ``k·2⁻⁵³`` (all 53 mantissa bits random);
integers below ``n`` by rejection (exactly uniform); Bernoulli(exp(−γ)) as ``U < exp(−γ)`` in
float64 (probability exact up to 2⁻⁵³).

**Gaussian noise without the floating-point attack.** Mironov (CCS 2012) showed that the set of
floating-point values a naive sampler can output around ``x`` depends on ``x``, so the low bits of
``x + noise`` leak ``x`` (Jin et al., "Are We There Yet?", S&P 2022, did it for Gaussian samplers
used in DP libraries). :func:`add_gaussian` in secure mode follows the discrete Gaussian route of
Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020:

1. rows are clipped again in float64 to ``clip_norm·(1 − 2⁻⁴⁰)`` and each coordinate is truncated
   towards zero onto the grid ``γ·ℤ``, with ``γ = 2^(⌊log₂ σ⌋ − 20)`` (so σ/γ ∈ [2²⁰, 2²¹)); truncation
   never increases a norm, so the ℓ2 sensitivity stays ``clip_norm`` (bias ≤ γ ≈ 10⁻⁶·σ per coordinate);
2. noise ``γ·Z`` with ``Z`` ~ the discrete Gaussian N_ℤ(0, (σ/γ)²), drawn by CKS Algorithm 3
   (discrete Laplace proposal with ``t = ⌊σ/γ⌋ + 1``, Bernoulli(exp(·)) acceptance), vectorised;
3. the sum is formed in float64, where every value is an integer multiple of γ below 2⁵³·γ, so it is
   **exact**: the output's support is the grid whatever the input, and the conversion to the
   caller's dtype afterwards is post-processing.

The product of discrete Gaussians with integer-valued ℓ2 sensitivity Δ satisfies
(Δ²/2σ²)-concentrated DP (CKS, Theorem 14), i.e. RDP ``α·Δ²/(2σ²)`` — the continuous Gaussian's
curve. :func:`discrete_gaussian_guarantee` records exactly that curve and, deliberately, **no**
``noise_multiplier``: the ledger's Poisson-subsampled Gaussian closed form is proved for the
continuous Gaussian, so subsampling amplification is not credited to the discrete one (conservative).
Residual floating-point effect: the Bernoulli probabilities are exact to 2⁻⁵³ relative.

Secure draws are made on the CPU (the CSPRNG and the exact float64 sum) and moved to the caller's
device. Cost: ``benchmarks/secure_noise.py`` measures it against ``torch.randn`` with a generator.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import threading

import numpy as np
import torch
from torch import Tensor

from privfl.core import PrivacyGuarantee
from privfl.params import POSITIVE, Choice, Int

__all__ = [
    "RNG_MODES",
    "SOURCES",
    "SecureRandom",
    "default_source",
    "with_rng",
    "rand",
    "add_gaussian",
    "grid_step",
    "discrete_gaussian_guarantee",
]

RNG_MODES = ("seeded", "secure")
SOURCES = ("os", "chacha20", "aes-ctr")
#: σ/γ ∈ [2^GRID_BITS, 2^(GRID_BITS+1)): the grid's resolution relative to the noise
GRID_BITS = 20
_CLIP_MARGIN = 1.0 - 2.0**-40
_CHUNK = 1 << 16  # keystream bytes produced per cipher call at least


class SecureRandom:
    """A cryptographically secure random source: ``"os"`` (``os.urandom``), ``"chacha20"`` or
    ``"aes-ctr"`` (keystreams from ``cryptography``, keyed from ``os.urandom``; re-keyed after fork)."""

    def __init__(self, source: str = "chacha20") -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
        self.source = source
        self._lock = threading.Lock()
        self._pid = -1
        self._encryptor = None

    def _rekey(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key, nonce = os.urandom(32), os.urandom(16)
        if self.source == "chacha20":
            cipher = Cipher(algorithms.ChaCha20(key, nonce), mode=None)
        else:
            cipher = Cipher(algorithms.AES(key), modes.CTR(nonce))
        self._encryptor = cipher.encryptor()
        self._pid = os.getpid()

    def random_bytes(self, n: int) -> bytes:
        """``n`` secure random bytes."""
        Int(0, None).check("n", n)
        if self.source == "os":
            return os.urandom(n)
        with self._lock:
            if self._pid != os.getpid():
                self._rekey()
            return self._encryptor.update(bytes(n))

    def bits64(self, n: int) -> np.ndarray:
        """``n`` uniform 64-bit words (``uint64``)."""
        return np.frombuffer(self.random_bytes(8 * n), dtype=np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms on [0, 1) with 53 random bits each (``k·2⁻⁵³``), float64."""
        return (self.bits64(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def randbelow(self, high: int, n: int) -> np.ndarray:
        """``n`` integers uniform on {0, …, high − 1} (rejection: exactly uniform), int64."""
        Int(1, 2**62).check("high", high)
        limit = np.uint64((2**64 // high) * high - 1)  # accept words <= limit: a multiple of high values
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            words = self.bits64(int((n - filled) * 1.1) + 8)
            words = words[words <= limit][: n - filled]
            out[filled:filled + len(words)] = (words % np.uint64(high)).astype(np.int64)
            filled += len(words)
        return out

    def bernoulli_exp(self, gamma: np.ndarray) -> np.ndarray:
        """Independent Bernoulli(exp(−γ)) for every entry of ``gamma`` ≥ 0 (bool array)."""
        return self.uniform(gamma.size) < np.exp(-gamma.reshape(-1))

    def discrete_laplace(self, t: int, n: int) -> np.ndarray:
        """``n`` draws of the discrete Laplace Lap_ℤ(t): P(y) ∝ exp(−|y|/t) (CKS Algorithm 2, s = 1)."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            m = int((n - filled) * 2.2) + 16
            u = self.randbelow(t, m)
            u = u[self.bernoulli_exp(u / t)]
            v = np.zeros(len(u), dtype=np.int64)  # geometric: count successes of Bernoulli(e^−1)
            going = np.ones(len(u), dtype=bool)
            while going.any():
                idx = np.nonzero(going)[0]
                success = self.bernoulli_exp(np.ones(len(idx)))
                v[idx[success]] += 1
                going[idx[~success]] = False
            x = u + t * v
            negative = self.randbelow(2, len(x)).astype(bool)
            keep = ~(negative & (x == 0))  # reject "−0" so that 0 is not counted twice
            y = np.where(negative, -x, x)[keep][: n - filled]
            out[filled:filled + len(y)] = y
            filled += len(y)
        return out

    def discrete_gaussian(self, sigma: float, n: int) -> np.ndarray:
        """``n`` draws of the discrete Gaussian N_ℤ(0, σ²): P(y) ∝ exp(−y²/2σ²) (CKS Algorithm 3)."""
        POSITIVE.check("sigma", sigma)
        sigma2 = float(sigma) ** 2
        t = math.floor(sigma) + 1
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            y = self.discrete_laplace(t, int((n - filled) * 1.5) + 16)
            gamma = (np.abs(y) - sigma2 / t) ** 2 / (2.0 * sigma2)
            y = y[self.bernoulli_exp(gamma)][: n - filled]
            out[filled:filled + len(y)] = y
            filled += len(y)
        return out


_DEFAULT: SecureRandom | None = None


def default_source() -> SecureRandom:
    """The process-wide secure source: ChaCha20 keyed from ``os.urandom`` (re-keyed after fork), or
    ``os.urandom`` itself where ``cryptography`` is not installed (it comes with ``privfl[flower]``)."""
    global _DEFAULT
    if _DEFAULT is None:
        try:
            import cryptography  # noqa: F401

            _DEFAULT = SecureRandom("chacha20")
        except ImportError:
            _DEFAULT = SecureRandom("os")
    return _DEFAULT


RNG = Choice(*RNG_MODES)


def check_rng(rng: object, *, owner: str | None = None) -> str:
    """``rng`` against the declared :data:`RNG` choice (the shared params error shape)."""
    return RNG.check("rng", rng, owner=owner)


def with_rng(mechanism, rng: str):
    """A copy of ``mechanism`` drawing its noise from ``rng`` (``"seeded"``: the generator passed to
    ``privatize``/``aggregate``, reproducible; ``"secure"``: :func:`default_source`, never reproducible).

    Raises ``ValueError`` for ``"secure"`` when the mechanism's class does not declare
    ``supports_secure_rng = True`` (its draws are not routed through this module).
    """
    from privfl.core import Mechanism

    if not isinstance(mechanism, Mechanism):
        raise TypeError(f"mechanism must be a privfl Mechanism, got {type(mechanism).__name__}")
    check_rng(rng)
    if rng == "secure" and not mechanism.supports_secure_rng:
        raise ValueError(f"mechanism {mechanism.name!r} has no secure noise source (only seeded draws); "
                         "secure noise exists for: gaussian, dp-fedavg, rqm")
    out = copy.copy(mechanism)
    out.rng = rng
    return out


def _is_secure(rng: object) -> bool:
    return check_rng(rng) == "secure"


def rand(shape, *, generator: torch.Generator | None, dtype: torch.dtype, device, rng: str = "seeded") -> Tensor:
    """Uniforms on [0, 1): ``torch.rand`` with ``generator`` (seeded) or 53-bit secure uniforms."""
    if not _is_secure(rng):
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)
    n = math.prod(shape)
    u = torch.from_numpy(default_source().uniform(n)).reshape(shape)
    return u.to(device=device, dtype=dtype)


def grid_step(std: float) -> float:
    """The secure Gaussian's grid γ = 2^(⌊log₂ std⌋ − 20): a power of two, σ/γ ∈ [2²⁰, 2²¹)."""
    return 2.0 ** (math.floor(math.log2(std)) - GRID_BITS)


def add_gaussian(
    x: Tensor, std: float, *, generator: torch.Generator | None, rng: str = "seeded",
    clip_norm: float | None = None, sum_rows: bool = False,
) -> Tensor:
    """``x + N(0, std²)`` per entry (``sum_rows``: ``Σ rows + N(0, std² I)``), in ``x``'s dtype.

    Seeded: ``torch.randn`` with ``generator`` on ``x`` as given. Secure: the grid-exact discrete
    Gaussian of the module docstring; ``clip_norm`` (the rows' ℓ2 bound) is re-imposed in float64
    before snapping so that the sensitivity is exactly ``clip_norm``.
    """
    if not _is_secure(rng):
        base = x.sum(dim=0) if sum_rows else x
        return base + std * torch.randn(base.shape, generator=generator, dtype=base.dtype, device=base.device)
    gamma = grid_step(std)
    x64 = x.detach().to(device="cpu", dtype=torch.float64)
    if clip_norm is not None and x64.dim() == 2 and x64.shape[0]:
        norms = torch.linalg.vector_norm(x64, dim=1, keepdim=True)
        x64 = x64 * torch.clamp(clip_norm * _CLIP_MARGIN / norms.clamp_min(1e-300), max=1.0)
    snapped = torch.trunc(x64 / gamma) * gamma  # towards zero: |snapped| <= |x| coordinate-wise
    base = snapped.sum(dim=0) if sum_rows else snapped
    bound = (float(base.abs().max()) if base.numel() else 0.0) + 64.0 * std
    if not bound < 2.0**52 * gamma:
        raise ValueError(f"secure Gaussian: values up to {bound:.3g} do not fit the exact grid of step {gamma:.3g} "
                         "(|x| must stay below 2^31·std); scale the inputs or raise the noise")
    z = default_source().discrete_gaussian(std / gamma, base.numel())
    out = base + gamma * torch.from_numpy(z.astype(np.float64)).reshape(base.shape)  # exact in float64
    return out.to(device=x.device, dtype=x.dtype)


def _discrete_gaussian_rdp(ratio: float, orders: np.ndarray) -> np.ndarray:
    return np.asarray(orders, dtype=np.float64) / (2.0 * ratio**2)


def discrete_gaussian_guarantee(noise_multiplier: float, *, name: str, unit: str = "client",
                                notes: str = "") -> PrivacyGuarantee:
    """One release of the multivariate discrete Gaussian with σ = ``noise_multiplier``·Δ: RDP
    α/(2·noise_multiplier²) (CKS 2020, Theorem 14); no ``noise_multiplier`` field, so the ledger does not
    apply the continuous subsampled-Gaussian amplification to it."""
    return PrivacyGuarantee(
        name=name,
        rdp_curve=functools.partial(_discrete_gaussian_rdp, float(noise_multiplier)),
        unit=unit,
        notes=notes or "discrete Gaussian on a grid (secure noise); subsampling amplification not credited",
        extra={"discrete_noise_multiplier": float(noise_multiplier)},
    )
