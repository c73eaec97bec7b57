"""FedRand-style partial release: each client sends a random subset of its parameters per round.

Park, Lee, Kim, Hwang, "FedRand: Enhancing Privacy in Federated Learning with Randomized LoRA
Subparameter Updates", arXiv 2503.07216 (2025). In FedRand every client, in every round and for every
LoRA adapter, draws one of the two factors (A or B) with probability 1/2; after local training only
that factor goes back to the server, the other stays private on the client. The server averages every
factor over the clients that sent it. The paper's claim is empirical: less of each client model is
disclosed, so membership inference on client updates loses power. **There is no DP guarantee**
(``guarantee()`` is ``PrivacyGuarantee.none``: ε = ∞ in every table).

``fedrand`` here works on any model, as a client-side mechanism on the ``[n, d]`` update rows:

- ``granularity="lora"`` (the paper's rule; needs a bound layout with ``lora_A`` / ``lora_B`` tensor
  pairs, PEFT's naming): per adapter, exactly one of the two factors is released, each with
  probability 1/2 (``release_prob`` must be 0.5); tensors outside adapters are always released.
- ``granularity="layer"`` (any model): every layer — the tensors sharing a module prefix, e.g. a
  Linear's weight and bias — is released independently with probability ``release_prob``.
- ``granularity="tensor"``: every parameter tensor independently with probability ``release_prob``.

A withheld group is zero in the report. ``decode`` rescales every coordinate by 1/``release_prob`` (the
probability that its group is released), so ``decode(privatize(x))`` is unbiased for ``x`` and any
aggregator can combine the rows; this equals the paper's "average over the senders" in expectation.
Without a bound layout (``bind_layout``, called by the simulation) the whole row is one group.

Not simulated: FedRand's clients start the next round from their own private factor (the other one
comes from the server); privfl's clients start every round from the global model. The release — what
the server and a membership attacker observe — follows the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.core import Mechanism, PrivacyGuarantee
from privfl.flat import ParamLayout
from privfl.mechanisms import _checks
from privfl.params import Choice, Real
from privfl.registry import register

__all__ = ["FedRand"]

GRANULARITIES = ("layer", "tensor", "lora")


def _lora_partner(name: str) -> str | None:
    if "lora_A" in name:
        return name.replace("lora_A", "lora_B")
    if "lora_B" in name:
        return name.replace("lora_B", "lora_A")
    return None


@register("mechanism", "fedrand")
class FedRand(Mechanism):
    """Random partial release of parameter groups per client and round (FedRand, Park et al. 2025)."""

    name = "fedrand"
    role = "compressor"  # an empirical defence: no DP guarantee
    binds_layout = True  # parameter groups from the model's layout
    unbiased = True
    nonfinite = "raise"  # a NaN/±Inf row raises ValueError (no clip to bound it), as the compressors
    param_space = {
        "release_prob": Real(0, 1, lo_open=True, typical=(0.25, 0.75)),
        "granularity": Choice("layer", "tensor", contextual=("lora",)),  # lora: needs bind_layout with adapters
    }

    def __init__(self, release_prob: float = 0.5, granularity: str = "layer") -> None:
        self.release_prob = _checks.number("release_prob", release_prob, lo=0.0, hi=1.0)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, got {granularity!r}")
        if granularity == "lora" and self.release_prob != 0.5:
            raise ValueError(f"granularity='lora' releases one of A/B with probability 1/2: release_prob must be "
                             f"0.5, got {release_prob!r}")
        self.granularity = granularity
        self.layout: ParamLayout | None = None
        # group id of every tensor, and for lora pairs the partner's group (-1: independent)
        self._group_of_tensor: list[int] = []
        self._pair: list[int] = []

    def bind_layout(self, layout: ParamLayout) -> None:
        """Group the tensors of ``layout`` (called by the simulation before the first round)."""
        if not isinstance(layout, ParamLayout):
            raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
        names = list(layout.names)
        if self.granularity == "lora" and not any(_lora_partner(n) in names for n in names):
            raise ValueError("granularity='lora' needs a model with lora_A / lora_B parameter pairs; "
                             "use granularity='layer' for other models")
        keys: list[str] = []
        for n in names:
            if self.granularity == "tensor":
                keys.append(n)
            elif self.granularity == "layer":
                keys.append(n.rsplit(".", 1)[0] if "." in n else n)
            else:
                keys.append(n)
        uniq = list(dict.fromkeys(keys))
        self._group_of_tensor = [uniq.index(k) for k in keys]
        self._pair = [-1] * len(uniq)
        if self.granularity == "lora":
            for n in names:
                partner = _lora_partner(n)
                if partner in names and "lora_A" in n:
                    a, b = uniq.index(n), uniq.index(partner)
                    self._pair[a], self._pair[b] = b, a
        self.layout = layout

    def _coordinate_groups(self, d: int, device: torch.device) -> tuple[Tensor, int]:
        if self.layout is None:
            return torch.zeros(d, dtype=torch.int64, device=device), 1
        if self.layout.dim != d:
            raise ValueError(f"the bound layout has {self.layout.dim} entries per row but the updates have d={d}")
        counts = torch.tensor(self.layout.numels, device=device)
        groups = torch.tensor(self._group_of_tensor, device=device).repeat_interleave(counts)
        return groups, len(self._pair)

    def release_mask(self, n: int, d: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """Boolean ``[n, d]``: which coordinates each of ``n`` clients releases (drawn from ``generator``)."""
        groups, g = self._coordinate_groups(d, torch.device(device))
        u = torch.rand(n, g, generator=generator, dtype=torch.float64).to(device)
        released = u < self.release_prob
        if self.granularity == "lora":
            if self.layout is None:
                raise ValueError("granularity='lora' needs bind_layout(layout) with lora_A / lora_B pairs first")
            pair = torch.tensor(self._pair, device=device)
            idx = torch.arange(g, device=device)
            is_b = (pair >= 0) & (pair < idx)  # the second tensor of a pair follows its partner's coin
            coin = released[:, torch.where(is_b, pair, idx)]
            released = torch.where(is_b, ~coin, torch.where(pair >= 0, coin, torch.ones_like(coin)))
        return released[:, groups]

    def _scale(self, d: int, device: torch.device) -> Tensor:
        """Per-coordinate release probability."""
        if self.granularity == "lora":
            if self.layout is None:
                raise ValueError("granularity='lora' needs bind_layout(layout) with lora_A / lora_B pairs first")
            groups, _ = self._coordinate_groups(d, device)
            paired = torch.tensor(self._pair, device=device)[groups] >= 0
            return torch.where(paired, torch.full((d,), 0.5, device=device), torch.ones(d, device=device))
        return torch.full((d,), self.release_prob, device=device)

    def privatize(
        self, x: Tensor, *, generator: torch.Generator | None = None, client_ids: Tensor | None = None
    ) -> Tensor:
        _checks.updates(x)
        _checks.generator(generator)
        _checks.require_finite(x, self.name)  # non-finite policy "raise", as the compressors
        limit = torch.finfo(x.dtype).max * self.release_prob  # decode's 1/release_prob must stay finite
        if x.numel() and bool((x.abs() > limit).any()):
            raise ValueError(f"{self.name}: |x| up to {float(x.abs().max()):.3g} would overflow {x.dtype} once decode "
                             f"rescales by 1/release_prob = {1 / self.release_prob:.3g}; allowed: |x| <= {limit:.3g}")
        mask = self.release_mask(x.shape[0], x.shape[1], generator=generator, device=x.device)
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def decode(self, reports: Tensor) -> Tensor:
        _checks.updates(reports, "reports")
        return reports / self._scale(reports.shape[1], reports.device).to(reports.dtype)

    def report_bytes(self, reports: Tensor) -> float:
        """Expected bytes of the released groups (values only; the group choice is a few bits)."""
        return float(self._scale(reports.shape[1], reports.device).sum()) * reports.element_size()

    def guarantee(self) -> PrivacyGuarantee:
        return PrivacyGuarantee.none(self.name, notes="FedRand partial release: empirical defence, no DP guarantee")
