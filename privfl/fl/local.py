"""Client-side local training, batched over clients.

All participating clients of a round train **in parallel** as one computation: their weights are
the rows of one ``[m, d]`` tensor, and one step of local SGD for all of them is
``vmap(grad(loss))`` over those rows with ``torch.func.functional_call``. Models that ``vmap``
cannot handle (BatchNorm updates its running statistics in place) fall back to a plain loop over
clients with ``torch.optim.SGD``; the loop is also the numerical reference in the tests.

Local SGD follows ``torch.optim.SGD`` exactly (dampening 0, no Nesterov):
``g ← ∇ℓ + λw``; ``b ← μb + g`` (``b = g`` at the first step); ``w ← w − η b``. The momentum
buffer starts at zero every round.

**Example-level DP-SGD** (Abadi et al., CCS 2016, as in Opacus): with ``dp_clip=R`` every local
step Poisson-samples the client's records at rate B/N_i (expected batch ``batch_size`` = B),
computes per-sample gradients with ``torch.func`` (``vmap(grad)`` over samples inside the ``vmap``
over clients), clips each to ℓ2 norm R and uses ``g = (Σ clip_R(∇ℓ(x)) + N(0, (σR)² I)) / B`` with
σ = ``dp_noise`` (fixed denominator B, so one record moves g by at most R/B). ``dp_noise=0`` gives
the clipped gradient alone (what DP-BREM's clients send; the server adds the noise). Each step is a
Poisson-subsampled Gaussian release (rate B/N_i, multiplier σ) on the client's records; the
simulation records K of them per round in the privacy ledger (unit ``"record"``). Models with
BatchNorm have no per-sample gradients and are rejected (as Opacus does).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from privfl.flat import ParamLayout, flatten, load_flat, supports_vmap, unflatten
from privfl.params import Choice, Constraint, Int, Param, Real, check_fields

__all__ = ["LocalSGD", "BatchPlan", "plan_batches", "sampling_rates", "supports_vmap", "train_vmap", "train_loop"]


#: how clients are trained: ``"vmap"`` (batched), ``"loop"``, or ``"auto"`` (vmap when the model allows)
PARALLEL = Choice("auto", "vmap", "loop")


@dataclass(frozen=True)
class LocalSGD:
    """Local optimiser settings: ``steps`` (K), ``batch_size`` (``None``: full local batch)."""

    steps: int = 1
    batch_size: int | None = 32
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    dp_clip: float | None = None
    dp_noise: float = 0.0

    param_space: ClassVar[dict[str, Param]] = {
        "steps": Int(1, None, typical=(1, 4)),
        "batch_size": Int(1, None, optional=True, typical=(1, 32)),  # None: full batch
        "lr": Real(0, None, lo_open=True, log=True, typical=(0.01, 1.0)),
        "momentum": Real(0, 1, hi_open=True),
        "weight_decay": Real(0, None, typical=(0.0, 0.01)),
        "dp_clip": Real(0, None, lo_open=True, optional=True, typical=(0.1, 10.0)),  # None: no DP-SGD
        "dp_noise": Real(0, None, typical=(0.0, 2.0)),
    }
    param_constraints: ClassVar[tuple[Constraint, ...]] = (
        Constraint(("dp_noise", "dp_clip"), lambda v: v["dp_noise"] == 0 or v["dp_clip"] is not None,
                   "dp_noise > 0 needs dp_clip (the per-sample clipping norm R)", reads_none=True),
        Constraint(("dp_clip", "batch_size"), lambda v: v["dp_clip"] is None or v["batch_size"] is not None,
                   "DP-SGD (dp_clip) needs batch_size: the expected Poisson batch size B, whose fixed denominator "
                   "bounds the sensitivity", reads_none=True),
    )

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def dp(self) -> bool:
        """Whether local steps are example-level DP-SGD steps (per-sample clipping)."""
        return self.dp_clip is not None


@dataclass
class BatchPlan:
    """Which local samples each client uses at each local step.

    ``index[i, k, b]`` is a *global* sample index; ``mask[i, k, b]`` is 1 for real samples and 0
    for padding (only full-batch plans of unequal client sizes are padded).
    """

    index: Tensor  # int64 [m, K, B]
    mask: Tensor | None  # float [m, K, B] or None when every entry is real


def plan_batches(
    clients: list[Tensor],
    opt: LocalSGD,
    *,
    generator: torch.Generator | Sequence[torch.Generator],
    distinct: bool = False,
) -> BatchPlan:
    """Minibatches for K local steps of every client, drawn without replacement per epoch.

    Each client walks through fresh random permutations of its local data (epoch-style
    shuffling); a batch may straddle two epochs. With ``batch_size=None`` every step uses the
    client's whole local dataset. With ``distinct`` (FedSGD's single batch) a client with fewer
    samples than ``batch_size`` uses each of its samples once (the rest of the row is padding)
    instead of wrapping around.

    ``generator`` may be one generator per client: then a client's batches depend only on its own
    generator, not on which other clients take part in the round (paired comparisons between
    runs stay paired).
    """
    m = len(clients)
    sizes = torch.tensor([len(c) for c in clients], dtype=torch.int64)
    if bool((sizes == 0).any()):
        raise ValueError("every participating client needs at least one sample")
    if isinstance(generator, torch.Generator):
        generators = None
    else:
        generators = list(generator)
        if len(generators) != m:
            raise ValueError(f"got {len(generators)} generators for {m} clients; pass one per client or one in all")
    n_max = int(sizes.max())
    padded = torch.zeros(m, n_max, dtype=torch.int64)
    for i, c in enumerate(clients):  # one copy per client at setup, not in the training loop
        padded[i, : len(c)] = c.cpu()
    valid = torch.arange(n_max).unsqueeze(0) < sizes.unsqueeze(1)  # [m, n_max]
    K = opt.steps
    if opt.dp:
        return _poisson_plan(padded, valid, sizes, opt, generator, generators)
    if opt.batch_size is None:
        local = torch.arange(n_max).expand(m, K, n_max)
        mask = valid.unsqueeze(1).expand(m, K, n_max).to(torch.float32)
        index = torch.gather(padded, 1, (local * valid.unsqueeze(1)).reshape(m, -1)).view(m, K, n_max)
        return BatchPlan(index=index, mask=None if bool(valid.all()) else mask)
    B = opt.batch_size
    if distinct and K != 1:
        raise ValueError(f"distinct batches are for a single step (FedSGD), got {K} local steps")
    total = K * B
    epochs = -(-total // int(sizes.min()))
    if generators is None:
        keys = torch.rand(epochs, m, n_max, generator=generator)
    else:
        keys = torch.stack([torch.rand(epochs, n_max, generator=g) for g in generators], dim=1)
    keys = keys.masked_fill(~valid.unsqueeze(0), 2.0)
    perms = keys.argsort(dim=-1)  # valid local positions first, in random order
    pos = torch.arange(total).unsqueeze(0)  # [1, K*B]
    if distinct and int(sizes.min()) < B:
        real = pos < sizes.unsqueeze(1)  # [m, B]: each sample at most once
        local = perms[0].gather(1, torch.where(real, pos, 0).expand(m, B))
        index = torch.gather(padded, 1, local).view(m, 1, B)
        return BatchPlan(index=index, mask=real.to(torch.float32).view(m, 1, B))
    epoch = pos // sizes.unsqueeze(1)
    offset = pos % sizes.unsqueeze(1)
    rows = torch.arange(m).unsqueeze(1).expand(m, total)
    local = perms[epoch, rows, offset]  # [m, K*B]
    index = torch.gather(padded, 1, local).view(m, K, B)
    return BatchPlan(index=index, mask=None)


def _poisson_plan(
    padded: Tensor,
    valid: Tensor,
    sizes: Tensor,
    opt: LocalSGD,
    generator: torch.Generator | Sequence[torch.Generator],
    generators: list[torch.Generator] | None,
) -> BatchPlan:
    """DP-SGD batches: every record of client i joins each step independently with probability
    min(1, B/N_i). Selected records are packed to the front of a ``[m, K, L]`` plan (L = the
    largest selection) with a mask marking real entries."""
    m, n_max = padded.shape
    K = opt.steps
    rate = (opt.batch_size / sizes.to(torch.float64)).clamp(max=1.0)  # [m]
    if generators is None:
        u = torch.rand(m, K, n_max, generator=generator, dtype=torch.float64)
    else:
        u = torch.stack([torch.rand(K, n_max, generator=g, dtype=torch.float64) for g in generators])
    chosen = (u < rate.view(m, 1, 1)) & valid.unsqueeze(1)  # [m, K, n_max]
    counts = chosen.sum(dim=-1)
    L = max(1, int(counts.max()))
    order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :L]  # chosen first
    index = torch.gather(padded.unsqueeze(1).expand(m, K, n_max), 2, order)
    mask = (torch.arange(L).view(1, 1, L) < counts.unsqueeze(-1)).to(torch.float32)
    return BatchPlan(index=index, mask=mask)


def sampling_rates(sizes: Sequence[int], opt: LocalSGD) -> list[float]:
    """Per-client DP-SGD record sampling rates min(1, B/N_i)."""
    if opt.batch_size is None:
        return [1.0 for _ in sizes]
    return [min(1.0, opt.batch_size / n) for n in sizes]


LossFn = Callable[[Tensor, Tensor], Tensor]


def _weighted_ce(logits: Tensor, y: Tensor, w: Tensor | None) -> Tensor:
    if w is None:
        return F.cross_entropy(logits, y)
    per = F.cross_entropy(logits, y, reduction="none")
    return (per * w).sum() / w.sum()


def train_vmap(
    model: nn.Module,
    layout: ParamLayout,
    w0: Tensor,
    x: Tensor,
    y: Tensor,
    plan: BatchPlan,
    opt: LocalSGD,
    *,
    chunk: int | None = None,
    gradient_only: bool = False,
    noise_generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Local SGD for all clients at once. Returns final weights ``[m, d]``.

    ``w0`` is the common start ``[d]`` or one start per client ``[m, d]`` (shadow models with their
    own random initialisations, :mod:`privfl.attacks.membership`).

    ``x``/``y`` are the (possibly client-poisoned) sample pools indexed by ``plan.index``.
    With ``gradient_only`` it returns the gradient at ``w0`` on the first planned batch (FedSGD).
    With ``opt.dp_clip`` the steps are DP-SGD steps; their noise is drawn from ``noise_generator``.
    ``progress(done, total)`` is called after each step of each chunk of clients (a
    :class:`privfl.progress.ProgressLog`'s ``update``).
    """
    buffers = {k: v for k, v in model.named_buffers()}

    def loss(wflat: Tensor, xb: Tensor, yb: Tensor, mb: Tensor | None) -> Tensor:
        params = unflatten(wflat, layout)
        logits = functional_call(model, {**buffers, **params}, (xb,))
        return _weighted_ce(logits, yb, mb)

    in_dims_mask = None if plan.mask is None else 0
    step_grad = vmap(grad(loss), in_dims=(0, 0, 0, in_dims_mask))
    m = plan.index.shape[0]
    if opt.dp:
        step_grad = _dp_step(model, layout, buffers, opt, noise_generator)
    if chunk is None:
        # Measured on a 1-thread CPU: throughput peaks when a chunk's weights fit in a few MB
        # of cache (≈ 2^21 floats); a GPU prefers every client at once. DP-SGD holds one
        # gradient per sample: bound the chunk by the per-sample gradients instead.
        per_client = layout.dim * (plan.index.shape[-1] if opt.dp else 1)
        budget = (1 << 24) if opt.dp else (1 << 21)
        chunk = m if x.device.type == "cuda" else max(1, budget // max(1, per_client))
    chunk = max(1, min(m, chunk))
    # the plan is moved once: a blocking host-to-device copy per step would stall the device's queue
    index = plan.index.to(x.device)
    mask = None if plan.mask is None else plan.mask.to(x.device, x.dtype)
    outs = []
    for lo in range(0, m, chunk):
        hi = min(m, lo + chunk)
        W = w0[lo:hi].clone() if w0.dim() == 2 else w0.unsqueeze(0).expand(hi - lo, -1).clone()
        buf = None
        for k in range(1 if gradient_only else opt.steps):
            idx = index[lo:hi, k]
            mb = None if mask is None else mask[lo:hi, k]
            g = step_grad(W, x[idx], y[idx], mb)
            if gradient_only:
                W = g
                break
            if opt.weight_decay:
                g.add_(W, alpha=opt.weight_decay)
            if opt.momentum:
                buf = g if buf is None else buf.mul_(opt.momentum).add_(g)
                g = buf
            W.add_(g, alpha=-opt.lr)
            if progress is not None:
                progress((lo // chunk) * opt.steps + k + 1, -(-m // chunk) * opt.steps)
        outs.append(W)
    return torch.cat(outs, dim=0)


def _dp_step(
    model: nn.Module, layout: ParamLayout, buffers: dict[str, Tensor], opt: LocalSGD,
    noise_generator: torch.Generator | None,
) -> Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]:
    """The DP-SGD gradient of a chunk of clients: (Σ_b clip_R(∇ℓ(x_b)) + N(0, (σR)² I)) / B."""
    R, sigma, B = float(opt.dp_clip), float(opt.dp_noise), float(opt.batch_size)

    def sample_loss(wflat: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
        params = unflatten(wflat, layout)
        logits = functional_call(model, {**buffers, **params}, (xs.unsqueeze(0),))
        return F.cross_entropy(logits, ys.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))  # [L, d] for one client

    def clipped_sum(wflat: Tensor, xb: Tensor, yb: Tensor, mb: Tensor) -> Tensor:
        G = per_sample(wflat, xb, yb)
        norms = torch.linalg.vector_norm(G, dim=1)
        factor = torch.clamp(R / norms.clamp_min(1e-12), max=1.0) * mb
        return (factor.unsqueeze(1) * G).sum(dim=0)

    batched = vmap(clipped_sum, in_dims=(0, 0, 0, 0))

    def step(W: Tensor, xb: Tensor, yb: Tensor, mb: Tensor | None) -> Tensor:
        if mb is None:
            mb = torch.ones(xb.shape[:2], dtype=W.dtype, device=W.device)
        total = batched(W, xb, yb, mb)
        if sigma > 0:
            total = total + (sigma * R) * torch.randn(total.shape, generator=noise_generator, dtype=total.dtype,
                                                      device=total.device)
        return total / B

    return step


def train_loop(
    model: nn.Module,
    layout: ParamLayout,
    w0: Tensor,
    x: Tensor,
    y: Tensor,
    plan: BatchPlan,
    opt: LocalSGD,
    *,
    gradient_only: bool = False,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """The per-client reference: ``torch.optim.SGD`` on a copy of ``model`` for each client.

    Returns final weights (or FedSGD gradients) ``[m, d]`` and each client's buffers after
    training (BatchNorm running statistics), for the server to average.
    """
    m = plan.index.shape[0]
    index = plan.index.to(x.device)
    mask = None if plan.mask is None else plan.mask.to(x.device, x.dtype)
    outs, client_buffers = [], []
    for i in range(m):
        local = copy.deepcopy(model)
        load_flat(local, w0, layout)
        local.train()
        sgd = torch.optim.SGD(
            [p for p in local.parameters() if p.requires_grad],
            lr=opt.lr,
            momentum=opt.momentum,
            weight_decay=opt.weight_decay,
        )
        for k in range(1 if gradient_only else opt.steps):
            idx = index[i, k]
            mb = None if mask is None else mask[i, k]
            sgd.zero_grad(set_to_none=True)
            _weighted_ce(local(x[idx]), y[idx], mb).backward()
            if gradient_only:
                break
            sgd.step()
        if gradient_only:
            params = dict(local.named_parameters())
            outs.append(torch.cat([params[n].grad.reshape(-1) for n in layout.names]))
        else:
            outs.append(flatten(local, layout))
        client_buffers.append({k: v.detach().clone() for k, v in local.named_buffers()})
    return torch.stack(outs), client_buffers
