"""One-shot local-DP frequency oracles: GRR, OLH, OUE and SUE, with exact guarantees.

Each user holds one category id in ``[0, k)``; ``privatize`` randomizes every user's value
independently, ``estimate`` returns the unbiased frequency vector (matrix inversion: the
"pure" frequency-oracle estimator of Wang, Blocki, Li and Jha, "Locally Differentially Private
Protocols for Frequency Estimation", USENIX Security 2017) and ``variance`` its exact closed form.
:func:`project_simplex` is the optional, separate post-processing onto the probability simplex
(biased, never lower MSE guaranteed per coordinate — keep it apart from the unbiased estimate).

- :class:`GRR` — generalized (k-ary) randomized response (Warner 1965; Kairouz, Bonawitz,
  Ramage, ICML 2016): keep the value with ``p = e^ε / (e^ε + k − 1)``, else a uniform other one.
- :class:`OLH` — optimized local hashing (Wang et al. 2017): each user draws a hash function
  ``H: [k] → [g]`` (its public "seed", sent with the report) and applies GRR on ``[g]`` to
  ``H(v)``; ``g = round(e^ε + 1)``, the variance-optimal choice of the paper.
- :class:`OUE` — optimized unary encoding (Wang et al. 2017): one-hot vector, bit ``v`` kept at 1
  w.p. ``1/2``, every other bit set w.p. ``1/(e^ε + 1)``.
- :class:`SUE` — symmetric unary encoding = basic one-time RAPPOR (Erlingsson, Pihur, Korolova,
  CCS 2014): every bit flipped w.p. ``1/(e^{ε/2} + 1)``.

The hash family (:func:`hash_values`) is ``H_{a,b}(x) = ⌊g · ((a·x + b) mod P) / P⌋`` with the
prime ``P = 2^30 − 35`` and ``(a, b)`` uniform on ``Z_P × Z_P`` (Carter & Wegman 1979). For
``x ≠ x'`` in ``[0, P)`` the pair ``((a x + b) mod P, (a x' + b) mod P)`` is uniform on ``Z_P²``
(an affine bijection of ``(a, b)``), so ``H(x)`` and ``H(x')`` are *independent*, each with the
near-uniform law ``π_j = |{r : ⌊g r / P⌋ = j}| / P``. The local-hashing analysis needs exactly this:
the probability that two distinct values collide, ``c = Σ_j π_j²`` (``= 1/g + O(g / P²)``), which
:func:`hash_collision_probability` computes exactly and the estimators use, so they are exactly
unbiased. Privacy does not depend on the family at all (the hash is public; the randomization is
GRR on ``[g]``). Everything is integer tensor arithmetic, vectorized over users (int64 for a
single evaluation, int32 in the server's counting loop), and runs on any device.

Randomness comes from the ``torch.Generator`` passed in (same seed → same reports). torch's
generators are not cryptographic: this is a research simulator, not a deployment.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from privfl.accounting.guarantees import pmf_guarantee
from privfl.core import InputDomain, Mechanism, PrivacyGuarantee
from privfl.params import Int, Real
from privfl.registry import register

__all__ = [
    "HASH_PRIME",
    "FrequencyOracle",
    "GRR",
    "OLH",
    "HashedReports",
    "OUE",
    "SUE",
    "project_simplex",
    "draw_hash_seeds",
    "hash_values",
    "hash_support_counts",
    "hash_collision_probability",
    "grr_perturb",
    "column_counts",
    "bits_to_index",
    "check_category",
    "ue_bit_pmfs",
    "olh_default_g",
]

HASH_PRIME = 1_073_741_789  # 2**30 - 35, the largest prime below 2**30 (int32 arithmetic never overflows)
_UE_CHUNK_ELEMENTS = 1 << 21  # users × categories drawn at once by unary encodings (bounds peak memory)


# --------------------------------------------------------------------------------------------
# Validation at the public entry points
# --------------------------------------------------------------------------------------------
def check_k(k: Any, *, name: str = "k") -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise ValueError(f"{name} (domain size) must be an integer >= 2, got {k!r}")
    return int(k)


def check_eps(eps: Any, *, name: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {eps!r}")
    return eps


def check_g(g: Any, *, name: str = "g") -> int:
    if not isinstance(g, (int, np.integer)) or isinstance(g, bool):
        raise TypeError(f"{name} (hashed domain size) must be an integer >= 2, got {type(g).__name__} {g!r}")
    if g < 2:
        raise ValueError(f"{name} (hashed domain size) must be an integer >= 2, got {g!r}")
    if g > HASH_PRIME:
        raise ValueError(f"{name} must be <= {HASH_PRIME} (the hash family's prime), got {g!r}")
    return int(g)


def check_values(values: Any, k: int, *, name: str = "values") -> Tensor:
    """A ``[n]`` int64 tensor of category ids in ``[0, k)`` with ``n >= 1``."""
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of category ids (int64, shape [n]), "
                        f"got {type(values).__name__}")
    if values.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64 (category ids in [0, {k})), got {values.dtype}")
    if values.dim() != 1:
        raise ValueError(f"{name} must have shape [n] (one category id per user), got shape {tuple(values.shape)}")
    if values.numel() == 0:
        raise ValueError(f"{name} is empty: a frequency oracle needs at least one user (n >= 1)")
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= k:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} must lie in [0, k) = [0, {k}), got a value {bad}")
    return values


def check_generator(generator: Any, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if torch.device(generator.device).type != device.type:
        raise ValueError(f"generator is on device {generator.device} but the values are on {device}; "
                         "create the generator on the values' device")
    return generator


def check_client_ids(client_ids: Any, n: int, device: torch.device) -> Tensor:
    """``[n]`` distinct non-negative int64 ids; ``None`` means users ``0 .. n-1``."""
    if client_ids is None:
        return torch.arange(n, device=device)
    if not isinstance(client_ids, Tensor):
        raise TypeError(f"client_ids must be a torch.Tensor of int64 ids or None, got {type(client_ids).__name__}")
    if client_ids.dtype != torch.int64 or client_ids.dim() != 1:
        raise ValueError(f"client_ids must be an int64 tensor of shape [n], got {client_ids.dtype} "
                         f"shape {tuple(client_ids.shape)}")
    if client_ids.shape[0] != n:
        raise ValueError(f"client_ids must have one id per value: got {client_ids.shape[0]} ids for {n} values")
    client_ids = client_ids.to(device)
    if int(client_ids.min()) < 0:
        raise ValueError(f"client_ids must be >= 0, got {int(client_ids.min())}")
    if torch.unique(client_ids).numel() != n:
        raise ValueError("client_ids must be distinct: a user reports at most once per collection")
    return client_ids


def check_reports(reports: Any, *, dim: int, width: int | None = None, name: str = "reports") -> Tensor:
    if not isinstance(reports, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor returned by privatize, got {type(reports).__name__}")
    if reports.dim() != dim or (width is not None and reports.shape[1] != width):
        want = "[n]" if dim == 1 else f"[n, {width}]"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(reports.shape)}")
    if reports.shape[0] == 0:
        raise ValueError(f"{name} is empty: estimating a frequency needs at least one report (n >= 1)")
    if reports.is_floating_point() or reports.is_complex():
        raise TypeError(f"{name} must be an integer tensor (as returned by privatize), got {reports.dtype}")
    return reports


# --------------------------------------------------------------------------------------------
# Exact privacy quantities from a pair of output distributions
# --------------------------------------------------------------------------------------------
def _guarantee(name: str, P: np.ndarray, Q: np.ndarray, notes: str, **extra: Any) -> PrivacyGuarantee:
    """Pure ε, exact RDP and ``pmf_pair`` from the worst pair's output pmfs (unit: one user's value)."""
    return pmf_guarantee(P, Q, name=name, unit="user", notes=notes, **extra)


def grr_pmf_pair(p: float, q: float, d: int, collision: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Worst-pair output pmfs of GRR on ``d`` outputs, outcomes with equal likelihood ratio merged.

    Outcomes: report = first value, report = second value, anything else (same mass under both,
    plus the mass ``collision`` of public hash draws under which both values hash alike). Merging
    outcomes with one likelihood ratio leaves the privacy-loss distribution unchanged.
    """
    rest = (1 - collision) * (d - 2) * q + collision
    P = np.array([(1 - collision) * p, (1 - collision) * q, rest])
    Q = np.array([(1 - collision) * q, (1 - collision) * p, rest])
    return (P, Q) if rest > 0 else (P[:2], Q[:2])


def ue_pmf_pair(a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Worst-pair pmfs of a unary encoding over the two bits where neighbours differ.

    ``a`` = P(bit = 1 | the user's own category), ``b`` = P(bit = 1 | another category); the
    other ``k − 2`` bits are identically distributed under both inputs and independent, so the
    privacy-loss distribution is that of these four outcomes (1,1), (1,0), (0,1), (0,0).
    """
    P = np.array([a * b, a * (1 - b), (1 - a) * b, (1 - a) * (1 - b)])
    Q = np.array([b * a, b * (1 - a), (1 - b) * a, (1 - b) * (1 - a)])
    return P, Q


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------
def project_simplex(estimate: Tensor) -> Tensor:
    """Euclidean projection of a frequency estimate onto the probability simplex.

    The sort-based algorithm of Duchi, Shalev-Shwartz, Singer and Chandra (ICML 2008): the result
    is ``max(f̂ − θ, 0)`` with the threshold θ that makes it sum to 1. Post-processing (no privacy
    cost), but *biased*: report it beside, never instead of, the unbiased estimate.
    Works on ``[k]`` or batched ``[..., k]`` floating-point tensors; keeps dtype and device.
    """
    if not isinstance(estimate, Tensor) or not estimate.is_floating_point():
        raise TypeError(f"estimate must be a floating-point torch.Tensor, got {type(estimate).__name__}")
    if estimate.dim() == 0 or estimate.shape[-1] == 0:
        raise ValueError(f"estimate must have shape [..., k] with k >= 1, got {tuple(estimate.shape)}")
    if not bool(torch.isfinite(estimate).all()):
        raise ValueError("estimate contains NaN or Inf")
    k = estimate.shape[-1]
    u, _ = torch.sort(estimate, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - 1
    ind = torch.arange(1, k + 1, device=estimate.device, dtype=estimate.dtype)
    cond = (u - css / ind) > 0
    rho = cond.to(torch.int64).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(estimate.dtype)
    return torch.clamp(estimate - theta, min=0)


# --------------------------------------------------------------------------------------------
# Randomizers shared by the one-shot and longitudinal protocols
# --------------------------------------------------------------------------------------------
def grr_perturb(x: Tensor, d: int, p: float, generator: torch.Generator | None) -> Tensor:
    """GRR on ``[d]``: keep each entry of ``x`` w.p. ``p``, else a uniformly drawn *other* value."""
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64) < p
    other = torch.randint(0, d - 1, x.shape, generator=generator, device=x.device)
    other = other + (other >= x).to(other.dtype)
    return torch.where(keep, x, other)


def bernoulli_bits(ones: Tensor, p: float, q: float, generator: torch.Generator | None) -> Tensor:
    """Independent bits: 1 w.p. ``p`` where ``ones`` is true and w.p. ``q`` elsewhere (uint8).

    Uniforms are drawn in float32 (the probabilities are resolved to 2^-24) in chunks of rows so a
    ``[n, k]`` draw never holds more than ~2M floats at once.
    """
    n = ones.shape[0]
    width = max(1, ones[0].numel()) if n else 1
    rows = max(1, _UE_CHUNK_ELEMENTS // width)
    out = torch.empty(ones.shape, dtype=torch.uint8, device=ones.device)
    symmetric = abs(p + q - 1) < 1e-12  # flip every bit w.p. q: one comparison and an xor
    for start in range(0, n, rows):
        block = ones[start:start + rows]
        u = torch.rand(block.shape, generator=generator, device=ones.device, dtype=torch.float32)
        if symmetric:
            out[start:start + rows] = torch.bitwise_xor(block, u < q)
        else:
            out[start:start + rows] = u < block.to(torch.float32).mul_(p - q).add_(q)
    return out


def column_counts(bits: Tensor) -> Tensor:
    """Column sums of a ``[n, k]`` 0/1 matrix (int64 ``[k]``), summed in cache-sized row blocks
    (an order of magnitude faster than one ``sum(dim=0)`` over a large uint8 matrix on CPU)."""
    rows = max(1, (_UE_CHUNK_ELEMENTS * 2) // max(1, bits.shape[1]))
    out = torch.zeros(bits.shape[1], dtype=torch.int64, device=bits.device)
    for start in range(0, bits.shape[0], rows):
        out += bits[start:start + rows].sum(dim=0, dtype=torch.int32)
    return out


# --------------------------------------------------------------------------------------------
# The hash family (Carter–Wegman, prime field, bucketed onto [g])
# --------------------------------------------------------------------------------------------
def draw_hash_seeds(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``[n, 2]`` int64: each user's ``(a, b)`` drawn uniformly from ``Z_P × Z_P``."""
    return torch.randint(0, HASH_PRIME, (n, 2), generator=generator, device=device)


def hash_values(seeds: Tensor, x: Tensor, g: int) -> Tensor:
    """``H_{a,b}(x) = ⌊g · ((a x + b) mod P) / P⌋`` per row (int64; needs ``0 <= x < P``)."""
    r = torch.remainder(seeds[:, 0] * x + seeds[:, 1], HASH_PRIME)
    return torch.div(r * g, HASH_PRIME, rounding_mode="floor")


def _bucket_lo(j: Tensor, g: int) -> Tensor:
    """Smallest ``r`` with ``⌊g r / P⌋ = j``, i.e. ``⌈j P / g⌉`` (int64)."""
    return torch.div(j * HASH_PRIME + (g - 1), g, rounding_mode="floor")


def hash_collision_probability(g: int) -> float:
    """Exact ``P[H(x) = H(x')]`` for distinct ``x, x'`` under the family: ``Σ_j π_j²``."""
    # Bucket j is [⌈jP/g⌉, ⌈(j+1)P/g⌉): sizes ⌊P/g⌋ or ⌊P/g⌋ + 1, summing to P, so exactly
    # P mod g buckets have the larger size.
    base, extra = divmod(HASH_PRIME, g)
    total = extra * (base + 1) ** 2 + (g - extra) * base**2
    return float(Fraction(total, HASH_PRIME**2))


def hash_support_counts(seeds: Tensor, y: Tensor, g: int, k: int) -> Tensor:
    """``C(v) = #{u : H_u(v) = y_u}`` for every ``v`` in ``[0, k)`` (int64 ``[k]``).

    ``H_u(v) = y_u`` ⟺ ``r_u(v) = (a_u v + b_u) mod P`` lies in the bucket ``[lo, hi)`` of ``y_u`` ⟺
    ``s_u(v) = (r_u(v) − lo) mod P < hi − lo``. ``s_u`` is an arithmetic progression mod P in ``v``
    (start ``(b_u − lo) mod P``, step ``a_u``), so one pass over ``v`` needs only int32 adds, a
    branch-free reduction mod P and a comparison on ``[n]`` vectors — vectorized over users, no
    ``[n, k]`` tensor, and ~5 elementwise ops per (user, value).
    """
    device = seeds.device
    a = seeds[:, 0]
    lo = _bucket_lo(y, g)
    hi = _bucket_lo(y + 1, g)
    s = torch.remainder(seeds[:, 1] - lo, HASH_PRIME).to(torch.int32)
    width = (hi - lo).to(torch.int32)
    step = (a - HASH_PRIME).to(torch.int32)  # adding a − P then P·[negative] is "+ a mod P" without overflow
    prime = torch.tensor(HASH_PRIME, dtype=torch.int32, device=device)
    counts = torch.empty(k, dtype=torch.int64, device=device)
    for v in range(k):
        counts[v] = torch.count_nonzero(s < width)
        if v + 1 < k:
            s.add_(step)
            s.add_(torch.bitwise_and(s >> 31, prime))
    return counts


def hash_indicator(seeds: Tensor, y: Tensor, g: int, k: int) -> Tensor:
    """``[n, k]`` bool matrix ``H_u(v) = y_u`` (per-user decoding; memory ``n·k``)."""
    v = torch.arange(k, device=seeds.device)
    r = torch.remainder(seeds[:, :1] * v + seeds[:, 1:2], HASH_PRIME)
    return torch.div(r * g, HASH_PRIME, rounding_mode="floor") == y[:, None]


def check_category(v: Any, k: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < k:
        raise ValueError(f"v must be a category id in [0, k) = [0, {k}), got {v!r}")
    return int(v)


def ue_bit_pmfs(k: int, v: int, a: float, b: float) -> np.ndarray:
    """``[k, 2]`` per-bit pmfs of a unary encoding: bit ``v`` is 1 w.p. ``a``, every other bit w.p. ``b``."""
    one = np.full(k, b)
    one[v] = a
    return np.stack([1.0 - one, one], axis=1)


def bits_to_index(bits: Tensor) -> Tensor:
    """``[n, w]`` bit vectors (w <= 62) → int64 ``Σ_j bit_j 2^j`` (the enumeration of unary encodings)."""
    if bits.shape[1] > 62:
        raise ValueError(f"bits_to_index needs at most 62 bits per row, got {bits.shape[1]}")
    weights = torch.ones(bits.shape[1], dtype=torch.int64, device=bits.device) << torch.arange(
        bits.shape[1], device=bits.device)
    return (bits.to(torch.int64) * weights).sum(dim=1)


def olh_default_g(eps: float) -> int:
    """OLH's variance-optimal hashed domain size ``g = round(e^ε + 1)`` (Wang et al. 2017)."""
    return max(2, int(round(math.exp(eps) + 1)))


# --------------------------------------------------------------------------------------------
# The frequency-oracle base class
# --------------------------------------------------------------------------------------------
#: Declared parameters the frequency oracles share (one declaration each; used in their ``param_space``).
EPS = Real(0, None, lo_open=True, log=True, typical=(0.1, 6.0))
K_SMALL = Int(2, None, typical=(2, 8))  # unary encodings: k bits per report
K_HASHED = Int(2, HASH_PRIME, typical=(2, 12))  # hashed domains: values below the hash prime


class FrequencyOracle(Mechanism):
    """A local randomizer for one category id per user, with its unbiased decoder.

    Every protocol here has the same estimator shape: each report "supports" some categories;
    a user holding ``v`` supports ``v`` with probability ``A`` and a user holding another category
    supports it with probability ``B``, independently across users. Then ``C(v)/n`` has mean
    ``B + f(v)(A − B)``, the unbiased estimate is ``f̂(v) = (C(v)/n − B) / (A − B)`` and its exact
    variance ``[f A(1 − A) + (1 − f) B(1 − B)] / (n (A − B)²)``.
    Subclasses give ``(A, B)`` (:meth:`support_probabilities`) and :meth:`support_counts`.
    """

    name: ClassVar[str] = "frequency-oracle"
    role = "frequency-oracle"  # privatize takes [n] int64 ids, not [n, d] floats
    exact_pmf = True  # output_pmf from transition_matrix; report_outcomes per protocol
    nonfinite: ClassVar[str] = "n/a"  # integer category ids: no NaN/Inf can reach them
    k: int

    def domain(self) -> InputDomain:
        """Category ids ``0..k-1`` (replace-one neighbours)."""
        return InputDomain.of_categories(self.k)

    # -- subclasses -------------------------------------------------------------------------
    def support_probabilities(self) -> tuple[float, float]:
        raise NotImplementedError

    def support_counts(self, reports: Tensor) -> Tensor:
        raise NotImplementedError

    def support_indicator(self, reports: Tensor) -> Tensor:
        raise NotImplementedError

    # -- decoding ---------------------------------------------------------------------------
    def estimate(self, reports: Tensor) -> Tensor:
        """Unbiased frequency vector ``[k]`` (float64, reports' device); entries may be < 0."""
        counts = self.support_counts(reports)
        n = reports.shape[0]
        a, b = self.support_probabilities()
        return (counts.to(torch.float64) / n - b) / (a - b)

    def decode(self, reports: Tensor) -> Tensor:
        """One unbiased ``[k]`` estimate per report (``[n, k]`` float64); their mean is :meth:`estimate`."""
        a, b = self.support_probabilities()
        return (self.support_indicator(reports).to(torch.float64) - b) / (a - b)

    def variance(self, n: int, freqs: Tensor | np.ndarray | Sequence[float] | None = None) -> Tensor:
        """Exact variance of each coordinate of :meth:`estimate` from ``n`` users.

        ``freqs`` are the true frequencies ``f`` (``[k]``); ``None`` gives the usual approximation
        at ``f = 0`` (the variance quoted in the papers), the same for every category.
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an integer >= 1 (number of users), got {n!r}")
        a, b = self.support_probabilities()
        f = torch.zeros(self.k, dtype=torch.float64) if freqs is None else torch.as_tensor(freqs, dtype=torch.float64)
        if f.shape != (self.k,):
            raise ValueError(f"freqs must have shape [k] = [{self.k}], got {tuple(f.shape)}")
        return (f * a * (1 - a) + (1 - f) * b * (1 - b)) / (n * (a - b) ** 2)

    # -- exact output distributions (for exact privacy checks) ------------------------------
    #: ``public_key``: the keyword of :meth:`transition_matrix` that takes a report's public randomness
    unbiased = True  # decode(privatize(v)) averages to the one-hot vector of v

    @abstractmethod
    def transition_matrix(self, **public: Any) -> np.ndarray:
        """``M[v, o] = P(report = o | value v)`` over an enumeration of the outputs (tests, audits)."""

    def output_pmf(self, v: int, *, public: Any = None, **options: Any) -> np.ndarray:
        """Exact pmf of the report's outcome (the enumeration of :meth:`transition_matrix`) for the value
        ``v``, given the report's public part ``public`` (:meth:`report_outcomes`); ``options`` go to
        :meth:`transition_matrix` (e.g. ``stage="permanent"`` for memoizing protocols)."""
        v = check_category(v, self.k)
        if public is not None:
            if self.public_key is None:
                raise ValueError(f"{self.name} reports carry no public randomness, got public={public!r}")
            options = {**options, self.public_key: tuple(int(t) for t in public)}
        return self.transition_matrix(**options)[int(v)]

    @abstractmethod
    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(outcome, public)``: each report's index into :meth:`output_pmf` and its public part (or None)."""


# --------------------------------------------------------------------------------------------
# GRR
# --------------------------------------------------------------------------------------------
@register("mechanism", "grr")
class GRR(FrequencyOracle):
    """Generalized randomized response (k-RR; Kairouz, Bonawitz, Ramage, ICML 2016).

    Report the true category w.p. ``p = e^ε / (e^ε + k − 1)``, else one of the other ``k − 1``
    uniformly. Reports: ``[n]`` int64 category ids. ε-LDP exactly (``p/q = e^ε``).
    """

    name = "grr"
    param_space = {
        "k": Int(2, None, typical=(2, 12)),
        "eps": EPS,
    }

    def __init__(self, k: int, eps: float):
        self.k = check_k(k)
        self.eps = check_eps(eps, name="eps")
        self.p = math.exp(self.eps) / (math.exp(self.eps) + self.k - 1)
        self.q = (1 - self.p) / (self.k - 1)

    def privatize(self, values: Tensor, *, generator: torch.Generator | None = None,
                  client_ids: Tensor | None = None) -> Tensor:
        values = check_values(values, self.k)
        generator = check_generator(generator, values.device)
        check_client_ids(client_ids, values.shape[0], values.device)
        return grr_perturb(values, self.k, self.p, generator)

    def _reports(self, reports: Tensor) -> Tensor:
        reports = check_reports(reports, dim=1)
        if int(reports.min()) < 0 or int(reports.max()) >= self.k:
            raise ValueError(f"reports must be category ids in [0, {self.k}), got a value outside")
        return reports

    def support_probabilities(self) -> tuple[float, float]:
        return self.p, self.q

    def support_counts(self, reports: Tensor) -> Tensor:
        return torch.bincount(self._reports(reports), minlength=self.k)

    def support_indicator(self, reports: Tensor) -> Tensor:
        reports = self._reports(reports)
        return reports[:, None] == torch.arange(self.k, device=reports.device)

    def transition_matrix(self, **public: Any) -> np.ndarray:
        m = np.full((self.k, self.k), self.q)
        np.fill_diagonal(m, self.p)
        return m

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        return self._reports(reports).to(torch.int64), None

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = grr_pmf_pair(self.p, self.q, self.k)
        return _guarantee(f"grr(k={self.k}, eps={self.eps:g})", P, Q,
                          "pure eps-LDP per report; pmf_pair over {true, other's, rest}",
                          bits_per_report=math.ceil(math.log2(self.k)))


# --------------------------------------------------------------------------------------------
# OLH
# --------------------------------------------------------------------------------------------
class HashedReports:
    """Decoding shared by the hashed-domain oracles (OLH, LOLOHA): a report is ``(a, b, y)``, the public
    hash seed and the reported hashed value ``y ∈ [g)``; a report supports every value ``v`` with
    ``h_{a,b}(v) = y``. Needs ``k``, ``g`` and :meth:`support_probabilities` on the class."""

    k: int
    g: int

    def _reports(self, reports: Tensor) -> Tensor:
        reports = check_reports(reports, dim=2, width=3).to(torch.int64)
        if int(reports[:, :2].min()) < 0 or int(reports[:, :2].max()) >= HASH_PRIME:
            raise ValueError(f"reports[:, :2] must be hash seeds in [0, {HASH_PRIME})")
        if int(reports[:, 2].min()) < 0 or int(reports[:, 2].max()) >= self.g:
            raise ValueError(f"reports[:, 2] must be hashed values in [0, g) = [0, {self.g})")
        return reports

    def support_counts(self, reports: Tensor) -> Tensor:
        reports = self._reports(reports)
        return hash_support_counts(reports[:, :2], reports[:, 2], self.g, self.k)

    def support_indicator(self, reports: Tensor) -> Tensor:
        reports = self._reports(reports)
        return hash_indicator(reports[:, :2], reports[:, 2], self.g, self.k)

    def _hash_transition(self, seed: tuple[int, int], p: float, q: float) -> np.ndarray:
        """``[k, g]``: ``p`` where ``y = h_seed(v)``, ``q`` elsewhere (a GRR_g after the public hash)."""
        a, b = seed
        h = ((a * np.arange(self.k, dtype=object) + b) % HASH_PRIME * self.g // HASH_PRIME).astype(np.int64)
        m = np.full((self.k, self.g), q)
        m[np.arange(self.k), h] = p
        return m

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        """The hashed report ``y`` given the (user's) public hash seed ``(a, b)``."""
        reports = self._reports(reports)
        return reports[:, 2], reports[:, :2]


@register("mechanism", "olh")
class OLH(HashedReports, FrequencyOracle):
    """Optimized local hashing (Wang, Blocki, Li, Jha, USENIX Security 2017).

    Each user draws ``(a, b)`` (its hash function ``H``, see the module docstring) and reports
    ``(a, b, y)`` with ``y = GRR_g(H(v))`` at ``p = e^ε / (e^ε + g − 1)``. ``g`` defaults to the
    paper's ``round(e^ε + 1)``. Reports: ``[n, 3]`` int64 rows ``(a, b, y)``.
    The server counts ``C(v) = #{u : H_u(v) = y_u}``; with the family's exact collision
    probability ``c``, ``B = c p + (1 − c) q`` (≈ 1/g) and the estimator is exactly unbiased.
    """

    name = "olh"
    public_key = "seed"
    param_space = {
        "k": K_HASHED,
        "eps": EPS,
        "g": Int(2, HASH_PRIME, typical=(2, 8), optional=True),
    }

    def __init__(self, k: int, eps: float, g: int | None = None):
        self.k = check_k(k)
        if self.k > HASH_PRIME:
            raise ValueError(f"k must be <= {HASH_PRIME} for the hash family, got {k!r}")
        self.eps = check_eps(eps, name="eps")
        self.g = olh_default_g(self.eps) if g is None else check_g(g)
        self.p = math.exp(self.eps) / (math.exp(self.eps) + self.g - 1)
        self.q = (1 - self.p) / (self.g - 1)
        self.collision = hash_collision_probability(self.g)

    def privatize(self, values: Tensor, *, generator: torch.Generator | None = None,
                  client_ids: Tensor | None = None) -> Tensor:
        values = check_values(values, self.k)
        generator = check_generator(generator, values.device)
        check_client_ids(client_ids, values.shape[0], values.device)
        seeds = draw_hash_seeds(values.shape[0], generator, values.device)
        y = grr_perturb(hash_values(seeds, values, self.g), self.g, self.p, generator)
        return torch.cat([seeds, y[:, None]], dim=1)

    def support_probabilities(self) -> tuple[float, float]:
        return self.p, self.collision * self.p + (1 - self.collision) * self.q

    def transition_matrix(self, *, seed: tuple[int, int] = (1, 0), **public: Any) -> np.ndarray:
        """``[k, g]``: P(y | v) given the (public) hash function ``seed = (a, b)``."""
        return self._hash_transition(seed, self.p, self.q)

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = grr_pmf_pair(self.p, self.q, self.g, self.collision)
        return _guarantee(f"olh(k={self.k}, eps={self.eps:g}, g={self.g})", P, Q,
                          "pure eps-LDP per report; the hash is public and part of the report; pmf_pair is the "
                          "exact mixture over hash draws (colliding draws merged into the last outcome)",
                          bits_per_report=2 * 30 + math.ceil(math.log2(self.g)), collision=self.collision)


# --------------------------------------------------------------------------------------------
# Unary encodings
# --------------------------------------------------------------------------------------------
class _UnaryEncoding(FrequencyOracle):
    """One-hot encode, then flip bits independently: bit ``v`` is 1 w.p. ``p``, others w.p. ``q``."""

    p: float
    q: float

    def _init(self, k: int, eps: float) -> None:
        self.k = check_k(k)
        self.eps = check_eps(eps, name="eps")

    def privatize(self, values: Tensor, *, generator: torch.Generator | None = None,
                  client_ids: Tensor | None = None) -> Tensor:
        values = check_values(values, self.k)
        generator = check_generator(generator, values.device)
        check_client_ids(client_ids, values.shape[0], values.device)
        onehot = values[:, None] == torch.arange(self.k, device=values.device)
        return bernoulli_bits(onehot, self.p, self.q, generator)

    def _reports(self, reports: Tensor) -> Tensor:
        reports = check_reports(reports, dim=2, width=self.k)
        if reports.dtype != torch.bool and (int(reports.min()) < 0 or int(reports.max()) > 1):
            raise ValueError("reports must be bit vectors (entries 0 or 1)")
        return reports

    def support_probabilities(self) -> tuple[float, float]:
        return self.p, self.q

    def support_counts(self, reports: Tensor) -> Tensor:
        return column_counts(self._reports(reports))

    def support_indicator(self, reports: Tensor) -> Tensor:
        return self._reports(reports).bool()

    def transition_matrix(self, **public: Any) -> np.ndarray:
        """``[k, 2^k]`` over all bit vectors (bit ``j`` of the column index = bit ``j`` of the report)."""
        if self.k > 12:
            raise ValueError(f"transition_matrix enumerates 2^k outputs; k={self.k} is too large (max 12)")
        bits = (np.arange(2**self.k)[None, :] >> np.arange(self.k)[:, None]) & 1  # [k, 2^k]
        m = np.empty((self.k, 2**self.k))
        for v in range(self.k):
            prob1 = np.full(self.k, self.q)
            prob1[v] = self.p
            m[v] = np.prod(np.where(bits == 1, prob1[:, None], 1 - prob1[:, None]), axis=0)
        return m

    def output_pmf(self, v: int, *, public: Any = None, **options: Any) -> np.ndarray:
        """``[k, 2]``: the report's bits are independent, bit ``j`` is 1 w.p. ``p`` (j = v) or ``q``."""
        if public is not None:
            raise ValueError(f"{self.name} reports carry no public randomness, got public={public!r}")
        return ue_bit_pmfs(self.k, int(check_category(v, self.k)), self.p, self.q)

    def report_outcomes(self, reports: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[n, k]`` bits: outcome of each component of :meth:`output_pmf`."""
        return self._reports(reports).to(torch.int64), None

    def guarantee(self) -> PrivacyGuarantee:
        P, Q = ue_pmf_pair(self.p, self.q)
        return _guarantee(f"{self.name}(k={self.k}, eps={self.eps:g})", P, Q,
                          "pure eps-LDP per report; pmf_pair over the two bits where neighbouring inputs differ",
                          bits_per_report=self.k)


@register("mechanism", "oue")
class OUE(_UnaryEncoding):
    """Optimized unary encoding (Wang et al., USENIX Security 2017): ``p = 1/2``, ``q = 1/(e^ε + 1)``.

    Reports: ``[n, k]`` uint8 bit vectors.
    """

    name = "oue"
    param_space = {
        "k": K_SMALL,
        "eps": EPS,
    }

    def __init__(self, k: int, eps: float):
        self._init(k, eps)
        self.p = 0.5
        self.q = 1 / (math.exp(self.eps) + 1)


@register("mechanism", "sue")
class SUE(_UnaryEncoding):
    """Symmetric unary encoding = basic one-time RAPPOR (Erlingsson, Pihur, Korolova, CCS 2014).

    ``p = e^{ε/2} / (e^{ε/2} + 1)``, ``q = 1 − p``. Reports: ``[n, k]`` uint8 bit vectors.
    """

    name = "sue"
    param_space = {
        "k": K_SMALL,
        "eps": EPS,
    }

    def __init__(self, k: int, eps: float):
        self._init(k, eps)
        self.p = math.exp(self.eps / 2) / (math.exp(self.eps / 2) + 1)
        self.q = 1 - self.p
