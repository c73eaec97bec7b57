"""Reports from the store: ``results.md``, ``results.csv`` and PNG plots.

Rules every table and plot here follows:

- A row, point or curve aggregates only cells that differ in **seed alone** (same scenario:
  :func:`config_key`); two configurations that share a display label stay separate rows.
- A plot panel holds one **experiment group** (:func:`experiment_key`: same mode, dataset,
  protocol, clients, rounds, local steps, partition and attack); legends sit outside the data.
- ``results.csv`` has unique column names: ``scenario.<field>`` for the settings that vary,
  the summary metrics by name, ``producer.*`` for the versions that computed the cell.
- ``results.md`` escapes ``|`` and newlines, says what every column means (:data:`COLUMN_DOCS`)
  and adds a note where a number needs one (accuracy after one round, very large ε).
- Reports are never written from an empty or unreadable store (:class:`StoreError`).
- A regenerated report removes the plot files (and plot tables) its previous writing produced and
  this one does not (e.g. ``inversion_grid3.png`` once there are fewer grids): the store's meta
  ``report_files`` lists what the last report wrote; no other file in the directory is touched.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from privfl import registry
from privfl.evaluations.store import CellRow, Store, StoreError

__all__ = ["write_report", "varying_fields", "register_plot", "PLOTS", "config_key", "experiment_key",
           "group_title", "by_config", "panel_grid", "figure_title", "style_panel", "series_style", "md_escape",
           "COLUMN_DOCS"]

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
    "membership": "Membership inference",
}
# metric-name prefix -> what a table with such columns reports (shown in its heading)
METRIC_FAMILIES = {
    "epsilon": "privacy spent",
    "inversion_": "privacy attack scores",
    "eps_spent": "budget spent",
    "diverged_round": "runs that diverged",
}
SUMMARY_ORDER = ("final_accuracy", "best_accuracy", "final_loss", "epsilon", "privacy_unit", "wall_time_s",
                 "bytes_per_client_round")
# What each summary column means (shown under every table that has it).
COLUMN_DOCS = {
    "final_accuracy": "test accuracy of the global model after the last round (fraction in [0, 1])",
    "best_accuracy": "best test accuracy over the evaluated rounds",
    "final_loss": "test cross-entropy loss after the last round",
    "final_accuracy_min": "lowest test accuracy among honest nodes after the last round",
    "final_consensus": "mean squared distance of honest nodes' models to their average (0 = consensus)",
    "epsilon": "ε spent by the worst client at δ (column `delta`), by the run's accountant; ∞ = no formal guarantee "
               "(no privatizing step, or a mechanism without one)",
    "epsilon_rdp": "ε by RDP (Balle et al. 2020 conversion)",
    "epsilon_pld": "ε by the privacy-loss distribution (tighter; — where the mechanism does not allow it)",
    "privacy_unit": "what ε protects: `client` (a whole client's data), `record` (one example), `coordinate` "
                    "(one coordinate of a client's update, composed over coordinates and rounds), `none`",
    "delta": "δ at which ε is reported",
    "wall_time_s": "seconds the cell took (one thread)",
    "bytes_per_client_round": "bytes one client uploads per round (after compression/privatization)",
    "mean_participants": "clients taking part in a round, on average",
    "num_params": "model parameters (the dimension d of an update)",
    "diverged_round": "round at which training diverged (non-finite model); — = never",
    "inversion_psnr": "PSNR (dB) of the attack's reconstruction against the victim's image (higher = more leakage)",
    "inversion_ssim": "SSIM of the reconstruction (1 = identical)",
    "inversion_label_accuracy": "fraction of the victims' labels the attack recovered (labels not granted)",
    "inversion_mse": "mean squared error of the reconstruction (pixels in [0, 1])",
    "inversion_victims": "victims attacked per cell",
    "inversion_seconds": "seconds the attack took",
    "inversion_lpips": "LPIPS perceptual distance (lower = more similar)",
    "mse_avg": "mean squared error of the estimated frequencies, averaged over collections",
    "mse_final": "mean squared error of the frequencies at the last collection",
    "mse_projected_avg": "as mse_avg, after projecting the estimate onto the probability simplex",
    "eps_spent_mean": "longitudinal ε spent by the average user at the end",
    "eps_spent_max": "longitudinal ε spent by the most exposed user at the end",
    "eps_bound": "the protocol's worst-case longitudinal bound",
    "eps_ledger_max": "pure ε of the worst user from the privacy ledger",
    "eps_inf": "permanent (memoization) budget ε∞",
    "eps_1": "budget of the first report ε₁",
    "eps_first_report": "ε of one first report",
    "g": "hashed domain size",
    "k": "number of categories",
    "users": "users in the population",
    "changes_per_user": "value changes per user over the collections",
    "reports_per_s": "reports privatized and estimated per second",
    "nodes": "nodes in the decentralized network",
    "honest_nodes": "honest nodes",
}
_UNDOCUMENTED = "reported by the module that computes it (see its docstring)"


# ------------------------------------------------------------------------------------------- grouping
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def varying_fields(rows: list[CellRow]) -> list[str]:
    """Scenario fields (dotted for parameters) whose value differs between cells."""
    flat = [_flatten(r.scenario) for r in rows]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_key(scenario: dict[str, Any]) -> str:
    """Cells with the same key differ in seed alone (the scenario holds everything else)."""
    return _digest(scenario)


EXPERIMENT_FIELDS = ("mode", "dataset", "dataset_params", "partition", "partition_params", "protocol",
                     "num_clients", "rounds", "local_steps", "byzantine", "byzantine_attack",
                     "byzantine_attack_params", "inversion_attack")


def experiment_key(scenario: dict[str, Any], fields: tuple[str, ...] = EXPERIMENT_FIELDS) -> str:
    """One plot panel per key: cells in the same experiment group (models, defenses, mechanisms may differ)."""
    return _digest({f: scenario.get(f) for f in fields})


def group_title(scenario: dict[str, Any]) -> str:
    """A panel title naming what the cells of an experiment group share."""
    s = scenario
    parts = [str(s.get("dataset"))]
    if s.get("mode", "federated") != "federated":
        parts.insert(0, str(s.get("mode")))
    else:
        parts.append(str(s.get("protocol")))
    parts.append(f"{s.get('num_clients')} clients")
    steps = f" × {s.get('local_steps')} local steps" if s.get("protocol") == "fedavg" else ""
    parts.append(f"{s.get('rounds')} rounds{steps}")
    if s.get("byzantine") and s.get("byzantine_attack"):
        params = s.get("byzantine_attack_params") or {}
        extra = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        parts.append(f"{s['byzantine']} Byzantine: {s['byzantine_attack']}" + (f"({extra})" if extra else ""))
    elif s.get("mode", "federated") == "federated":
        parts.append("no attack")
    return " · ".join(parts)


def by_config(rows: list[CellRow]) -> dict[str, list[CellRow]]:
    """Done cells grouped by :func:`config_key`, in store order."""
    out: dict[str, list[CellRow]] = defaultdict(list)
    for r in rows:
        out[config_key(r.scenario)].append(r)
    return dict(out)


def _display_labels(configs: dict[str, list[CellRow]]) -> dict[str, str]:
    """A label per configuration; configurations sharing a label get ' [2]', ' [3]', ..."""
    seen: dict[str, int] = defaultdict(int)
    out = {}
    for key, group in configs.items():
        label = group[0].label or "(unlabelled)"
        seen[label] += 1
        out[key] = label if seen[label] == 1 else f"{label} [{seen[label]}]"
    return out


# ------------------------------------------------------------------------------------------- text
def md_escape(text: Any) -> str:
    """A markdown table cell: ``|`` escaped, newlines as spaces."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if math.isnan(v):
            return "NaN"
        return f"{v:.4g}"
    return str(v)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _summary_columns(rows: list[CellRow]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k, v in (r.result or {}).get("summary", {}).items():
            if k not in keys and (isinstance(v, (int, float, str)) or v is None):
                keys.append(k)
    ordered = [k for k in SUMMARY_ORDER if k in keys]
    return ordered + [k for k in keys if k not in ordered]


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}.{seen[n]}")
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- report
def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, results.md, accuracy.png and the registered plots for the run in ``run_dir``.

    :class:`StoreError` (nothing written) when the directory holds no store, a damaged one or no cells.
    """
    run_dir = Path(run_dir)
    store = Store(run_dir, create=False)
    rows = store.rows()
    if not rows:
        raise StoreError(f"{str(store.path)!r} holds no cells: nothing to report (existing reports left as they are)")
    spec = store.get_meta("spec", {}) or {}
    columns = _summary_columns(rows)
    paths = {"csv": run_dir / "results.csv", "md": run_dir / "results.md"}
    _write_csv(paths["csv"], rows, columns)
    accuracy = _plot_accuracy(run_dir / "accuracy.png", rows, spec.get("name", run_dir.name))
    if accuracy is not None:
        paths["accuracy"] = accuracy
    from privfl.evaluations.scenario import load_extensions

    load_extensions()  # modules that register plots
    for name, plot in PLOTS.items():
        for i, extra in enumerate(plot(run_dir, rows) or []):
            paths[f"{name}{i or ''}"] = Path(extra)
    _write_markdown(paths["md"], spec, rows, columns, [p for k, p in paths.items() if k not in ("csv", "md")])
    _remove_stale(store, run_dir, [p for k, p in paths.items() if k not in ("csv", "md")])
    return paths


# Plot files of reports written before ``report_files`` was recorded (removed when this report does not
# write them, and only in a directory without that record).
_LEGACY_FILES = ("accuracy.png", "privacy_utility.png", "inversion_grid*.png", "inversion_psnr_eps.png",
                 "inversion.md", "robustness_heatmap.png", "robustness.md", "distributed_dp.png", "distributed_dp.md",
                 "ldp_mse.png", "ldp_budget.png", "membership_roc.png")


def _remove_stale(store: Store, run_dir: Path, written: list[Path]) -> None:
    """Delete what the previous report wrote and this one did not, then record what this one wrote."""
    names = sorted({p.name for p in written if p.parent.resolve() == run_dir.resolve()})
    before = store.get_meta("report_files")
    if before is None:
        before = sorted({p.name for pattern in _LEGACY_FILES for p in run_dir.glob(pattern)})
    for name in set(before) - set(names):
        path = run_dir / name
        if path.is_file() and Path(name).name == name:  # a bare file name from our own record
            path.unlink()
    store.set_meta("report_files", names)


def _write_csv(path: Path, rows: list[CellRow], columns: list[str]) -> None:
    axes = varying_fields(rows)
    producer_keys = ["spec_hash", "privfl", "torch", "python"]
    header = _unique(["cell_id", "label", "seed", "status", "attempts", *[f"scenario.{a}" for a in axes], *columns,
                      *[f"producer.{k}" for k in producer_keys], "error"])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            flat = _flatten(r.scenario)
            summary = (r.result or {}).get("summary", {})
            err = (r.error or "").strip().splitlines()[-1] if r.error else ""
            w.writerow([r.cell_id, r.label, r.seed, r.status, r.attempts, *[flat.get(a) for a in axes],
                        *[summary.get(c) for c in columns], *[(r.producer or {}).get(k) for k in producer_keys],
                        err])
    os.replace(tmp, path)


def _voided(group: list[CellRow], column: str) -> str | None:
    """The threat-model warning shown instead of an ε column's number (privfl.accounting.ledger)."""
    if not column.startswith("epsilon") or column == "epsilon_unit":
        return None
    return next((w for g in group if (w := g.result["summary"].get("privacy_warning"))), None)


def _cell_text(group: list[CellRow], column: str) -> str:
    warning = _voided(group, column)
    if warning is not None:
        return md_escape(warning.split(" (")[0])  # "not a DP guarantee: ..." (the full reason: privacy_warning)
    raw = [g.result["summary"].get(column) for g in group]
    if all(isinstance(v, str) for v in raw if v is not None) and any(isinstance(v, str) for v in raw):
        return md_escape(", ".join(sorted({v for v in raw if v is not None})))
    vals = [float(v) for v in raw if _numeric(v)]
    if not vals:
        return "—"
    unit = next((u for g in group if column.startswith("epsilon") and (u := g.result["summary"].get("epsilon_unit"))),
                None)
    suffix = f" ({unit})" if unit else ""  # e.g. DP-BREM's ε: record-level, per participating client
    if len(set(vals)) == 1 or any(math.isinf(v) or math.isnan(v) for v in vals):
        text = _fmt(statistics.fmean(vals)) if len(set(vals)) == 1 else ", ".join(_fmt(v) for v in vals)
        return md_escape(text + suffix)
    return md_escape(f"{statistics.fmean(vals):.4g} ± {statistics.stdev(vals):.2g}{suffix}")


_TEXT_COLUMNS = ("privacy_unit",)


def _sections(done: list[CellRow], columns: list[str]) -> dict[str, tuple[str, list[str], dict[str, list[CellRow]]]]:
    """Configurations grouped by the metrics they report (one table per kind of experiment)."""
    out: dict[str, tuple[str, list[str], dict[str, list[CellRow]]]] = {}
    for key, group in by_config(done).items():
        present = [
            c for c in columns
            if not c.endswith("_std") and c != "device"
            and any(_numeric(g.result["summary"].get(c)) or _voided([g], c)
                    or (c in _TEXT_COLUMNS and g.result["summary"].get(c)) for g in group)
        ]
        mode = group[0].scenario.get("mode", "federated")
        skey = f"{mode}|{','.join(present)}"
        if skey not in out:
            out[skey] = (MODE_TITLES.get(mode, f"mode {mode}"), present, {})
        out[skey][2][key] = group
    return {skey: (_section_title(title, present, groups), present, groups)
            for skey, (title, present, groups) in out.items()}


def _section_title(title: str, present: list[str], groups: dict[str, list[CellRow]]) -> str:
    """The mode's title and the metric families the table reports; "privacy spent" only where some ε is
    finite (every federated cell reports ε, ∞ without a mechanism: not a privacy experiment)."""
    def finite_eps(r: CellRow) -> bool:
        return any(_numeric(v) and math.isfinite(v) for k, v in r.result["summary"].items() if k.startswith("epsilon"))

    families = [name for prefix, name in METRIC_FAMILIES.items() if any(c.startswith(prefix) for c in present)
                and (prefix != "epsilon" or any(finite_eps(r) for g in groups.values() for r in g))]
    return title + (" — " + ", ".join(families) if families else "")


def _notes(groups: dict[str, list[CellRow]], labels: dict[str, str], cols: list[str]) -> list[str]:
    """Why some numbers are what they are."""
    notes = []
    short = {k: g[0].scenario.get("rounds") for k, g in groups.items() if (g[0].scenario.get("rounds") or 0) <= 2
             and g[0].scenario.get("mode", "federated") != "analytics"}
    if short and ("final_accuracy" in cols or "best_accuracy" in cols):
        rounds = " or ".join(str(r) for r in sorted(set(short.values())))
        notes.append(f"{'; '.join(labels[k] for k in short)}: accuracy after only {rounds} round(s) of training "
                     "from scratch — these cells measure an attack on an early model, not a trained model's "
                     "utility (near chance level is expected).")
    if "epsilon" in cols:
        big = []
        for k, g in groups.items():
            eps = [r.result["summary"].get("epsilon") for r in g]
            eps = [e for e in eps if _numeric(e) and math.isfinite(e) and e > 50]
            if eps:
                unit = g[0].result["summary"].get("privacy_unit", "?")
                big.append(f"{labels[k]} (ε up to {_fmt(max(eps))}, unit {unit})")
        if big:
            notes.append("ε above 50 is a formal bound that promises no meaningful protection: " + "; ".join(big)
                         + ". Such values come from little noise per release (e.g. a small noise multiplier) or from "
                         "a local mechanism's ε composed over every coordinate it releases and every round a client "
                         "joins; the attack columns, where present, show what an attacker actually recovers.")
        if any(r.result["summary"].get("epsilon") is not None and _numeric(r.result["summary"].get("epsilon"))
               and math.isinf(r.result["summary"]["epsilon"]) for g in groups.values() for r in g):
            notes.append("ε = ∞: the run releases updates without a privatizing step with a guarantee "
                         "(no mechanism, or compression only).")
    return notes


def _write_markdown(path: Path, spec: dict[str, Any], rows: list[CellRow], columns: list[str],
                    plots: list[Path]) -> None:
    done = [r for r in rows if r.status == "done"]
    failed = [r for r in rows if r.status == "failed"]
    lines = [f"# {md_escape(spec.get('name', 'run'))}", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    lines += [f"{len(done)} cell(s) done, {len(failed)} failed. One table per kind of experiment; one row per "
              "configuration (cells that differ in seed alone), values: mean ± std over its seeds (a single value "
              "when all seeds agree; the values themselves when some are infinite). `seeds` = cells averaged. Every "
              "cell, with the scenario fields that vary (`scenario.*`), is in `results.csv`.", ""]
    for title, cols, groups in _sections(done, columns).values():
        labels = _display_labels(groups)
        header = ["configuration", "seeds", *cols]
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, group in groups.items():
            cells = [md_escape(labels[key]), str(len(group)), *[_cell_text(group, c) for c in cols]]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Columns:", ""]
        lines += [f"- `{c}`: {COLUMN_DOCS.get(c, _UNDOCUMENTED)}" for c in cols]
        notes = _notes(groups, labels, cols)
        if notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
        lines.append("")
    if failed:
        lines += ["## Failed cells (re-run the same command to retry them)", ""]
        for r in failed:
            last = (r.error or "").strip().splitlines()[-1] if r.error else "unknown error"
            lines.append(f"- `{r.cell_id}` [{md_escape(r.label)}] seed {r.seed}: {md_escape(last)}")
        lines.append("")
    lines += _provenance(rows)
    if plots:
        lines += ["## Files", ""] + [f"- `{p.name}`" for p in plots] + [""]
    _write_atomic(path, "\n".join(lines))


def _provenance(rows: list[CellRow]) -> list[str]:
    counts: dict[tuple, int] = defaultdict(int)
    for r in rows:
        p = r.producer or {}
        counts[(p.get("spec_hash", "?"), r.spec, p.get("privfl", "?"), p.get("torch", "?"), p.get("python", "?"))] += 1
    lines = ["## Provenance", "", "Which spec (content hash) and versions produced the cells (`?`: not recorded, "
             "an earlier privfl).", "",
             "| spec hash | spec | privfl | torch | Python | cells |", "|---|---|---|---|---|---|"]
    for (h, name, pv, tv, py), n in counts.items():
        lines.append(f"| {md_escape(h)} | {md_escape(name)} | {md_escape(pv)} | {md_escape(tv)} | {md_escape(py)} "
                     f"| {n} |")
    return lines + [""]


# ------------------------------------------------------------------------------------------- plots
def panel_grid(n: int, *, ncols: int = 2, panel_w: float = 4.6, legend_w: float = 3.1, panel_h: float = 3.0):
    """A figure of ``n`` panels, each with its own legend column to its right (outside the data).

    Returns ``(fig, [(ax, legend_ax), ...])``; fill the legends with :func:`legend_beside`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = nrows * panel_h + 0.8
    fig = plt.figure(figsize=(ncols * (panel_w + legend_w), height), dpi=110)
    # room at the top for the figure's title (:func:`figure_title`) and each panel's two-line title
    gs = fig.add_gridspec(nrows, 2 * ncols, width_ratios=[panel_w, legend_w] * ncols, hspace=0.6, wspace=0.08,
                          top=1 - 0.95 / height, bottom=0.45 / height, left=0.06, right=0.99)
    pairs = []
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(gs[r, 2 * c])
        lax = fig.add_subplot(gs[r, 2 * c + 1])
        lax.axis("off")
        if i >= n:
            ax.axis("off")
        pairs.append((ax, lax))
    return fig, pairs[:n]


def figure_title(fig: Any, text: str, fontsize: float = 9) -> None:
    """The figure's title, in the band :func:`panel_grid` keeps above the panels' titles."""
    fig.suptitle(text, y=1 - 0.12 / fig.get_figheight(), va="top", fontsize=fontsize)


def legend_beside(ax: Any, lax: Any, *, width: int = 34, fontsize: float = 7) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        lax.legend(handles, [textwrap.fill(lab, width) for lab in labels], loc="upper left", fontsize=fontsize,
                   frameon=False, borderaxespad=0.0)


def style_panel(ax: Any, lax: Any, *, title: str, xlabel: str, ylabel: str, log_x: bool = False,
                legend_width: int = 34) -> None:
    """Small fonts, a light grid, the title and axis labels, and the legend beside the panel."""
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    legend_beside(ax, lax, width=legend_width)


def series_style(i: int) -> dict[str, Any]:
    """Distinct colour for the first 10 series of a panel, then distinct line styles too."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4]}


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b))


def _plot_accuracy(path: Path, rows: list[CellRow], title: str) -> Path | None:
    """Accuracy per round: one panel per experiment group, one curve per configuration (mean over its
    seeds, band = min–max). Configurations with a single evaluated round (attack experiments) have no curve."""
    done = [r for r in rows if r.status == "done"]
    panels: dict[str, dict[str, list[CellRow]]] = defaultdict(dict)
    for key, group in by_config(done).items():
        series = [(g.result or {}).get("series", {}) for g in group]
        if not any(len([a for a in s.get("accuracy", []) or [] if a is not None]) >= 2 for s in series):
            continue
        panels[experiment_key(group[0].scenario)][key] = group
    if not panels:
        return None  # (an accuracy.png of an earlier report is removed as stale: _remove_stale)
    import matplotlib.pyplot as plt

    fig, pairs = panel_grid(len(panels))
    for (ax, lax), configs in zip(pairs, panels.values()):
        labels = _display_labels(configs)
        drawn: list[tuple[list, list[float], str]] = []
        for i, (key, group) in enumerate(configs.items()):
            curves = []
            for r in group:
                s = r.result.get("series", {})
                pts = [(x, y) for x, y in zip(s.get("round", []), s.get("accuracy", [])) if y is not None]
                if pts:
                    curves.append(pts)
            n = min(len(c) for c in curves)
            xs = [x for x, _ in curves[0][:n]]
            ys = [[c[j][1] for c in curves] for j in range(n)]
            style = series_style(i)
            means = [statistics.fmean(v) for v in ys]
            label = f"{labels[key]} (n={len(curves)})"
            # a curve equal to one drawn before would hide it: dashed, and the legend says so (e.g. robust
            # rules that reduce to the mean without Byzantine clients)
            same = next((lab for x0, m0, lab in drawn if x0 == xs and _close(m0, means)), None)
            if same is not None:
                style["linestyle"] = (0, (3, 3))
                label += f" — same curve as {same}"
            drawn.append((xs, means, labels[key]))
            ax.plot(xs, means, label=label, **style)
            if len(curves) > 1:
                ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=style["color"], alpha=0.15)
        ax.set_ylim(0, 1)
        style_panel(ax, lax, title=textwrap.fill(group_title(next(iter(configs.values()))[0].scenario), 60),
                    xlabel="round", ylabel="test accuracy")
    figure_title(fig, f"{title}: test accuracy per round (line: mean over seeds, band: min–max; n = seeds)", 10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
