"""Plumbing shared by the optimisation-based privacy attacks (not a public module).

Everything here works from an :class:`~privfl.core.Observation` alone: the model and its
parameters ``w0``, the shared update, the number of examples, the input shape and the
normalisation, and the optional facts the threat model grants. The helpers

* unpack an observation into a :class:`Problem` (validated once, at the attack's entry point);
* compute the gradient of the user's loss at given parameters on dummy data, either with plain
  autograd for one trial (the lean path) or with ``torch.func.vmap`` over many trials (victims ×
  restarts) of the same model (the batched path);
* provide the image prior (total variation), the box constraint of the valid pixel range, the
  cosine cost, and the Adam loop with the step decay of Geiping et al. (NeurIPS 2020).

Trials of one call are independent: the objective is a sum of per-trial losses and Adam is
coordinate-wise, so optimising them together gives the same iterates as optimising each alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from privfl.core import Observation
from privfl.flat import ParamLayout, layout_of, supports_vmap
from privfl.params import Choice, Int, Real
from privfl.progress import ProgressLog

__all__ = [
    "Problem",
    "unpack",
    "Variable",
    "run_adam",
    "total_variation",
    "cosine_distance",
    "AdamOptions",
    "ADAM_SPACE",
    "normal",
    "use_vmap",
    "pack_reconstruction",
]


# --------------------------------------------------------------------------------------------
# Declared parameters the optimisation attacks share (one declaration each; used in their param_space)
# --------------------------------------------------------------------------------------------
ITERATIONS = Int(1, None, typical=(1, 8))
RESTARTS = Int(1, None, typical=(1, 2))
LR = Real(0, None, lo_open=True, log=True, typical=(0.01, 1.0))
FLAG = Choice(True, False)
SUPPORT = Choice("all", "observed")
#: the parameters of :class:`AdamOptions`
ADAM_SPACE = {
    "iterations": ITERATIONS,
    "lr": LR,
    "tv_weight": Real(0, None, typical=(0.0, 0.1)),
    "signed": FLAG,
    "boxed": FLAG,
    "lr_decay": FLAG,
    "vectorize": Choice("auto", True, False),
    "support": SUPPORT,
}


class AdamOptions:
    """The hyper-parameters shared by the Adam-based attacks (Inverting Gradients, the unrolled
    FedAvg inversion, SME), validated in one place, and their common dummy-data start.

    ``iterations`` (int ≥ 1), ``lr`` (> 0, the data's step size), ``tv_weight`` (≥ 0), ``signed``,
    ``boxed``, ``lr_decay`` (booleans), ``vectorize`` (``"auto"``, True or False) and ``support``
    (``"all"``, the papers' matching of every coordinate, or ``"observed"``: only the coordinates the
    observed update carries, i.e. its non-zero entries — the adaptive attack on sparsified updates,
    whose zeros say which coordinates a top-k client dropped, not that its gradient vanished there);
    declared once in :data:`ADAM_SPACE` (each attack's ``param_space`` includes it). Each attack keeps its own
    defaults in its signature.
    """

    name: str

    def _set_adam_options(
        self, *, iterations: object, lr: object, tv_weight: object, signed: object, boxed: object,
        lr_decay: object, vectorize: object, support: object = "all",
    ) -> None:
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.tv_weight = float(tv_weight)
        self.signed, self.boxed, self.lr_decay = signed, boxed, lr_decay
        self.vectorize, self.support = vectorize, support

    def _support_mask(self, target: Tensor) -> Tensor | None:
        """The 0/1 mask of the coordinates matched against ``target`` (``[T, d]``): ``None`` (all of
        them) or, with ``support="observed"``, the target's non-zero entries."""
        return None if self.support == "all" else (target != 0).to(target.dtype)

    def _initial_data(self, problem: Problem, trials: Sequence[int], generator: torch.Generator | None,
                      like: Tensor) -> Tensor:
        """``N(0, 1)`` dummy data drawn as ``[*trials, N, *input_shape]`` and returned flattened to
        ``[prod(trials), N, *input_shape]`` (projected into the pixel box when ``boxed``)."""
        shape = (problem.num_examples, *problem.input_shape)
        X0 = normal((*trials, *shape), generator, like).view(math.prod(trials), *shape)
        if self.boxed:
            problem.project(X0)
        return X0


def normal(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``N(0, 1)`` draws of ``shape`` from ``generator`` (on its device), returned on ``like``'s device/dtype."""
    if generator is None:
        return torch.randn(*shape, device=like.device, dtype=like.dtype)
    out = torch.randn(*shape, generator=generator, device=generator.device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype)


# --------------------------------------------------------------------------------------------
# The observation, unpacked
# --------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """What an attack may use, validated and put on the model's device and dtype.

    ``targets`` holds one row per victim (``[v, d]``); ``single`` says the observation held one
    ``[d]`` update. ``mean``/``std`` map model inputs to pixel space; ``low``/``high`` are the
    valid pixel range [0, 1] in model-input space (images only; ``None`` for vector data).
    """

    attack: str
    observation: Observation
    model: nn.Module
    layout: ParamLayout
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    targets: Tensor
    single: bool
    num_examples: int
    input_shape: tuple[int, ...]
    num_classes: int
    mean: Tensor
    std: Tensor
    low: Tensor | None
    high: Tensor | None
    device: torch.device = field(init=False)
    dtype: torch.dtype = field(init=False)

    def __post_init__(self) -> None:
        self.device = self.targets.device
        self.dtype = self.targets.dtype

    @property
    def victims(self) -> int:
        return self.targets.shape[0]

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    # ------------------------------------------------------------------ pixel space
    def to_pixels(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def from_pixels(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def project(self, x: Tensor) -> None:
        """Clamp ``x`` (model-input space) into the valid pixel box, in place (images only)."""
        if self.low is not None:
            with torch.no_grad():
                torch.maximum(torch.minimum(x, self.high), self.low, out=x)

    # ------------------------------------------------------------------ the model's loss
    def loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(self.model, {**self.buffers, **params}, (x,))
        return self.loss_fn(out, y)

    def flat(self, tensors: dict[str, Tensor] | Sequence[Tensor], batched: bool = False) -> Tensor:
        seq = [tensors[n] for n in self.layout.names] if isinstance(tensors, dict) else list(tensors)
        if batched:
            return torch.cat([t.reshape(t.shape[0], -1) for t in seq], dim=1)
        return torch.cat([t.reshape(-1) for t in seq])

    def unflat(self, vec: Tensor) -> dict[str, Tensor]:
        parts = torch.split(vec, list(self.layout.numels))
        return {n: p.view(s) for n, p, s in zip(self.layout.names, parts, self.layout.shapes)}

    def gradient(self, params: dict[str, Tensor], x: Tensor, y: Tensor, *, create_graph: bool = True) -> Tensor:
        """Plain autograd: ``∇_w loss(w; x, y)`` as a flat ``[d]`` vector (differentiable in ``x``)."""
        g = torch.autograd.grad(
            self.loss(params, x, y), [params[n] for n in self.layout.names], create_graph=create_graph
        )
        return self.flat(g)

    def gradient_fn(self) -> Callable[[dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]:
        """``torch.func`` gradient ``(params, x, y) -> {name: grad}``, composable with ``vmap``."""
        return grad(self.loss)

    def batched_gradients(self, X: Tensor, Y: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """``vmap`` over trials: ``X [T, N, ...]``, ``Y [T, N, ...]`` → gradients ``[T, d]`` at ``params``
        (shared ``w0`` by default)."""
        params = self.params if params is None else params
        G = vmap(self.gradient_fn(), in_dims=(None, 0, 0))(params, X, Y)
        return self.flat(G, batched=True)

    def leaf_params(self) -> dict[str, Tensor]:
        """Copies of ``w0`` that require grad (the plain path differentiates through them)."""
        return {n: p.detach().clone().requires_grad_(True) for n, p in self.params.items()}


def _stats(obs: Observation, input_shape: tuple[int, ...], like: Tensor, attack: str) -> tuple[Tensor, Tensor]:
    mean = (0.0,) if obs.data_mean is None else tuple(obs.data_mean)
    std = (1.0,) if obs.data_std is None else tuple(obs.data_std)
    if any(not math.isfinite(s) or s <= 0 for s in std):
        raise ValueError(f"{attack}: observation.data_std must hold finite numbers > 0, got {std!r}")
    m = torch.tensor(mean, device=like.device, dtype=like.dtype)
    s = torch.tensor(std, device=like.device, dtype=like.dtype)
    channels = input_shape[0] if len(input_shape) == 3 else math.prod(input_shape)
    for name, t in (("data_mean", m), ("data_std", s)):
        if t.numel() not in (1, channels):
            raise ValueError(
                f"{attack}: observation.{name} must hold 1 or {channels} entries for input_shape "
                f"{input_shape}, got {t.numel()}"
            )
    if len(input_shape) == 3:
        return m.view(-1, 1, 1), s.view(-1, 1, 1)
    return m.view(-1).expand(channels).reshape(input_shape), s.view(-1).expand(channels).reshape(input_shape)


def unpack(observation: object, *, attack: str) -> Problem:
    """Validate ``observation`` and unpack what the threat model grants into a :class:`Problem`."""
    if not isinstance(observation, Observation):
        raise TypeError(f"{attack}: observation must be a privfl.core.Observation, got {type(observation).__name__}")
    obs = observation
    if not isinstance(obs.model, nn.Module):
        raise TypeError(f"{attack}: observation.model must be a torch.nn.Module, got {type(obs.model).__name__}")
    layout = layout_of(obs.model)
    if layout.dim == 0:
        raise ValueError(f"{attack}: observation.model has no trainable parameters")
    first = next(p for n, p in obs.model.named_parameters() if p.requires_grad)
    update = obs.update
    if not update.is_floating_point():
        raise TypeError(f"{attack}: observation.update must be a floating-point tensor, got dtype {update.dtype}")
    if update.shape[-1] != layout.dim:
        raise ValueError(
            f"{attack}: observation.update has {update.shape[-1]} entries per victim but the model has "
            f"{layout.dim} trainable parameters"
        )
    if not bool(torch.isfinite(update).all()):
        raise ValueError(f"{attack}: observation.update holds NaN or Inf entries")
    input_shape = tuple(int(s) for s in obs.input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"{attack}: observation.input_shape must be a non-empty tuple of ints >= 1, got "
                         f"{obs.input_shape!r}")
    if not isinstance(obs.num_classes, int) or obs.num_classes < 1:
        raise ValueError(f"{attack}: observation.num_classes must be an int >= 1, got {obs.num_classes!r}")
    targets = update.detach().to(device=first.device, dtype=first.dtype)
    single = targets.dim() == 1
    targets = targets.unsqueeze(0) if single else targets
    named = dict(obs.model.named_parameters())
    params = {n: named[n].detach() for n in layout.names}
    buffers = {n: b.detach().clone() for n, b in obs.model.named_buffers()}  # train-mode BatchNorm writes them
    mean, std = _stats(obs, input_shape, targets, attack)
    low = high = None
    if len(input_shape) == 3:
        low, high = (0.0 - mean) / std, (1.0 - mean) / std
    loss_fn = obs.loss_fn if obs.loss_fn is not None else nn.CrossEntropyLoss()
    if not callable(loss_fn):
        raise TypeError(f"{attack}: observation.loss_fn must be callable, got {type(loss_fn).__name__}")
    return Problem(
        attack=attack, observation=obs, model=obs.model, layout=layout, params=params, buffers=buffers,
        loss_fn=loss_fn, targets=targets, single=single, num_examples=int(obs.num_examples),
        input_shape=input_shape, num_classes=obs.num_classes, mean=mean, std=std, low=low, high=high,
    )


def use_vmap(problem: Problem, trials: int, vectorize: object) -> bool:
    """``vectorize``: ``"auto"`` (vmap when several trials and the model allows), True or False."""
    if vectorize is True:
        if not supports_vmap(problem.model):
            raise ValueError(f"{problem.attack}: vectorize=True is not possible for a model with BatchNorm "
                             f"running statistics; use 'auto' or False")
        return True
    if vectorize is False:
        return False
    return trials > 1 and supports_vmap(problem.model)


# --------------------------------------------------------------------------------------------
# Costs and priors
# --------------------------------------------------------------------------------------------
def total_variation(x: Tensor, input_dims: int) -> Tensor:
    """Anisotropic TV of Geiping et al.: ``mean|Δ_w x| + mean|Δ_h x|`` per leading entry.

    ``x`` is ``[T, N, *input_shape]``; returns ``[T]``. Vector data (``input_dims != 3``) has no
    spatial neighbours: zeros.
    """
    if input_dims != 3:
        return x.new_zeros(x.shape[0])
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1) if x.shape[-1] > 1 else x.new_zeros(x.shape[0])
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1) if x.shape[-2] > 1 else x.new_zeros(x.shape[0])
    return dx + dy


def cosine_distance(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 − ⟨a, b⟩ / (‖a‖ ‖b‖)`` row by row (``[T, d]`` → ``[T]``), on the coordinates where ``mask``
    (``[T, d]`` of 0/1, optional) is 1."""
    if mask is not None:
        a = a * mask
    tiny = torch.finfo(a.dtype).tiny
    num = (a * b).sum(-1)
    den = a.norm(dim=-1).clamp_min(tiny) * b.norm(dim=-1).clamp_min(tiny)
    return 1.0 - num / den


# --------------------------------------------------------------------------------------------
# The optimiser loop (Adam, optional signed gradients, projection, step decay)
# --------------------------------------------------------------------------------------------
@dataclass
class Variable:
    """One optimised tensor: a leaf ``tensor`` with its Adam ``lr``, whether its gradient is
    replaced by its sign, and an in-place ``project`` applied after each step."""

    tensor: Tensor
    lr: float
    signed: bool = False
    project: Callable[[Tensor], None] | None = None


def milestones(iterations: int) -> list[int]:
    """Step decay ×0.1 at 3/8, 5/8 and 7/8 of the iterations (Geiping et al. 2020)."""
    return sorted({max(1, (iterations * k) // 8) for k in (3, 5, 7)})


def adam_progress(variables: Sequence[Variable], iterations: int, attack: str) -> ProgressLog:
    """Throttled progress lines of an Adam loop on the ``privfl.attacks`` logger."""
    trials = variables[0].tensor.shape[0] if variables and variables[0].tensor.dim() else 1
    return ProgressLog("privfl.attacks", f"{attack}: Adam on {trials} trial(s) at once", iterations,
                       unit="iterations")


def run_adam(
    variables: Sequence[Variable],
    objective: Callable[[], Tensor],
    *,
    iterations: int,
    lr_decay: bool,
    attack: str = "gradient inversion",
) -> dict[str, float]:
    """Minimise ``objective() -> [T]`` (summed) with one Adam per variable; returns timing facts.
    On CUDA with ``PRIVFL_CUDA_GRAPHS=1``: the same iteration replayed from a CUDA graph
    (:mod:`privfl.attacks._graphed`). Progress: :func:`adam_progress` (``attack`` names the lines)."""
    from privfl.attacks._graphed import graphs_enabled, run_adam_static

    progress = adam_progress(variables, iterations, attack)
    if graphs_enabled([v.tensor for v in variables]):
        return run_adam_static(variables, objective, iterations=iterations, lr_decay=lr_decay,
                               milestones=milestones(iterations), capture=True, progress=progress)
    opts = [torch.optim.Adam([v.tensor], lr=v.lr) for v in variables]
    scheds = [torch.optim.lr_scheduler.MultiStepLR(o, milestones=milestones(iterations), gamma=0.1) for o in opts]
    # CUDA kernels run asynchronously: without a synchronisation the times below would count launches only
    cuda = [v.tensor.device for v in variables if v.tensor.device.type == "cuda"]
    for dev in cuda:
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for it in range(iterations):
        # Gradients for the optimised tensors only (not for the model's parameters).
        grads = torch.autograd.grad(objective().sum(), [v.tensor for v in variables], allow_unused=True)
        for v, o, g in zip(variables, opts, grads):
            v.tensor.grad = torch.zeros_like(v.tensor) if g is None else (g.sign() if v.signed else g)
            o.step()
            if v.project is not None:
                v.project(v.tensor)
        if lr_decay:
            for s in scheds:
                s.step()
        progress.update(it + 1)
    progress.finish()
    for dev in cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": float(iterations), "seconds_per_iteration": seconds / max(1, iterations)}


def pack_reconstruction(problem: Problem, X: Tensor, labels: Tensor | None, losses: Tensor, extra: dict) -> dict:
    """Data in pixel space (clipped to [0, 1] for images), labels, and per-victim losses, shaped for
    one victim (``[N, ...]``) or several (``[v, N, ...]``)."""
    with torch.no_grad():
        pixels = problem.to_pixels(X.detach())
        if problem.is_image:
            pixels = pixels.clamp(0.0, 1.0)
    labels = None if labels is None else labels.detach()
    losses = losses.detach()
    if problem.single:
        pixels = pixels[0]
        labels = None if labels is None else labels[0]
    extra = dict(extra)
    extra["loss_per_victim"] = [float(v) for v in losses]
    return {"data": pixels, "labels": labels, "loss": float(losses.mean()), "extra": extra}
