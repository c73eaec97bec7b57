"""privfl inside a Flower app (Flower ≥ 1.42 Message API: ``ServerApp``, ``ClientApp``, ``Grid``, ``Message``).

Install with ``pip install privfl[flower]``. Four pieces, all on privfl's contracts (``[n, d]`` rows in
the :mod:`privfl.flat` layout, :class:`~privfl.core.Mechanism`, :class:`~privfl.core.Aggregator`,
:class:`~privfl.accounting.PrivacyLedger`, :class:`~privfl.core.Observation`):

- :class:`PrivflStrategy` — a subclass of Flower's ``FedAvg`` whose ``aggregate_train`` is a privfl
  pipeline: pre-aggregators → aggregator (unweighted by default; ``weighted=True`` for FedAvg's
  example-count weights with the mean), or a **central** mechanism (DP-FedAvg's noise on the sum).
  Replies are flattened with the model's :class:`~privfl.flat.ParamLayout`; a reply with missing,
  mis-shaped or non-finite arrays becomes a NaN row, which robust rules treat as faulty (privfl's
  non-finite policy) and a central mechanism drops; a rule that refuses the round (the plain mean on a
  NaN row, Krum with too few rows) leaves the model unchanged for that round — the server never
  crashes. Every round is recorded in :attr:`PrivflStrategy.ledger`.
- :func:`local_mechanism_mod` — a client mod applying a privfl client-side mechanism to the outgoing
  update (update = returned − received weights, privatized, decoded, re-added); secure noise by default.
- :func:`byzantine_mod` — makes chosen clients Byzantine with an attack that needs no omniscience
  (it sees only its own update: ``sign-flip``, ``ipm``, ``gaussian``, ``nan``, ``inf``; or the data
  poisoning ``label-flip``, applied by :func:`privfl_client_app` to the client's own data).
- :class:`CuriousServerTap` — passed to the strategy, it turns chosen clients' updates in chosen rounds
  into :class:`~privfl.core.Observation` objects for any privfl privacy attack.

:func:`privfl_client_app` builds a ``ClientApp`` that trains a privfl model on one partition of a privfl
dataset with privfl's own local training (:func:`privfl.fl.local.train_loop`, batches drawn exactly as
:class:`~privfl.fl.simulation.FederatedSimulation` draws them), so Flower runs and privfl simulations can
be compared client by client. Flower's round ``r`` (from 1) corresponds to the simulation's round ``r − 1``.

**Accounting.** Client sampling is **Poisson** by default (``sampling="poisson"``: each connected node
joins a round independently with probability ``fraction_train``), the sampling the accountants assume;
a central mechanism's release is then recorded with ``sampling_rate = fraction_train`` and runs every
round, also when nobody was sampled. ``sampling="fixed"`` keeps Flower's sampling of a fixed number of
nodes, which the subsampled-Gaussian analysis does not cover: its releases are recorded without
amplification (``sampling_rate = 1``). A client-side mechanism (``client_mechanism=``: what the
clients' :func:`local_mechanism_mod` applies) is recorded per replying client and round. ε is reported
under the threat model of the run: a trusted server for central noise, the clients' own noise otherwise.

**Noise source.** ``rng="secure"`` (default) draws every mechanism's noise from a CSPRNG with the
grid-exact discrete Gaussian (:mod:`privfl.secure_rng`); ``rng="seeded"`` uses generators derived from
``seed`` (reproducible simulations only).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from torch import Tensor, nn

import privfl
from privfl.accounting.ledger import PrivacyLedger
from privfl.core import Aggregator, ByzantineAttack, DataPoisoningAttack, Mechanism, Observation, PreAggregator
from privfl.data.base import Dataset
from privfl.defenses._common import nonfinite_rows
from privfl.fl.local import LocalSGD, plan_batches, train_loop
from privfl.fl.simulation import evaluate
from privfl.flat import ParamLayout, layout_of, load_flat, unflatten
from privfl.secure_rng import check_rng, default_source, with_rng
from privfl.seeding import make_generator

__all__ = [
    "PrivflStrategy",
    "CuriousServerTap",
    "local_mechanism_mod",
    "byzantine_mod",
    "privfl_client_app",
    "record_to_vector",
    "vector_to_record",
    "record_layout",
    "NON_OMNISCIENT_ATTACKS",
]

#: Byzantine attacks a single client can run from its own update alone (no honest rows of others).
NON_OMNISCIENT_ATTACKS = ("sign-flip", "ipm", "gaussian", "nan", "inf")
POISON_KEY = "privfl-poison"
_METRIC_FACTS = {"lr": "lr", "local_steps": "local-steps", "batch_size": "batch-size"}


# --------------------------------------------------------------------------------------------
# ArrayRecord <-> flat vector
# --------------------------------------------------------------------------------------------
def record_layout(record: ArrayRecord) -> ParamLayout:
    """The :class:`~privfl.flat.ParamLayout` of a record's floating-point arrays, in record order."""
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"record must be a flwr ArrayRecord, got {type(record).__name__}")
    names, shapes = [], []
    for key in record.keys():
        arr = record[key]
        if np.dtype(arr.dtype).kind == "f":
            names.append(key)
            shapes.append(tuple(arr.shape))
    return ParamLayout(tuple(names), tuple(shapes))


def record_to_vector(record: ArrayRecord, layout: ParamLayout, *, out: Tensor | None = None) -> Tensor:
    """The layout's arrays of ``record`` as one float32 vector ``[d]`` (written into ``out`` when given, one
    copy per array); ``ValueError`` when an array is missing or has another shape."""
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"record must be a flwr ArrayRecord, got {type(record).__name__}")
    vec = torch.empty(layout.dim, dtype=torch.float32) if out is None else out
    flat = vec.numpy()
    for name, shape, offset, numel in zip(layout.names, layout.shapes, layout.offsets, layout.numels):
        if name not in record:
            raise ValueError(f"the ArrayRecord lacks the array {name!r} of the model's layout")
        arr = record[name].numpy()
        if tuple(arr.shape) != tuple(shape) or arr.dtype.kind not in "fiu":
            raise ValueError(f"array {name!r} has shape {tuple(arr.shape)} and dtype {arr.dtype}; "
                             f"the layout expects a number array of shape {tuple(shape)}")
        flat[offset:offset + numel] = arr.reshape(-1)
    return vec


def vector_to_record(vec: Tensor, layout: ParamLayout, template: ArrayRecord) -> ArrayRecord:
    """An ArrayRecord with ``template``'s keys and dtypes: the layout's arrays from ``vec``, the others
    (e.g. integer buffers) copied from ``template``."""
    parts = unflatten(vec.detach().cpu(), layout)
    out = {}
    for key in template.keys():
        if key in parts:
            out[key] = Array(np.ascontiguousarray(parts[key].numpy().astype(template[key].numpy().dtype)))
        else:
            out[key] = template[key]
    return ArrayRecord(out)


def _single_record(content: RecordDict, what: str) -> tuple[str, ArrayRecord]:
    records = content.array_records
    if len(records) != 1:
        raise ValueError(f"{what}: expected exactly one ArrayRecord, got {len(records)}")
    return next(iter(records.items()))


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == MessageType.TRAIN


def _client_key(context: Context) -> int:
    """The simulation's partition id when there is one, else the node id."""
    pid = context.node_config.get("partition-id") if context.node_config else None
    return int(pid) if pid is not None else int(context.node_id)


def _server_round(msg: Message) -> int:
    for rec in msg.content.config_records.values():
        if "server-round" in rec:
            return int(rec["server-round"])
    return 0


# --------------------------------------------------------------------------------------------
# Client mods
# --------------------------------------------------------------------------------------------
def _replace_update(msg: Message, context: Context, call_next: Callable, transform: Callable) -> Message:
    """Run the inner app, then replace the returned weights ``w1`` by ``w0 + transform(w1 − w0)``."""
    _, sent = _single_record(msg.content, "mod (received message)")
    layout = record_layout(sent)
    w0 = record_to_vector(sent, layout)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    key, got = _single_record(reply.content, "mod (reply)")
    update = record_to_vector(got, layout) - w0
    new = transform(update[None, :])[0]
    reply.content.array_records[key] = vector_to_record(w0 + new.to(w0.dtype), layout, got)
    return reply


def local_mechanism_mod(
    mechanism: Mechanism | str, *, rng: str = "secure", seed: int = 0, **params: Any
) -> Callable[[Message, Context, Callable], Message]:
    """A client mod applying a privfl client-side mechanism to the outgoing update.

    ``mechanism`` is an instance or a registered name (with ``params``). The update ``w1 − w0`` of the
    wrapped train handler is privatized and decoded — ``decode(privatize(u))``, what an unbiased server
    would use — and ``w0`` plus it is sent. ``rng="secure"`` (default) draws from the CSPRNG; ``"seeded"``
    from ``make_generator(seed, "flower-mechanism", round, client)`` (reproducible experiments only).
    Central mechanisms (noise added by the server) belong in :class:`PrivflStrategy`, not here.
    """
    mech = privfl.make("mechanism", mechanism, **params) if isinstance(mechanism, str) else mechanism
    if not isinstance(mech, Mechanism):
        raise TypeError(f"mechanism must be a privfl Mechanism or a registered name, got {type(mechanism).__name__}")
    if mech.central:
        raise ValueError(f"mechanism {mech.name!r} is central (the server adds its noise); pass it to "
                         "PrivflStrategy(central_mechanism=...) or construct it with local=True")
    check_rng(rng)
    mech = with_rng(mech, rng)

    def privfl_mechanism_mod(msg: Message, context: Context, call_next: Callable) -> Message:
        if not _is_train(msg):
            return call_next(msg, context)
        generator = None
        if rng == "seeded":
            generator = make_generator(seed, "flower-mechanism", _server_round(msg), _client_key(context))

        def transform(update: Tensor) -> Tensor:
            return mech.decode(mech.privatize(update, generator=generator)).to(update.dtype)

        return _replace_update(msg, context, call_next, transform)

    privfl_mechanism_mod.mechanism = mech  # type: ignore[attr-defined]
    return privfl_mechanism_mod


def byzantine_mod(
    attack: ByzantineAttack | DataPoisoningAttack | str, *, clients: Iterable[int], seed: int = 0, **params: Any
) -> Callable[[Message, Context, Callable], Message]:
    """A client mod that makes the clients ``clients`` (partition ids in simulation, node ids otherwise)
    Byzantine with a privfl attack that needs no omniscience.

    Model poisoning (:data:`NON_OMNISCIENT_ATTACKS`): the attack sees only the client's own honest update
    as its ``honest`` matrix (``[1, d]``), e.g. ``sign-flip`` sends ``−scale·u``. Attacks that need the
    other clients' updates (ALIE, min-max, min-sum, mimic) are refused. Data poisoning (``label-flip``):
    the mod marks the train message (config key ``"privfl-poison"``) and :func:`privfl_client_app`
    poisons the client's own data before training.
    """
    atk = privfl.make("byzantine_attack", attack, **params) if isinstance(attack, str) else attack
    if isinstance(atk, ByzantineAttack):
        if atk.name not in NON_OMNISCIENT_ATTACKS:
            raise ValueError(f"attack {atk.name!r} needs the honest clients' updates (omniscient); a Flower client "
                             f"sees only its own: use one of {', '.join(NON_OMNISCIENT_ATTACKS)} or 'label-flip'")
    elif not isinstance(atk, DataPoisoningAttack):
        raise TypeError(f"attack must be a privfl Byzantine or data-poisoning attack or a registered name, "
                        f"got {type(attack).__name__}")
    chosen = {int(c) for c in clients}

    def privfl_byzantine_mod(msg: Message, context: Context, call_next: Callable) -> Message:
        client = _client_key(context)
        if not _is_train(msg) or client not in chosen:
            return call_next(msg, context)
        if isinstance(atk, DataPoisoningAttack):
            for rec in msg.content.config_records.values():
                rec[POISON_KEY] = atk.name
            return call_next(msg, context)
        generator = make_generator(seed, "flower-byzantine", _server_round(msg), client)
        return _replace_update(msg, context, call_next, lambda u: atk(u, 1, generator=generator))

    return privfl_byzantine_mod


# --------------------------------------------------------------------------------------------
# A ClientApp running privfl's local training
# --------------------------------------------------------------------------------------------
def privfl_client_app(
    dataset: Dataset,
    model: nn.Module,
    clients: Sequence[Tensor],
    local: LocalSGD,
    *,
    seed: int = 0,
    mods: Sequence[Callable] = (),
    threads: int = 1,
) -> ClientApp:
    """A ``ClientApp`` whose node with partition id ``c`` trains ``model`` on ``dataset.x_train[clients[c]]``
    with privfl's local SGD (``local``) and reports ``num-examples``, ``examples-used`` (distinct examples
    in this round's batches), ``lr``, ``local-steps``,
    ``batch-size`` and ``partition-id``. Batches come from ``make_generator(seed, "batches", r − 1, c)``
    as in :class:`~privfl.fl.simulation.FederatedSimulation`; the evaluate handler reports test accuracy."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a privfl Dataset, got {type(dataset).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(local, LocalSGD):
        raise TypeError(f"local must be a privfl.fl.local.LocalSGD, got {type(local).__name__}")
    parts = [torch.as_tensor(c, dtype=torch.int64) for c in clients]
    layout = layout_of(model)
    app = ClientApp(mods=list(mods))

    def _partition(context: Context) -> int:
        pid = _client_key(context)
        if not 0 <= pid < len(parts):
            raise ValueError(f"partition id {pid} outside the {len(parts)} client partitions")
        return pid

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        pid = _partition(context)
        _, record = _single_record(msg.content, "train message")
        w0 = record_to_vector(record, layout)
        t = _server_round(msg) - 1
        plan = plan_batches([parts[pid]], local, generator=[make_generator(seed, "batches", t, pid)])
        x, y = dataset.x_train, dataset.y_train
        poison = next((rec[POISON_KEY] for rec in msg.content.config_records.values() if POISON_KEY in rec), None)
        if poison is not None:
            idx = parts[pid]
            xp, yp = privfl.make("byzantine_attack", str(poison)).poison(
                x[idx], y[idx], num_classes=dataset.num_classes, generator=make_generator(seed, "poison", pid))
            x, y = x.clone(), y.clone()
            x[idx], y[idx] = xp, yp
        out, _ = train_loop(model, layout, w0, x, y, plan, local)
        used = plan.index[0] if plan.mask is None else plan.index[0][plan.mask[0] > 0]
        metrics = MetricRecord({
            "num-examples": len(parts[pid]), "examples-used": int(torch.unique(used).numel()),
            "lr": float(local.lr), "local-steps": int(local.steps),
            "batch-size": int(local.batch_size or len(parts[pid])), "partition-id": pid,
        })
        arrays = vector_to_record(out[0], layout, record)
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        _, record = _single_record(msg.content, "evaluate message")
        acc, loss = evaluate(model, record_to_vector(record, layout), dataset.x_test, dataset.y_test)
        metrics = MetricRecord({"num-examples": len(dataset.y_test), "accuracy": acc, "loss": loss})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


# --------------------------------------------------------------------------------------------
# The curious server
# --------------------------------------------------------------------------------------------
class CuriousServerTap:
    """Turns chosen clients' updates in chosen rounds into privfl :class:`~privfl.core.Observation`s.

    ``rounds`` / ``clients``: Flower rounds (from 1) and client keys (partition ids in simulation) to keep
    (``None``: all). ``grant`` lists the training facts taken from what the client reports in its
    MetricRecord (``lr``, ``local-steps``, ``batch-size``; ``num-examples`` is always read) — a fact the
    client does not report stays ``None``; ``num_examples`` is the reported ``examples-used`` (else
    ``num-examples``). ``labels(round, client) -> Tensor`` grants ground-truth labels
    in experiments (a real server has none). The observation's ``update`` is the weight difference the
    server received (``kind="delta"``), before any server-side processing.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        rounds: Iterable[int] | None = None,
        clients: Iterable[int] | None = None,
        grant: Sequence[str] = ("lr", "local_steps", "batch_size"),
        data_mean: Sequence[float] | None = None,
        data_std: Sequence[float] | None = None,
        labels: Callable[[int, int], Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        unknown = [g for g in grant if g not in _METRIC_FACTS]
        if unknown:
            raise ValueError(f"grant: unknown facts {unknown}; allowed: {', '.join(_METRIC_FACTS)} "
                             "(labels come from the labels= callable)")
        self.model = model
        self.layout = layout_of(model)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.rounds = None if rounds is None else {int(r) for r in rounds}
        self.clients = None if clients is None else {int(c) for c in clients}
        self.grant = tuple(grant)
        self.data_mean = None if data_mean is None else tuple(data_mean)
        self.data_std = None if data_std is None else tuple(data_std)
        self.labels = labels
        self.observations: list[Observation] = []

    def wants(self, server_round: int, client: int) -> bool:
        return (self.rounds is None or server_round in self.rounds) and (self.clients is None or client in self.clients)

    def observe(self, server_round: int, client: int, update: Tensor, metrics: dict, weights: Tensor) -> None:
        """Record one client's update of ``server_round`` (called by :class:`PrivflStrategy`)."""
        if not self.wants(server_round, client) or not bool(torch.isfinite(update).all()):
            return
        num = metrics.get("examples-used", metrics.get("num-examples"))
        if not isinstance(num, (int, float)) or num < 1:
            return  # nothing to reconstruct from a client that reports no examples
        victim = copy.deepcopy(self.model)
        load_flat(victim, weights, self.layout)
        victim.eval()
        facts = {}
        for fact, key in _METRIC_FACTS.items():
            value = metrics.get(key) if fact in self.grant else None
            facts[fact] = None if value is None else (float(value) if fact == "lr" else int(value))
        self.observations.append(Observation(
            model=victim, update=update.detach().clone(), kind="delta", num_examples=int(num),
            input_shape=self.input_shape, num_classes=self.num_classes, loss_fn=nn.CrossEntropyLoss(),
            labels=None if self.labels is None else self.labels(server_round, client),
            data_mean=self.data_mean, data_std=self.data_std, round=server_round, client=client, **facts,
        ))


# --------------------------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------------------------
def _build(kind: str, spec: Any, params: dict | None, base: type) -> Any:
    obj = privfl.make(kind, spec, **(params or {})) if isinstance(spec, str) else spec
    if not isinstance(obj, base):
        raise TypeError(f"{kind} must be a registered name or a {base.__name__}, got {type(spec).__name__}")
    return obj


class PrivflStrategy(FedAvg):
    """Flower's ``FedAvg`` with privfl's server pipeline and ledger (see the module docstring).

    ``model``: the global model (its layout fixes the flat vector; ``buffers=True`` aggregates floating
    buffers as coordinates too, otherwise they keep the server's values). ``aggregator`` /
    ``preaggregators``: names or instances (``aggregator_params`` for a name). ``central_mechanism``: a
    central privfl mechanism (name + ``central_params``, or instance), then aggregator must be ``"mean"``
    with no pre-aggregators. ``client_mechanism``: the local mechanism the clients apply (accounted per
    replying client). ``weighted``: FedAvg's weights (``weighted_by_key``) with the mean only — robust rules
    are unweighted (a Byzantine client could claim a huge count). ``server_lr``: ``w ← w + server_lr·agg``.
    Other keywords go to ``FedAvg`` (``fraction_train``, ``fraction_evaluate``, ``min_available_nodes``…).

    After a run: :attr:`ledger` (``ledger.epsilon(δ)``), :attr:`history` (one dict per round: rows,
    non-finite rows, skipped, reason, and ``weights`` when ``keep_weights``) and :attr:`tap`'s observations.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        aggregator: Aggregator | str = "mean",
        aggregator_params: dict | None = None,
        preaggregators: Sequence[PreAggregator | str] = (),
        central_mechanism: Mechanism | str | None = None,
        central_params: dict | None = None,
        client_mechanism: Mechanism | None = None,
        weighted: bool = False,
        sampling: str = "poisson",
        rng: str = "secure",
        seed: int = 0,
        server_lr: float = 1.0,
        buffers: bool = False,
        tap: CuriousServerTap | None = None,
        ledger: PrivacyLedger | None = None,
        keep_weights: bool = False,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (0.0 <= self.fraction_train <= 1.0):
            raise ValueError(f"fraction_train must be in [0, 1], got {self.fraction_train!r}")
        if sampling not in ("poisson", "fixed"):
            raise ValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
        if not isinstance(weighted, bool):
            raise TypeError(f"weighted must be a bool, got {type(weighted).__name__}")
        if not (isinstance(server_lr, (int, float)) and math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"server_lr must be a finite number > 0, got {server_lr!r}")
        if tap is not None and not isinstance(tap, CuriousServerTap):
            raise TypeError(f"tap must be a CuriousServerTap or None, got {type(tap).__name__}")
        if ledger is not None and not isinstance(ledger, PrivacyLedger):
            raise TypeError(f"ledger must be a PrivacyLedger or None, got {type(ledger).__name__}")
        self.rng = check_rng(rng)
        self.layout = layout_of(model, buffers=buffers)
        self.aggregator = _build("aggregator", aggregator, aggregator_params, Aggregator)
        self.preaggregators = [_build("preaggregator", p, None, PreAggregator) for p in preaggregators]
        self.central = None
        if central_mechanism is not None:
            mech = _build("mechanism", central_mechanism, central_params, Mechanism)
            if not mech.central:
                raise ValueError(f"central_mechanism {mech.name!r} is local; apply it on the clients with "
                                 "local_mechanism_mod and pass it here as client_mechanism")
            if mech.local_training or mech.protocol not in (None, "fedavg"):
                raise ValueError(f"central_mechanism {mech.name!r} needs client-side training settings "
                                 f"({mech.local_training or mech.protocol}) that a server strategy "
                                 "cannot impose on Flower clients; use it in privfl's simulator")
            if self.preaggregators or self.aggregator.name != "mean":
                raise ValueError("a central mechanism is the server rule (noise on the sum): aggregator must be "
                                 "'mean' and preaggregators empty")
            self.central = with_rng(mech, rng)
        if client_mechanism is not None:
            if not isinstance(client_mechanism, Mechanism) or client_mechanism.central:
                raise TypeError("client_mechanism must be a local privfl Mechanism (the one the clients' mod applies)")
            client_mechanism = with_rng(client_mechanism, rng)
        if weighted and (self.preaggregators or self.aggregator.name != "mean" or self.central is not None):
            raise ValueError("weighted=True is FedAvg's weighted mean: only with aggregator='mean', no "
                             "preaggregators and no central mechanism (robust rules are unweighted)")
        self.client_mechanism = client_mechanism
        self.weighted = weighted
        self.sampling = sampling
        self.seed = seed
        self.server_lr = float(server_lr)
        self.tap = tap
        self.keep_weights = keep_weights
        self.ledger = ledger if ledger is not None else PrivacyLedger()
        self.history: list[dict[str, Any]] = []
        self.client_index: dict[int, int] = {}  # client key -> dense ledger id
        self._global: tuple[ArrayRecord, Tensor] | None = None
        self._nodes = 0

    # ------------------------------------------------------------------ sampling
    @property
    def sampling_rate(self) -> float:
        """The rate the ledger credits: ``fraction_train`` under Poisson sampling, else 1 (none)."""
        return float(self.fraction_train) if self.sampling == "poisson" else 1.0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = (arrays, record_to_vector(arrays, self.layout))
        if self.sampling == "fixed":
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self._nodes = len(list(grid.get_node_ids()))
            return messages
        if self.fraction_train == 0.0:
            return []
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)  # waits for min_available_nodes
        nodes = sorted(nodes)
        self._nodes = len(nodes)
        if self.rng == "secure":
            u = torch.from_numpy(default_source().uniform(len(nodes)))
        else:
            u = torch.rand(len(nodes), generator=make_generator(self.seed, "flower-participation", server_round),
                           dtype=torch.float64)
        chosen = [n for n, keep in zip(nodes, (u < self.fraction_train).tolist()) if keep]
        log(INFO, "configure_train: Poisson-sampled %s nodes (rate %.3f, out of %s)", len(chosen),
            self.fraction_train, len(nodes))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, chosen, MessageType.TRAIN)

    # ------------------------------------------------------------------ aggregation
    def _read_reply(self, msg: Message, row: Tensor) -> dict:
        """Write the reply's weights into ``row`` (NaN when the reply is malformed); return its metrics."""
        metrics: dict = {}
        try:
            for rec in msg.content.metric_records.values():
                metrics.update(dict(rec))
            _, record = _single_record(msg.content, "reply")
            record_to_vector(record, self.layout, out=row)
        except (ValueError, TypeError, KeyError) as err:
            log(WARNING, "privfl: malformed reply from node %s treated as a faulty row (%s)",
                msg.metadata.src_node_id, err)
            row.fill_(float("nan"))
        return metrics

    def _key(self, msg: Message, metrics: dict) -> int:
        pid = metrics.get("partition-id")
        return int(pid) if isinstance(pid, (int, float)) and not isinstance(pid, bool) else int(
            msg.metadata.src_node_id)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        template, w0 = self._global
        valid = [m for m in replies if not m.has_error()]
        rows = torch.empty(len(valid), self.layout.dim)  # one [n, d] buffer, each reply copied in once
        metrics = [self._read_reply(m, rows[i]) for i, m in enumerate(valid)]
        rows -= w0  # updates w1 − w0
        keys = [self._key(m, met) for m, met in zip(valid, metrics)]
        order = sorted(range(len(keys)), key=keys.__getitem__)  # rows in client order: deterministic aggregation
        if order != list(range(len(keys))):
            rows = rows[order]
        keys, metrics = [keys[i] for i in order], [metrics[i] for i in order]
        parsed = list(zip(keys, rows, metrics))
        finite = ~nonfinite_rows(rows)
        if self.tap is not None:
            for k, row, met in parsed:
                self.tap.observe(server_round, k, row, met, w0)
        ids = torch.tensor([self.client_index.setdefault(k, len(self.client_index)) for k in keys],
                           dtype=torch.int64)
        info: dict[str, Any] = {"round": server_round, "rows": len(keys), "nonfinite": int((~finite).sum()),
                                "skipped": False, "reason": ""}
        agg = None
        try:
            agg = self._aggregate(server_round, rows, finite, [met for _, _, met in parsed])
        except (ValueError, RuntimeError) as err:  # the rule refuses this round: keep the model
            info.update(skipped=True, reason=str(err))
            log(WARNING, "privfl: round %s not aggregated, model kept (%s)", server_round, err)
        self._account(server_round, ids)  # every replying client released its (privatized) update
        arrays = None
        if agg is not None:
            new = w0 + self.server_lr * agg.to(w0.dtype)
            if bool(torch.isfinite(new).all()):
                arrays = vector_to_record(new, self.layout, template)
                if self.keep_weights:
                    info["weights"] = new.clone()
            else:
                info.update(skipped=True, reason="the aggregate is not finite")
        self.history.append(info)
        return arrays, self._metrics(valid, info)

    def _aggregate(self, server_round: int, rows: Tensor, finite: Tensor, metrics: list[dict]) -> Tensor | None:
        if self.central is not None:  # the noisy release happens every round, whoever took part
            expected = self.fraction_train * self._nodes if self.sampling == "poisson" else float(max(len(rows), 1))
            if expected <= 0:
                raise ValueError("no node is connected: the expected number of rows is 0")
            generator = None if self.rng == "secure" else make_generator(self.seed, "flower-central-noise",
                                                                         server_round)
            return self.central.aggregate(rows[finite], expected_rows=expected, generator=generator)
        if len(rows) == 0:
            return None
        if self.weighted:
            w = torch.tensor([float(m.get(self.weighted_by_key, float("nan"))) for m in metrics])
            if not (bool(finite.all()) and bool(torch.isfinite(w).all()) and bool((w > 0).all())):
                raise ValueError("weighted mean: a reply is not finite or reports no positive "
                                 f"{self.weighted_by_key!r}")
            return (w[:, None] * rows).sum(dim=0) / w.sum()
        x = rows
        for k, pre in enumerate(self.preaggregators):
            generator = None
            if self.rng == "seeded":
                generator = make_generator(self.seed, "flower-preaggregator", k, server_round)
            x = pre(x, generator=generator)
        return self.aggregator(x)

    def _account(self, server_round: int, ids: Tensor) -> None:
        dim = self.layout.dim
        if self.central is not None:
            self.central.account(self.ledger, clients=ids, sampling_rate=self.sampling_rate, dim=dim,
                                 round=server_round)
        if self.client_mechanism is not None and len(ids):
            self.client_mechanism.account(self.ledger, clients=ids, sampling_rate=1.0, dim=dim, round=server_round)

    def _metrics(self, valid: list[Message], info: dict) -> MetricRecord:
        try:
            metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key) if valid else None
            out = {k: v for k, v in dict(metrics).items() if k != "partition-id"} if metrics is not None else {}
        except Exception as err:  # noqa: BLE001 - a Byzantine reply's metrics must not stop the server
            log(WARNING, "privfl: client metrics not aggregated (%s)", err)
            out = {}
        out.update({"privfl-rows": info["rows"], "privfl-nonfinite": info["nonfinite"],
                    "privfl-skipped": int(info["skipped"])})
        return MetricRecord(out)

    def epsilon(self, delta: float, *, method: str = "rdp") -> float | None:
        """ε(δ) of the run so far, worst client; ``None`` when neither a central nor a client mechanism is
        configured (the server sees raw updates: there is no guarantee to report)."""
        if self.central is None and self.client_mechanism is None:
            return None
        units = self.ledger.units
        return max((self.ledger.epsilon(delta, method=method, unit=u) for u in units), default=0.0)

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> privfl: %s%s → %s | central: %s | sampling: %s | noise: %s",
            "".join(f"{p.name} → " for p in self.preaggregators), "", self.aggregator.name,
            getattr(self.central, "name", None), self.sampling, self.rng)
