"""Inverting Gradients (Geiping, Bauermeister, Dröge, Moeller, NeurIPS 2020).

Minimise, over dummy inputs ``x`` (in the model's input space),

    1 − ⟨∇_w ℓ(x, y), g⟩ / (‖∇_w ℓ(x, y)‖ ‖g‖) + α_TV · TV(x)

where ``g`` is the observed gradient and the inner products run over the **concatenated**
gradient of all parameters (the paper's ``sim`` cost with equal weights), ``TV`` is the mean
absolute difference of neighbouring pixels (horizontal + vertical). Optimiser: Adam, lr 0.1, on
the **sign** of the gradient; after each step ``x`` is projected onto the valid pixel box
(``[0, 1]`` in pixel space, mapped through the dataset's normalisation); the step size is
multiplied by 0.1 at 3/8, 5/8 and 7/8 of the iterations; ``x`` starts from ``N(0, 1)``; of
several restarts the one with the lowest final attack loss is kept.

Defaults are those of the authors' library (``inversefed`` ``DEFAULT_CONFIG``): 4,800 iterations,
lr 0.1, TV weight 0.1, one restart, box constraint, step decay; with the paper's signed
gradients. The paper's own runs use 24,000 iterations. Every default can be overridden.

For a FedAvg update (``kind="delta"``) the attack matches ``−(w_K − w_0)``, the direction of the
accumulated gradient ("IG on the update"); :mod:`.fedavg_inversion` unrolls the local steps instead.

Labels: granted ones, else ``label_strategy`` (``"idlg"``, ``"bias"``, ``"yin"``), else a clear
error. Several victims of the same model (``update`` of shape ``[v, d]``) and the restarts are
optimised together with ``torch.func.vmap``; a single trial takes the plain-autograd path.
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
from privfl.attacks.label_recovery import LABEL_STRATEGY, as_strategy, labels_for
from privfl.core import Observation, PrivacyAttack, Reconstruction
from privfl.params import check_generator
from privfl.registry import register

__all__ = ["InvertingGradients", "solve_trials"]


def solve_trials(solve, vectorized: bool, T: int, *tensors: Tensor):
    """Run ``solve(*tensors)`` on all ``T`` trials at once (vectorised) or one trial at a time.

    ``solve`` returns ``(X, losses, facts)``; the per-trial results are concatenated, numeric facts
    (timings) summed and list-valued facts concatenated.
    """
    if vectorized or T == 1:
        return solve(*tensors)
    outs = [solve(*(t[i : i + 1] for t in tensors)) for i in range(T)]
    X = torch.cat([o[0] for o in outs])
    losses = torch.cat([o[1] for o in outs])
    timing = {}
    for k, first in outs[0][2].items():
        if isinstance(first, list):
            timing[k] = [x for o in outs for x in o[2][k]]
        else:
            timing[k] = sum(o[2][k] for o in outs)
    timing["seconds_per_iteration"] = timing["seconds"] / max(1.0, outs[0][2]["iterations"])
    timing["iterations"] = outs[0][2]["iterations"]
    return X, losses, timing


def best_of_restarts(losses: Tensor, X: Tensor, restarts: int, victims: int) -> tuple[Tensor, Tensor]:
    """Per victim, the restart with the lowest final loss: ``X [R·V, ...]`` → ``[V, ...]``."""
    table = losses.view(restarts, victims)
    best = table.argmin(dim=0)
    idx = best * victims + torch.arange(victims, device=losses.device)
    return X[idx], table.min(dim=0).values


@register("privacy_attack", "inverting-gradients")
class InvertingGradients(AdamOptions, PrivacyAttack):
    """Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching + TV,
    signed Adam, box constraint, step decay, restarts scored by the attack loss.

    Parameters: ``iterations`` (4800), ``lr`` (0.1), ``tv_weight`` (0.1), ``restarts`` (1),
    ``signed`` (True), ``boxed`` (True), ``lr_decay`` (True), ``label_strategy`` (None: labels
    must be granted), ``vectorize`` ("auto": vmap over victims × restarts when there are several),
    ``support`` ("all"; "observed" matches only the update's non-zero coordinates: the adaptive attack
    on sparsified updates, see :class:`~privfl.attacks._common.AdamOptions`).
    """

    name = "inverting-gradients"
    param_space = {**ADAM_SPACE, "restarts": RESTARTS, "label_strategy": LABEL_STRATEGY}

    def __init__(
        self,
        iterations: int = 4800,
        lr: float = 0.1,
        tv_weight: float = 0.1,
        restarts: int = 1,
        signed: bool = True,
        boxed: bool = True,
        lr_decay: bool = True,
        label_strategy: str | None = None,
        vectorize: bool | str = "auto",
        support: str = "all",
    ) -> None:
        self._set_adam_options(iterations=iterations, lr=lr, tv_weight=tv_weight, signed=signed, boxed=boxed,
                               lr_decay=lr_decay, vectorize=vectorize, support=support)
        self.restarts = int(restarts)
        self.label_strategy = as_strategy(label_strategy)

    def _targets(self, problem: Problem) -> Tensor:
        # A weight difference points against the accumulated gradient.
        return problem.targets if problem.observation.kind == "gradient" else -problem.targets

    def attack(self, observation: Observation, *, generator: torch.Generator | None = None) -> Reconstruction:
        check_generator(generator, owner=self.name)
        problem = unpack(observation, attack=self.name)
        labels, source = labels_for(problem, self.label_strategy)
        R, V = self.restarts, problem.victims
        T = R * V
        X0 = self._initial_data(problem, (R, V), generator, problem.targets)
        Y = labels.repeat(R, 1)
        G = self._targets(problem).repeat(R, 1)
        vectorized = use_vmap(problem, T, self.vectorize)
        X, losses, timing = solve_trials(
            lambda x, y, g: self._solve(problem, x, y, g, vectorized), vectorized, T, X0, Y, G
        )
        restart_losses = losses.view(R, V).tolist()
        X, best = best_of_restarts(losses, X, R, V)
        extra = {"label_source": source, "restarts": R, "restart_losses": restart_losses, "vectorized": vectorized,
                 **timing}
        return Reconstruction(**pack_reconstruction(problem, X, labels, best, extra))

    def _solve(self, problem: Problem, X0: Tensor, Y: Tensor, G: Tensor, vectorized: bool):
        X = X0.clone().requires_grad_(True)
        leaf = None if vectorized else problem.leaf_params()
        dims = len(problem.input_shape)
        mask = self._support_mask(G)

        def objective() -> Tensor:
            if vectorized:
                grads = problem.batched_gradients(X, Y)
            else:
                grads = problem.gradient(leaf, X[0], Y[0]).unsqueeze(0)
            return cosine_distance(grads, G, mask) + self.tv_weight * total_variation(X, dims)

        project = problem.project if self.boxed else None
        timing = run_adam(
            [Variable(X, self.lr, signed=self.signed, project=project)],
            objective, iterations=self.iterations, lr_decay=self.lr_decay, attack=self.name,
        )
        with torch.enable_grad():
            losses = objective().detach()
        return X.detach(), losses, timing

    def __repr__(self) -> str:
        return (
            f"InvertingGradients(iterations={self.iterations}, lr={self.lr}, tv_weight={self.tv_weight}, "
            f"restarts={self.restarts}, signed={self.signed}, boxed={self.boxed}, support={self.support!r})"
        )
