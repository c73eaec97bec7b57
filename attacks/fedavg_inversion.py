"""Multi-step FedAvg inversion: unroll the client's K local SGD steps and match ``w_K − w_0``.

Geiping et al., "Inverting Gradients" (NeurIPS 2020, Section 6, "multiple local steps"); also
Dimitrov et al., "Data Leakage in Federated Averaging" (TMLR 2022). The K local steps are
simulated on the dummy data inside the autograd graph with ``torch.func.functional_call``,

    w_{k+1} = w_k − lr · ∇_w ℓ(w_k; x_{B_k}, y_{B_k}),     Δ(x) = w_K − w_0,

and the IG objective ``1 − cos(Δ(x), w_K − w_0) + α_TV·TV(x)`` is minimised with IG's optimiser
(Adam lr 0.1 on signed gradients, box constraint, ×0.1 at 3/8, 5/8, 7/8, restarts scored by the
loss). Cost per iteration grows linearly with K.

The attack needs ``lr``, ``local_steps`` (K) and ``batch_size`` (B) in the observation. Batches:
the dummy examples are walked in a fixed order, batch ``k`` holding examples
``(k·B + j) mod N, j < B`` (the whole set when B ≥ N); the client's real batch order is unknown
to the server, and within one pass over the data any fixed order is equivalent because the dummy
examples are free variables. ``momentum`` and ``weight_decay`` are the attacker's assumptions
about the local optimiser (``torch.optim.SGD`` semantics; default plain SGD).
"""

from __future__ import annotations

import torch
from torch import Tensor

from privfl.attacks._common import (
    ADAM_SPACE,
    RESTARTS,
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
from privfl.attacks.inverting_gradients import best_of_restarts, solve_trials
from privfl.attacks.label_recovery import LABEL_STRATEGY, as_strategy, labels_for
from privfl.core import Observation, PrivacyAttack, Reconstruction
from privfl.params import Real, check_generator
from privfl.registry import register

__all__ = ["FedAvgInversion", "batch_schedule"]


def batch_schedule(num_examples: int, steps: int, batch_size: int, device: torch.device) -> Tensor:
    """``[K, B]`` example indices of each local step (fixed cyclic order; full batch when B ≥ N)."""
    B = min(batch_size, num_examples)
    pos = torch.arange(steps, device=device).unsqueeze(1) * B + torch.arange(B, device=device)
    return pos % num_examples


@register("privacy_attack", "fedavg-inversion")
class FedAvgInversion(AdamOptions, PrivacyAttack):
    """Unrolled FedAvg inversion (Geiping et al. 2020 §6; Dimitrov et al. 2022): simulate the K local
    SGD steps on dummy data and match the observed weight difference with the IG objective.

    Parameters as :class:`~privfl.attacks.inverting_gradients.InvertingGradients` (``iterations``
    4800, ``lr`` 0.1, ``tv_weight`` 0.1, ``restarts`` 1, ``signed``, ``boxed``, ``lr_decay``,
    ``label_strategy``, ``vectorize``, ``support``), plus the assumed local ``momentum`` (0) and
    ``weight_decay`` (0).
    """

    name = "fedavg-inversion"
    param_space = {
        **ADAM_SPACE,
        "restarts": RESTARTS,
        "momentum": Real(0, 1, hi_open=True, typical=(0.0, 0.9)),
        "weight_decay": Real(0, None, typical=(0.0, 0.01)),
        "label_strategy": LABEL_STRATEGY,
    }

    def __init__(
        self,
        iterations: int = 4800,
        lr: float = 0.1,
        tv_weight: float = 0.1,
        restarts: int = 1,
        signed: bool = True,
        boxed: bool = True,
        lr_decay: bool = True,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        label_strategy: str | None = None,
        vectorize: bool | str = "auto",
        support: str = "all",
    ) -> None:
        self._set_adam_options(iterations=iterations, lr=lr, tv_weight=tv_weight, signed=signed, boxed=boxed,
                               lr_decay=lr_decay, vectorize=vectorize, support=support)
        self.restarts = int(restarts)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.label_strategy = as_strategy(label_strategy)

    def attack(self, observation: Observation, *, generator: torch.Generator | None = None) -> Reconstruction:
        check_generator(generator, owner=self.name)
        problem = unpack(observation, attack=self.name)
        obs = problem.observation
        obs.require("lr", "local_steps", "batch_size", attack=self.name)
        local_lr, K, B = float(obs.lr), int(obs.local_steps), int(obs.batch_size)
        if not (local_lr > 0 and K >= 1 and B >= 1):
            raise ValueError(f"{self.name}: the observation's lr, local_steps and batch_size must be > 0, "
                             f"got {obs.lr!r}, {obs.local_steps!r}, {obs.batch_size!r}")
        labels, source = labels_for(problem, self.label_strategy)
        # a FedSGD gradient is one local step: w_1 − w_0 = −lr·g
        targets = problem.targets if obs.kind == "delta" else -local_lr * problem.targets
        R, V, N = self.restarts, problem.victims, problem.num_examples
        T = R * V
        X0 = self._initial_data(problem, (R, V), generator, targets)
        schedule = batch_schedule(N, K, B, targets.device)
        vectorized = use_vmap(problem, T, self.vectorize)
        X, losses, timing = solve_trials(
            lambda x, y, t: self._solve(problem, x, y, t, schedule, local_lr, vectorized),
            vectorized, T, X0, labels.repeat(R, 1), targets.repeat(R, 1),
        )
        restart_losses = losses.view(R, V).tolist()
        X, best = best_of_restarts(losses, X, R, V)
        extra = {"label_source": source, "restarts": R, "restart_losses": restart_losses, "vectorized": vectorized,
                 "local_steps": K, **timing}
        return Reconstruction(**pack_reconstruction(problem, X, labels, best, extra))

    def _unroll(self, problem: Problem, w0: dict[str, Tensor], x: Tensor, y: Tensor, schedule: Tensor,
                local_lr: float, functional: bool) -> Tensor:
        """``w_K − w_0`` after the K simulated local steps on ``(x, y)``, differentiable in ``x``."""
        names = problem.layout.names
        gfn = problem.gradient_fn() if functional else None
        w = dict(w0)
        buf: dict[str, Tensor] | None = None
        for k in range(schedule.shape[0]):
            idx = schedule[k]
            if functional:
                g = gfn(w, x[idx], y[idx])
            else:
                grads = torch.autograd.grad(problem.loss(w, x[idx], y[idx]), [w[n] for n in names], create_graph=True)
                g = dict(zip(names, grads))
            if self.weight_decay:
                g = {n: g[n] + self.weight_decay * w[n] for n in names}
            if self.momentum:
                buf = g if buf is None else {n: self.momentum * buf[n] + g[n] for n in names}
                g = buf
            w = {n: w[n] - local_lr * g[n] for n in names}
        return problem.flat({n: w[n] - w0[n] for n in names})

    def _solve(self, problem: Problem, X0: Tensor, Y: Tensor, targets: Tensor, schedule: Tensor,
               local_lr: float, vectorized: bool):
        X = X0.clone().requires_grad_(True)
        dims = len(problem.input_shape)
        mask = self._support_mask(targets)
        if vectorized:
            from torch.func import vmap

            deltas = vmap(lambda x, y: self._unroll(problem, problem.params, x, y, schedule, local_lr, True))
        else:
            leaf = problem.leaf_params()

        def objective() -> Tensor:
            if vectorized:
                d = deltas(X, Y)
            else:
                d = self._unroll(problem, leaf, X[0], Y[0], schedule, local_lr, False).unsqueeze(0)
            return cosine_distance(d, targets, mask) + self.tv_weight * total_variation(X, dims)

        timing = run_adam(
            [Variable(X, self.lr, signed=self.signed, project=problem.project if self.boxed else None)],
            objective, iterations=self.iterations, lr_decay=self.lr_decay, attack=self.name,
        )
        with torch.enable_grad():
            losses = objective().detach()
        return X.detach(), losses, timing

    def __repr__(self) -> str:
        return (f"FedAvgInversion(iterations={self.iterations}, lr={self.lr}, tv_weight={self.tv_weight}, "
                f"restarts={self.restarts}, momentum={self.momentum})")
