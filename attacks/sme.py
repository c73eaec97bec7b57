"""Surrogate Model Extension (Zhu, Yao, Blaschko, "Surrogate Model Extension (SME): A Fast and
Accurate Weight Update Attack on Federated Learning", ICML 2023).

A FedAvg client sends ``w_T − w_0`` after many local steps. SME inverts a single gradient at a
**surrogate model** on the line between the two weights,

    ŵ(α) = (1 − α)·w_0 + α·w_T,     α ∈ [0, 1] learned,

and matches its direction with the update's, over dummy data for the client's **whole** local
dataset (N examples):

    L(x, α) = 1 − ⟨d, ∇_ŵ ℓ(ŵ(α); x, y) / ‖∇_ŵ ℓ(ŵ(α); x, y)‖⟩ + λ·TV(x),   d = (w_0 − w_T)/‖w_0 − w_T‖,

with norms and inner products over the concatenated parameters. Defaults are the paper's CIFAR
configuration: 1,000 iterations; Adam lr 1 on the data (plain, not signed, gradients), a separate
Adam with lr 1e-3 on α, initial α = 0.5, α clamped to [0, 1] after each step; both step sizes
×0.1 at 3/8, 5/8, 7/8 of the iterations; λ = 0.01 with the reference code's TV (the mean of the
horizontal and vertical mean absolute differences); data initialised from ``N(0, 1)`` and kept in
the valid pixel box. α is learned only when its initial value lies strictly inside (0, 1), as in
the reference code; α = 0 is "IG on the update" (the paper's baseline), α = 1 inverts at ``w_T``.
Cost per iteration is one gradient, whatever K.

Labels as granted (or from ``label_strategy``). The victim model is used as the observation holds
it (the simulation records it in eval mode, as the paper does). A FedSGD gradient can also be
attacked when ``lr`` is granted (``w_T = w_0 − lr·g``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from privfl.attacks._common import (
    ADAM_SPACE,
    AdamOptions,
    Problem,
    Variable,
    cosine_distance,
    pack_reconstruction,
    run_adam,
    total_variation,
    unpack,
    use_vmap,
)
from privfl.attacks.inverting_gradients import solve_trials
from privfl.attacks.label_recovery import LABEL_STRATEGY, as_strategy, labels_for
from privfl.core import Observation, PrivacyAttack, Reconstruction
from privfl.params import Real, check_generator
from privfl.registry import register

__all__ = ["SME"]


@register("privacy_attack", "sme")
class SME(AdamOptions, PrivacyAttack):
    """SME (Zhu, Yao, Blaschko, ICML 2023): gradient inversion at a learned surrogate
    ``(1−α)·w_0 + α·w_T`` matched to the update direction, + TV.

    Parameters: ``iterations`` (1000), ``lr`` (1.0, data), ``alpha`` (0.5, initial), ``alpha_lr``
    (1e-3), ``tv_weight`` (λ = 0.01), ``signed`` (False), ``boxed`` (True), ``lr_decay`` (True),
    ``label_strategy`` (None: labels must be granted), ``vectorize`` ("auto"), ``support`` ("all";
    "observed": only the update's non-zero coordinates, the adaptive attack on sparsified updates).
    """

    name = "sme"
    param_space = {
        **ADAM_SPACE,
        "alpha": Real(0, 1),
        "alpha_lr": Real(0, None, lo_open=True, log=True, typical=(1e-4, 1e-1)),
        "label_strategy": LABEL_STRATEGY,
    }

    def __init__(
        self,
        iterations: int = 1000,
        lr: float = 1.0,
        alpha: float = 0.5,
        alpha_lr: float = 1e-3,
        tv_weight: float = 0.01,
        signed: bool = False,
        boxed: bool = True,
        lr_decay: bool = True,
        label_strategy: str | None = None,
        vectorize: bool | str = "auto",
        support: str = "all",
    ) -> None:
        self._set_adam_options(iterations=iterations, lr=lr, tv_weight=tv_weight, signed=signed, boxed=boxed,
                               lr_decay=lr_decay, vectorize=vectorize, support=support)
        self.alpha = float(alpha)
        self.alpha_lr = float(alpha_lr)
        self.label_strategy = as_strategy(label_strategy)

    @property
    def learns_alpha(self) -> bool:
        return 0.0 < self.alpha < 1.0

    def attack(self, observation: Observation, *, generator: torch.Generator | None = None) -> Reconstruction:
        check_generator(generator, owner=self.name)
        problem = unpack(observation, attack=self.name)
        obs = problem.observation
        if obs.kind == "delta":
            deltas = problem.targets  # w_T − w_0
        else:
            obs.require("lr", attack=f"{self.name} on a gradient (kind='gradient')")
            deltas = -float(obs.lr) * problem.targets
        if bool((deltas.norm(dim=1) == 0).any()):
            raise ValueError(f"{self.name}: an observed update is zero; its direction is undefined")
        labels, source = labels_for(problem, self.label_strategy)
        V = problem.victims
        X0 = self._initial_data(problem, (V,), generator, deltas)
        alpha0 = torch.full((V,), self.alpha, device=deltas.device, dtype=deltas.dtype)
        vectorized = use_vmap(problem, V, self.vectorize)
        X, losses, timing = solve_trials(
            lambda x, y, d, a: self._solve(problem, x, y, d, a, vectorized), vectorized, V, X0, labels, deltas, alpha0
        )
        extra = {"label_source": source, "vectorized": vectorized, **timing}
        return Reconstruction(**pack_reconstruction(problem, X, labels, losses, extra))

    def _solve(self, problem: Problem, X0: Tensor, Y: Tensor, deltas: Tensor, alpha0: Tensor, vectorized: bool):
        X = X0.clone().requires_grad_(True)
        alpha = alpha0.clone().requires_grad_(self.learns_alpha)
        w0 = problem.flat(problem.params)
        dims = len(problem.input_shape)
        direction = -deltas  # w_0 − w_T
        mask = self._support_mask(direction)
        gfn = problem.gradient_fn()

        def surrogate_gradient(a: Tensor, delta: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return problem.flat(gfn(problem.unflat(w0 + a * delta), x, y))

        batched = vmap(surrogate_gradient) if vectorized else None
        fixed = None
        if not vectorized and not self.learns_alpha:  # a constant surrogate: leaf copies to differentiate at
            fixed = problem.unflat((w0 + alpha[0] * deltas[0]).detach().clone().requires_grad_(True))

        def objective() -> Tensor:
            if vectorized:
                grads = batched(alpha, deltas, X, Y)
            else:
                params = fixed if fixed is not None else problem.unflat(w0 + alpha[0] * deltas[0])
                grads = problem.gradient(params, X[0], Y[0]).unsqueeze(0)
            return cosine_distance(grads, direction, mask) + self.tv_weight * 0.5 * total_variation(X, dims)

        def clamp_alpha(a: Tensor) -> None:
            with torch.no_grad():
                a.clamp_(0.0, 1.0)

        variables = [Variable(X, self.lr, signed=self.signed, project=problem.project if self.boxed else None)]
        if self.learns_alpha:
            variables.append(Variable(alpha, self.alpha_lr, signed=self.signed, project=clamp_alpha))
        timing = run_adam(variables, objective, iterations=self.iterations, lr_decay=self.lr_decay,
                          attack=self.name)
        with torch.enable_grad():
            losses = objective().detach()
        timing["alpha"] = [float(a) for a in alpha.detach()]
        return X.detach(), losses, timing

    def __repr__(self) -> str:
        return (f"SME(iterations={self.iterations}, lr={self.lr}, alpha={self.alpha}, alpha_lr={self.alpha_lr}, "
                f"tv_weight={self.tv_weight})")
