"""Evaluation specs: a YAML file = base scenario + grid axes × seeds → cells.

Format (every key but ``base`` optional)::

    name: default                 # names the run directory
    description: one line shown in the report
    imports: [my_package.plugins] # modules that register user components (imported in every worker)
    base: {dataset: digits, model: mlp, rounds: 30}      # Scenario fields
    grid:                         # a mapping of axes (cartesian product) or a list of them (union)
      model: [mlp, convnet]
      partition_params.alpha: [0.1, 1.0]                 # dotted keys reach into *_params
      cases:                      # fields that vary together (each case is one value of this axis;
        - {label: plain mean, aggregator: mean}          #  several axes cases_xyz multiply)
        - {label: NNM + trimmed mean, aggregator: trimmed-mean, preaggregators: [nnm]}
    seeds: [0, 1]                 # or an integer n meaning [0, ..., n-1]

Specs are read with ``yaml.safe_load`` only: a spec is data, never code. Reading a spec and counting
its cells needs neither torch nor the scenario module (:func:`load_spec` with ``max_cells``): a grid too
large is refused in a fraction of a second from a cold start; scenarios are built after that check.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from privfl import registry
from privfl.evaluations.errors import SpecError

if TYPE_CHECKING:
    from privfl.evaluations.scenario import Scenario

__all__ = ["Spec", "Cell", "load_spec", "bundled_specs", "parse_spec", "spec_schema", "count_cells", "check_size",
           "MAX_CELLS"]

# Default limit on the number of cells a spec may expand to (``privfl run --max-cells`` changes it):
# counted without expanding the grid, so a runaway grid is refused at once.
MAX_CELLS = 10_000

SPEC_KEYS = ("name", "description", "imports", "base", "grid", "seeds")
CASES = "cases"  # grid axes named cases, cases_*: values are mappings of fields set together (+ a label)


def _is_cases(axis: str) -> bool:
    return axis == CASES or axis.startswith(CASES + "_")


@dataclass(frozen=True)
class Cell:
    """One (scenario, seed) pair of a spec, with its stable id and display label."""

    id: str
    label: str
    seed: int
    scenario: Scenario


@dataclass
class Spec:
    name: str
    base: Scenario
    grid: list[dict[str, list[Any]]]
    seeds: list[int]
    description: str = ""
    imports: list[str] = field(default_factory=list)

    def count_cells(self) -> int:
        """How many cells the grid expands to (before merging duplicates), counted without expanding it."""
        return count_cells(self.grid, self.seeds)

    def check_size(self, max_cells: int | None = MAX_CELLS) -> int:
        """The cell count; :class:`SpecError` when it exceeds ``max_cells`` (``None``: no limit)."""
        return check_size(self.name, self.grid, self.seeds, max_cells)

    def content_hash(self) -> str:
        """A hash of everything that decides the spec's cells and labels (not its description)."""
        text = json.dumps({"name": self.name, "base": self.base.to_dict(), "grid": self.grid, "seeds": self.seeds,
                           "imports": self.imports}, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cells(self) -> list[Cell]:
        """All cells in a deterministic order; duplicates (same scenario and seed) appear once."""
        from privfl.evaluations.scenario import Scenario, cell_id

        out: dict[str, Cell] = {}
        base = self.base.to_dict()
        for block in self.grid or [{}]:
            axes = list(block)
            # With labelled cases, the label is the cases' labels plus the axes that vary in the block.
            labelled = any(_is_cases(a) and any("label" in c for c in block[a]) for a in axes)
            for values in itertools.product(*(block[a] for a in axes)):
                data = copy.deepcopy(base)
                parts = []
                for axis, value in zip(axes, values):
                    if _is_cases(axis):
                        case = dict(value)
                        case_label = case.pop("label", None)
                        for key, v in case.items():
                            _set_dotted(data, key, v)
                        parts.append(case_label or ", ".join(f"{k}={_short(v)}" for k, v in case.items()))
                    else:
                        _set_dotted(data, axis, value)
                        if not labelled or len(block[axis]) > 1:
                            parts.append(f"{axis}={_short(value)}")
                scenario = Scenario.from_dict(data, where=f"spec {self.name!r}")
                label = scenario.label or ", ".join(p for p in parts if p) or self.name
                for seed in self.seeds:
                    cid = cell_id(scenario, seed)
                    out.setdefault(cid, Cell(cid, label, seed, scenario))
        return list(out.values())

    def validate(self, *, max_cells: int | None = MAX_CELLS) -> list[Cell]:
        """Validate every distinct scenario (bad input fails here, before anything runs); a grid larger
        than ``max_cells`` is refused before it is expanded."""
        from privfl.evaluations.scenario import cell_id

        self.check_size(max_cells)
        try:
            registry.load_plugins(self.imports)
        except ValueError as exc:
            raise SpecError(f"spec.{exc}") from None
        cells = self.cells()
        seen: set[str] = set()
        for cell in cells:
            key = cell_id(cell.scenario, 0)
            if key not in seen:
                seen.add(key)
                cell.scenario.validate(where=f"cell [{cell.label}]")
        return cells


def count_cells(grid: list[dict[str, list[Any]]], seeds: list[int]) -> int:
    """Cells of a grid (a list of blocks of axes) × seeds, before merging duplicates, without expanding it."""
    return sum(math.prod(len(v) for v in block.values()) for block in (grid or [{}])) * len(seeds)


def check_size(name: str, grid: list[dict[str, list[Any]]], seeds: list[int], max_cells: int | None) -> int:
    """The cell count; :class:`SpecError` (the count, the product behind it, ``--max-cells``) when it
    exceeds ``max_cells`` (``None``: no limit)."""
    n = count_cells(grid, seeds)
    if max_cells is not None and n > max_cells:
        blocks = " + ".join(" × ".join(str(len(v)) for v in block.values()) or "1" for block in (grid or [{}]))
        raise SpecError(
            f"spec {name!r}: the grid expands to {n:,} cells (({blocks}) × {len(seeds)} seed(s)), "
            f"more than the limit of {max_cells:,}; shrink the grid or raise the limit with --max-cells")
    return n


def _short(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    from privfl.evaluations.scenario import SECTIONS, Scenario

    head, _, rest = key.partition(".")
    if head in SECTIONS and head not in data:  # a section's name: privacy.delta, or privacy: {delta: ...}
        items = [(rest, value)] if rest else list(value.items()) if isinstance(value, dict) else [("", value)]
        for k, v in items:
            if k.partition(".")[0] not in SECTIONS[head].model_fields:
                raise SpecError(f"grid axis {key!r}: {k!r} is not a field of section {head!r}; allowed: "
                                f"{', '.join(SECTIONS[head].model_fields)}")
            _set_dotted(data, k, v)
        return
    if head not in data:
        raise SpecError(
            f"grid axis {key!r}: unknown scenario field {head!r}; valid fields: {', '.join(Scenario.fields())}"
        )
    if not rest:
        data[head] = copy.deepcopy(value)
        return
    if not isinstance(data[head], dict):
        raise SpecError(f"grid axis {key!r}: field {head!r} is not a mapping of parameters")
    node = data[head]
    parts = rest.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"grid axis {key!r}: {p!r} is not a mapping")
    node[parts[-1]] = copy.deepcopy(value)


def parse_spec(raw: Any, *, default_name: str = "spec", max_cells: int | None = None) -> Spec:
    """A :class:`Spec` from already-parsed YAML data, with clear errors for every field.

    ``max_cells``: refuse a grid of more cells (:func:`check_size`) before any scenario is built."""
    if not isinstance(raw, dict):
        raise SpecError(f"spec: expected a mapping with keys {', '.join(SPEC_KEYS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"spec: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(SPEC_KEYS)}")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
        raise SpecError(f"spec.name: got {name!r}; allowed: a non-empty string without path separators")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"spec.description: expected a string, got {description!r}")
    imports = raw.get("imports", []) or []
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise SpecError(f"spec.imports: expected a list of module names, got {imports!r}")
    grid_raw = raw.get("grid", []) or []
    blocks = grid_raw if isinstance(grid_raw, list) else [grid_raw]
    grid: list[dict[str, list[Any]]] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise SpecError(f"spec.grid[{i}]: expected a mapping of axis -> list of values, got {block!r}")
        axes: dict[str, list[Any]] = {}
        for axis, values in block.items():
            if not isinstance(axis, str):
                raise SpecError(f"spec.grid[{i}]: axis names must be strings, got {axis!r}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise SpecError(f"spec.grid[{i}].{axis}: empty list of values")
            if _is_cases(axis) and not all(isinstance(c, dict) and c for c in values):
                raise SpecError(f"spec.grid[{i}].{axis}: expected a list of non-empty mappings of field -> value")
            axes[axis] = values
        grid.append(axes)
    seeds_raw = raw.get("seeds", [0])
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        if seeds_raw < 1:
            raise SpecError(f"spec.seeds: got {seeds_raw}; allowed: an integer >= 1 or a list of integers")
        seeds = list(range(seeds_raw))
    elif (
        isinstance(seeds_raw, list)
        and seeds_raw
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds_raw)
    ):
        seeds = list(dict.fromkeys(seeds_raw))
    else:
        raise SpecError(f"spec.seeds: got {seeds_raw!r}; allowed: an integer >= 1 or a non-empty list of integers >= 0")
    check_size(name, grid, seeds, max_cells)
    from privfl.evaluations.scenario import Scenario  # (torch: only once the grid's size is known to be sane)

    base = Scenario.from_dict(raw.get("base", {}) or {}, where="spec.base")
    spec = Spec(name=name, base=base, grid=grid, seeds=seeds, description=description, imports=imports)
    _check_axes(spec)  # dotted axes, field names and value types checked now, without expanding the grid
    return spec


def _check_axes(spec: Spec) -> None:
    """Axis names (dotted ones too) and the keys of every case, checked without expanding the grid: one
    scenario per axis (its first value) and per case; every value is type-checked later by ``validate``."""
    from privfl.evaluations.scenario import Scenario

    base = spec.base.to_dict()
    for i, block in enumerate(spec.grid):
        for axis, values in block.items():
            for value in values if _is_cases(axis) else values[:1]:
                data = copy.deepcopy(base)
                items = dict(value).items() if _is_cases(axis) else [(axis, value)]
                for key, v in items:
                    if key != "label" or not _is_cases(axis):
                        _set_dotted(data, key, v)
                Scenario.from_dict(data, where=f"spec.grid[{i}].{axis}")


def spec_schema() -> dict[str, Any]:
    """JSON Schema of a spec file, for editors: the spec's keys, with ``base`` a scenario of every
    registered section (fields flat or by section) and grid axes named by (dotted) fields or ``cases*``."""
    from privfl.evaluations.scenario import scenario_schema

    scenario = scenario_schema()
    defs = scenario.pop("$defs")
    defs["Scenario"] = scenario
    names = "|".join(sorted(scenario["properties"], key=lambda n: (-len(n), n)))
    axes = {"type": "object", "propertyNames": {"pattern": rf"^(({names})(\..+)?|{CASES}(_.*)?)$"},
            "additionalProperties": {"description": "a list of values (or one value)"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "privfl evaluation spec",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "pattern": r"^[^./\\][^/\\]*$",
                     "description": "names the run directory"},
            "description": {"type": "string", "description": "one line shown in the report"},
            "imports": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                        "description": "modules that register user components"},
            "base": {"anyOf": [{"$ref": "#/$defs/Scenario"}, {"type": "null"}]},
            "grid": {"anyOf": [axes, {"type": "array", "items": axes}, {"type": "null"}],
                     "description": "axes (cartesian product), or a list of such blocks (union)"},
            "seeds": {"anyOf": [{"type": "integer", "minimum": 1},
                                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}]},
        },
        "$defs": defs,
    }


def bundled_specs() -> dict[str, Path]:
    """Specs shipped with privfl, by name (``privfl run NAME``)."""
    folder = resources.files("privfl.evaluations") / "specs"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_spec(spec: str | Path | None, *, max_cells: int | None = None) -> Spec:
    """A spec from a path or a bundled name; ``None`` is the bundled ``default``. ``max_cells``: refuse a
    larger grid (:class:`SpecError`) right after reading the YAML, before any scenario is built."""
    bundled = bundled_specs()
    if spec is None:
        path = bundled["default"]
    else:
        path = Path(spec)
        if not path.is_file():
            if str(spec) in bundled:
                path = bundled[str(spec)]
            else:
                names = ", ".join(sorted(bundled))
                raise SpecError(f"SPEC: {str(spec)!r} is neither a file nor a bundled spec; bundled specs: {names}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"SPEC {str(path)!r}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"SPEC {str(path)!r}: cannot read: {exc}") from None
    return parse_spec(raw, default_name=path.stem, max_cells=max_cells)
