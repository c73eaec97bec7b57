"""Analytic recovery of the input of a leading fully connected layer with bias.

For a first layer ``z = W x + b`` (``W ∈ R^{h×D}``, ``D`` = the flattened input size) and one
example, ``∂ℓ/∂W_i = (∂ℓ/∂b_i) · xᵀ`` for every row ``i``: the input is
``x = (∂ℓ/∂W_i) / (∂ℓ/∂b_i)`` for any row with ``∂ℓ/∂b_i ≠ 0`` (Geiping et al., NeurIPS 2020,
Prop. 3.1; earlier Phong et al. 2018). privfl uses the least-squares combination of all rows,
``x = Σ_i b'_i W'_i / Σ_i b'_i²``, equal to every single-row ratio on an exact gradient and less
sensitive to noise on a privatized one. Exact for batch 1.

With N > 1 examples each row mixes the inputs, ``∂ℓ/∂W_i = Σ_n (∂ℓ/∂z_{n,i}) x_n``; a row that
only one example activates (e.g. through a ReLU) still yields that example exactly. The attack
then returns N of the per-row ratios, picked farthest-point first starting from the row with the
largest ``|∂ℓ/∂b_i|`` (a heuristic; rows with ``|∂ℓ/∂b_i|`` below ``rel_tol`` × the largest are
ignored).

A FedAvg update with K = 1 is ``−lr`` times the gradient and the ratio is unchanged; with K > 1
the recovery is approximate. Labels: granted ones (their order is the observation's), else
``label_strategy`` if given, else none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privfl.attacks._common import Problem, pack_reconstruction, unpack
from privfl.attacks.label_recovery import LABEL_STRATEGY, as_strategy, labels_for
from privfl.core import Observation, PrivacyAttack, Reconstruction
from privfl.params import Instance, Real, check_generator
from privfl.registry import register

__all__ = ["AnalyticFC", "leading_layer"]


def leading_layer(problem: Problem, layer: str | None) -> tuple[slice, slice, int]:
    """Slices of the leading fully connected layer's weight and bias in the flat update, and ``h``."""
    D = math.prod(problem.input_shape)
    names = problem.layout.names
    shapes = dict(zip(names, problem.layout.shapes))
    slices = problem.layout.slices()
    if layer is None:
        w_name = names[0]
        if not w_name.endswith("weight"):
            raise ValueError(f"{problem.attack}: the model's first parameter {w_name!r} is not a weight; name the "
                             f"leading fully connected layer with layer=...")
        b_name = w_name[: -len("weight")] + "bias"
    else:
        w_name, b_name = f"{layer}.weight", f"{layer}.bias"
    w_shape, b_shape = shapes.get(w_name), shapes.get(b_name)
    if w_shape is None or len(w_shape) != 2 or w_shape[1] != D or b_shape != (w_shape[0],):
        raise ValueError(
            f"{problem.attack}: needs a leading fully connected layer with bias taking the flattened input "
            f"(weight [h, {D}], bias [h]); got {w_name!r} with shape {w_shape} and {b_name!r} with shape {b_shape}"
        )
    return slices[w_name], slices[b_name], w_shape[0]


@register("privacy_attack", "analytic")
class AnalyticFC(PrivacyAttack):
    """Closed-form input recovery through a leading fully connected layer with bias (exact for batch 1).

    Parameters: ``layer`` (module name of the layer, e.g. ``"net.1"``; default: the model's first
    parameterised layer), ``rel_tol`` (1e-6: rows with a smaller relative bias gradient are
    ignored), ``label_strategy`` (None).
    """

    name = "analytic"
    param_space = {
        "layer": Instance(str, optional=True),
        "rel_tol": Real(0, 1, hi_open=True, log=True, typical=(1e-8, 1e-3)),
        "label_strategy": LABEL_STRATEGY,
    }

    def __init__(self, layer: str | None = None, rel_tol: float = 1e-6, label_strategy: str | None = None) -> None:
        self.layer = layer
        self.rel_tol = float(rel_tol)
        self.label_strategy = as_strategy(label_strategy)

    def attack(self, observation: Observation, *, generator: torch.Generator | None = None) -> Reconstruction:
        check_generator(generator, owner=self.name)
        problem = unpack(observation, attack=self.name)
        w, b, h = leading_layer(problem, self.layer)
        rows = problem.targets
        gW = rows[:, w].reshape(problem.victims, h, -1)  # [v, h, D]
        gb = rows[:, b]  # [v, h]
        scale = gb.abs().amax(dim=1)
        if bool((scale == 0).any()):
            raise ValueError(f"{self.name}: the leading layer's bias gradient is zero for a victim; "
                             f"its input cannot be recovered from this update")
        N = problem.num_examples
        if N == 1:
            x = (gb.unsqueeze(-1) * gW).sum(1) / gb.pow(2).sum(1, keepdim=True)  # least squares over rows
            X = x.unsqueeze(1)
        else:
            X = torch.stack([self._pick(gW[v], gb[v], N) for v in range(problem.victims)])
        X = X.reshape(problem.victims, N, *problem.input_shape)
        labels = None
        source = "none"
        if problem.observation.labels is not None or self.label_strategy is not None:
            labels, source = labels_for(problem, self.label_strategy)
        # the attack loss: how far the update is from rank one per row (0 for an exact single example)
        residual = (gW - gb.unsqueeze(-1) * X.reshape(problem.victims, N, -1)[:, :1]).pow(2).sum((1, 2))
        losses = residual / gW.pow(2).sum((1, 2)).clamp_min(torch.finfo(gW.dtype).tiny)
        extra = {"label_source": source}
        return Reconstruction(**pack_reconstruction(problem, X, labels, losses, extra))

    def _pick(self, gW: Tensor, gb: Tensor, N: int) -> Tensor:
        keep = gb.abs() > self.rel_tol * gb.abs().max()
        cand = gW[keep] / gb[keep].unsqueeze(-1)  # [m, D]
        order = gb[keep].abs().argsort(descending=True)
        cand = cand[order]
        chosen = [0]
        dist = (cand - cand[0]).pow(2).sum(-1)
        while len(chosen) < min(N, len(cand)):
            nxt = int(dist.argmax())
            chosen.append(nxt)
            dist = torch.minimum(dist, (cand - cand[nxt]).pow(2).sum(-1))
        out = cand[chosen]
        if len(out) < N:  # fewer usable rows than examples: repeat the strongest
            out = torch.cat([out, out[:1].expand(N - len(out), -1)])
        return out

    def __repr__(self) -> str:
        return f"AnalyticFC(layer={self.layer!r}, rel_tol={self.rel_tol})"
