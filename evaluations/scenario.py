"""A :class:`Scenario` names everything one federated experiment needs; :func:`run` executes it.

Every field is plain data (names from the registry plus their parameters), so a scenario is a
row of a YAML spec, a cell of an evaluation grid and a key in the results store. In Python::

    from privfl.evaluations import Scenario, run
    result = run(Scenario(model="convnet", rounds=10), seed=0)
    result["summary"]["final_accuracy"]

A scenario is made of typed **sections** (pydantic models), each owned by the module of its mode or
extension: ``run``, ``data``, ``training``, ``defense`` and ``adversary`` here; ``privacy``,
``inversion``, ``analytics``, ``decentralized`` and ``membership`` in their modules (see
:func:`register_section`). Field types and bounds are declared once, in the sections; a spec may name
fields flat (``delta: 1.0e-5``) or by section (``privacy: {delta: 1.0e-5}``), and ``scenario.delta``
reads either. Cross-field checks (a mode's needs, registry names, rule sizes) are the modes' and
extensions' validators. Every error is a :class:`SpecError` shaped ``<where>.<field>: got <value>;
allowed: <...>``; :func:`scenario_schema` is the JSON Schema of a scenario.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
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
    "Section",
    "Component",
    "number",
    "size",
    "register_section",
    "scenario_schema",
    "spec_error",
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


def spec_error(where: str, name: str, value: Any, allowed: str) -> SpecError:
    """The one shape of a field error: ``<where>.<name>: got <value>; allowed: <allowed>``."""
    return SpecError(f"{where}.{name}: got {value!r}; allowed: {allowed}")


# Upper bounds on the size-like fields (declared as the fields' ``le`` bounds below), and on the work of
# one cell: rounds × participating clients × local steps, in client SGD steps.
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
# Validation calls the rules on at most this many rows (their [rows, rows] distances stay a few MB).
MAX_CHECKED_ROWS = 2048


# --------------------------------------------------------------------------------------------
# Sections: typed, bounded fields, one model per concern
# --------------------------------------------------------------------------------------------
def _keep_int(value: Any, handler: Callable[[Any], Any]) -> Any:
    checked = handler(value)
    return value if type(value) is int else checked


def number(**bounds: Any) -> Any:
    """A real-number field with ``bounds`` (``gt``, ``ge``, ``lt``, ``le``, ``allow_inf_nan``, ...):
    ints and floats, no bools, no strings; an int stays an int, so a scenario written ``lr: 1`` keeps
    the cell id it always had."""
    return Annotated[float, Field(**bounds), WrapValidator(_keep_int)]


Params = dict[str, Any]  # keyword parameters of a registry component, checked by the component


def size(name: str, low: int = 1) -> Any:
    """An integer field in ``[low, LIMITS[name]]`` (the bound privfl documents for it)."""
    return Annotated[int, Field(ge=low, le=LIMITS[name])]


class Section(BaseModel):
    """One concern of a :class:`Scenario`: strict types (no ``True`` for 1, no ``"3"`` for 3), declared
    bounds, no unknown keys. Fields keep their flat names: ``scenario.delta`` reads the privacy section."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    def flat(self) -> dict[str, Any]:
        """The fields as :meth:`Scenario.to_dict` (and so :func:`cell_id`) sees them."""
        return {name: _plain(getattr(self, name)) for name in type(self).model_fields}


def _plain(value: Any) -> Any:
    """Plain data: a nested model becomes the mapping of the keys that were given (as a spec wrote it)."""
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields if k in value.model_fields_set}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


class Component(BaseModel):
    """A registry component with keyword parameters: ``{name: trimmed-mean, params: {f: 2}}``."""

    model_config = Section.model_config
    name: str
    params: Params = Field(default_factory=dict)


class RunSection(Section):
    label: str = Field("", description="display label of the cell (default: built from the grid axes)")
    mode: str = Field("federated", description="the runner: federated, decentralized, analytics, membership")
    device: str = Field("cpu", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    parallel: Literal["auto", "vmap", "loop"] = "auto"
    client_chunk: size("client_chunk") | None = None
    eval_every: size("eval_every") = 1


class DataSection(Section):
    dataset: str = Field("digits", description="registry name of a dataset")
    dataset_params: Params = Field(default_factory=dict)
    partition: str = Field("dirichlet", description="registry name of a partition")
    partition_params: Params = Field(default_factory=lambda: {"alpha": 0.5})
    num_clients: size("num_clients") = 20


class TrainingSection(Section):
    model: str = Field("mlp", description="registry name of a model")
    model_params: Params = Field(default_factory=dict)
    protocol: Literal["fedavg", "fedsgd"] = "fedavg"
    rounds: size("rounds") = 30
    local_steps: size("local_steps") = 10
    batch_size: size("batch_size") | None = Field(16, description="null: each client's full local batch")
    lr: number(gt=0, allow_inf_nan=False) = 0.05
    momentum: number(ge=0, lt=1) = 0.9
    weight_decay: number(ge=0, allow_inf_nan=False) = 0.0
    server_lr: number(gt=0, allow_inf_nan=False) = 1.0
    worker_momentum: number(ge=0, lt=1) = 0.0
    sample_rate: number(gt=0, le=1) = 1.0
    sampling: Literal["uniform", "poisson"] = "uniform"


class DefenseSection(Section):
    mechanism: str | None = Field(None, description="registry name of a mechanism (null: none)")
    mechanism_params: Params = Field(default_factory=dict)
    aggregator: str = Field("mean", description="registry name of an aggregator")
    aggregator_params: Params = Field(default_factory=dict)
    preaggregators: list[str | Component] = Field(default_factory=list,
                                               description="names or {name: ..., params: {...}}, applied in order")


class AdversarySection(Section):
    byzantine: size("byzantine", low=0) = Field(0, description="number of Byzantine clients (< num_clients)")
    byzantine_attack: str | None = Field(None, description="registry name of a byzantine_attack")
    byzantine_attack_params: Params = Field(default_factory=dict)


SECTIONS: dict[str, type[Section]] = {}
FIELD_OWNER: dict[str, str] = {}  # flat field name -> section name


def register_section(name: str, model: type[Section]) -> type[Section]:
    """Add a section to every :class:`Scenario` (modes and extensions call this when imported).

    Its fields become scenario fields under their own names; a name another section already owns, or a
    section name that is also a field name, is a ``ValueError`` (as a second, different section of the
    same name is)."""
    if not (isinstance(model, type) and issubclass(model, Section)):
        raise TypeError(f"section {name!r}: expected a Section subclass, got {model!r}")
    fields = list(model.model_fields)
    for field_name in fields:
        other = FIELD_OWNER.get(field_name)
        if other is not None and other != name:
            raise ValueError(f"section {name!r}: field {field_name!r} already belongs to section {other!r}")
    clash = sorted((set(SECTIONS) | {name}) & (set(FIELD_OWNER) | set(fields)))
    if clash:
        raise ValueError(f"section {name!r}: {', '.join(map(repr, clash))} would be both a section and a field")
    registry.add_unique(SECTIONS, name, model, "scenario section")
    for field_name in [f for f, owner in FIELD_OWNER.items() if owner == name]:
        del FIELD_OWNER[field_name]  # a re-imported module replaces its section
    FIELD_OWNER.update({f: name for f in model.model_fields})
    return model


for _name, _model in (("run", RunSection), ("data", DataSection), ("training", TrainingSection),
                      ("defense", DefenseSection), ("adversary", AdversarySection)):
    register_section(_name, _model)


def _flatten(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Flat fields from a mapping that names fields flat or by section (``privacy: {delta: ...}``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and key not in FIELD_OWNER:
            if not isinstance(value, dict):
                raise spec_error(where, key, value, f"a mapping of the {key!r} section's fields")
            items = value.items()
            foreign = [k for k in value if FIELD_OWNER.get(k) != key]
            if foreign:
                raise spec_error(where, f"{key}.{foreign[0]}", value[foreign[0]],
                                 f"fields of section {key!r}: {', '.join(SECTIONS[key].model_fields)}")
        else:
            items = [(key, value)]
        for k, v in items:
            if k in flat:
                raise SpecError(f"{where}.{k}: given twice (flat and in its section)")
            flat[k] = v
    unknown = sorted(set(flat) - set(FIELD_OWNER), key=str)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                        f"valid fields: {', '.join(FIELD_OWNER)}")
    return flat


def _build_sections(data: dict[str, Any], where: str) -> dict[str, Section]:
    load_extensions()
    flat = _flatten(data, where)
    out: dict[str, Section] = {}
    for name, model in SECTIONS.items():
        values = {k: flat[k] for k in model.model_fields if k in flat}
        try:
            out[name] = model.model_validate(values)
        except ValidationError as exc:
            loc = exc.errors(include_url=False)[0]["loc"]
            given = data.get(name) if name not in FIELD_OWNER else None
            nested = isinstance(given, dict) and bool(loc) and loc[0] in given  # written `section: {field: ..}`
            raise _from_pydantic(exc, f"{where}.{name}" if nested else where, model, values) from None
    return out


# --------------------------------------------------------------------------------------------
# pydantic errors -> SpecError, and the JSON Schema
# --------------------------------------------------------------------------------------------
@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _from_pydantic(exc: ValidationError, where: str, model: type[BaseModel], data: Any) -> SpecError:
    """The first error of ``exc`` in the one shape: path, the value given there, what is allowed there."""
    err = exc.errors(include_url=False)[0]
    root = _schema(model)
    node: dict[str, Any] = root
    value, path = data, ""
    loc = list(err["loc"])
    extra = err["type"] == "extra_forbidden"
    if extra:
        loc = loc[:-1]
    for part in loc:
        nxt = _child(node, part, root)
        if nxt is None:
            break  # a union member's tag: the error is about the value at this path
        node = nxt
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = value[part] if isinstance(value, (dict, list)) else value
    if extra:
        keys = ", ".join(_resolve(node, root).get("properties", {})) or describe(node, root)
        return SpecError(f"{where}{'.' + path if path else ''}: unknown key(s) {err['loc'][-1]!r}; allowed: {keys}")
    if err["type"] == "missing":
        return SpecError(f"{where}.{path}: missing; allowed: {describe(node, root)}")
    allowed = describe(node, root)
    if err["type"] == "finite_number":
        allowed = allowed.replace("a number", "a finite number")
    if err["type"] == "less_than_equal" and _resolve(node, root).get("type") == "integer":
        allowed = f"at most {err['ctx']['le']:,} (privfl's documented bound for this field)"
    return spec_error(where, path, value, allowed)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _child(node: dict[str, Any], part: Any, root: dict[str, Any]) -> dict[str, Any] | None:
    node = _resolve(node, root)
    for alt in [node, *node.get("anyOf", [])]:
        alt = _resolve(alt, root)
        if isinstance(part, int) and "items" in alt:
            return alt["items"]
        if isinstance(part, str) and part in alt.get("properties", {}):
            return alt["properties"][part]
    return None


def _num(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def describe(node: dict[str, Any], root: dict[str, Any]) -> str:
    """What a JSON Schema node allows, in words (``an integer in [1, 100,000], or null``)."""
    node = _resolve(node, root)
    if "anyOf" in node:
        alts = [describe(a, root) for a in node["anyOf"]]
        return ", or ".join(alts) if len(alts) == 2 and alts[-1] == "null" else _or(alts)
    if "enum" in node or "const" in node:
        return _or([repr(v) for v in node.get("enum", [node.get("const")])])
    kind = node.get("type")
    text = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
            "null": "null", "array": "a list", "object": "a mapping"}.get(kind, "a value")
    if kind == "object" and node.get("properties"):
        text = f"a mapping with keys {', '.join(node['properties'])}"
    if kind == "array":
        text = ("a non-empty list" if node.get("minItems") else "a list") + (
            f" of: {describe(node['items'], root)}" if "items" in node else "")
    lo = node.get("minimum", node.get("exclusiveMinimum"))
    hi = node.get("maximum", node.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        text += f" in {'(' if 'exclusiveMinimum' in node else '['}{_num(lo)}, {_num(hi)}"
        text += ")" if "exclusiveMaximum" in node else "]"
    elif lo is not None:
        text += f" {'>' if 'exclusiveMinimum' in node else '>='} {_num(lo)}"
    elif hi is not None:
        text += f" {'<' if 'exclusiveMaximum' in node else '<='} {_num(hi)}"
    return text


def scenario_schema() -> dict[str, Any]:
    """JSON Schema of a scenario: every field of every registered section, flat or by section."""
    load_extensions()
    props: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for name, model in SECTIONS.items():
        schema = json.loads(json.dumps(model.model_json_schema(ref_template="#/$defs/{model}")))
        defs.update(schema.pop("$defs", {}))
        props.update(schema["properties"])
        schema["description"] = f"the {name!r} section (its fields may also be given flat)"
        defs[model.__name__] = schema
    for name, model in SECTIONS.items():
        props[name] = {"$ref": f"#/$defs/{model.__name__}"}
    return {"title": "privfl scenario", "type": "object", "additionalProperties": False, "properties": props,
            "$defs": defs}


class Scenario:
    """One federated experiment. Component fields are registry names; ``*_params`` their keywords.

    Defaults are the bundled evaluation's: FedAvg on ``digits``, 20 clients, Dirichlet α = 0.5.
    ``byzantine`` Byzantine clients (ids drawn from the seed) run ``byzantine_attack``; robust
    aggregators and pre-aggregators get ``f = byzantine`` unless their params say otherwise.
    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``mode`` picks
    the runner: ``"federated"`` (server-based FL, this module); other modes register their own with
    :func:`register_mode`, and their fields with :func:`register_section`.

    ``Scenario(rounds=5, ...)`` and :meth:`from_dict` check every field's type and declared bounds at
    once (:class:`SpecError`); :meth:`validate` adds the cross-field checks of the scenario's mode.
    """

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_sections", _build_sections(fields, "scenario"))

    # ------------------------------------------------------------------ construction
    @classmethod
    def fields(cls) -> list[str]:
        """Every field name, of every registered section."""
        load_extensions()
        return list(FIELD_OWNER)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "scenario") -> Scenario:
        """Build from a mapping (fields flat or by section), rejecting unknown fields and wrong types."""
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a mapping of scenario fields, got {type(data).__name__}")
        scenario = cls.__new__(cls)
        object.__setattr__(scenario, "_sections", _build_sections(_copy(data), where))
        return scenario

    def to_dict(self) -> dict[str, Any]:
        """Every field, flat (what :func:`cell_id` hashes: the same keys and values as ever)."""
        out: dict[str, Any] = {}
        for section in self._sections.values():
            out.update(section.flat())
        return out

    def replace(self, **changes: Any) -> Scenario:
        return Scenario.from_dict({**self.to_dict(), **changes})

    def section(self, name: str) -> Section:
        """The typed section ``name`` (e.g. ``"privacy"``)."""
        if name not in self._sections:
            raise ValueError(f"section: got {name!r}; allowed: {', '.join(self._sections)}")
        return self._sections[name]

    def __getattr__(self, name: str) -> Any:
        owner = FIELD_OWNER.get(name) if not name.startswith("_") else None
        if owner is None or owner not in self.__dict__.get("_sections", {}):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = getattr(self._sections[owner], name)
        nested = isinstance(value, BaseModel) or (isinstance(value, list) and any(isinstance(v, BaseModel)
                                                                                  for v in value))
        return _plain(value) if nested else value  # nested models read as the plain data a spec wrote

    def __setattr__(self, name: str, value: Any) -> None:
        owner = FIELD_OWNER.get(name)
        if owner is None:
            raise AttributeError(f"Scenario has no field {name!r}")
        section = self._sections[owner]
        try:
            setattr(section, name, value)
        except ValidationError as exc:
            raise _from_pydantic(exc, "scenario", type(section), {name: value}) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scenario) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        default = Scenario().to_dict()
        changed = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if default.get(k) != v)
        return f"Scenario({changed})"

    def __getstate__(self) -> dict[str, Any]:
        return {"fields": self.to_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_sections", _build_sections(state["fields"], "scenario"))

    # ------------------------------------------------------------------ validation
    def error(self, where: str, name: str, allowed: str) -> SpecError:
        """:func:`spec_error` for field ``name`` with its current value (cross-field checks raise this)."""
        return spec_error(where, name, getattr(self, name), allowed)

    def validate(self, where: str = "scenario") -> None:
        """Check every field and build the cheap components once, so bad input fails before running.

        Types and bounds were checked when the scenario was built; here the cell's work bound, the
        device, then the mode's own validator (the federated mode's is :meth:`validate_federated`)."""
        self.check_bounds(where)
        try:
            resolve_device(self.device)
        except ValueError as exc:
            raise SpecError(f"{where}.device: {exc}") from None
        load_extensions()
        if self.mode not in MODES:
            raise self.error(where, "mode", ", ".join(sorted(MODES)))
        validator = MODE_VALIDATORS.get(self.mode)
        if validator is not None:
            validator(self, where)

    def check_bounds(self, where: str = "scenario") -> None:
        """One cell's training work within :data:`MAX_CLIENT_STEPS` client SGD steps (rounds ×
        participating clients × local steps); each field's own bound is declared in its section."""
        participating = max(1, round(self.sample_rate * self.num_clients))
        steps = self.rounds * participating * self.local_steps
        if self.mode != "analytics" and steps > MAX_CLIENT_STEPS:
            raise SpecError(
                f"{where}.rounds: rounds={self.rounds:,} × {participating:,} participating "
                f"clients × local_steps={self.local_steps:,} = {steps:,} client SGD steps in one cell; allowed: at "
                f"most {MAX_CLIENT_STEPS:,}")

    def validate_learning(self, where: str = "scenario", *, min_clients: int = 1) -> None:
        """Cross-field checks every training mode shares: clients, Byzantine clients, data, model."""
        if self.num_clients < min_clients:
            raise self.error(where, "num_clients", f"an integer >= {min_clients}")
        if not self.byzantine < self.num_clients:
            raise self.error(where, "byzantine", f"an integer in [0, num_clients={self.num_clients})")
        if self.byzantine and not self.byzantine_attack:
            raise SpecError(
                f"{where}.byzantine_attack: byzantine={self.byzantine} needs an attack name; "
                f"allowed: {', '.join(registry.available('byzantine_attack')) or '(none registered)'}"
            )
        if self.partition not in registry.available("partition"):
            raise self.error(where, "partition", ", ".join(registry.available("partition")))
        self._check_component("dataset", "dataset", self.dataset, self.dataset_params, where)
        self._check_component(
            "model", "model", self.model, self.model_params, where, skip=("input_shape", "num_classes")
        )

    def validate_federated(self, where: str = "scenario") -> None:
        """The federated mode's cross-field checks: registry names and parameters, extensions, rule sizes."""
        self.validate_learning(where)
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
        participants (Poisson sampling: the expected count; a smaller round may still fail at run time).

        Rules like Krum build ``[rows, rows]`` distances, so above :data:`MAX_CHECKED_ROWS` rows the rules
        are called on that many rows instead (a few MB): a pass there is a pass for the larger round (every
        rule's requirement is a lower bound on the rows), and a failure is not reported (the run's first
        round decides)."""
        rows = max(1, round(self.sample_rate * self.num_clients))
        if rows > MAX_CHECKED_ROWS:
            try:
                self._check_rows(parts, MAX_CHECKED_ROWS, where)
            except SpecError:
                pass
            return
        self._check_rows(parts, rows, where)

    def _check_rows(self, parts: dict[str, Any], rows: int, where: str) -> None:
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
