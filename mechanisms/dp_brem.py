r"""DP-BREM and DP-BREM+: differential privacy and Byzantine robustness through client momentum.

Gu, Li, Xiong, "DP-BREM: Differentially-Private and Byzantine-Robust Federated Learning with Client
Momentum", USENIX Security 2025 (arXiv 2306.12608). Cross-silo FedSGD with record-level DP.

**Algorithm (DP-BREM, trusted server).** Round t, selected clients ``sel``:

- honest client i (:mod:`privfl.fl.local` with ``dp_clip=R``): Poisson-sample a batch of its
  records with expected size B, g_i = (1/B) Σ_{x ∈ batch} clip_R(∇ℓ(θ; x)) (per-record clipping,
  ``torch.func`` per-sample gradients, fixed denominator B);
- client momentum (kept across the rounds i joins, state keyed by client id):
  m_i ← (1 − β)·g_i + β·m_i, m_i = 0 before the first round;
- server: one centered-clipping step around the previous noisy aggregate m̄, noise once on the sum:
  S = Σ_{i ∈ sel} clip_C(m_i − m̄) + N(0, s² I), s = σ·R/B;  m̄ ← m̄ + S/|sel|;  θ ← θ − η·m̄.

Parameters: ``clip_norm`` = C (centered-clipping radius), ``noise_multiplier`` = σ, ``record_clip`` = R,
``batch_size`` = B (expected batch), ``momentum`` = β (0.9). The public code decays R and C linearly
(×(1 − 0.7 t/T)); privfl keeps them constant (a decaying R would change the sensitivity bound below).

**Privacy analysis (privfl's; the public code has no accountant).**
Neighbouring datasets differ by adding or removing one record x of one honest client i.

*Sensitivity of the momentum release.* Fix every random choice except the Gaussian noise: which
clients are selected and which records each batch holds (x included in every batch of i, the worst
case). Given the earlier releases S^1..S^{t−1} (which determine θ^t and m̄^{t−1}), the release S^t
is a deterministic function of the data plus N(0, s² I). If i joins round t for the k-th time,

    Δ_k = sup ‖S^t(D) − S^t(D')‖ ≤ min( 2C , (1 − β) Σ_{j=1..k} β^{k−j} · R/B ) = min(2C, (1 − β^k)·R/B),

because x changes g_i at each of i's participations by at most R/B (one clipped gradient over the
fixed denominator B), the momentum is linear in the g's with weights (1 − β)β^{k−j}, the projection
y ↦ clip_C(y − m̄) is 1-Lipschitz, and its range has diameter 2C. Rounds i does not join: Δ = 0.

*Theorem (accounting used here).* For every fixed selection/batch realization the T releases are an
adaptive composition of Gaussian mechanisms with noise s and sensitivities Δ_{k(t)}, hence
(α, Σ_t α Δ_{k(t)}² / (2 s²))-RDP (Mironov, CSF 2017, Prop. 1 and Cor. 3) and μ-GDP with
μ² = Σ_t Δ_{k(t)}² / s² (Dong, Roth, Su, JRSS-B 2022). The actual mechanism is a mixture of these
over the selection/batch randomness with the same mixing weights for D and D', and hockey-stick
divergences are jointly convex (Rényi divergences jointly quasi-convex), so the same bounds hold for
it. Each participation of client i is therefore recorded in the ledger as one Gaussian release with
noise multiplier s/Δ_k = σ·R/(B·min(2C, (1 − β^k)R/B)) ≥ σ, unit ``"record"``.
Not claimed: amplification by record sampling or by client sampling. The sampling randomness
persists in the hidden momentum, so the releases are not independent subsampled mechanisms and the
standard subsampled-Gaussian analysis does not apply; privfl reports the (larger) ε without it.
The guarantee protects honest clients' records against everyone who sees the releases (the server
in DP-BREM+, the public in DP-BREM).

*What the ε means (read before comparing numbers).* The unit is one **record**, and the ε is
**per participating client**: client i's ε composes only the rounds i joins (k = 1, 2, …), so it is
the worst client's figure, not a population-level one. It claims **no sampling amplification** —
neither by the Poisson record sampling (the reference code samples records at p = 0.05) nor by
client sampling — so it is an upper bound that can be one to two orders of magnitude above an
amplified analysis of the same run. privfl has no proof of an amplified accountant for client
momentum (the record-sampling randomness persists in the hidden momentum across rounds, so the
releases are not independent subsampled Gaussians) and therefore reports none. The noise std is
s = σ·R/B on the sum (the privatized quantity is an average over the expected batch B); the
reference code adds σ·R, so its published σ values correspond to σ_privfl = σ_ref·B here, and do
not transfer as they are.

*When Byzantine clients leave the guarantee intact.* Byzantine rows are clipped by the same
projection, so they never change the sensitivity bound **as long as they do not depend on honest
data**: attacks that use only the Byzantine clients' own data and the public model
(``knowledge = "own-data"``, e.g. ``alie-own-data``, or ``"public"``, data poisoning) keep the ε
above valid. An omniscient attack (IPM, ALIE, min-max, min-sum, mimic reading the honest momenta) is
a function of honest records that enters the release *before* the noise: with ``mimic`` copying
client i's momentum f times, x changes the noisy sum by up to (f + 1)·Δ_k, which the accountant
does not cover. privfl then reports no ε (:func:`privfl.accounting.ledger.threat_model_warning`).
In DP-BREM+ the server and the Byzantine clients only see masked reports, whose joint law reveals
nothing beyond the noisy sum, so there the ε stays valid (``noise_location = "client"``).

*Non-finite input* (``nonfinite = "zero"``). A client row (g_i) holding NaN/±Inf is replaced by the
zero vector before the momentum update, and a row entering the centered-clipping step (a
momentum or a Byzantine row) holding NaN/±Inf contributes the zero vector (clip_C(0) = 0, no pull
on m̄); both are counted in ``nonfinite_replaced``. Momenta are kept within the dtype's finite
range, so the state (momenta, centre) can never become non-finite. The record-level bound is for
rows produced by per-record clipping, which are finite for a finite model; a non-zero
``nonfinite_replaced`` means that assumption failed for some client and should be investigated.

**DP-BREM+ (no trusted server).** Each honest client sends y_i = clip_C(m_i − m̄) + ξ_i through a
simulated secure aggregation, with noise *shares* ξ_i ~ N(0, s²/h), h = ⌈``min_honest``·n⌉ for the n
clients of the round, so the server only learns Σ y_i (Bonawitz et al., CCS 2017, pairwise masks):

- values are encoded in fixed point (``frac_bits`` fractional bits) in Z_M, M = 2^``modulus_bits``;
- every pair (a, b) of clients shares a seed (in a real deployment by key agreement; simulated by
  a seed derived from the round's key and the pair) that expands to a uniform mask r_ab ∈ Z_M^d;
  a adds r_ab, b subtracts it. Masks cancel in the sum, and a single masked report is uniform on
  Z_M^d whatever the client's value (one-time pad), as the tests check statistically;
- Byzantine inputs are clipped to the C-ball, which the paper's secure aggregation enforces by
  verifying well-formed inputs (simulated here by clipping them; they add no noise share).

Assumptions: the server follows the protocol (semi-honest) and colludes with at most n − h clients;
at least h honest clients complete the round. Then the honest shares alone sum to noise of variance
≥ h·s²/h = s², and the accounting above holds unchanged. Dropouts: the survivors' masks with
dropped clients are removed by reconstructing the pair seeds (:meth:`SecureAggregation.sum` with
``survivors``), as in Bonawitz et al.; the dropped clients' noise shares are lost, so more than
n − h dropped-or-colluding clients void the guarantee. Joint noise generation: each client samples
its own Gaussian share; "sample-and-scale" schemes in which clients scale shared randomness have
been reported broken and are not used. The fixed-point rounding (2^−``frac_bits``) is treated as
negligible post-processing; a rigorous discrete treatment is the distributed discrete Gaussian
(Kairouz, Liu, Steinke, ICML 2021). torch's generator is not a CSPRNG: this is a simulation of the
protocol's arithmetic and information flow, not a secure implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from privfl.accounting.guarantees import gaussian_guarantee
from privfl.core import InputDomain, Mechanism, PrivacyGuarantee
from privfl.mechanisms import _checks
from privfl.params import Int, Real, Ref
from privfl.registry import register
from privfl.secagg import SecureAggregation

__all__ = ["MomentumState", "DPBREM", "DPBREMPlus", "SecureAggregation"]


@dataclass
class MomentumState:
    """Explicit DP-BREM state: per-client momentum rows (indexed by client id), how many rounds each
    client has joined, and the server's centre m̄ (the previous noisy aggregate)."""

    momentum: Tensor | None = None  # [capacity, d]
    joined: Tensor | None = None  # [capacity] int64
    center: Tensor | None = None  # [d]

    def state_dict(self) -> dict[str, Tensor | None]:
        return {k: None if v is None else v.detach().clone() for k, v in self.__dict__.items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor | None]) -> MomentumState:
        return cls(**{k: None if v is None else v.clone() for k, v in state.items()})

    def ensure(self, capacity: int, d: int, like: Tensor) -> None:
        if self.momentum is not None and self.momentum.shape[1] != d:
            raise ValueError(f"updates have d={d} but the momentum state has d={self.momentum.shape[1]}")
        rows = 0 if self.momentum is None else self.momentum.shape[0]
        if capacity > rows:
            grown = torch.zeros(capacity, d, dtype=like.dtype, device=like.device)
            joined = torch.zeros(capacity, dtype=torch.int64, device=like.device)
            if self.momentum is not None:
                grown[:rows] = self.momentum
                joined[:rows] = self.joined
            self.momentum, self.joined = grown, joined
        if self.center is None:
            self.center = torch.zeros(d, dtype=like.dtype, device=like.device)


@register("mechanism", "dp-brem")
class DPBREM(Mechanism):
    """DP-BREM with a trusted server (Gu, Li, Xiong, USENIX Security 2025): client momentum of
    per-record-clipped gradients, one centered-clipping step around the previous noisy aggregate,
    Gaussian noise σ·R/B once on the sum (the reference code uses σ·R: σ values do not transfer).
    Needs FedSGD; sets the clients' per-record clipping. ε: record-level, per participating client,
    no sampling amplification (an upper bound); void under omniscient Byzantine clients — see the
    module docstring."""

    name = "dp-brem"
    param_space = {
        "clip_norm": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "noise_multiplier": Real(0, None, lo_open=True, typical=(0.1, 4.0)),
        "record_clip": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "batch_size": Int(1, None, typical=(1, 32)),
        "momentum": Real(0, 1, hi_open=True),
    }
    role = "server-noise"
    protocol = "fedsgd"
    nonfinite = "zero"
    stateful = True  # client momenta and the server's centre (reset() forgets them)
    per_participation = True  # participation_guarantee(k): the accountant records each client's k-th release
    #: the unit printed beside every DP-BREM ε (module docstring: what the ε means)
    epsilon_unit = "record-level, per participating client, no sampling amplification"

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        record_clip: float = 1.0,
        batch_size: int = 16,
        momentum: float = 0.9,
    ) -> None:
        self.clip_norm = _checks.number("clip_norm", clip_norm, lo=0.0)
        self.noise_multiplier = _checks.number("noise_multiplier", noise_multiplier, lo=0.0)
        self.record_clip = _checks.number("record_clip", record_clip, lo=0.0)
        self.batch_size = _checks.integer("batch_size", batch_size, lo=1)
        self.momentum = _checks.number("momentum", momentum, lo=0.0, hi=1.0, lo_open=False, hi_open=True)
        self.state = MomentumState()
        self.nonfinite_replaced = 0

    # ------------------------------------------------------------------ analysis
    @property
    def local_training(self) -> dict[str, object]:
        """Client-side settings the simulation applies: per-record clipping R, no client noise, batch B."""
        return {"dp_clip": self.record_clip, "dp_noise": 0.0, "batch_size": self.batch_size}

    @property
    def noise_std(self) -> float:
        """s = σ·R/B, the std of the noise on the sum."""
        return self.noise_multiplier * self.record_clip / self.batch_size

    def sensitivity(self, k: int) -> float:
        """Δ_k = min(2C, (1 − β^k)·R/B): ℓ2 sensitivity of a release at a client's k-th participation."""
        k = _checks.integer("k", k, lo=1)
        return min(2.0 * self.clip_norm, (1.0 - self.momentum**k) * self.record_clip / self.batch_size)

    def domain(self) -> InputDomain:
        """The server clips every row's offset from the centre to ℓ2 norm ``clip_norm`` (C)."""
        return InputDomain.l2_ball(self.clip_norm)

    def guarantee(self) -> PrivacyGuarantee:
        """One release at the steady-state (worst) sensitivity min(2C, R/B); see the module docstring."""
        worst = min(2.0 * self.clip_norm, self.record_clip / self.batch_size)
        return gaussian_guarantee(
            self.noise_std / worst, name=self.name, unit="record",
            notes="record-level; momentum sensitivity min(2C, R/B); no sampling amplification claimed",
        )

    def participation_guarantee(self, k: int) -> PrivacyGuarantee:
        """The release at a client's k-th participation: Gaussian with multiplier s/Δ_k (unit record)."""
        return gaussian_guarantee(self.noise_std / self.sensitivity(k), name=self.name, unit="record",
                                  participation=int(k))

    def account(self, ledger, *, clients: Tensor, sampling_rate: float, dim: int, round: int) -> None:
        """One Gaussian release per participating client at its own participation index k (Δ_k)."""
        if self.state.joined is None or len(clients) == 0:
            return
        ids = torch.as_tensor(clients, dtype=torch.int64).to(self.state.joined.device)
        ks = self.state.joined[ids]
        for k in torch.unique(ks).tolist():
            ledger.record(self.participation_guarantee(int(k)), clients=ids[ks == k].cpu(), unit="record",
                          round=round)

    # ------------------------------------------------------------------ client side
    def _update_momentum(self, x: Tensor, client_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        _checks.updates(x)
        if client_ids is None:
            client_ids = torch.arange(x.shape[0])
        ids = torch.as_tensor(client_ids, dtype=torch.int64)
        if ids.shape != (x.shape[0],) or (len(ids) and int(ids.min()) < 0) or len(torch.unique(ids)) != len(ids):
            raise ValueError(f"client_ids must be {x.shape[0]} distinct int ids >= 0, one per row, got {client_ids!r}")
        self.state.ensure(int(ids.max()) + 1 if len(ids) else 0, x.shape[1], x)
        dev_ids = ids.to(self.state.momentum.device)
        x, replaced = _checks.zero_nonfinite_rows(x)
        self.nonfinite_replaced += replaced
        big = torch.finfo(x.dtype).max  # a convex combination of finite rows: only rounding could overflow
        m = ((1.0 - self.momentum) * x + self.momentum * self.state.momentum[dev_ids]).clamp_(-big, big)
        self.state.momentum[dev_ids] = m
        self.state.joined[dev_ids] += 1
        return m, dev_ids

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        """Rows g_i → the clients' momenta m_i (what the trusted server receives)."""
        m, _ = self._update_momentum(x, client_ids)
        return m.clone()

    # ------------------------------------------------------------------ server side
    def _center(self, d: int, like: Tensor) -> Tensor:
        if self.state.center is None:
            return torch.zeros(d, dtype=like.dtype, device=like.device)
        return self.state.center

    def _step(self, noisy_sum: Tensor, rows: int) -> Tensor:
        center = self._center(noisy_sum.shape[0], noisy_sum)
        if rows > 0:
            self.state.center = center + noisy_sum / rows
        elif self.state.center is None:
            self.state.center = center
        return self.state.center.clone()

    def aggregate(
        self,
        reports: Tensor,
        *,
        byzantine: Tensor | None = None,
        expected_rows: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """m̄ ← m̄ + (Σ clip_C(m_i − m̄) + N(0, s² I)) / |sel|; returns the new m̄ (gradient units)."""
        _checks.updates(reports, "reports")
        _checks.generator(generator)
        rows = reports if byzantine is None or byzantine.shape[0] == 0 else torch.cat(
            [reports, byzantine.to(reports.dtype)]
        )
        center = self._center(rows.shape[1], rows)
        if rows.shape[0] == 0:
            return self._step(torch.zeros_like(center), 0)
        centred, replaced = _checks.zero_nonfinite_rows(rows - center)
        self.nonfinite_replaced += replaced
        total = _checks.clip_rows(centred, self.clip_norm).sum(dim=0)
        total = total + self.noise_std * torch.randn(total.shape, generator=generator, dtype=total.dtype,
                                                     device=total.device)
        return self._step(total, rows.shape[0])

    def reset(self) -> None:
        self.state = MomentumState()
        self.nonfinite_replaced = 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(clip_norm={self.clip_norm}, noise_multiplier={self.noise_multiplier}, "
                f"record_clip={self.record_clip}, batch_size={self.batch_size}, momentum={self.momentum})")


# --------------------------------------------------------------------------------------------
# Secure aggregation (simulated) and DP-BREM+
# --------------------------------------------------------------------------------------------
@register("mechanism", "dp-brem-plus")
class DPBREMPlus(DPBREM):
    """DP-BREM+ (Gu, Li, Xiong 2025): DP-BREM without a trusted server — clients clip around the
    public centre, add Gaussian noise shares N(0, s²/h) (h = ⌈min_honest·n⌉) and send pairwise-masked
    fixed-point reports; the server only learns the sum. See the module docstring for assumptions."""

    name = "dp-brem-plus"
    #: the server and the Byzantine clients only see masked reports (secure aggregation): the
    #: guarantee's noise shares are added by the clients
    noise_location = "client"
    param_space = {
        **DPBREM.param_space,
        "min_honest": Real(0, 1, lo_open=True),
        "frac_bits": Int(0, 40, typical=(8, 24)),
        "modulus_bits": Int((8, Ref("frac_bits", 3)), 62),
    }

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        record_clip: float = 1.0,
        batch_size: int = 16,
        momentum: float = 0.9,
        min_honest: float = 0.5,
        frac_bits: int = 20,
        modulus_bits: int = 48,
    ) -> None:
        super().__init__(clip_norm, noise_multiplier, record_clip, batch_size, momentum)
        self.min_honest = _checks.number("min_honest", min_honest, lo=0.0, hi=1.0)
        self.secagg = SecureAggregation(frac_bits=frac_bits, modulus_bits=modulus_bits)

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        """Masked fixed-point reports (int64 in Z_M) of clip_C(m_i − m̄) + ξ_i."""
        _checks.generator(generator)
        m, dev_ids = self._update_momentum(x, client_ids)
        n = x.shape[0]
        if n == 0:
            return torch.zeros(0, x.shape[1], dtype=torch.int64, device=x.device)
        center = self._center(x.shape[1], x)
        h = max(1, math.ceil(self.min_honest * n))
        share_std = self.noise_std / math.sqrt(h)
        noise = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        values = _checks.clip_rows(m - center, self.clip_norm) + share_std * noise
        key_device = generator.device if generator is not None else "cpu"
        key = int(torch.randint(0, 2**62, (1,), generator=generator, device=key_device))
        ids = dev_ids.tolist()
        return self.secagg.mask(values, ids, key=key)

    def decode(self, reports: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """What the server sees of each client: its masked report read as a fixed-point number
        (uniformly distributed garbage, by design)."""
        if not isinstance(reports, Tensor) or reports.dtype != torch.int64 or reports.dim() != 2:
            raise ValueError("reports must be an int64 [n, d] tensor of masked reports from DPBREMPlus.privatize")
        return self.secagg.decode(reports, dtype)

    def aggregate(
        self,
        reports: Tensor,
        *,
        byzantine: Tensor | None = None,
        expected_rows: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Unmask the sum (masks cancel), add the clipped Byzantine inputs, one centered step."""
        if not isinstance(reports, Tensor) or reports.dtype != torch.int64 or reports.dim() != 2:
            raise ValueError("reports must be the int64 [n, d] masked reports of DPBREMPlus.privatize")
        d = reports.shape[1]
        like = self.state.momentum if self.state.momentum is not None else (
            byzantine if byzantine is not None else torch.zeros(1, device=reports.device)
        )
        center = self._center(d, like)
        total = torch.remainder(reports.sum(dim=0), self.secagg.modulus)
        rows = reports.shape[0]
        if byzantine is not None and byzantine.shape[0]:
            centred, replaced = _checks.zero_nonfinite_rows(byzantine.to(center.dtype) - center)
            self.nonfinite_replaced += replaced
            clipped = _checks.clip_rows(centred, self.clip_norm)
            total = total + self.secagg.encode(clipped).sum(dim=0)
            rows += byzantine.shape[0]
        if rows == 0:
            return self._step(torch.zeros_like(center), 0)
        noisy_sum = self.secagg.decode(total, center.dtype).to(center.device)
        return self._step(noisy_sum, rows)

    def report_bytes(self, reports: Tensor) -> float:
        return reports.shape[1] * self.secagg.modulus_bits / 8.0
