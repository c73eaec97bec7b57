"""Federated rounds: FedSGD and FedAvg with the slots every experiment plugs into.

One round, in order:

1. **Participation**: ``sampling="uniform"`` picks ``round(sample_rate·n)`` clients without
   replacement; ``"poisson"`` includes each client independently with probability
   ``sample_rate`` (the sampling DP accountants assume; a round may be empty).
2. **Local work** of every participant, batched over clients (:mod:`privfl.fl.local`):
   FedSGD (McMahan et al., AISTATS 2017) sends the gradient on one batch; FedAvg sends the
   weight difference ``w_K − w_0`` after K local SGD steps. Data-poisoning Byzantine clients
   train on their poisoned data here.
3. **Worker momentum** (optional, Karimireddy, He, Jaggi, ICML 2021): a client sends
   ``m_i ← β·m_i + (1−β)·u_i``, kept across the rounds it joins.
4. **Client-side mechanism** (optional): ``reports = mechanism.privatize(U)``; the server
   works on ``mechanism.decode(reports)``.
5. **Byzantine clients** among the participants replace their rows with a model-poisoning attack
   ``attack(rows [h, d], f) -> [f, d]`` fed what its ``knowledge`` declares: the honest rows
   (omniscient), the Byzantine clients' own honest updates (own-data) or a zero matrix (public).
   An omniscient attack with a server-noise mechanism voids the ledger (``privacy_warning``).
6. **Server**: pre-aggregators in order, then the aggregator (``[n, d] -> [d]``); FedAvg applies
   ``w ← w + server_lr·agg``, FedSGD ``w ← w − lr·server_lr·agg``. A **central** mechanism
   (``mechanism.central``: DP-FedAvg, DP-BREM) replaces this step with its own
   ``mechanism.aggregate(reports, byzantine=..., expected_rows=...)``, which adds the noise once to
   the sum; it runs every round, also when nobody was sampled, so the release never reveals who
   took part. ``expected_rows`` is q·N under Poisson sampling, the round's count otherwise.
7. **Accounting**: every privatized release is recorded in ``ledger`` (a
   :class:`~privfl.accounting.PrivacyLedger`) through ``mechanism.account(...)`` — central releases
   once per round with the Poisson sampling rate (``sampling="uniform"`` is accounted without
   amplification), local ones per participating client — plus K example-level DP-SGD steps per
   participating client when ``local.dp_noise > 0``. Each round's record carries ε(``delta``) by
   the ``accounting`` method (the largest over the privacy units in play).

The simulation reads only what a mechanism declares (:class:`privfl.core.Mechanism`): its ``role``
(``central`` follows from it), ``protocol`` (the FL protocol it needs) and ``local_training`` (client
settings it needs, e.g. DP-BREM's per-record clipping), which it applies, ``binds_layout``
(per-tensor compressors get ``bind_layout(layout)``), ``secure_sum`` (for ``secure_aggregation``) and
``report_bytes`` (the bytes sent).

An **observation hook** records, for chosen (round, client) pairs, exactly what a curious
server sees (:class:`privfl.core.Observation`), with the ground truth kept beside it for scoring.
Every random draw comes from a generator derived from ``(seed, purpose, round)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from privfl.accounting.guarantees import gaussian_guarantee
from privfl.accounting.ledger import METHODS, PrivacyLedger, threat_model_warning
from privfl.core import (
    Aggregator,
    ByzantineAttack,
    DataPoisoningAttack,
    Mechanism,
    Observation,
    PreAggregator,
)
from privfl.data.base import Dataset
from privfl.fl.local import LocalSGD, plan_batches, sampling_rates, train_loop, train_vmap
from privfl.fl.rounds import run_rounds
from privfl.flat import flatten, layout_of, load_flat, supports_vmap, unflatten
from privfl.registry import make
from privfl.seeding import make_generator

__all__ = ["FederatedSimulation", "RoundRecord", "ObservationRecord", "evaluate"]

Protocol = Literal["fedavg", "fedsgd"]
GRANTABLE = Observation.GRANTABLE


@dataclass
class RoundRecord:
    """Metrics of one round (accuracy/loss of the global model on the test split after it).

    ``byzantine`` counts the round's Byzantine participants (model and data poisoners alike).
    """

    round: int
    accuracy: float | None
    loss: float | None
    participants: int
    byzantine: int
    bytes_per_client: float
    seconds: float
    epsilon: float | None = None


@dataclass
class ObservationRecord:
    """An observation plus the ground truth the harness scores reconstructions against.

    ``true_inputs`` are in pixel space; ``true_labels`` are the client's labels for those inputs.
    """

    observation: Observation
    true_inputs: Tensor
    true_labels: Tensor


@torch.no_grad()
def evaluate(
    model: nn.Module, w: Tensor, x: Tensor, y: Tensor, *, batch: int = 4096
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` with flat weights ``w`` on ``(x, y)``."""
    layout = layout_of(model)
    params = unflatten(w, layout)
    was_training = model.training
    model.eval()
    correct, total_loss = 0, 0.0
    for lo in range(0, len(x), batch):
        logits = functional_call(model, {**dict(model.named_buffers()), **params}, (x[lo : lo + batch],))
        yb = y[lo : lo + batch]
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return correct / len(x), total_loss / len(x)


@dataclass
class FederatedSimulation:
    """A federated training run over ``dataset`` split into ``clients`` (index tensors).

    Everything is explicit Python objects; :mod:`privfl.evaluations` builds them from names.
    ``parallel``: ``"auto"`` (vmap when the model allows, else loop), ``"vmap"``, ``"loop"``.
    ``client_chunk`` bounds how many clients one vmap call trains (memory on big models).
    ``grant`` lists the optional facts the curious server's observations include.
    """

    model: nn.Module
    dataset: Dataset
    clients: Sequence[Tensor]
    protocol: Protocol = "fedavg"
    local: LocalSGD = field(default_factory=LocalSGD)
    server_lr: float = 1.0
    worker_momentum: float = 0.0
    sample_rate: float = 1.0
    sampling: Literal["uniform", "poisson"] = "uniform"
    mechanism: Mechanism | None = None
    aggregator: Aggregator | None = None
    preaggregators: Sequence[PreAggregator] = ()
    byzantine_clients: Sequence[int] = ()
    byzantine_attack: ByzantineAttack | DataPoisoningAttack | None = None
    observe: Sequence[tuple[int, int]] = ()
    grant: Sequence[str] = GRANTABLE
    parallel: Literal["auto", "vmap", "loop"] = "auto"
    client_chunk: int | None = None
    eval_every: int = 1
    seed: int = 0
    device: torch.device | str = "cpu"
    ledger: PrivacyLedger | None = None
    delta: float = 1e-5
    accounting: str = "rdp"
    #: the server sees only the sum of the round's reports (simulated pairwise masks, see
    #: :meth:`_secure_sum`); the mechanism needs ``sum_guarantee``/``decode_sum``/``sum_bits``
    secure_aggregation: bool = False

    def __post_init__(self) -> None:
        self._validate()
        self._apply_mechanism_requirements()
        self.device = torch.device(self.device)
        self.model = self.model.to(self.device)
        self.layout = layout_of(self.model)
        self.weights = flatten(self.model, self.layout).to(self.device)
        self.data = self.dataset.to(self.device)
        self.clients = [torch.as_tensor(c, dtype=torch.int64) for c in self.clients]
        n = len(self.clients)
        self._byz = sorted(set(int(c) for c in self.byzantine_clients))
        self._is_byz = torch.zeros(n, dtype=torch.bool)
        self._is_byz[self._byz] = True
        # Data poisoning: a copy of the training pool in which Byzantine clients' samples are poisoned.
        self._x_pool, self._y_pool = self.data.x_train, self.data.y_train
        if isinstance(self.byzantine_attack, DataPoisoningAttack) and self._byz:
            idx = torch.cat([self.clients[c] for c in self._byz]).to(self.device)
            xp, yp = self.byzantine_attack.poison(
                self._x_pool[idx],
                self._y_pool[idx],
                num_classes=self.data.num_classes,
                generator=make_generator(self.seed, "poison", device=self.device),
            )
            self._x_pool, self._y_pool = self._x_pool.clone(), self._y_pool.clone()
            self._x_pool[idx], self._y_pool[idx] = xp, yp
        self._momentum: Tensor | None = None
        #: first round after which the global weights were NaN/Inf (training diverged; later rounds
        #: are recorded without training, at the accuracy the broken model has)
        self.diverged_round: int | None = None
        self._use_vmap = self.parallel == "vmap" or (self.parallel == "auto" and supports_vmap(self.model))
        if self.parallel == "vmap" and not supports_vmap(self.model):
            raise ValueError("parallel='vmap' is not possible for a model with BatchNorm; use 'auto' or 'loop'")
        self._observe = {(int(r), int(c)) for r, c in self.observe}
        self.observations: list[ObservationRecord] = []
        self.history: list[RoundRecord] = []
        if self.aggregator is None:
            self.aggregator = make("aggregator", "mean")
        self._check_privacy_setup()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.dataset, Dataset):
            raise TypeError(f"dataset must be a privfl Dataset, got {type(self.dataset).__name__}")
        if len(self.clients) < 1:
            raise ValueError("clients must hold at least one client's index tensor")
        if self.mechanism is not None and not isinstance(self.mechanism, Mechanism):
            raise TypeError(f"mechanism must be a privfl Mechanism or None, got {type(self.mechanism).__name__}")
        if self.aggregator is not None and not isinstance(self.aggregator, Aggregator):
            raise TypeError(f"aggregator must be a privfl Aggregator or None, got {type(self.aggregator).__name__}")
        if self.protocol not in ("fedavg", "fedsgd"):
            raise ValueError(f"protocol must be 'fedavg' or 'fedsgd', got {self.protocol!r}")
        if not (0.0 < self.sample_rate <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if self.sampling not in ("uniform", "poisson"):
            raise ValueError(f"sampling must be 'uniform' or 'poisson', got {self.sampling!r}")
        if not (0.0 <= self.worker_momentum < 1.0):
            raise ValueError(f"worker_momentum must be in [0, 1), got {self.worker_momentum!r}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise ValueError(f"server_lr must be a finite number > 0, got {self.server_lr!r}")
        if self.parallel not in ("auto", "vmap", "loop"):
            raise ValueError(f"parallel must be 'auto', 'vmap' or 'loop', got {self.parallel!r}")
        bad = [c for c in self.byzantine_clients if not (0 <= int(c) < len(self.clients))]
        if bad:
            raise ValueError(f"byzantine_clients {bad} are not client ids in [0, {len(self.clients)})")
        if self.byzantine_clients and self.byzantine_attack is None:
            raise ValueError("byzantine_clients were given but no byzantine_attack to run on them")
        unknown = [g for g in self.grant if g not in GRANTABLE]
        if unknown:
            raise ValueError(f"grant: unknown fields {unknown}; grantable: {', '.join(GRANTABLE)}")
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"eval_every must be an int >= 1, got {self.eval_every!r}")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not (0 < self.delta < 1):
            raise ValueError(f"delta must be a number in (0, 1), got {self.delta!r}")
        if self.accounting not in METHODS:
            raise ValueError(f"accounting must be one of {', '.join(map(repr, METHODS))}, got {self.accounting!r}")
        if self.ledger is not None and not isinstance(self.ledger, PrivacyLedger):
            raise TypeError(f"ledger must be a PrivacyLedger or None, got {type(self.ledger).__name__}")

    def _apply_mechanism_requirements(self) -> None:
        mech = self.mechanism
        if mech is None:
            return
        needed = mech.protocol
        if needed is not None and needed != self.protocol:
            raise ValueError(f"mechanism {mech.name!r} needs protocol={needed!r}, got protocol={self.protocol!r}")
        overrides = mech.local_training
        if overrides:
            self.local = dataclasses.replace(self.local, **overrides)

    def _check_privacy_setup(self) -> None:
        mech = self.mechanism
        if mech is not None and mech.central:
            if self.preaggregators or not self.aggregator.plain_mean:
                raise ValueError(
                    f"mechanism {mech.name!r} is central: its aggregate() is the server rule (noise on the sum), "
                    "so aggregator must be 'mean' and preaggregators empty"
                )
        if self.secure_aggregation:
            self._check_secure_aggregation()
        if self.local.dp and not self._use_vmap:
            raise ValueError("DP-SGD (dp_clip) needs per-sample gradients, which a model with BatchNorm does not "
                             "have; use a model without BatchNorm")
        if mech is not None and mech.binds_layout:
            mech.bind_layout(self.layout)
        if self.ledger is None and (mech is not None or self.local.dp_noise > 0):
            self.ledger = PrivacyLedger()
        #: why this run's ε is not a DP guarantee (omniscient attack + server-side noise), or None
        self.privacy_warning = threat_model_warning(mech, self.byzantine_attack, byzantine=bool(self._byz))
        if self.privacy_warning is not None and self.ledger is not None:
            self.ledger.void(self.privacy_warning)
        self._dp_rates = sampling_rates([len(c) for c in self.clients], self.local) if self.local.dp else None

    def _check_secure_aggregation(self) -> None:
        mech = self.mechanism
        if mech is None or not mech.secure_sum:
            raise ValueError(f"secure_aggregation needs a mechanism that declares secure_sum (sum_guarantee, "
                             f"decode_sum, sum_bits: pbm, rqm, ddg, skellam), got {mech.name if mech else None!r}")
        if self.preaggregators or not self.aggregator.plain_mean:
            raise ValueError("secure_aggregation reveals only the sum: aggregator must be 'mean', no preaggregators")
        if isinstance(self.byzantine_attack, ByzantineAttack):
            raise ValueError("secure_aggregation hides the honest rows, which omniscient Byzantine attacks read; "
                             "use a data-poisoning attack or no attack")
        self.secure_aggregation_sizes: list[int] = []

    # ------------------------------------------------------------------ one round
    def _participants(self, t: int) -> Tensor:
        n = len(self.clients)
        g = make_generator(self.seed, "participation", t)
        if self.sampling == "poisson":
            return torch.nonzero(torch.rand(n, generator=g) < self.sample_rate).flatten()
        m = max(1, round(self.sample_rate * n))
        return torch.randperm(n, generator=g)[:m].sort().values

    def _local_updates(self, ids: Tensor, t: int) -> Tensor:
        """Honest protocol work of clients ``ids``: gradients (FedSGD) or deltas (FedAvg)."""
        opt = self.local
        if self.protocol == "fedsgd":
            opt = dataclasses.replace(opt, steps=1, momentum=0.0, weight_decay=0.0)
        ids_list = [int(c) for c in ids]
        plan = plan_batches(
            [self.clients[c] for c in ids_list],
            opt,
            generator=[make_generator(self.seed, "batches", t, c) for c in ids_list],
            distinct=self.protocol == "fedsgd",
        )
        self._last_plan = plan
        gradient_only = self.protocol == "fedsgd"
        if self._use_vmap:
            out = train_vmap(
                self.model, self.layout, self.weights, self._x_pool, self._y_pool, plan, opt,
                chunk=self.client_chunk, gradient_only=gradient_only,
                noise_generator=make_generator(self.seed, "dp-sgd-noise", t, device=self.device) if opt.dp else None,
            )
        else:
            out, buffers = train_loop(
                self.model, self.layout, self.weights, self._x_pool, self._y_pool, plan, opt,
                gradient_only=gradient_only,
            )
            self._average_buffers(buffers)
        return out if gradient_only else out - self.weights

    @torch.no_grad()
    def _average_buffers(self, client_buffers: list[dict[str, Tensor]]) -> None:
        """FedAvg of floating buffers (BatchNorm statistics) over the round's clients."""
        if not client_buffers:
            return
        for name, buf in self.model.named_buffers():
            if buf.is_floating_point():
                buf.copy_(torch.stack([b[name] for b in client_buffers]).mean(0))
            else:
                buf.copy_(torch.stack([b[name] for b in client_buffers]).max(0).values)

    def _apply_worker_momentum(self, ids: Tensor, updates: Tensor) -> Tensor:
        if not self.worker_momentum:
            return updates
        if self._momentum is None:
            self._momentum = torch.zeros(len(self.clients), updates.shape[1], device=updates.device,
                                         dtype=updates.dtype)
        beta = self.worker_momentum
        dev_ids = ids.to(updates.device)
        m = beta * self._momentum[dev_ids] + (1.0 - beta) * updates
        self._momentum[dev_ids] = m
        return m

    def step(self, t: int) -> RoundRecord:
        """Run round ``t`` and return its record."""
        start = time.perf_counter()
        if self.diverged_round is not None:  # the global model is non-finite: nothing left to train
            return self._finish(t, 0, 0, 0.0, start)
        ids = self._participants(t)
        byz_mask = self._is_byz[ids]
        omniscient = isinstance(self.byzantine_attack, ByzantineAttack)
        workers = ids[~byz_mask] if omniscient else ids  # data poisoners follow the protocol
        bytes_per_client = 0.0
        central = self.mechanism is not None and self.mechanism.central
        if len(ids) == 0:
            if central:  # the noisy release happens whoever was sampled
                self._central_update(t, torch.empty(0, self.layout.dim, device=self.device), None, 0)
                self._account(t, workers)
            return self._finish(t, 0, 0, 0.0, start)
        rows = torch.empty(0, self.layout.dim, device=self.device)
        reports = rows
        if len(workers):
            updates = self._local_updates(workers, t)
            if not bool(torch.isfinite(updates).all()):
                # Honest local training overflowed (the global model was driven too far): the run
                # has diverged; stop training rather than feed NaN rows to the server.
                self.diverged_round = t
                return self._finish(t, len(ids), int(byz_mask.sum()), 0.0, start)
            updates = self._apply_worker_momentum(workers, updates)
            if self.mechanism is not None:
                reports = self.mechanism.privatize(
                    updates,
                    generator=make_generator(self.seed, "mechanism", t, device=self.device),
                    client_ids=workers,
                )
                bytes_per_client = float(self.mechanism.report_bytes(reports))
                if self.secure_aggregation:
                    return self._secure_round(t, workers, reports, len(ids), int(byz_mask.sum()),
                                              float(bytes_per_client), start)
                rows = self.mechanism.decode(reports)
            else:
                rows = updates
                bytes_per_client = updates.shape[1] * updates.element_size()
            self._record_observations(t, workers, rows)
        elif central:
            reports = self.mechanism.privatize(
                rows, generator=make_generator(self.seed, "mechanism", t, device=self.device), client_ids=workers
            )
        f_t = int(byz_mask.sum()) if omniscient else 0
        if f_t:
            malicious = self.byzantine_attack(
                self._attack_input(rows, t), f_t,
                generator=make_generator(self.seed, "byzantine", t, device=self.device),
            )
            if malicious.shape != (f_t, self.layout.dim):
                raise ValueError(
                    f"byzantine attack returned shape {tuple(malicious.shape)}, expected {(f_t, self.layout.dim)}"
                )
            if central:
                self._central_update(t, reports, malicious, len(ids))
                self._account(t, workers)
                return self._finish(t, len(ids), int(byz_mask.sum()), float(bytes_per_client), start)
            # Rows in client-id order: honest and malicious interleaved as their ids fall.
            order = torch.cat([ids[~byz_mask], ids[byz_mask]]).argsort()
            rows = torch.cat([rows, malicious.to(rows.dtype)])[order.to(rows.device)]
        if central:
            self._central_update(t, reports, None, len(ids))
            self._account(t, workers)
            return self._finish(t, len(ids), int(byz_mask.sum()), float(bytes_per_client), start)
        with torch.no_grad():
            x = rows
            for k, pre in enumerate(self.preaggregators):
                x = pre(x, generator=make_generator(self.seed, "preaggregator", k, t, device=self.device))
            agg = self.aggregator(x)
            if self.protocol == "fedavg":
                self.weights = self.weights + self.server_lr * agg
            else:
                self.weights = self.weights - self.local.lr * self.server_lr * agg
        self._account(t, workers)
        # Every Byzantine participant counts, data poisoners included (they send no attack rows).
        return self._finish(t, len(ids), int(byz_mask.sum()), float(bytes_per_client), start)

    def _attack_input(self, rows: Tensor, t: int) -> Tensor:
        """What the model-poisoning attack may read, by its declared ``knowledge``: the honest rows
        (``"omniscient"``), every Byzantine client's own honest update (``"own-data"``: local work on
        its own data from the public model, then worker momentum) or a zero matrix (``"public"``)."""
        knowledge = self.byzantine_attack.knowledge
        if knowledge == "own-data":
            own = torch.tensor(self._byz, dtype=torch.int64)
            return self._apply_worker_momentum(own, self._local_updates(own, t))
        if knowledge == "public":
            return torch.zeros(max(1, rows.shape[0]), self.layout.dim, dtype=rows.dtype, device=self.device)
        return rows

    # ------------------------------------------------------------------ secure aggregation
    @torch.no_grad()
    def _secure_sum(self, t: int, workers: Tensor, reports: Tensor) -> Tensor:
        """Σ of the reports as the server learns it: each client adds its pairwise masks in Z_M
        (:class:`~privfl.mechanisms.dp_brem.SecureAggregation`, Bonawitz et al. 2017), the masks
        cancel in the sum (mod M = 2^mechanism.sum_bits(n); DDG/Skellam: their own ring)."""
        from privfl.secagg import SecureAggregation

        n = reports.shape[0]
        secagg = SecureAggregation(frac_bits=0, modulus_bits=max(8, int(self.mechanism.sum_bits(n))))
        ids = workers.tolist()
        key = int(torch.randint(0, 2**62, (1,), generator=make_generator(self.seed, "secagg", t)))
        masks = secagg.masks(ids, reports.shape[1], key=key, device=reports.device)
        masked = torch.remainder(reports.to(torch.int64) + masks, secagg.modulus)
        return secagg.sum(masked, ids, key=key)

    def _secure_round(self, t: int, workers: Tensor, reports: Tensor, participants: int, f_t: int,
                      nbytes: float, start: float) -> RoundRecord:
        """The server's step under secure aggregation: the mean estimate from the unmasked sum."""
        n = reports.shape[0]
        total = self._secure_sum(t, workers, reports)
        with torch.no_grad():
            agg = self.mechanism.decode_sum(total, n, dtype=self.weights.dtype).to(self.weights.device) / n
            if self.protocol == "fedavg":
                self.weights = self.weights + self.server_lr * agg
            else:
                self.weights = self.weights - self.local.lr * self.server_lr * agg
        self._account(t, workers)
        return self._finish(t, participants, f_t, nbytes, start)

    # ------------------------------------------------------------------ privacy
    @torch.no_grad()
    def _central_update(self, t: int, reports: Tensor, malicious: Tensor | None, participants: int) -> None:
        """A central mechanism's server step (noise once on the sum) and the model update."""
        if self.sampling == "poisson":
            expected = self.sample_rate * len(self.clients)
        else:
            expected = float(max(participants, 1))
        agg = self.mechanism.aggregate(
            reports,
            byzantine=malicious,
            expected_rows=expected,
            generator=make_generator(self.seed, "central-noise", t, device=self.device),
        )
        agg = agg.to(self.weights.dtype)
        if self.protocol == "fedavg":
            self.weights = self.weights + self.server_lr * agg
        else:
            self.weights = self.weights - self.local.lr * self.server_lr * agg

    def _account(self, t: int, workers: Tensor) -> None:
        """Record round ``t``'s releases in the ledger (mechanism and example-level DP-SGD)."""
        if self.ledger is None:
            return
        rate = self.sample_rate if self.sampling == "poisson" else 1.0
        if self.secure_aggregation:
            # one client's report inside the sum of the honest participants' reports: Byzantine
            # participants may collude with the server, so their randomness is not counted
            honest = workers.cpu()[~self._is_byz[workers.cpu()]]
            if len(honest):
                g = self.mechanism.sum_guarantee(len(honest))
                self.secure_aggregation_sizes.append(len(honest))
                count = self.layout.dim if g.unit == "coordinate" else 1
                self.ledger.record(g, clients=honest, count=count, unit="client", round=t)
        elif self.mechanism is not None:
            self.mechanism.account(self.ledger, clients=workers.cpu(), sampling_rate=rate, dim=self.layout.dim,
                                   round=t)
        if self.local.dp_noise > 0 and len(workers):
            steps = 1 if self.protocol == "fedsgd" else self.local.steps
            g = gaussian_guarantee(self.local.dp_noise, name="dp-sgd", unit="record")
            rates = torch.tensor([self._dp_rates[int(c)] for c in workers], dtype=torch.float64)
            for q in torch.unique(rates).tolist():
                self.ledger.record(g, sampling_rate=q, count=steps, clients=workers.cpu()[rates == q], round=t)

    def epsilon(self, delta: float | None = None, *, method: str | None = None) -> float | None:
        """ε(δ) spent so far: the worst client, the largest over the privacy units in play
        (``None`` when nothing private ran: no ledger)."""
        if self.ledger is None or self.ledger.void_reason is not None:
            return None  # voided: Byzantine reads put the release outside the accounted sensitivity
        delta = self.delta if delta is None else delta
        method = self.accounting if method is None else method
        units = self.ledger.units
        if not units:
            return 0.0
        return max(self.ledger.epsilon(delta, method=method, unit=u) for u in units)

    def _finish(self, t: int, participants: int, f_t: int, nbytes: float, start: float) -> RoundRecord:
        acc = loss = None
        if self.diverged_round is None and not bool(torch.isfinite(self.weights).all()):
            self.diverged_round = t
        if (t + 1) % self.eval_every == 0:
            acc, loss = evaluate(self.model, self.weights, self.data.x_test, self.data.y_test)
        rec = RoundRecord(t, acc, loss, participants, f_t, nbytes, time.perf_counter() - start, self.epsilon())
        self.history.append(rec)
        return rec

    def _record_observations(self, t: int, workers: Tensor, rows: Tensor) -> None:
        wanted = [i for i, c in enumerate(workers.tolist()) if (t, c) in self._observe and not self._is_byz[c]]
        for i in wanted:
            c = int(workers[i])
            used = self._last_plan.index[i]
            if self._last_plan.mask is not None:
                used = used[self._last_plan.mask[i] > 0]
            uniq = torch.unique(used.flatten()).to(self.device)
            if len(uniq) == 0:  # an empty Poisson batch (DP-SGD / DP-BREM): no data to reconstruct
                continue
            victim = copy.deepcopy(self.model)
            load_flat(victim, self.weights, self.layout)
            victim.eval()
            grant = set(self.grant)
            labels = self.data.y_train[uniq]
            obs = Observation(
                model=victim,
                update=rows[i].detach().clone(),
                kind="gradient" if self.protocol == "fedsgd" else "delta",
                num_examples=len(uniq),
                input_shape=self.data.input_shape,
                num_classes=self.data.num_classes,
                loss_fn=nn.CrossEntropyLoss(),
                labels=labels.clone() if "labels" in grant else None,
                lr=self.local.lr if "lr" in grant else None,
                local_steps=(1 if self.protocol == "fedsgd" else self.local.steps) if "local_steps" in grant
                else None,
                # a full local batch is granted as its size (None would read as "not granted")
                batch_size=(self.local.batch_size or len(uniq)) if "batch_size" in grant else None,
                data_mean=tuple(self.data.mean),
                data_std=tuple(self.data.std),
                round=t,
                client=c,
            )
            self.observations.append(
                ObservationRecord(obs, self.data.to_pixels(self.data.x_train[uniq]), labels.clone())
            )

    def run(self, rounds: int, *, on_round: Callable[[RoundRecord], Any] | None = None) -> list[RoundRecord]:
        """Run ``rounds`` rounds (continuing from the last one run); returns the full history."""
        return run_rounds(self.step, self.history, rounds, on_round)
