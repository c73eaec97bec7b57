"""The Gaussian mechanism for federated learning: client-level DP-FedAvg and local Gaussian noise.

**Central, DP-FedAvg** (``dp-fedavg``, or ``gaussian`` with ``local: false``) — McMahan, Ramage,
Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018. Each
participating client's update is clipped to ℓ2 norm ``clip_norm`` = S; the trusted server sums the
clipped updates, adds N(0, (z·S)² I) once to the sum (z = ``noise_multiplier``) and divides by the
*expected* number of participants q·N (the paper's fixed-denominator estimator, so the normaliser
does not depend on who took part). Clients are Poisson-sampled at rate q by the simulation
(``sampling="poisson"``), which amplifies the guarantee. Neighbouring = adding or removing one
client's whole data (client-level DP); ℓ2 sensitivity of the sum is S, so one round is a
Poisson-subsampled Gaussian release with noise multiplier z.

**Local** (``gaussian`` with ``local: true``) — every client adds N(0, (z·S)² I) to its own clipped
update before sending it, so the server (or a curious observer) only ever sees noisy updates.
Against the server this is a local guarantee: any two updates in the S-ball are neighbours, the
sensitivity is the diameter 2S, so one report is a Gaussian release with noise multiplier z/2, and
client sampling does not amplify it (the server knows who sent).

**Example-level DP-SGD inside a client** (Abadi et al., CCS 2016) is a client option of the
simulation, not a mechanism: ``LocalSGD(dp_clip=R, dp_noise=σ)`` in :mod:`privfl.fl.local`
(per-sample gradients with ``torch.func``, Poisson batches, accounted per client with Opacus'
subsampled-Gaussian RDP).

**Non-finite input** (``nonfinite = "zero"``): a row holding NaN/±Inf — a client's update in
``privatize``, an honest or Byzantine row in the server's ``aggregate`` — is replaced by the zero
vector before clipping (any row in the clip ball keeps the sensitivity bound) and counted in
``nonfinite_replaced``, so one faulty client cannot turn the noisy aggregate into NaN.

Noise source: by default ``torch.randn`` with the ``torch.Generator`` passed in (reproducible, not a
CSPRNG, open to floating-point attacks: Mironov 2012; Jin et al. 2022). ``with_rng(mech, "secure")``
(:mod:`privfl.secure_rng`) draws a grid-exact discrete Gaussian from a CSPRNG instead; its guarantee is
then the discrete Gaussian's RDP (Canonne, Kamath, Steinke 2020), without subsampling amplification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.accounting.guarantees import gaussian_guarantee
from privfl.core import InputDomain, Mechanism, PrivacyGuarantee
from privfl.mechanisms import _checks
from privfl.params import Choice, Real
from privfl.registry import register
from privfl.secure_rng import add_gaussian, discrete_gaussian_guarantee

__all__ = ["GaussianMechanism", "DPFedAvg"]

_ROLES = ("local=False (central DP-FedAvg: the server adds the noise to the sum in aggregate(); privatize() "
          "only clips) or local=True (every client adds noise to its own update); or use the mechanism "
          "'dp-fedavg' for the central role")


@register("mechanism", "gaussian")
class GaussianMechanism(Mechanism):
    """Clip each row to ``clip_norm``; Gaussian noise of std ``noise_multiplier·clip_norm`` on the sum
    (central DP-FedAvg, ``local=False``) or on every row (``local=True``). The role has no default:
    a central Gaussian's ``privatize()`` only clips, so the caller must say which one is meant
    (``dp-fedavg`` names the central role). ``noise_multiplier=0`` clips only (its guarantee is
    ``none``: ε = ∞)."""

    name = "gaussian"
    #: the role is the caller's choice (``local``): see :attr:`role`
    roles = ("client-vector", "server-noise")
    supports_secure_rng = True
    rng = "seeded"  # privfl.secure_rng.with_rng(mech, "secure") for deployment
    unbiased = True  # for the clipped input (estimand): the noise has mean 0
    nonfinite = "zero"
    param_space = {
        "clip_norm": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0)),
        "noise_multiplier": Real(0, None, typical=(0.0, 4.0)),
        "local": Choice(False, True),
    }

    def __init__(self, clip_norm: float = 1.0, noise_multiplier: float = 1.0, local: bool | None = None) -> None:
        if local is None:
            raise ValueError(f"{self.name}: local is required (the noise is added by the server or by each "
                             f"client); say {_ROLES}")
        self.clip_norm = _checks.number("clip_norm", clip_norm, lo=0.0)
        self.noise_multiplier = _checks.number("noise_multiplier", noise_multiplier, lo=0.0, lo_open=False)
        self.local = _checks.boolean("local", local)
        self.nonfinite_replaced = 0

    @property
    def role(self) -> str:  # type: ignore[override]
        """``"client-vector"`` (``local=True``) or ``"server-noise"`` (``local=False``, DP-FedAvg)."""
        return "client-vector" if self.local else "server-noise"

    def domain(self) -> InputDomain:
        """The clip ball: rows of ℓ2 norm ≤ ``clip_norm``."""
        return InputDomain.l2_ball(self.clip_norm)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    def clip(self, x: Tensor) -> Tensor:
        """Rows clipped to ``clip_norm``; non-finite rows become zero first (counted)."""
        x, replaced = _checks.zero_nonfinite_rows(x)
        self.nonfinite_replaced += replaced
        return _checks.clip_rows(x, self.clip_norm)

    def estimand(self, x: Tensor) -> Tensor:
        """``decode(privatize(x))`` is unbiased for the clipped rows (not for ``x`` outside the ball)."""
        return _checks.clip_rows(_checks.zero_nonfinite_rows(x)[0], self.clip_norm)

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        _checks.updates(x)
        _checks.generator(generator)
        clipped = self.clip(x)
        if not self.local or self.noise_multiplier == 0:
            return clipped
        return add_gaussian(clipped, self.noise_std, generator=generator, rng=self.rng, clip_norm=self.clip_norm)

    def aggregate(
        self,
        reports: Tensor,
        *,
        byzantine: Tensor | None = None,
        expected_rows: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(Σ clip(rows) + N(0, (zS)² I)) / expected_rows, rows = reports and Byzantine rows.

        The server clips again (idempotent for honest rows), so a client that skipped clipping
        cannot raise the sensitivity. ``expected_rows`` defaults to the number of rows.
        """
        if not self.central:
            return super().aggregate(reports, byzantine=byzantine, expected_rows=expected_rows, generator=generator)
        _checks.updates(reports, "reports")
        _checks.generator(generator)
        rows = reports if byzantine is None or byzantine.shape[0] == 0 else torch.cat(
            [reports, byzantine.to(reports.dtype)]
        )
        if expected_rows is None:
            expected_rows = float(rows.shape[0])
        expected_rows = _checks.number("expected_rows", expected_rows, lo=0.0)
        if self.noise_multiplier == 0:
            return self.clip(rows).sum(dim=0) / expected_rows
        total = add_gaussian(self.clip(rows), self.noise_std, generator=generator, rng=self.rng,
                             clip_norm=self.clip_norm, sum_rows=True)
        return total / expected_rows

    def guarantee(self) -> PrivacyGuarantee:
        if self.noise_multiplier == 0:
            return PrivacyGuarantee.none(self.name, notes="noise_multiplier=0: clipping only, no privacy")
        if self.rng == "secure":
            z = self.noise_multiplier / 2.0 if self.local else self.noise_multiplier
            return discrete_gaussian_guarantee(z, name=f"gaussian ({'local' if self.local else 'DP-FedAvg'}, secure)")
        if self.local:
            return gaussian_guarantee(
                self.noise_multiplier / 2.0,
                name="gaussian (local)",
                unit="client",
                notes="local Gaussian: replace-one neighbours in the clip ball, sensitivity 2·clip_norm",
            )
        return gaussian_guarantee(
            self.noise_multiplier,
            name="gaussian (DP-FedAvg)",
            unit="client",
            notes="central noise on the sum of clipped client updates; add/remove one client, sensitivity clip_norm",
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(clip_norm={self.clip_norm}, noise_multiplier={self.noise_multiplier}, "
                f"local={self.local})")


@register("mechanism", "dp-fedavg")
class DPFedAvg(GaussianMechanism):
    """Client-level DP-FedAvg (McMahan et al., ICLR 2018): the central role of :class:`GaussianMechanism`.
    Clients only clip; the trusted server adds N(0, (z·S)² I) to the sum of the clipped updates."""

    name = "dp-fedavg"
    roles = ("server-noise",)
    param_space = {k: v for k, v in GaussianMechanism.param_space.items() if k != "local"}

    def __init__(self, clip_norm: float = 1.0, noise_multiplier: float = 1.0) -> None:
        super().__init__(clip_norm=clip_norm, noise_multiplier=noise_multiplier, local=False)
