"""Label recovery from a shared gradient or update: iDLG, the bias-gradient rule, Yin et al.

All three read the gradient of the last fully connected layer (weight ``W ∈ R^{C×h}``, bias
``b ∈ R^C``, ``C = num_classes``) out of the observed update. For softmax cross-entropy on one
example with penultimate activations ``a``, ``∂ℓ/∂W = (p − e_y) aᵀ`` and ``∂ℓ/∂b = p − e_y``:
the true class's row is the only one whose entries have the opposite sign of ``a``.

For a FedAvg weight difference (``kind="delta"``), ``w_K − w_0 ≈ −lr·Σ_k ∇ℓ`` so the rules read
``−update`` (divided by ``lr·K`` when both are granted, for the count estimate of the bias rule).
With K > 1 local steps this is an approximation; with K = 1 it is exact.

Registered as ``make("label_strategy", NAME)``: ``"idlg"``, ``"bias"``, ``"yin"``. Each returns
integer labels ``[N]`` (one victim) or ``[v, N]`` (several), in no particular order: the scoring
matches the batch order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from privfl.attacks._common import Problem, unpack
from privfl.core import Component, Observation
from privfl.params import Registered
from privfl.registry import get, register

__all__ = ["LabelStrategy", "IDLG", "BiasRule", "YinRule", "last_layer", "labels_for", "as_strategy", "LABEL_STRATEGY"]


def last_layer(problem: Problem, *, need_bias: bool) -> tuple[slice, slice | None, int]:
    """Slices of the last fully connected layer's weight (and bias) in the flat update, and ``h``.

    The layer is the last 2-d parameter of shape ``[num_classes, h]`` in the layout order; its bias
    is the parameter of the same module named ``...bias`` with shape ``[num_classes]``.
    """
    C = problem.num_classes
    slices = problem.layout.slices()
    shapes = dict(zip(problem.layout.names, problem.layout.shapes))
    for name in reversed(problem.layout.names):
        shape = shapes[name]
        if len(shape) == 2 and shape[0] == C and name.endswith("weight"):
            bias_name = name[: -len("weight")] + "bias"
            has_bias = shapes.get(bias_name) == (C,)
            if need_bias and not has_bias:
                break
            return slices[name], (slices[bias_name] if has_bias else None), shape[1]
    need = "a weight [num_classes, h] with a bias [num_classes]" if need_bias else "a weight [num_classes, h]"
    raise ValueError(
        f"{problem.attack}: the model has no last fully connected layer with {need} "
        f"(num_classes = {C}); this label rule cannot be applied"
    )


def _gradient_rows(problem: Problem) -> tuple[Tensor, bool]:
    """``[v, d]`` rows proportional to the loss gradient, and whether their scale is the gradient's."""
    obs = problem.observation
    rows = problem.targets
    if obs.kind == "gradient":
        return rows, True
    if obs.lr is not None and obs.local_steps is not None:
        return -rows / (float(obs.lr) * int(obs.local_steps)), True
    return -rows, False


class LabelStrategy(Component, ABC):
    """``infer(observation) -> labels`` (``[N]`` or ``[v, N]``, int64), using only the observation."""

    name: ClassVar[str] = "label_strategy"
    param_space: ClassVar[dict] = {}  # the published rules take no parameters

    def infer(self, observation: Observation) -> Tensor:
        problem = unpack(observation, attack=f"label strategy {self.name!r}")
        labels = self._infer(problem)
        return labels[0] if problem.single else labels

    @abstractmethod
    def _infer(self, problem: Problem) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register("label_strategy", "idlg")
class IDLG(LabelStrategy):
    """iDLG (Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", arXiv 2001.02610, 2020).

    The label is the row of the last-layer weight gradient with the smallest (negative) sum.
    Assumptions: batch of **one** example; softmax cross-entropy; non-negative penultimate
    activations (ReLU, sigmoid) that are not all zero. Then the rule is exact.
    """

    name = "idlg"

    def _infer(self, problem: Problem) -> Tensor:
        if problem.num_examples != 1:
            raise ValueError(
                f"label strategy 'idlg' holds for one example, got num_examples={problem.num_examples}; "
                f"use 'bias' or 'yin' for batches"
            )
        w, _, h = last_layer(problem, need_bias=False)
        rows, _ = _gradient_rows(problem)
        gw = rows[:, w].reshape(-1, problem.num_classes, h)
        return gw.sum(dim=2).argmin(dim=1, keepdim=True)


@register("label_strategy", "bias")
class BiasRule(LabelStrategy):
    """The bias-gradient rule for batches (as surveyed by Wainakh et al., "User-Level Label Leakage
    from Gradients in Federated Learning", PETS 2022; cf. their LLG).

    For softmax cross-entropy with mean reduction, ``N·∂ℓ/∂b_j = Σ_n p_nj − count_j``: a negative
    bias gradient proves class ``j`` is in the batch. Counts are estimated as
    ``N/C − N·∂ℓ/∂b_j`` (predictions assumed near uniform, true of an untrained model; the
    estimates sum to N exactly) and rounded greedily so that they sum to N, every class with a
    negative bias gradient getting at least one example. When the gradient's scale is unknown (a
    FedAvg update without lr and K granted) counts are proportional to the negative parts.
    Assumptions: the last layer has a bias; softmax cross-entropy (``reduction`` read from the
    loss when it has one, ``"mean"`` otherwise).
    """

    name = "bias"

    def _infer(self, problem: Problem) -> Tensor:
        _, b, _ = last_layer(problem, need_bias=True)
        rows, scaled = _gradient_rows(problem)
        db = rows[:, b].to(torch.float64)
        N, C = problem.num_examples, problem.num_classes
        present = db < 0
        if scaled:
            per = N if getattr(problem.loss_fn, "reduction", "mean") == "mean" else 1.0
            est = N / C - per * db
        else:
            neg = (-db).clamp_min(0)
            est = N * neg / neg.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        counts = torch.zeros_like(est)
        big = float(N) * 4 + 4
        ar = torch.arange(est.shape[0], device=est.device)
        for _ in range(N):  # greedy largest-residual rounding, vectorised over victims
            residual = est - counts
            residual = torch.where(present & (counts == 0), residual + big, residual)
            counts[ar, residual.argmax(dim=1)] += 1
        classes = torch.arange(C, device=est.device).expand_as(counts)
        return torch.stack([classes[i].repeat_interleave(counts[i].long()) for i in range(len(counts))])


@register("label_strategy", "yin")
class YinRule(LabelStrategy):
    """Yin et al., "See through Gradients: Image Batch Recovery via GradInversion" (CVPR 2021).

    The N labels are the classes whose rows of the last-layer weight gradient have the N smallest
    minima (``argsort(min_h ∂ℓ/∂W)``). Assumptions: softmax cross-entropy; non-negative penultimate
    activations; **no repeated labels** in the batch (N ≤ C). With N > C the ranking is repeated
    cyclically (an extension, not part of the rule).
    """

    name = "yin"

    def _infer(self, problem: Problem) -> Tensor:
        w, _, h = last_layer(problem, need_bias=False)
        rows, _ = _gradient_rows(problem)
        mins = rows[:, w].reshape(-1, problem.num_classes, h).min(dim=2).values
        order = mins.argsort(dim=1)
        pick = torch.arange(problem.num_examples, device=order.device) % problem.num_classes
        return order[:, pick]


#: The declared ``label_strategy`` parameter of the inversion attacks (a registered name, a strategy or None).
LABEL_STRATEGY = Registered("label_strategy", base=LabelStrategy, optional=True)


def as_strategy(strategy: str | LabelStrategy | None) -> LabelStrategy | None:
    """The strategy for a declared-valid ``label_strategy`` (:data:`LABEL_STRATEGY`): a registry name is built."""
    return get("label_strategy", strategy)() if isinstance(strategy, str) else strategy


def labels_for(problem: Problem, strategy: LabelStrategy | None) -> tuple[Tensor, str]:
    """Labels ``[v, N]`` for the attack: granted ones, else the strategy's, else a clear error.

    Returns the labels and where they came from (``"granted"`` or the strategy's name).
    """
    obs = problem.observation
    v, N = problem.victims, problem.num_examples
    if obs.labels is not None:
        y = obs.labels
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"{problem.attack}: observation.labels must be an integer tensor, got {y!r}")
        y = y.to(problem.device, torch.int64)
        if y.dim() == 1 and problem.single:
            y = y.unsqueeze(0)
        if tuple(y.shape) != (v, N):
            want = f"[{N}]" if problem.single else f"[{v}, {N}]"
            raise ValueError(f"{problem.attack}: observation.labels must have shape {want}, got {tuple(y.shape)}")
        if bool(((y < 0) | (y >= problem.num_classes)).any()):
            raise ValueError(f"{problem.attack}: observation.labels must lie in [0, {problem.num_classes})")
        return y, "granted"
    if strategy is None:
        obs.require("labels", attack=problem.attack)
    y = strategy._infer(problem)
    return y.to(problem.device, torch.int64), strategy.name
