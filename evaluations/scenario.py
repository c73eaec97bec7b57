"""A :class:`Scenario` names everything one federated experiment needs; :func:`run` executes it.

Every field is plain data (names from the registry plus their parameters), so a scenario is a
row of a YAML spec, a cell of an evaluation grid and a key in the results store. In Python::

    from privfl.evaluations import Scenario, run
    result = run(Scenario(model="convnet", rounds=10), seed=0)
    result["summary"]["final_accuracy"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from privfl import registry
from privfl.evaluations.errors import SpecError
from privfl.fl.local import LocalSGD
from privfl.fl.partition import partition
from privfl.fl.simulation import FederatedSimulation, RoundRecord
from privfl.seeding import derive_seed, make_generator

__all__ = [
    "Scenario",
    "SpecError",
    "run",
    "run_federated",
    "resolve_device",
    "cell_id",
    "register_mode",
    "seeded_setup",
    "accuracy_summary",
    "train",
    "round_series",
    "register_extension",
    "Extension",
]


# Upper bounds on the size-like fields (checked by ``Scenario.validate`` before anything runs), and on
# the work of one cell: rounds × participating clients × local steps, in client SGD steps.
LIMITS: dict[str, int] = {
    "rounds": 100_000,
    "num_clients": 100_000,
    "local_steps": 10_000,
    "batch_size": 100_000,
    "eval_every": 100_000,
    "client_chunk": 100_000,
    "byzantine": 100_000,
    "inversion_victims": 1_000,
    "inversion_grid_images": 64,
    "analytics_users": 100_000_000,
}
MAX_CLIENT_STEPS = 10**9  # about a day of CPU time for the smallest model; larger cells are refused


@dataclass
class Scenario:
    """One federated experiment. Component fields are registry names; ``*_params`` their keywords.

    Defaults are the bundled evaluation's: FedAvg on ``digits``, 20 clients, Dirichlet α = 0.5.
    ``byzantine`` Byzantine clients (ids drawn from the seed) run ``byzantine_attack``; robust
    aggregators and pre-aggregators get ``f = byzantine`` unless their params say otherwise.
    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    label: str = ""
    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    partition: str = "dirichlet"
    partition_params: dict[str, Any] = field(default_factory=lambda: {"alpha": 0.5})
    num_clients: int = 20
    model: str = "mlp"
    model_params: dict[str, Any] = field(default_factory=dict)
    protocol: str = "fedavg"
    rounds: int = 30
    local_steps: int = 10
    batch_size: int | None = 16
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    server_lr: float = 1.0
    worker_momentum: float = 0.0
    sample_rate: float = 1.0
    sampling: str = "uniform"
    mechanism: str | None = None
    mechanism_params: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "mean"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    preaggregators: list[dict[str, Any]] = field(default_factory=list)
    byzantine: int = 0
    byzantine_attack: str | None = None
    byzantine_attack_params: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 1
    device: str = "cpu"
    parallel: str = "auto"
    client_chunk: int | None = None
    # ``mode`` picks the runner: "federated" (server-based FL, this module); other modes
    # (decentralized learning, federated analytics) register their own with ``register_mode``.
    mode: str = "federated"
    # --- decentralized learning (MoNNA) fields ---
    # mode="decentralized" (privfl.evaluations.decentralized): `num_clients` nodes, `byzantine` of them
    # Byzantine; each round K=`local_steps` steps with Polyak momentum `node_momentum` (β), exchange over
    # `graph` ("complete" or "sampled": n − f models received, as in MoNNA's experiments), mix with `mixing`.
    graph: str = "complete"
    node_momentum: float = 0.99
    mixing: str = "nna"
    mixing_params: dict[str, Any] = field(default_factory=dict)
    decentralized_attack_on: str = "models"
    # --- privacy accounting fields ---
    # ε is reported at ``delta`` by ``accounting`` ("rdp", "pld" or "both"); ``dp_clip``/``dp_noise``:
    # example-level DP-SGD inside every client (per-sample clip R, noise multiplier σ); see evaluations/privacy.py
    delta: float = 1e-5
    accounting: str = "rdp"
    dp_clip: float | None = None
    dp_noise: float = 0.0
    # the server sees only the sum of each round's reports (pbm, rqm, ddg, skellam; uniform sampling)
    secure_aggregation: bool = False
    # --- privacy attack (curious server) fields ---
    # A curious server attacks `inversion_victims` clients' updates in each of `inversion_rounds` with the
    # privacy_attack `inversion_attack` (None: no attack), knowing the facts in `inversion_grant`; scores and
    # the reconstruction grid come from privfl.evaluations.inversion (the defense is `mechanism`).
    inversion_attack: str | None = None
    inversion_attack_params: dict[str, Any] = field(default_factory=dict)
    inversion_label_strategy: str | None = None
    inversion_rounds: list[int] = field(default_factory=lambda: [0])
    inversion_victims: int = 8
    inversion_grant: list[str] = field(default_factory=lambda: ["labels", "lr", "local_steps", "batch_size"])
    inversion_grid_images: int = 8
    # --- federated analytics (LDP frequency estimation) fields ---
    # mode="analytics" (privfl.evaluations.analytics): `rounds` collections over `analytics_users` users whose
    # categorical values evolve (`analytics_data`: "zipf" or "markov"; k is mechanism_params.k); `sample_rate`
    # is the per-collection participation probability; eps_1 = analytics_alpha * eps_inf where it applies.
    analytics_users: int = 10000
    analytics_data: str = "zipf"
    analytics_data_params: dict[str, Any] = field(default_factory=dict)
    analytics_alpha: float | None = None
    # --- membership inference (mode="membership", privfl.evaluations.membership): threat, attacks, references ---
    membership_params: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "scenario") -> Scenario:
        """Build from a mapping, rejecting unknown fields and wrong types with a clear message."""
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a mapping of scenario fields, got {type(data).__name__}")
        valid = cls.fields()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise SpecError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; valid fields: {', '.join(valid)}"
            )
        scenario = cls(**{k: _copy(v) for k, v in data.items()})
        scenario.check_types(where)
        return scenario

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Scenario:
        return Scenario.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ validation
    def check_types(self, where: str = "scenario") -> None:
        hints = {f.name: f.type for f in dataclasses.fields(self)}
        for name, hint in hints.items():
            value = getattr(self, name)
            hint = str(hint)
            optional = "None" in hint
            if value is None:
                if not optional:
                    raise SpecError(f"{where}.{name}: got null; expected {hint}")
                continue
            if hint.startswith("dict") and not isinstance(value, dict):
                raise SpecError(f"{where}.{name}: expected a mapping of parameters, got {value!r}")
            if hint.startswith("list") and not isinstance(value, list):
                raise SpecError(f"{where}.{name}: expected a list, got {value!r}")
            if hint.startswith("str") and not isinstance(value, str):
                raise SpecError(f"{where}.{name}: expected a string, got {value!r}")
            if hint.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
                raise SpecError(f"{where}.{name}: expected an integer, got {value!r}")
            if hint == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise SpecError(f"{where}.{name}: expected a number, got {value!r}")

    def validate(self, where: str = "scenario") -> None:
        """Check every field and build the cheap components once, so bad input fails before running.

        Common checks, then the mode's own validator (the federated mode's is :meth:`validate_federated`).
        """
        self.check_types(where)
        self.check_bounds(where)
        try:
            resolve_device(self.device)
        except ValueError as exc:
            raise SpecError(f"{where}.device: {exc}") from None
        load_extensions()
        if self.mode not in MODES:
            raise SpecError(f"{where}.mode: got {self.mode!r}; allowed: {', '.join(sorted(MODES))}")
        validator = MODE_VALIDATORS.get(self.mode)
        if validator is not None:
            validator(self, where)

    def check_bounds(self, where: str = "scenario") -> None:
        """Size-like fields within :data:`LIMITS`, and one cell's training work within
        :data:`MAX_CLIENT_STEPS` client SGD steps (rounds × participating clients × local steps)."""
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and value > limit:
                raise self._bad(where, name, f"at most {limit:,} (privfl's documented bound for this field)")
        rate = self.sample_rate if isinstance(self.sample_rate, (int, float)) and 0 < self.sample_rate <= 1 else 1
        steps = self.rounds * max(1, round(rate * self.num_clients)) * self.local_steps
        if self.mode != "analytics" and steps > MAX_CLIENT_STEPS:
            raise SpecError(
                f"{where}.rounds: rounds={self.rounds:,} × {max(1, round(rate * self.num_clients)):,} participating "
                f"clients × local_steps={self.local_steps:,} = {steps:,} client SGD steps in one cell; allowed: at "
                f"most {MAX_CLIENT_STEPS:,}")

    def _bad(self, where: str, name: str, allowed: str) -> SpecError:
        return SpecError(f"{where}.{name}: got {getattr(self, name)!r}; allowed: {allowed}")

    def validate_learning(self, where: str = "scenario", *, min_clients: int = 1) -> None:
        """Fields every training mode shares: rounds, local SGD, data, model, partition, Byzantine clients."""

        def bad(name: str, allowed: str) -> SpecError:
            return self._bad(where, name, allowed)

        if self.rounds < 1:
            raise bad("rounds", "an integer >= 1")
        if self.num_clients < min_clients:
            raise bad("num_clients", f"an integer >= {min_clients}")
        if self.local_steps < 1:
            raise bad("local_steps", "an integer >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("batch_size", "an integer >= 1, or null for the full local batch")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        if self.parallel not in ("auto", "vmap", "loop"):
            raise bad("parallel", "'auto', 'vmap' or 'loop'")
        if self.eval_every < 1:
            raise bad("eval_every", "an integer >= 1")
        if not (0 <= self.byzantine < self.num_clients):
            raise bad("byzantine", f"an integer in [0, num_clients={self.num_clients})")
        if self.byzantine and not self.byzantine_attack:
            raise SpecError(
                f"{where}.byzantine_attack: byzantine={self.byzantine} needs an attack name; "
                f"allowed: {', '.join(registry.available('byzantine_attack')) or '(none registered)'}"
            )
        if self.partition not in registry.available("partition"):
            raise bad("partition", ", ".join(registry.available("partition")))
        self._check_component("dataset", "dataset", self.dataset, self.dataset_params, where)
        self._check_component(
            "model", "model", self.model, self.model_params, where, skip=("input_shape", "num_classes")
        )

    def validate_federated(self, where: str = "scenario") -> None:
        """The federated mode's fields: training settings, registry names and parameters, extensions."""

        def bad(name: str, allowed: str) -> SpecError:
            return self._bad(where, name, allowed)

        self.validate_learning(where)
        if not (0 <= self.momentum < 1):
            raise bad("momentum", "a number in [0, 1)")
        if not (0 <= self.worker_momentum < 1):
            raise bad("worker_momentum", "a number in [0, 1)")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise bad("server_lr", "a finite number > 0")
        if not (0 < self.sample_rate <= 1):
            raise bad("sample_rate", "a number in (0, 1]")
        if self.protocol not in ("fedavg", "fedsgd"):
            raise bad("protocol", "'fedavg' or 'fedsgd'")
        if self.sampling not in ("uniform", "poisson"):
            raise bad("sampling", "'uniform' or 'poisson'")
        if self.client_chunk is not None and self.client_chunk < 1:
            raise bad("client_chunk", "an integer >= 1, or null")
        for ext in EXTENSIONS.values():
            if ext.validate is not None:
                ext.validate(self, where)
        try:
            parts = self.build_components(seed=0)
        except SpecError:
            raise
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{where}: {exc}") from None
        self._check_round_sizes(parts, where)

    def _check_round_sizes(self, parts: dict[str, Any], where: str) -> None:
        """Each rule's own requirement on the rows a round gives it (Krum n > 2f + 2, ...), checked by
        calling the pre-aggregators and the aggregator on random rows of a round's size: round(q·n)
        participants (Poisson sampling: the expected count; a smaller round may still fail at run time)."""
        rows = max(1, round(self.sample_rate * self.num_clients))
        x = torch.randn(rows, 4, generator=torch.Generator().manual_seed(0))
        context = (f"a round gives it {rows} client update(s) (num_clients={self.num_clients}, "
                   f"sample_rate={self.sample_rate:g}, byzantine={self.byzantine})")
        for i, pre in enumerate(parts["preaggregators"]):
            try:
                x = pre(x, generator=torch.Generator().manual_seed(0))
            except (ValueError, TypeError) as exc:
                raise SpecError(f"{where}.preaggregators[{i}]: {exc}; {context}") from None
            context = f"the pre-aggregators give it {x.shape[0]} row(s) per round"
        try:
            parts["aggregator"](x)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{where}.aggregator: {exc}; {context}") from None

    @staticmethod
    def _check_component(
        kind: str, fname: str, name: str, params: dict, where: str, skip: tuple[str, ...] = ()
    ) -> None:
        try:
            registry.get(kind, name)
            full = dict(params)
            for s in skip:
                full.setdefault(s, None)
            registry.check_params(kind, name, full)
        except ValueError as exc:
            raise SpecError(f"{where}.{fname}: {exc}") from None

    def _with_f(self, kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        if "f" in registry.parameters(kind, name) and "f" not in params:
            params["f"] = self.byzantine
        return params

    def preaggregator_specs(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for i, item in enumerate(self.preaggregators):
            if isinstance(item, str):
                out.append((item, {}))
            elif isinstance(item, dict) and set(item) <= {"name", "params"} and isinstance(item.get("name"), str):
                out.append((item["name"], dict(item.get("params") or {})))
            else:
                raise SpecError(f"preaggregators[{i}]: expected a name or {{name: ..., params: {{...}}}}, got {item!r}")
        return out

    def build_components(self, seed: int) -> dict[str, Any]:
        """Aggregator, pre-aggregators, mechanism and Byzantine attack built from their names."""
        out: dict[str, Any] = {}
        out["aggregator"] = registry.make(
            "aggregator", self.aggregator, **self._with_f("aggregator", self.aggregator, self.aggregator_params)
        )
        out["preaggregators"] = [
            registry.make("preaggregator", n, **self._with_f("preaggregator", n, p))
            for n, p in self.preaggregator_specs()
        ]
        out["mechanism"] = (
            registry.make("mechanism", self.mechanism, **self.mechanism_params) if self.mechanism else None
        )
        out["byzantine_attack"] = (
            registry.make("byzantine_attack", self.byzantine_attack, **self.byzantine_attack_params)
            if self.byzantine_attack
            else None
        )
        return out


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; ``"cuda"``/``"cuda:N"`` must exist."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"got {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"got {device!r} but torch.cuda.is_available() is False; allowed here: 'auto', 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"got {device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ValueError(f"got {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'")
    return dev


def cell_id(scenario: Scenario, seed: int) -> str:
    """Stable identity of a (scenario, seed) cell: a hash of its canonical JSON."""
    text = json.dumps({"scenario": scenario.to_dict(), "seed": seed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_DATASET_CACHE: dict[str, Any] = {}


def _load_dataset(name: str, params: dict[str, Any]):
    key = json.dumps([name, params], sort_keys=True)
    if key not in _DATASET_CACHE:
        _DATASET_CACHE.clear()  # keep one dataset per worker process
        _DATASET_CACHE[key] = registry.make("dataset", name, **params)
    return _DATASET_CACHE[key]


@dataclass
class SeededSetup:
    """What every training mode builds first, from the scenario and the cell's seed."""

    device: torch.device
    data: Any
    clients: list[Tensor]
    model: nn.Module
    byzantine_ids: list[int]


def seeded_setup(scenario: Scenario, seed: int) -> SeededSetup:
    """Dataset, partition, model and Byzantine ids, each from its own seed label (``"partition"``,
    ``"model"``, ``"byzantine-ids"``): the federated and decentralized modes share this one function,
    so a scenario's clients, initial model and adversaries are the same in both and reproduce."""
    device = resolve_device(scenario.device)
    data = _load_dataset(scenario.dataset, scenario.dataset_params)
    clients = partition(
        scenario.partition,
        data.y_train,
        scenario.num_clients,
        generator=make_generator(seed, "partition"),
        **scenario.partition_params,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "model"))
        model = registry.make(
            "model", scenario.model, input_shape=data.input_shape, num_classes=data.num_classes, **scenario.model_params
        )
    byz_ids: list[int] = []
    if scenario.byzantine:
        perm = torch.randperm(scenario.num_clients, generator=make_generator(seed, "byzantine-ids"))
        byz_ids = sorted(perm[: scenario.byzantine].tolist())
    return SeededSetup(device=device, data=data, clients=clients, model=model, byzantine_ids=byz_ids)


def build_simulation(scenario: Scenario, seed: int) -> FederatedSimulation:
    """Everything a scenario names, built deterministically from ``seed``."""
    setup = seeded_setup(scenario, seed)
    device, data, clients, model, byz_ids = (setup.device, setup.data, setup.clients, setup.model,
                                             setup.byzantine_ids)
    parts = scenario.build_components(seed)
    kwargs: dict[str, Any] = dict(
        model=model,
        dataset=data,
        clients=clients,
        protocol=scenario.protocol,  # type: ignore[arg-type]
        local=LocalSGD(
            steps=scenario.local_steps,
            batch_size=scenario.batch_size,
            lr=scenario.lr,
            momentum=scenario.momentum,
            weight_decay=scenario.weight_decay,
        ),
        server_lr=scenario.server_lr,
        worker_momentum=scenario.worker_momentum,
        sample_rate=scenario.sample_rate,
        sampling=scenario.sampling,  # type: ignore[arg-type]
        mechanism=parts["mechanism"],
        aggregator=parts["aggregator"],
        preaggregators=parts["preaggregators"],
        byzantine_clients=byz_ids,
        byzantine_attack=parts["byzantine_attack"],
        parallel=scenario.parallel,  # type: ignore[arg-type]
        client_chunk=scenario.client_chunk,
        eval_every=scenario.eval_every,
        seed=derive_seed(seed, "simulation"),
        device=device,
    )
    load_extensions()
    for ext in EXTENSIONS.values():
        if ext.configure is not None:
            ext.configure(scenario, seed, kwargs)
    return FederatedSimulation(**kwargs)


# --------------------------------------------------------------------------------------------
# Modes and extensions
# --------------------------------------------------------------------------------------------
RunFn = Callable[..., dict[str, Any]]
MODES: dict[str, RunFn] = {}
MODE_VALIDATORS: dict[str, Callable[[Scenario, str], None]] = {}


def register_mode(name: str, *, validate: Callable[[Scenario, str], None] | None = None) -> Callable[[RunFn], RunFn]:
    """Register ``fn(scenario, seed, *, on_round) -> {"summary", "series"}`` as ``Scenario.mode``.

    ``validate(scenario, where)`` checks the mode's fields before anything runs (raise
    :class:`SpecError` naming the field, the value and what is allowed). ``on_round`` is called
    once per round/collection for the progress bar.
    """

    def deco(fn: RunFn) -> RunFn:
        registry.add_unique(MODES, name, fn, "mode")
        if validate is not None:
            registry.add_unique(MODE_VALIDATORS, name, validate, "mode validator")
        return fn

    return deco


@dataclass
class Extension:
    """Optional steps of the federated mode, contributed by other modules of the harness.

    ``validate(scenario, where)`` raises :class:`SpecError` for its own fields;
    ``configure(scenario, seed, kwargs)`` edits the :class:`FederatedSimulation` keyword arguments
    before it is built (e.g. which client-rounds a curious server observes);
    ``finish(scenario, seed, sim, summary, series)`` adds its figures to the result.
    """

    name: str
    validate: Callable[[Scenario, str], None] | None = None
    configure: Callable[[Scenario, int, dict[str, Any]], None] | None = None
    finish: Callable[..., None] | None = None


EXTENSIONS: dict[str, Extension] = {}
# Modules that register modes or extensions when imported (each adds itself here).
EXTENSION_MODULES: list[str] = []
EXTENSION_MODULES.append("privfl.evaluations.decentralized")  # mode "decentralized" (MoNNA)
EXTENSION_MODULES.append("privfl.evaluations.robustness_report")  # accuracy-under-attack heatmap
EXTENSION_MODULES.append("privfl.evaluations.analytics")  # mode "analytics" (LDP frequency estimation)
EXTENSION_MODULES.append("privfl.evaluations.privacy")  # ε per round and in the summary (privacy accounting)
EXTENSION_MODULES.append("privfl.evaluations.inversion")  # curious-server gradient inversion, scored
EXTENSION_MODULES.append("privfl.evaluations.membership")  # mode "membership" (LiRA, RMIA, update attacks)
EXTENSION_MODULES.append("privfl.evaluations.distributed_dp")  # distributed-DP table and plot
_extensions_loaded = False


def register_extension(ext: Extension) -> Extension:
    """Add ``ext`` (a second, different extension of the same name is a ``ValueError``)."""
    existing = EXTENSIONS.get(ext.name)
    hooks = ("validate", "configure", "finish")
    if existing is not None and not all(registry.same_definition(getattr(existing, h), getattr(ext, h))
                                        for h in hooks):
        raise ValueError(f"extension {ext.name!r} is already registered by {existing!r}")
    EXTENSIONS[ext.name] = ext
    return ext


def load_extensions() -> None:
    global _extensions_loaded
    if not _extensions_loaded:
        _extensions_loaded = True
        for module in EXTENSION_MODULES:
            importlib.import_module(module)


def run(scenario: Scenario, seed: int, *, on_round: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Run one cell. Returns ``{"summary": {...scalars}, "series": {...per-round lists}}``."""
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    load_extensions()
    if scenario.mode not in MODES:
        raise SpecError(f"scenario.mode: got {scenario.mode!r}; allowed: {', '.join(sorted(MODES))}")
    return MODES[scenario.mode](scenario, seed, on_round=on_round)


def train(build: Callable[[Scenario, int], Any], scenario: Scenario, seed: int,
          on_round: Callable[[Any], Any] | None) -> tuple[float, Any, list[Any]]:
    """``(start time, simulation, history)``: the simulation ``build(scenario, seed)`` run for the
    scenario's rounds (every training mode starts this way)."""
    start = time.perf_counter()
    sim = build(scenario, seed)
    return start, sim, sim.run(scenario.rounds, on_round=on_round)


def round_series(history: list[Any], fields: tuple[str, ...]) -> dict[str, list[Any]]:
    """Per-round series of a run: ``round`` (1-based), then each of ``fields`` read off the records."""
    return {"round": [r.round + 1 for r in history], **{f: [getattr(r, f) for r in history] for f in fields}}


def accuracy_summary(history: list[Any]) -> dict[str, Any]:
    """``final_accuracy`` and ``final_loss`` (last evaluated round) and ``best_accuracy`` of a run's
    history (records with ``accuracy``/``loss``, ``None`` on rounds not evaluated): every training mode."""
    evaluated = [r for r in history if r.accuracy is not None]
    final = evaluated[-1] if evaluated else None
    return {
        "final_accuracy": final.accuracy if final else None,
        "final_loss": final.loss if final else None,
        "best_accuracy": max(r.accuracy for r in evaluated) if evaluated else None,
    }


@register_mode("federated", validate=Scenario.validate_federated)
def run_federated(
    scenario: Scenario, seed: int, *, on_round: Callable[[RoundRecord], Any] | None = None
) -> dict[str, Any]:
    """Server-based FL (FedSGD / FedAvg) with every slot the scenario names."""
    start, sim, history = train(build_simulation, scenario, seed, on_round)
    active = [r for r in history if r.participants]
    summary = {
        **accuracy_summary(history),
        "wall_time_s": time.perf_counter() - start,
        "bytes_per_client_round": (sum(r.bytes_per_client for r in active) / len(active)) if active else 0.0,
        "mean_participants": (sum(r.participants for r in history) / len(history)),
        "num_params": sim.layout.dim,
        "device": str(sim.device),
        "parallel": "vmap" if sim._use_vmap else "loop",
        "diverged_round": None if sim.diverged_round is None else sim.diverged_round + 1,
    }
    series = round_series(history, ("accuracy", "loss", "participants", "byzantine", "seconds"))
    for ext in EXTENSIONS.values():
        if ext.finish is not None:
            ext.finish(scenario, seed, sim, summary, series)
    summary["wall_time_s"] = time.perf_counter() - start
    return {"summary": summary, "series": series}
