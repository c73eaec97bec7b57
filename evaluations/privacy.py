"""Privacy accounting in the harness: ε per round and in the summary, the privacy–utility plot and
the accounting behind ``privfl account``.

Scenario fields (``# --- privacy accounting fields ---``):

- ``delta`` (1e-5): δ at which ε is reported;
- ``accounting``: ``"rdp"`` (RDP + Balle et al. 2020 conversion, per round), ``"pld"`` (privacy-loss
  distribution, per round; slower) or ``"both"`` (RDP per round, both in the summary);
- ``dp_clip`` / ``dp_noise``: example-level DP-SGD inside every client (per-sample clip R, noise
  multiplier σ; see :mod:`privfl.fl.local`).

Every federated result gains ``summary.epsilon`` (the worst client at ``delta``; the largest over the
privacy units in play), ``summary.epsilon_rdp`` / ``epsilon_pld``, ``summary.privacy_unit`` and
``series.epsilon``. A run with no privatizing step, or whose mechanism has no guarantee
(compression baselines), reports ε = ∞ — never a blank.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from privfl import registry
from privfl.accounting.distributed import unit_label
from privfl.accounting.guarantees import gaussian_guarantee
from privfl.accounting.ledger import PrivacyLedger, threat_model_warning
from privfl.evaluations.report import register_plot
from privfl.evaluations.scenario import (
    Extension,
    Scenario,
    Section,
    SpecError,
    number,
    register_extension,
    register_section,
)

__all__ = ["ACCOUNTING", "audit_scenario", "AuditRow", "epsilon_summary"]

ACCOUNTING = ("rdp", "pld", "both")


# --------------------------------------------------------------------------------------------
# Extension: validate, configure, finish
# --------------------------------------------------------------------------------------------
class PrivacySection(Section):
    """Privacy accounting: ε at ``delta`` by ``accounting``; ``dp_clip``/``dp_noise``: example-level
    DP-SGD inside every client (per-sample clip R, noise multiplier σ); ``secure_aggregation``: the server
    sees only the sum of each round's reports (pbm, rqm, ddg, skellam; uniform sampling)."""

    delta: number(gt=0, lt=1) = 1e-5
    accounting: Literal[ACCOUNTING] = "rdp"
    dp_clip: number(gt=0, allow_inf_nan=False) | None = Field(
        None, description="per-sample clipping norm of DP-SGD (null: no example-level DP-SGD)")
    dp_noise: number(ge=0, allow_inf_nan=False) = 0.0
    secure_aggregation: bool = False


register_section("privacy", PrivacySection)


def _validate(scenario: Scenario, where: str) -> None:
    if scenario.dp_noise > 0 and scenario.dp_clip is None:
        raise scenario.error(where, "dp_clip", "a number > 0 when dp_noise > 0 (the per-sample clipping norm)")
    if scenario.dp_clip is not None and scenario.batch_size is None:
        raise scenario.error(where, "batch_size", "an integer >= 1 with dp_clip (the expected Poisson batch size)")
    if not scenario.mechanism:
        if scenario.secure_aggregation:
            raise scenario.error(where, "secure_aggregation",
                                 "false without a mechanism (nothing to aggregate securely)")
        return
    try:
        mech = registry.make("mechanism", scenario.mechanism, **scenario.mechanism_params)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.mechanism_params: {exc}") from None
    if scenario.secure_aggregation:
        _validate_secure_aggregation(scenario, mech, where)
    needed = mech.protocol
    if needed is not None and needed != scenario.protocol:
        raise SpecError(f"{where}.protocol: got {scenario.protocol!r}; mechanism {scenario.mechanism!r} "
                        f"needs {needed!r}")
    if mech.central and (
        scenario.preaggregators or not getattr(registry.get("aggregator", scenario.aggregator), "plain_mean", False)
    ):
        raise SpecError(
            f"{where}.aggregator: got {scenario.aggregator!r} with preaggregators {scenario.preaggregators!r}; "
            f"mechanism {scenario.mechanism!r} is central (it aggregates: noise once on the sum), so allowed: "
            "aggregator 'mean' and no preaggregators"
        )


def _validate_secure_aggregation(scenario: Scenario, mech: Any, where: str) -> None:
    if not mech.secure_sum:
        raise SpecError(f"{where}.secure_aggregation: got true with mechanism {scenario.mechanism!r}; allowed: true "
                        "only with a mechanism accounted inside the sum (pbm, rqm, ddg, skellam)")
    if scenario.aggregator != "mean" or scenario.preaggregators:
        raise SpecError(f"{where}.aggregator: got {scenario.aggregator!r} with preaggregators "
                        f"{scenario.preaggregators!r}; secure aggregation reveals only the sum: allowed 'mean', none")
    if scenario.sampling != "uniform":
        raise SpecError(f"{where}.sampling: got {scenario.sampling!r}; secure aggregation is accounted for a fixed "
                        "number of participants per round: allowed 'uniform'")


def participants(scenario: Scenario) -> int:
    """Participants of a round under uniform sampling (the n of a secure-aggregation guarantee)."""
    return max(1, round(scenario.sample_rate * scenario.num_clients))


def _configure(scenario: Scenario, seed: int, kwargs: dict[str, Any]) -> None:
    kwargs["secure_aggregation"] = bool(scenario.secure_aggregation)
    if scenario.dp_clip is not None:
        kwargs["local"] = dataclasses.replace(kwargs["local"], dp_clip=float(scenario.dp_clip),
                                              dp_noise=float(scenario.dp_noise))
    kwargs["delta"] = float(scenario.delta)
    kwargs["accounting"] = "pld" if scenario.accounting == "pld" else "rdp"


def epsilon_summary(ledger: PrivacyLedger | None, delta: float, methods: tuple[str, ...]) -> dict[str, Any]:
    """``{"epsilon_<method>": ε, "privacy_unit": ...}``: the worst client, largest over units; ∞ when
    there is no ledger (nothing private ran). A voided ledger (omniscient Byzantine clients and a
    central mechanism) gives no ε at all (``None``) and ``privacy_warning`` saying why."""
    out: dict[str, Any] = {}
    if ledger is not None and ledger.void_reason is not None:
        for m in methods:
            out[f"epsilon_{m}"] = None
        out["privacy_unit"] = "+".join(ledger.units) if ledger.units else "none"
        out["privacy_warning"] = ledger.void_reason
        return out
    if ledger is None:
        for m in methods:
            out[f"epsilon_{m}"] = math.inf
        out["privacy_unit"] = "none"
        return out
    units = ledger.units
    for m in methods:
        if m == "pld" and not ledger.supports("pld"):
            out["epsilon_pld"] = None
            continue
        out[f"epsilon_{m}"] = max((ledger.epsilon(delta, method=m, unit=u) for u in units), default=0.0)
    out["privacy_unit"] = "+".join(units) if units else "none"
    return out


def _finish(scenario: Scenario, seed: int, sim: Any, summary: dict[str, Any], series: dict[str, Any]) -> None:
    methods = ("rdp", "pld") if scenario.accounting in ("pld", "both") else ("rdp",)
    figures = epsilon_summary(sim.ledger, scenario.delta, methods)
    primary = "pld" if scenario.accounting == "pld" else "rdp"
    summary["epsilon"] = figures.get(f"epsilon_{primary}")
    summary.update(figures)
    summary["delta"] = float(scenario.delta)
    note = sim.mechanism.epsilon_unit if sim.mechanism is not None else None
    if note and summary.get("epsilon") is not None:
        summary["epsilon_unit"] = note  # e.g. DP-BREM: record-level, per participating client (shown beside ε)
    if sim.mechanism is not None and sim.mechanism.nonfinite == "zero":
        summary["nonfinite_rows_replaced"] = int(sim.mechanism.nonfinite_replaced)
    voided = summary.get("privacy_warning") is not None
    series["epsilon"] = [None if voided else math.inf if r.epsilon is None else r.epsilon for r in sim.history]
    sizes = getattr(sim, "secure_aggregation_sizes", None)
    if scenario.secure_aggregation and sizes:
        summary["privacy_unit"] = f"client, secure aggregation n={min(sizes)}"
        if summary.get("epsilon") is not None:
            summary["epsilon_unit"] = unit_label(min(sizes))


register_extension(Extension(name="privacy", validate=_validate, configure=_configure, finish=_finish))


# --------------------------------------------------------------------------------------------
# `privfl account`: ε per round without training
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AuditRow:
    """ε after ``round`` (``None`` everywhere when the threat model voids the guarantee)."""

    round: int
    epsilon_rdp: float | None
    epsilon_pld: float | None


def _model_dim(scenario: Scenario, data: Any) -> int:
    model = registry.make("model", scenario.model, input_shape=data.input_shape, num_classes=data.num_classes,
                          **scenario.model_params)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def audit_scenario(scenario: Scenario, *, delta: float | None = None, pld_rounds: list[int] | None = None,
                   ) -> tuple[list[AuditRow], str]:
    """ε(δ) after each round for the scenario's mechanism, sampling and rounds — no training.

    Worst case: a client that takes part in every round (local guarantees and DP-BREM's momentum are
    spent per participation; central DP-FedAvg releases are amplified by Poisson client sampling).
    Example-level DP-SGD uses the largest record sampling rate min(1, B/N_i) over the clients of the
    seed-0 partition. PLD is computed at the rounds in ``pld_rounds`` (default: every round).
    Returns the rows and a one-line description of what was accounted.
    """
    from privfl.evaluations.scenario import _load_dataset
    from privfl.fl.partition import partition
    from privfl.seeding import make_generator

    delta = scenario.delta if delta is None else delta
    ledger = PrivacyLedger()
    mech = registry.make("mechanism", scenario.mechanism, **scenario.mechanism_params) if scenario.mechanism else None
    rate = scenario.sample_rate if scenario.sampling == "poisson" else 1.0
    steps = 1 if scenario.protocol == "fedsgd" else scenario.local_steps
    secagg = bool(scenario.secure_aggregation) and mech is not None
    n_sum = participants(scenario) - scenario.byzantine if secagg else 1
    if secagg and n_sum < 1:
        raise ValueError(f"secure aggregation with {participants(scenario)} participants and {scenario.byzantine} "
                         "Byzantine clients leaves no honest participant")
    needs_data = (mech is not None and (mech.guarantee().unit == "coordinate" or mech.binds_dim)) \
        or scenario.dp_noise > 0
    dim, dp_rate = 0, None
    if needs_data:
        data = _load_dataset(scenario.dataset, scenario.dataset_params)
        dim = _model_dim(scenario, data)
        if mech is not None and mech.binds_dim:
            mech.bind_dim(dim)
        if scenario.dp_noise > 0:
            clients = partition(scenario.partition, data.y_train, scenario.num_clients,
                                generator=make_generator(0, "partition"), **scenario.partition_params)
            dp_rate = min(1.0, scenario.batch_size / min(len(c) for c in clients if len(c)))
    parts: list[str] = []
    attack = (registry.make("byzantine_attack", scenario.byzantine_attack, **scenario.byzantine_attack_params)
              if scenario.byzantine and scenario.byzantine_attack else None)
    warning = threat_model_warning(mech, attack, byzantine=bool(scenario.byzantine))
    if warning is not None:
        ledger.void(warning)
        parts.append(warning)
    if mech is None and scenario.dp_noise <= 0:
        parts.append("no privatizing step: ε = ∞")
    worst = torch.tensor([0])
    rows: list[AuditRow] = []
    pld_rounds = set(range(1, scenario.rounds + 1) if pld_rounds is None else pld_rounds)
    for t in range(scenario.rounds):
        if mech is None and scenario.dp_noise <= 0:
            rows.append(AuditRow(t + 1, math.inf, math.inf))
            continue
        if secagg:
            g_sum = mech.sum_guarantee(n_sum)
            ledger.record(g_sum, clients=worst, count=dim if g_sum.unit == "coordinate" else 1, unit="client",
                          round=t)
        elif mech is not None:
            if mech.per_participation:
                ledger.record(mech.participation_guarantee(t + 1), clients=worst, round=t)
            else:
                mech.account(ledger, clients=worst, sampling_rate=rate, dim=dim, round=t)
        if scenario.dp_noise > 0:
            ledger.record(gaussian_guarantee(scenario.dp_noise, name="dp-sgd", unit="record"),
                          sampling_rate=dp_rate, count=steps, clients=worst, round=t)
        if warning is not None:  # no number: it would not be a guarantee
            rows.append(AuditRow(t + 1, None, None))
            continue
        units = ledger.units
        eps_rdp = max(ledger.epsilon(delta, method="rdp", unit=u) for u in units)
        eps_pld = None
        if t + 1 in pld_rounds and ledger.supports("pld"):
            eps_pld = max(ledger.epsilon(delta, method="pld", unit=u) for u in units)
        rows.append(AuditRow(t + 1, eps_rdp, eps_pld))
    if mech is not None:
        g = mech.sum_guarantee(n_sum) if secagg else mech.guarantee()
        central = mech.central and not mech.per_participation
        what = f"{scenario.mechanism} ({g.name}, unit {mech.epsilon_unit or g.unit}"
        what += f", composed over d={dim} coordinates" if g.unit == "coordinate" else ""
        what += f", central, Poisson client sampling q={rate:g})" if central else ", worst client joins every round)"
        if secagg:
            what += f"; ε {unit_label(n_sum)} (honest ones; {scenario.byzantine} Byzantine not counted)"
        parts.append(what)
    if scenario.dp_noise > 0:
        parts.append(f"DP-SGD σ={scenario.dp_noise:g}, {steps} step(s)/round at record sampling rate {dp_rate:.4g}")
    return rows, "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Privacy–utility plot
# --------------------------------------------------------------------------------------------
# Fields that make a cell private; a cell's non-private baseline is the cell equal in everything else.
PRIVACY_FIELDS = ("label", "mechanism", "mechanism_params", "dp_clip", "dp_noise", "delta", "accounting")


def _federation_key(scenario: dict[str, Any]) -> str:
    from privfl.evaluations.report import config_key

    return config_key({k: v for k, v in scenario.items() if k not in PRIVACY_FIELDS})


def _mechanism_name(r: Any) -> str:
    s = r.result["summary"]
    name = r.scenario.get("mechanism") or ("dp-sgd" if (r.scenario.get("dp_noise") or 0) > 0 else "non-private")
    if (r.scenario.get("mechanism_params") or {}).get("local"):
        name += " local"
    if s.get("privacy_unit") and s.get("privacy_unit") != "none":
        name = f"{name} ({s['privacy_unit']}-level)"
    return name


def privacy_utility_panels(rows: list[Any]) -> list[dict[str, Any]]:
    """The data of ``privacy_utility.png``: one panel per federation (cells equal but for their privacy
    fields, :data:`PRIVACY_FIELDS`) that has a finite ε; in it, one point per configuration (mean ε and
    final accuracy over cells that differ in seed alone), joined per mechanism, and one reference line per
    ε = ∞ configuration of the same federation (its own mean, never pooled with other configurations).
    Federations trained for fewer than 2 rounds (attack experiments) are left out."""
    from privfl.evaluations.report import by_config, group_title

    done = [r for r in rows if r.status == "done" and isinstance((r.result or {}).get("summary"), dict)
            and r.result["summary"].get("epsilon") is not None
            and r.result["summary"].get("final_accuracy") is not None and (r.scenario.get("rounds") or 0) >= 2]
    panels: dict[str, dict[str, Any]] = {}
    for group in by_config(done).values():
        first = group[0]
        panel = panels.setdefault(_federation_key(first.scenario),
                                  {"title": group_title(first.scenario), "curves": {}, "baselines": []})
        eps = float(np.mean([g.result["summary"]["epsilon"] for g in group]))
        acc = float(np.mean([g.result["summary"]["final_accuracy"] for g in group]))
        if math.isfinite(eps):
            panel["curves"].setdefault(_mechanism_name(first), []).append((eps, acc, first.label, len(group)))
        else:
            panel["baselines"].append((first.label or _mechanism_name(first), acc, len(group)))
    return [p for p in panels.values() if p["curves"]]


@register_plot("privacy_utility")
def plot_privacy_utility(run_dir: str | Path, rows: list[Any]) -> list[Path]:
    """``privacy_utility.png``: final accuracy vs ε (log x), one panel per federation
    (:func:`privacy_utility_panels`); ε = ∞ configurations of the same federation as horizontal lines."""
    from privfl.evaluations.report import figure_title, panel_grid, series_style, style_panel

    panels = privacy_utility_panels(rows)
    if not panels:
        return []
    import matplotlib.pyplot as plt

    fig, pairs = panel_grid(len(panels))
    for (ax, lax), panel in zip(pairs, panels):
        i = 0
        for name, pts in sorted(panel["curves"].items()):
            pts = sorted(pts)
            n = ", ".join(sorted({str(p[3]) for p in pts}))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} (n={n})",
                    **series_style(i))
            i += 1
        for label, acc, n in panel["baselines"]:
            ax.axhline(acc, linewidth=1.2, label=f"{label} (ε = ∞, n={n}): {acc:.3f}",
                       **{**series_style(i), "linestyle": (0, (5, 2))})
            i += 1
        if not panel["baselines"]:
            ax.text(0.02, 0.03, "no non-private run of this federation", transform=ax.transAxes, fontsize=7,
                    color="gray")
        style_panel(ax, lax, title=panel["title"], xlabel="ε spent (worst client, log scale)",
                    ylabel="final test accuracy", log_x=True)
    figure_title(fig, "privacy–utility: final accuracy vs ε (points: mean over seeds, n = seeds; dashed: the same "
                 "federation without privacy)", fontsize=9)
    path = Path(run_dir) / "privacy_utility.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------------------------
# `privfl account SPEC`: the table (and PNG) for every configuration of a spec
# --------------------------------------------------------------------------------------------
def _shown_rounds(rounds: int, limit: int = 20) -> list[int]:
    if rounds <= 30:
        return list(range(1, rounds + 1))
    picks = {int(round(x)) for x in np.geomspace(1, rounds, limit)}
    return sorted(picks | {rounds})


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "∞"
    return f"{v:.4g}"


def account_spec(spec: Any, *, delta: float | None = None, png: str | Path | None = None,
               tables: str | Path | None = None) -> str:
    """The ``privfl account`` report: for each distinct federated configuration of ``spec``, ε(δ) per
    round by RDP and by PLD side by side (no training). Returns a summary (one row per configuration: ε
    after its last round); with ``tables`` the full per-round tables go to that markdown file (without
    it they are appended to the summary). Writes a PNG of ε vs round when ``png``. Progress: one line per
    configuration on the ``privfl`` logger."""
    import logging

    from privfl.evaluations.report import md_escape
    from privfl.evaluations.scenario import cell_id

    log = logging.getLogger("privfl")
    if png is not None and not Path(png).parent.is_dir():
        raise ValueError(f"--png: directory {str(Path(png).parent)!r} does not exist")
    cells = spec.validate()
    seen: dict[str, tuple[str, Scenario]] = {}
    for cell in cells:
        key = cell_id(cell.scenario, 0)
        if key not in seen:
            seen[key] = (cell.label, cell.scenario)
    head = f"# privacy accounting of spec {spec.name!r} (the accountant's ε, no training)"
    summary: list[str] = [head, "", "ε after the last round for the worst client (∞: no privatizing step with a "
                          "guarantee); per-round tables below or in the tables file.", "",
                          "| configuration | rounds | δ | ε (RDP) | ε (PLD) | accounting |",
                          "|---|---|---|---|---|---|"]
    full: list[str] = [head, ""]
    curves: list[tuple[str, list[AuditRow]]] = []
    skipped = []
    for i, (label, scenario) in enumerate(seen.values()):
        if scenario.mode != "federated":
            skipped.append(f"{label} (mode {scenario.mode!r})")
            continue
        log.info("accounting %d/%d: %s", i + 1, len(seen), label)
        d = scenario.delta if delta is None else delta
        shown = _shown_rounds(scenario.rounds)
        pld_at = sorted({shown[int(i)] for i in np.linspace(0, len(shown) - 1, min(10, len(shown)))})
        rows, what = audit_scenario(scenario, delta=d, pld_rounds=pld_at)
        if rows and rows[0].epsilon_rdp is None:  # voided by the threat model: the warning, not ε
            summary.append(f"| {md_escape(label)} | {scenario.rounds} | {d:g} | none reported | none reported | "
                           f"{md_escape(what)} |")
            full += [f"## {label}", "", f"ε: none reported — {what}", ""]
            continue
        curves.append((label, rows))
        last = rows[-1] if rows else None
        summary.append(f"| {md_escape(label)} | {scenario.rounds} | {d:g} | "
                       f"{_fmt(last.epsilon_rdp if last else None)} | {_fmt(last.epsilon_pld if last else None)} | "
                       f"{md_escape(what or 'no privatizing step')} |")
        if last is not None and all(math.isinf(r.epsilon_rdp) for r in rows):
            full += [f"## {label}", "", f"{what or 'no privatizing step'}: ε = ∞ in every round", ""]
            continue
        full += [f"## {label}", "", f"{what}; δ = {d:g}; PLD at up to 10 of the rounds (— elsewhere)", "",
                 "| round | ε (RDP) | ε (PLD) |", "|---|---|---|"]
        for r in rows:
            if r.round in shown:
                full.append(f"| {r.round} | {_fmt(r.epsilon_rdp)} | {_fmt(r.epsilon_pld)} |")
        full.append("")
    if skipped:
        summary += ["", "Not federated training runs (nothing to account here): " + "; ".join(skipped)]
    if png is not None:
        _plot_audit(Path(png), curves, spec.name)
        summary.append(f"\nplot: {png}")
    if tables is not None:
        Path(tables).parent.mkdir(parents=True, exist_ok=True)
        Path(tables).write_text("\n".join(full))
        summary.append(f"\nper-round tables: {tables}")
        return "\n".join(summary)
    return "\n".join(summary + ["", *full[2:]])


def _plot_audit(path: Path, curves: list[tuple[str, list[AuditRow]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, rows in curves:
        finite = [r for r in rows if math.isfinite(r.epsilon_rdp)]
        if not finite:
            continue
        line = ax.plot([r.round for r in finite], [r.epsilon_rdp for r in finite], label=f"{label} (RDP)")[0]
        pld = [r for r in finite if r.epsilon_pld is not None and math.isfinite(r.epsilon_pld)]
        if pld:
            ax.plot([r.round for r in pld], [r.epsilon_pld for r in pld], linestyle="--", marker=".",
                    color=line.get_color(), label=f"{label} (PLD)")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("ε (worst client)")
    ax.set_title(f"{title}: ε per round (solid RDP, dashed PLD)")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
