"""Reports from the store: ``results.md``, ``results.csv`` and PNG plots.

Every scalar in a cell's ``result["summary"]`` becomes a column, so later additions (ε spent,
attack scores) appear without changes here. Cells with the same label are the seeds of one
configuration; the markdown table shows their mean ± std.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from privfl import registry
from privfl.evaluations.store import DB_NAME, CellRow, Store

__all__ = ["write_report", "varying_fields", "register_plot", "PLOTS"]

# Extra plots contributed by other harness modules: ``fn(run_dir, rows) -> list[Path]`` (rows of
# all cells; a plot skips itself when the run has nothing for it).
PLOTS: dict[str, Any] = {}


def register_plot(name: str):
    """Decorator: add ``fn(run_dir, rows) -> list[Path]`` to :data:`PLOTS` (a second, different plot of the
    same name is a ``ValueError``)."""
    def deco(fn):
        registry.add_unique(PLOTS, name, fn, "plot")
        return fn

    return deco

MODE_TITLES = {
    "federated": "Federated training",
    "decentralized": "Decentralized learning",
    "analytics": "Federated analytics (local DP frequency estimation)",
}
# metric-name prefix -> what a table with such columns reports (shown in its heading)
METRIC_FAMILIES = {
    "epsilon": "privacy spent",
    "inversion_": "privacy attack scores",
    "eps_spent": "budget spent",
    "diverged_round": "runs that diverged",
}
SUMMARY_ORDER = ("final_accuracy", "best_accuracy", "final_loss", "wall_time_s", "bytes_per_client_round")


def varying_fields(rows: list[CellRow]) -> list[str]:
    """Scenario fields (dotted for parameters) whose value differs between cells."""
    flat = [_flatten(r.scenario) for r in rows]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _summary_columns(rows: list[CellRow]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k, v in (r.result or {}).get("summary", {}).items():
            if k not in keys and (isinstance(v, (int, float, str)) or v is None):
                keys.append(k)
    ordered = [k for k in SUMMARY_ORDER if k in keys]
    return ordered + [k for k in keys if k not in ordered]


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.4g}"
    return str(v)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, results.md and accuracy.png for the run in ``run_dir``."""
    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"RUN_DIR {str(run_dir)!r} holds no {DB_NAME}; run `privfl run` into it first")
    store = Store(run_dir)
    rows = store.rows()
    spec = store.get_meta("spec", {}) or {}
    axes = varying_fields(rows)
    columns = _summary_columns(rows)
    paths = {
        "csv": run_dir / "results.csv",
        "md": run_dir / "results.md",
        "accuracy": run_dir / "accuracy.png",
    }
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "label", "seed", "status", *axes, *columns, "error"])
        for r in rows:
            flat = _flatten(r.scenario)
            summary = (r.result or {}).get("summary", {})
            err = (r.error or "").strip().splitlines()[-1] if r.error else ""
            w.writerow([r.cell_id, r.label, r.seed, r.status, *[flat.get(a) for a in axes],
                        *[summary.get(c) for c in columns], err])
    _write_markdown(paths["md"], spec, rows, columns)
    _plot_accuracy(paths["accuracy"], rows, spec.get("name", run_dir.name))
    from privfl.evaluations.scenario import load_extensions

    load_extensions()  # modules that register plots
    for name, plot in PLOTS.items():
        for i, extra in enumerate(plot(run_dir, rows) or []):
            paths[f"{name}{i or ''}"] = Path(extra)
    return paths


def _groups(rows: list[CellRow]) -> dict[str, list[CellRow]]:
    groups: dict[str, list[CellRow]] = defaultdict(list)
    for r in rows:
        groups[r.label].append(r)
    return dict(groups)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell_text(group: list[CellRow], column: str) -> str:
    vals = [float(v) for g in group if _numeric(v := g.result["summary"].get(column))]
    if not vals:
        return "—"
    if len(set(vals)) == 1 or any(math.isinf(v) or math.isnan(v) for v in vals):
        return _fmt(statistics.fmean(vals))
    return f"{statistics.fmean(vals):.4g} ± {statistics.stdev(vals):.2g}"


def _sections(done: list[CellRow], columns: list[str]) -> dict[str, tuple[list[str], dict[str, list[CellRow]]]]:
    """Configurations grouped by the metrics they report (one table per kind of experiment)."""
    out: dict[str, tuple[list[str], dict[str, list[CellRow]]]] = {}
    for label, group in _groups(done).items():
        present = [
            c for c in columns
            if not c.endswith("_std") and any(_numeric(g.result["summary"].get(c)) for g in group)
        ]
        mode = group[0].scenario.get("mode", "federated")
        key = f"{mode}|{','.join(present)}"
        title = MODE_TITLES.get(mode, f"mode {mode}")
        families = [name for prefix, name in METRIC_FAMILIES.items() if any(c.startswith(prefix) for c in present)]
        if families:
            title += " — " + ", ".join(families)
        if key not in out:
            out[key] = ([title, *present], {})
        out[key][1][label] = group
    return out


def _write_markdown(path: Path, spec: dict[str, Any], rows: list[CellRow], columns: list[str]) -> None:
    done = [r for r in rows if r.status == "done"]
    failed = [r for r in rows if r.status == "failed"]
    lines = [f"# {spec.get('name', 'run')}", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    lines += [f"{len(done)} cell(s) done, {len(failed)} failed. Values: mean ± std over seeds "
              "(one table per kind of experiment; every column of every cell is in `results.csv`).", ""]
    for title_and_cols, groups in _sections(done, columns).values():
        title, cols = title_and_cols[0], title_and_cols[1:]
        header = ["configuration", "seeds", *cols]
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, group in groups.items():
            lines.append("| " + " | ".join([label, str(len(group)), *[_cell_text(group, c) for c in cols]]) + " |")
        lines.append("")
    if failed:
        lines += ["## Failed cells (re-run the same command to retry them)", ""]
        for r in failed:
            last = (r.error or "").strip().splitlines()[-1] if r.error else "unknown error"
            lines.append(f"- `{r.cell_id}` [{r.label}] seed {r.seed}: {last}")
        lines.append("")
    lines += ["Per-round accuracy: `accuracy.png`; every cell: `results.csv`.", ""]
    path.write_text("\n".join(lines))


def _plot_accuracy(path: Path, rows: list[CellRow], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, group in _groups([r for r in rows if r.status == "done"]).items():
        curves = []
        for r in group:
            series = r.result.get("series", {})
            pts = [(x, y) for x, y in zip(series.get("round", []), series.get("accuracy", [])) if y is not None]
            if pts:
                curves.append(pts)
        if not curves:
            continue
        rounds = [x for x, _ in curves[0]]
        n = min(len(c) for c in curves)
        ys = [[c[i][1] for c in curves] for i in range(n)]
        mean = [statistics.fmean(v) for v in ys]
        line = ax.plot(rounds[:n], mean, label=f"{label} (n={len(curves)})")[0]
        if len(curves) > 1:
            ax.fill_between(rounds[:n], [min(v) for v in ys], [max(v) for v in ys], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}: accuracy per round (mean over seeds, band = min–max)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
