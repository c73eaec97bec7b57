"""Layering: which parts of privfl may import which (docs/ARCHITECTURE.md, "Layering").

An AST walk over the source tree (every ``import`` statement, including imports inside functions,
which are dependencies all the same). import-linter cannot see this layout: ``privfl.attacks`` and its
siblings live in top-level folders mapped by ``package_dir``, so the graph is built here from the same
mapping setup.cfg declares.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: folder -> package it installs as (setup.cfg's package_dir)
PACKAGE_DIRS = {
    "privfl": "privfl",
    "attacks": "privfl.attacks",
    "defenses": "privfl.defenses",
    "mechanisms": "privfl.mechanisms",
    "evaluations": "privfl.evaluations",
}

COMPONENTS = ("privfl.attacks", "privfl.defenses", "privfl.mechanisms")
CONCRETE = (*COMPONENTS, "privfl.models", "privfl.data.embedded", "privfl.data.files")

#: (importer, forbidden imported, why)
RULES = [
    (COMPONENTS, ("privfl.evaluations",), "components never import evaluations"),
    (("privfl.defenses", "privfl.mechanisms"), ("privfl.attacks",), "defenses and mechanisms never import attacks"),
    (("privfl.attacks",), ("privfl.defenses",), "attacks never import defenses"),
    (("privfl.fl",), ("privfl.evaluations", *CONCRETE), "the FL simulation never imports evaluations or concrete "
                                                         "components"),
    (("privfl.core", "privfl.params", "privfl.registry", "privfl.kernels", "privfl.flat", "privfl.accounting"),
     ("privfl.evaluations", "privfl.fl", "privfl.testing", *CONCRETE), "the contracts and accounting depend on "
                                                                       "nothing above them"),
]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGE_DIRS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module -> {imported privfl modules}`` for every ``.py`` file under the package folders of ``root``."""
    graph: dict[str, set[str]] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            name = module_name(path, root)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            out: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if isinstance(node, ast.Import):
                    out.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative import
                        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                        base = ".".join(anchor + ([base] if base else []))
                    out.add(base)
                    out.update(f"{base}.{a.name}" for a in node.names)  # submodules imported by name
            graph[name] = {m for m in out if m == "privfl" or m.startswith("privfl.")}
    # ``from package import name``: ``package.name`` is an edge only when it is a module
    return {m: {w for w in ws if w in graph or not _from_name(w, ws)} - {m} for m, ws in graph.items()}


def _from_name(w: str, ws: set[str]) -> bool:
    """``w`` came from ``from X import name`` (its parent ``X`` was imported in the same file)."""
    return w.rpartition(".")[0] in ws


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for importers, forbidden, why in RULES:
        for module, imported in sorted(graph.items()):
            if _under(module, importers):
                found += [f"{module} imports {m} ({why})" for m in sorted(imported) if _under(m, forbidden)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), over modules that exist."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_layering_rules_hold():
    found = violations(import_graph(ROOT))
    assert not found, "layering broken:\n" + "\n".join(found)


def test_no_import_cycles_between_modules():
    # package __init__ files import their submodules to register them; a submodule importing a sibling
    # through the package is not a cycle of logic, so packages are left out of the cycle check
    graph = import_graph(ROOT)
    packages = {m for m in graph if any(other.startswith(m + ".") for other in graph)}
    modules = {m: {w for w in ws if w not in packages} for m, ws in graph.items() if m not in packages}
    found = cycles(modules)
    assert not found, f"import cycles: {found}"


@pytest.mark.parametrize(
    ("folder", "source", "expected"),
    [
        ("attacks", "from privfl.defenses._common import pairwise_sq_distances\n", "attacks never import defenses"),
        ("defenses", "def f():\n    import privfl.attacks.byzantine\n", "defenses and mechanisms never import"),
        ("mechanisms", "from privfl.evaluations import audit\n", "components never import evaluations"),
        ("privfl/fl", "from privfl.defenses.mean import Mean\n", "FL simulation never imports"),
    ],
)
def test_a_deliberate_violation_is_caught(tmp_path, folder, source, expected):
    for f in PACKAGE_DIRS:
        (tmp_path / f).mkdir(exist_ok=True)
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / "bad.py").write_text(source, encoding="utf-8")
    found = violations(import_graph(tmp_path))
    assert len(found) == 1 and expected in found[0], found


def test_a_cycle_is_caught(tmp_path):
    for f in PACKAGE_DIRS:
        (tmp_path / f).mkdir()
    (tmp_path / "privfl" / "a.py").write_text("def f():\n    from privfl.b import g\n", encoding="utf-8")
    (tmp_path / "privfl" / "b.py").write_text("from privfl import a\n", encoding="utf-8")
    assert cycles(import_graph(tmp_path)) == [["privfl.a", "privfl.b"]]
