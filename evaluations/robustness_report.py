"""Accuracy under attack: a defense × attack table (``robustness.md``) and heatmap
(``robustness_heatmap.png``) for every run whose cells vary the aggregator, pre-aggregators or
Byzantine attack.

Rows are defenses (pre-aggregators then aggregator, e.g. ``nnm+trimmed-mean``; the mixing rule in
decentralized runs, e.g. ``nna`` or ``nna(f=0)``), columns attacks
(``none`` for cells without Byzantine clients), values the final test accuracy averaged over seeds.
One panel per combination of the other scenario fields that vary in the run (e.g. f and the Dirichlet
α); the ``none`` column of a panel holds the f = 0 cells with the same other fields.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from privfl.evaluations.report import _flatten, register_plot, varying_fields
from privfl.evaluations.store import CellRow

__all__ = ["robustness_tables", "plot_robustness"]

_DEFENSE_KEYS = ("aggregator", "preaggregators", "mixing")
_ATTACK_KEYS = ("byzantine_attack",)
_IGNORED = ("label", "byzantine")


def _defense(s: dict[str, Any]) -> str:
    if s.get("mode") == "decentralized":  # the defense is the mixing rule
        params = s.get("mixing_params") or {}
        extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        return str(s.get("mixing", "nna")) + (f"({extra})" if extra else "")
    pres = []
    for p in s.get("preaggregators") or []:
        pres.append(p if isinstance(p, str) else str(p.get("name")))
    params = s.get("aggregator_params") or {}
    extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "f")
    agg = s.get("aggregator", "?") + (f"({extra})" if extra else "")
    return "+".join([*pres, agg])


def _attack(s: dict[str, Any]) -> str:
    if not s.get("byzantine") or not s.get("byzantine_attack"):
        return "none"
    params = s.get("byzantine_attack_params") or {}
    extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return s["byzantine_attack"] + (f"({extra})" if extra else "")


def _is_component_key(key: str) -> bool:
    head = key.split(".")[0]
    return head in (*_DEFENSE_KEYS, *_ATTACK_KEYS, *_IGNORED, "aggregator_params", "byzantine_attack_params",
                    "mixing_params")


def robustness_tables(rows: list[CellRow]) -> dict[tuple, dict[str, dict[str, float]]]:
    """``{panel key: {defense: {attack: mean final accuracy}}}`` over the done cells."""
    done = [
        r for r in rows
        if r.status == "done" and (r.result or {}).get("summary", {}).get("final_accuracy") is not None
    ]
    if not done:
        return {}
    # A panel groups cells equal in every non-component field; its title names only the fields that
    # vary among the attacked cells (so unrelated experiments in the same run never mix in).
    attacked = [r for r in done if _attack(r.scenario) != "none"]
    shown = set(k for k in varying_fields(attacked or done) if not _is_component_key(k))

    def context(s: dict[str, Any]) -> tuple:
        flat = _flatten(s)
        return tuple(sorted((k, repr(v)) for k, v in flat.items() if not _is_component_key(k)))

    values: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    baselines: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in done:
        s = r.scenario
        acc = float(r.result["summary"]["final_accuracy"])
        attack = _attack(s)
        if attack == "none":
            baselines[context(s)][_defense(s)].append(acc)
        else:
            values[(s.get("byzantine"), context(s))][_defense(s)][attack].append(acc)
    out: dict[tuple, dict[str, dict[str, float]]] = {}
    for (f, ctx), table in values.items():
        panel: dict[str, dict[str, float]] = {}
        for defense, cols in table.items():
            panel[defense] = {a: statistics.fmean(v) for a, v in cols.items()}
            base = baselines.get(ctx, {}).get(defense)
            if base:
                panel[defense]["none"] = statistics.fmean(base)
        out[(("f", f),) + tuple((k, v) for k, v in ctx if k in shown)] = panel
    if not out:  # attack-free runs: a panel only where several defenses were compared
        for ctx, table in baselines.items():
            if len(table) > 1:
                key = (("f", 0),) + tuple((k, v) for k, v in ctx if k in shown)
                out[key] = {d: {"none": statistics.fmean(v)} for d, v in table.items()}
    return out


def _title(key: tuple) -> str:
    return ", ".join(f"{k}={v.strip(chr(39)) if isinstance(v, str) else v}" for k, v in key)


def _columns(panel: dict[str, dict[str, float]]) -> list[str]:
    cols = sorted({a for row in panel.values() for a in row})
    return (["none"] if "none" in cols else []) + [c for c in cols if c != "none"]


def _markdown(path: Path, tables: dict[tuple, dict[str, dict[str, float]]]) -> None:
    lines = ["# Accuracy under attack", ""]
    lines += ["Final test accuracy, mean over seeds (rows: defense, columns: attack).", ""]
    for key in sorted(tables, key=repr):
        panel = tables[key]
        cols = _columns(panel)
        lines += [f"## {_title(key)}", "", "| defense | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for defense in sorted(panel):
            cells = [f"{panel[defense][c]:.3f}" if c in panel[defense] else "—" for c in cols]
            lines.append(f"| {defense} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


@register_plot("robustness")
def plot_robustness(run_dir: str | Path, rows: list[CellRow]) -> list[Path]:
    """Write ``robustness.md`` and ``robustness_heatmap.png`` when the run has Byzantine cells."""
    if not any(r.scenario.get("byzantine") and r.scenario.get("byzantine_attack") for r in rows):
        return []
    tables = robustness_tables(rows)
    if not tables:
        return []
    run_dir = Path(run_dir)
    md = run_dir / "robustness.md"
    _markdown(md, tables)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = sorted(tables, key=repr)
    cols_n = min(3, len(keys))
    rows_n = math.ceil(len(keys) / cols_n)
    sizes = [(len(_columns(tables[k])), len(tables[k])) for k in keys]
    w = max(c for c, _ in sizes) * 0.75 + 3.0
    h = max(r for _, r in sizes) * 0.32 + 1.6
    # constrained layout keeps the title, the panels and the colour bar inside the figure (no bbox tricks)
    fig, axes = plt.subplots(rows_n, cols_n, figsize=(w * cols_n + 1.2, h * rows_n + 0.6), dpi=110, squeeze=False,
                             layout="constrained")
    image = None
    for ax, key in zip(axes.flat, keys):
        panel = tables[key]
        cols = _columns(panel)
        defenses = sorted(panel)
        grid = np.array([[panel[d].get(c, np.nan) for c in cols] for d in defenses], dtype=float)
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(defenses)), defenses, fontsize=7)
        for i in range(len(defenses)):
            for j in range(len(cols)):
                if not math.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 0.5 else "black")
        ax.set_title(_title(key).replace("f=", "Byzantine clients f = ", 1), fontsize=8)
        ax.set_xlabel("attack (none: the same run without Byzantine clients)", fontsize=7)
        ax.set_ylabel("defense (pre-aggregators + aggregator)", fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
        bar.set_label("final test accuracy", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    title = "Final test accuracy under Byzantine attack (mean over seeds; 1 = all test images right)"
    # wrapped to the figure's width (about 9 pt characters of 0.5 em each)
    fig.suptitle(textwrap.fill(title, max(30, int(fig.get_figwidth() * 72 / 5.0))), fontsize=9)
    png = run_dir / "robustness_heatmap.png"
    fig.savefig(png, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return [md, png]
