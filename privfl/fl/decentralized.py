"""Decentralized learning with MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust
Collaborative Learning with Linear Gradient Overhead", ICML 2023).

No server: ``n`` nodes each hold a model. One round ``t``, for every node at once (batched over nodes,
like :mod:`privfl.fl.local`):

1. **Local steps** (K, the paper uses 1): on a minibatch of its own data, node ``i`` takes
   ``g = ∇ℓ(x_i) + λ·x_i``, updates its Polyak momentum ``m_i ← β·m_i + (1 − β)·g`` (``β = 0.99``,
   ``m_i = 0`` at the start, kept across rounds) and steps ``x_i ← x_i − γ·m_i``: the half-step
   model ``x_i^{t+1/2}``.
2. **Exchange** over a communication graph. ``graph="complete"``: every node receives every model.
   ``graph="sampled"`` (the paper's experiments, as in the authors' code): every honest node
   receives ``n − f`` models — its own, ``n − 2f − 1`` models of other honest nodes drawn uniformly
   at random each round, and all ``f`` Byzantine models (the worst case).
3. **Mixing** with nearest-neighbour averaging (:class:`privfl.defenses.monna.NNA`): a node keeps
   the ``r − f`` received models closest to its own (``r`` received: ``n − f`` on the complete
   graph, ``n − 2f`` when sampled) and averages them.

Byzantine nodes: an omniscient :class:`~privfl.core.ByzantineAttack` produces the ``f`` models they
send, from the honest half-step models (``attack_on="models"``, as in the authors' code) or from the
honest half-step updates ``x_i^{t+1/2} − x_i^t``, added to the honest mean model
(``attack_on="updates"``). Every Byzantine node sends the same model to every receiver. A
:class:`~privfl.core.DataPoisoningAttack` (label flipping) instead makes the Byzantine nodes run
MoNNA honestly on poisoned data. Metrics are over honest nodes only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from privfl.core import ByzantineAttack, DataPoisoningAttack, Mixing
from privfl.data.base import Dataset
from privfl.fl.local import PARALLEL, LocalSGD, plan_batches
from privfl.fl.rounds import run_rounds
from privfl.fl.simulation import evaluate
from privfl.flat import flatten, layout_of, load_flat, supports_vmap, unflatten, unflatten_batch
from privfl.params import COUNT, Choice, Instance, Param, Real, check_fields
from privfl.registry import make
from privfl.seeding import make_generator

__all__ = ["DecentralizedSimulation", "DecentralizedRecord", "sampled_adjacency"]

Graph = Literal["complete", "sampled"]


@dataclass
class DecentralizedRecord:
    """Metrics of one round, over honest nodes: mean / min / max test accuracy, mean loss, and the
    consensus distance ``(1/h) Σ ‖x_i − x̄‖²`` of their models after mixing."""

    round: int
    accuracy: float | None
    loss: float | None
    accuracy_min: float | None
    accuracy_max: float | None
    consensus: float
    byzantine: int
    bytes_per_node: float
    seconds: float


def sampled_adjacency(n: int, byzantine: Sequence[int], *, generator: torch.Generator) -> Tensor:
    """The paper's random exchange: each honest node receives itself, ``n − 2f − 1`` other honest
    nodes drawn uniformly without replacement, and all ``f`` Byzantine nodes. Rows of Byzantine
    nodes are all true (what they receive does not matter). Bool ``[n, n]``, ``A[i, j]``: i receives j.
    """
    byz = sorted(set(int(b) for b in byzantine))
    f = len(byz)
    honest = [i for i in range(n) if i not in set(byz)]
    h = len(honest)
    others = n - 2 * f - 1
    if others < 0 or others > h - 1:
        raise ValueError(f"sampled graph needs n >= 2f + 1 nodes, got n={n}, f={f}")
    A = torch.zeros(n, n, dtype=torch.bool)
    hidx = torch.tensor(honest, dtype=torch.int64)
    keys = torch.rand(h, h, generator=generator)
    keys.fill_diagonal_(2.0)  # never draw yourself among the "others"
    picks = keys.argsort(dim=1)[:, :others]  # [h, others] positions among honest nodes
    rows = hidx.unsqueeze(1).expand(h, others)
    A[rows, hidx[picks]] = True
    A[hidx, hidx] = True
    if byz:
        A[:, torch.tensor(byz, dtype=torch.int64)] = True
        A[torch.tensor(byz, dtype=torch.int64)] = True
    return A


@dataclass
class DecentralizedSimulation:
    """MoNNA over ``len(clients)`` nodes; ``clients[i]`` indexes node ``i``'s training samples.

    ``local`` gives K (``steps``), batch size, learning rate ``γ`` and weight decay ``λ``; its
    ``momentum`` must be 0 (the node momentum is ``beta``). ``mixing`` defaults to NNA with
    ``f = len(byzantine_nodes)``. ``parallel``: ``"auto"`` (vmap when the model allows), ``"vmap"``,
    ``"loop"`` (per-node model copies; needed for BatchNorm, whose statistics stay per node).
    """

    model: nn.Module
    dataset: Dataset
    clients: Sequence[Tensor]
    local: LocalSGD = field(default_factory=lambda: LocalSGD(steps=1, batch_size=32, lr=0.1))
    beta: float = 0.99
    mixing: Mixing | None = None
    graph: Graph = "complete"
    byzantine_nodes: Sequence[int] = ()
    byzantine_attack: ByzantineAttack | DataPoisoningAttack | None = None
    attack_on: Literal["models", "updates"] = "models"
    parallel: Literal["auto", "vmap", "loop"] = "auto"
    eval_every: int = 1
    seed: int = 0
    device: torch.device | str = "cpu"
    #: the declared range of the scalar settings (checked by ``privfl.params.check_fields``)
    param_space: ClassVar[dict[str, Param]] = {
        "model": Instance(nn.Module), "dataset": Instance(Dataset), "local": Instance(LocalSGD),
        "beta": Real(0, 1, hi_open=True), "mixing": Instance(Mixing, optional=True),
        "graph": Choice("complete", "sampled"),
        "byzantine_attack": Instance(ByzantineAttack, DataPoisoningAttack, optional=True),
        "attack_on": Choice("models", "updates"), "parallel": PARALLEL, "eval_every": COUNT,
    }

    def __post_init__(self) -> None:
        self._validate()
        self.device = torch.device(self.device)
        self.model = self.model.to(self.device)
        self.layout = layout_of(self.model)
        n = len(self.clients)
        self.n = n
        self.clients = [torch.as_tensor(c, dtype=torch.int64) for c in self.clients]
        self.data = self.dataset.to(self.device)
        self._byz = sorted(set(int(c) for c in self.byzantine_nodes))
        self._is_byz = torch.zeros(n, dtype=torch.bool)
        self._is_byz[self._byz] = True
        self._honest = torch.nonzero(~self._is_byz).flatten()
        self._omniscient = isinstance(self.byzantine_attack, ByzantineAttack)
        # nodes that compute: honest ones, plus data poisoners (they follow the protocol)
        self._workers = self._honest if self._omniscient else torch.arange(n)
        if self.mixing is None:
            self.mixing = make("mixing", "nna", f=len(self._byz))
        self._x_pool, self._y_pool = self.data.x_train, self.data.y_train
        if isinstance(self.byzantine_attack, DataPoisoningAttack) and self._byz:
            idx = torch.cat([self.clients[c] for c in self._byz]).to(self.device)
            xp, yp = self.byzantine_attack.poison(
                self._x_pool[idx], self._y_pool[idx], num_classes=self.data.num_classes,
                generator=make_generator(self.seed, "poison", device=self.device),
            )
            self._x_pool, self._y_pool = self._x_pool.clone(), self._y_pool.clone()
            self._x_pool[idx], self._y_pool[idx] = xp, yp
        w0 = flatten(self.model, self.layout).to(self.device)
        self.models = w0.unsqueeze(0).repeat(n, 1)  # [n, d]: every node starts from the same model
        self.momentum = torch.zeros_like(self.models)
        self._use_vmap = self.parallel == "vmap" or (self.parallel == "auto" and supports_vmap(self.model))
        if self.parallel == "vmap" and not supports_vmap(self.model):
            raise ValueError("parallel='vmap' is not possible for a model with BatchNorm; use 'auto' or 'loop'")
        self._node_models: list[nn.Module] | None = None
        if not self._use_vmap:
            self._node_models = [copy.deepcopy(self.model) for _ in range(n)]
        self.history: list[DecentralizedRecord] = []

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        check_fields(self)
        n = len(self.clients)
        if n < 1:
            raise ValueError("clients must hold at least one node's index tensor")
        if getattr(self.local, "dp_clip", None) is not None:
            raise ValueError("local.dp_clip: example-level DP-SGD is not supported in decentralized learning")
        if self.local.momentum:
            raise ValueError(
                f"local.momentum must be 0 in decentralized learning (got {self.local.momentum}); "
                "the node's Polyak momentum is beta"
            )
        bad = [c for c in self.byzantine_nodes if not (0 <= int(c) < n)]
        if bad:
            raise ValueError(f"byzantine_nodes {bad} are not node ids in [0, {n})")
        f = len(set(int(c) for c in self.byzantine_nodes))
        if f >= n:
            raise ValueError(f"byzantine_nodes: {f} Byzantine nodes of {n} leaves no honest node")
        if f and self.byzantine_attack is None:
            raise ValueError("byzantine_nodes were given but no byzantine_attack to run on them")
        if self.graph == "sampled" and n < 2 * f + 1:
            raise ValueError(f"graph='sampled' needs n >= 2f + 1 (each node receives n − f models), got n={n}, f={f}")

    # ------------------------------------------------------------------ local steps
    def _gradients_vmap(self, W: Tensor, idx: Tensor, mask: Tensor | None) -> Tensor:
        buffers = dict(self.model.named_buffers())
        layout = self.layout

        def loss(wflat: Tensor, xb: Tensor, yb: Tensor, mb: Tensor | None) -> Tensor:
            logits = functional_call(self.model, {**buffers, **unflatten(wflat, layout)}, (xb,))
            if mb is None:
                return F.cross_entropy(logits, yb)
            per = F.cross_entropy(logits, yb, reduction="none")
            return (per * mb).sum() / mb.sum()

        fn = vmap(grad(loss), in_dims=(0, 0, 0, None if mask is None else 0))
        return fn(W, self._x_pool[idx], self._y_pool[idx], mask)

    def _gradients_loop(self, nodes: Tensor, W: Tensor, idx: Tensor, mask: Tensor | None) -> Tensor:
        out = []
        for r, node in enumerate(nodes.tolist()):
            net = self._node_models[node]
            load_flat(net, W[r], self.layout)
            net.train()
            net.zero_grad(set_to_none=True)
            logits = net(self._x_pool[idx[r]])
            if mask is None:
                loss = F.cross_entropy(logits, self._y_pool[idx[r]])
            else:
                per = F.cross_entropy(logits, self._y_pool[idx[r]], reduction="none")
                loss = (per * mask[r]).sum() / mask[r].sum()
            loss.backward()
            params = dict(net.named_parameters())
            out.append(torch.cat([params[name].grad.reshape(-1) for name in self.layout.names]))
        return torch.stack(out)

    def _local_steps(self, t: int) -> None:
        nodes = self._workers
        ids = nodes.tolist()
        plan = plan_batches(
            [self.clients[c] for c in ids],
            self.local,
            generator=[make_generator(self.seed, "batches", t, c) for c in ids],
        )
        dev_nodes = nodes.to(self.device)
        W = self.models[dev_nodes]
        M = self.momentum[dev_nodes]
        for k in range(self.local.steps):
            idx = plan.index[:, k].to(self.device)
            mask = None if plan.mask is None else plan.mask[:, k].to(self.device, self._x_pool.dtype)
            with torch.enable_grad():
                g = self._gradients_vmap(W, idx, mask) if self._use_vmap else self._gradients_loop(nodes, W, idx, mask)
            g = g.detach()
            if self.local.weight_decay:
                g = g + self.local.weight_decay * W
            M = self.beta * M + (1.0 - self.beta) * g
            W = W - self.local.lr * M
        self.models[dev_nodes] = W
        self.momentum[dev_nodes] = M

    # ------------------------------------------------------------------ one round
    def _adjacency(self, t: int) -> Tensor | None:
        if self.graph == "complete":
            return None
        return sampled_adjacency(self.n, self._byz, generator=make_generator(self.seed, "graph", t)).to(self.device)

    @torch.no_grad()
    def step(self, t: int) -> DecentralizedRecord:
        start = time.perf_counter()
        before = self.models.clone() if (self._omniscient and self.attack_on == "updates") else None
        self._local_steps(t)
        half = self.models
        f = len(self._byz)
        if self._omniscient and f:
            honest = self._honest.to(self.device)
            gen = make_generator(self.seed, "byzantine", t, device=self.device)
            if self.attack_on == "models":
                malicious = self.byzantine_attack(half[honest], f, generator=gen)
            else:
                deltas = half[honest] - before[honest]
                malicious = before[honest].mean(dim=0) + self.byzantine_attack(deltas, f, generator=gen)
            if malicious.shape != (f, self.layout.dim):
                raise ValueError(
                    f"byzantine attack returned shape {tuple(malicious.shape)}, expected {(f, self.layout.dim)}"
                )
            half = half.clone()
            half[torch.tensor(self._byz, device=self.device)] = malicious.to(half.dtype)
        adjacency = self._adjacency(t)
        self.models = self.mixing(half, adjacency=adjacency)
        nbytes = self._bytes_per_node(adjacency)
        return self._finish(t, nbytes, start)

    def _bytes_per_node(self, adjacency: Tensor | None) -> float:
        """Bytes an honest node sends in a round (its model, once per receiver)."""
        size = self.layout.dim * self.models.element_size()
        if adjacency is None:
            return float(size * (self.n - 1))
        A = adjacency.clone()
        A.fill_diagonal_(False)
        sent = A[:, self._honest.to(A.device)].sum(dim=0).to(torch.float64)
        return float(sent.mean()) * size

    @torch.no_grad()
    def evaluate_nodes(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Test accuracy and mean cross-entropy of each node in ``nodes`` (two ``[len(nodes)]`` tensors)."""
        x, y = self.data.x_test, self.data.y_test
        W = self.models[nodes.to(self.device)]
        if not self._use_vmap:
            accs, losses = [], []
            for r, node in enumerate(nodes.tolist()):
                acc, loss = evaluate(self._node_models[node], W[r], x, y)
                accs.append(acc)
                losses.append(loss)
            return torch.tensor(accs, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64)
        buffers = dict(self.model.named_buffers())
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros(len(nodes), dtype=torch.float64)
        total = torch.zeros(len(nodes), dtype=torch.float64)
        params = unflatten_batch(W, self.layout)

        def forward(p: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(self.model, {**buffers, **p}, (xb,))

        for lo in range(0, len(x), 2048):
            xb, yb = x[lo : lo + 2048], y[lo : lo + 2048]
            logits = vmap(forward, in_dims=(0, None))(params, xb)  # [h, B, C]
            per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(len(nodes)), reduction="none")
            total += per.view(len(nodes), -1).sum(dim=1).double().cpu()
            correct += (logits.argmax(-1) == yb).sum(dim=1).double().cpu()
        self.model.train(was_training)
        return correct / len(x), total / len(x)

    def _finish(self, t: int, nbytes: float, start: float) -> DecentralizedRecord:
        honest = self._honest
        H = self.models[honest.to(self.device)].to(torch.float64)
        consensus = float((H - H.mean(dim=0)).square().sum(dim=1).mean())
        acc = loss = acc_min = acc_max = None
        if (t + 1) % self.eval_every == 0:
            accs, losses = self.evaluate_nodes(honest)
            acc, loss = float(accs.mean()), float(losses.mean())
            acc_min, acc_max = float(accs.min()), float(accs.max())
        rec = DecentralizedRecord(t, acc, loss, acc_min, acc_max, consensus, len(self._byz), nbytes,
                                  time.perf_counter() - start)
        self.history.append(rec)
        return rec

    def run(
        self, rounds: int, *, on_round: Callable[[DecentralizedRecord], Any] | None = None
    ) -> list[DecentralizedRecord]:
        """Run ``rounds`` rounds (continuing from the last one run); returns the full history."""
        return run_rounds(self.step, self.history, rounds, on_round)
