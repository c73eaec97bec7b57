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
from typing import Any

import numpy as np
import torch

from privfl import registry
from privfl.accounting.guarantees import gaussian_guarantee
from privfl.accounting.ledger import PrivacyLedger
from privfl.evaluations.report import register_plot
from privfl.evaluations.scenario import Extension, Scenario, SpecError, register_extension

__all__ = ["ACCOUNTING", "audit_scenario", "AuditRow", "epsilon_summary"]

ACCOUNTING = ("rdp", "pld", "both")


# --------------------------------------------------------------------------------------------
# Extension: validate, configure, finish
# --------------------------------------------------------------------------------------------
def _validate(scenario: Scenario, where: str) -> None:
    def bad(name: str, allowed: str) -> SpecError:
        return SpecError(f"{where}.{name}: got {getattr(scenario, name)!r}; allowed: {allowed}")

    if not (isinstance(scenario.delta, (int, float)) and 0 < scenario.delta < 1):
        raise bad("delta", "a number in (0, 1)")
    if scenario.accounting not in ACCOUNTING:
        raise bad("accounting", ", ".join(map(repr, ACCOUNTING)))
    if scenario.dp_clip is not None and not (isinstance(scenario.dp_clip, (int, float)) and 0 < scenario.dp_clip
                                             < math.inf):
        raise bad("dp_clip", "a finite number > 0, or null (no example-level DP-SGD)")
    if not (isinstance(scenario.dp_noise, (int, float)) and 0 <= scenario.dp_noise < math.inf):
        raise bad("dp_noise", "a finite number >= 0")
    if scenario.dp_noise > 0 and scenario.dp_clip is None:
        raise bad("dp_clip", "a number > 0 when dp_noise > 0 (the per-sample clipping norm)")
    if scenario.dp_clip is not None and scenario.batch_size is None:
        raise bad("batch_size", "an integer >= 1 with dp_clip (the expected Poisson batch size)")
    if not scenario.mechanism:
        return
    try:
        mech = registry.make("mechanism", scenario.mechanism, **scenario.mechanism_params)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.mechanism_params: {exc}") from None
    needed = getattr(mech, "protocol", None)
    if needed is not None and needed != scenario.protocol:
        raise SpecError(f"{where}.protocol: got {scenario.protocol!r}; mechanism {scenario.mechanism!r} "
                        f"needs {needed!r}")
    if getattr(mech, "central", False) and (
        scenario.preaggregators or not getattr(registry.get("aggregator", scenario.aggregator), "plain_mean", False)
    ):
        raise SpecError(
            f"{where}.aggregator: got {scenario.aggregator!r} with preaggregators {scenario.preaggregators!r}; "
            f"mechanism {scenario.mechanism!r} is central (it aggregates: noise once on the sum), so allowed: "
            "aggregator 'mean' and no preaggregators"
        )


def _configure(scenario: Scenario, seed: int, kwargs: dict[str, Any]) -> None:
    if scenario.dp_clip is not None:
        kwargs["local"] = dataclasses.replace(kwargs["local"], dp_clip=float(scenario.dp_clip),
                                              dp_noise=float(scenario.dp_noise))
    kwargs["delta"] = float(scenario.delta)
    kwargs["accounting"] = "pld" if scenario.accounting == "pld" else "rdp"


def epsilon_summary(ledger: PrivacyLedger | None, delta: float, methods: tuple[str, ...]) -> dict[str, Any]:
    """``{"epsilon_<method>": ε, "privacy_unit": ...}``: the worst client, largest over units; ∞ when
    there is no ledger (nothing private ran)."""
    out: dict[str, Any] = {}
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
    series["epsilon"] = [math.inf if r.epsilon is None else r.epsilon for r in sim.history]


register_extension(Extension(name="privacy", validate=_validate, configure=_configure, finish=_finish))


# --------------------------------------------------------------------------------------------
# `privfl account`: ε per round without training
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AuditRow:
    round: int
    epsilon_rdp: float
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
    needs_data = (mech is not None and mech.guarantee().unit == "coordinate") or scenario.dp_noise > 0
    dim, dp_rate = 0, None
    if needs_data:
        data = _load_dataset(scenario.dataset, scenario.dataset_params)
        dim = _model_dim(scenario, data)
        if scenario.dp_noise > 0:
            clients = partition(scenario.partition, data.y_train, scenario.num_clients,
                                generator=make_generator(0, "partition"), **scenario.partition_params)
            dp_rate = min(1.0, scenario.batch_size / min(len(c) for c in clients if len(c)))
    parts: list[str] = []
    if mech is None and scenario.dp_noise <= 0:
        parts.append("no privatizing step: ε = ∞")
    worst = torch.tensor([0])
    rows: list[AuditRow] = []
    pld_rounds = set(range(1, scenario.rounds + 1) if pld_rounds is None else pld_rounds)
    for t in range(scenario.rounds):
        if mech is None and scenario.dp_noise <= 0:
            rows.append(AuditRow(t + 1, math.inf, math.inf))
            continue
        if mech is not None:
            if hasattr(mech, "participation_guarantee"):
                ledger.record(mech.participation_guarantee(t + 1), clients=worst, round=t)
            else:
                mech.account(ledger, clients=worst, sampling_rate=rate, dim=dim, round=t)
        if scenario.dp_noise > 0:
            ledger.record(gaussian_guarantee(scenario.dp_noise, name="dp-sgd", unit="record"),
                          sampling_rate=dp_rate, count=steps, clients=worst, round=t)
        units = ledger.units
        eps_rdp = max(ledger.epsilon(delta, method="rdp", unit=u) for u in units)
        eps_pld = None
        if t + 1 in pld_rounds and ledger.supports("pld"):
            eps_pld = max(ledger.epsilon(delta, method="pld", unit=u) for u in units)
        rows.append(AuditRow(t + 1, eps_rdp, eps_pld))
    if mech is not None:
        g = mech.guarantee()
        central = getattr(mech, "central", False) and not hasattr(mech, "participation_guarantee")
        what = f"{scenario.mechanism} ({g.name}, unit {g.unit}"
        what += f", composed over d={dim} coordinates" if g.unit == "coordinate" else ""
        what += f", central, Poisson client sampling q={rate:g})" if central else ", worst client joins every round)"
        parts.append(what)
    if scenario.dp_noise > 0:
        parts.append(f"DP-SGD σ={scenario.dp_noise:g}, {steps} step(s)/round at record sampling rate {dp_rate:.4g}")
    return rows, "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Privacy–utility plot
# --------------------------------------------------------------------------------------------
@register_plot("privacy_utility")
def plot_privacy_utility(run_dir: str | Path, rows: list[Any]) -> list[Path]:
    """Final accuracy vs ε (log x axis), one line per mechanism; ε = ∞ rows (non-private baseline,
    compression) are drawn as horizontal reference lines labelled ε = ∞. Skipped when fewer than two
    cells report a finite ε."""
    done = [r for r in rows if r.status == "done" and isinstance((r.result or {}).get("summary"), dict)]
    by_label: dict[str, list[tuple[str, float, float]]] = {}
    for r in done:
        s = r.result["summary"]
        eps, acc = s.get("epsilon"), s.get("final_accuracy")
        if acc is None or eps is None:
            continue
        name = r.scenario.get("mechanism") or ("dp-sgd" if (r.scenario.get("dp_noise") or 0) > 0 else "non-private")
        if (r.scenario.get("mechanism_params") or {}).get("local"):
            name += " local"
        if math.isfinite(eps) and s.get("privacy_unit"):
            name = f"{name} ({s['privacy_unit']}-level)"
        by_label.setdefault(r.label, []).append((name, float(eps), float(acc)))
    points: dict[str, list[tuple[float, float]]] = {}
    infinite: dict[str, list[float]] = {}
    for cells in by_label.values():  # one point per configuration: mean ε and accuracy over its seeds
        name = cells[0][0]
        eps = float(np.mean([e for _, e, _ in cells]))
        acc = float(np.mean([a for _, _, a in cells]))
        if math.isfinite(eps):
            points.setdefault(name, []).append((eps, acc))
        else:
            infinite.setdefault(name, []).append(acc)
    if sum(len(v) for v in points.values()) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, pts in sorted(points.items()):
        pts = sorted(pts)
        ax.plot([e for e, _ in pts], [a for _, a in pts], marker="o", label=name)
    styles = iter([(0, (5, 2)), (0, (1, 1)), (0, (3, 1, 1, 1)), (0, (8, 3)), (0, (2, 4))])
    for name, accs in sorted(infinite.items()):
        ax.axhline(float(np.mean(accs)), linestyle=next(styles, "--"), linewidth=1,
                   color="black" if name == "non-private" else "gray", label=f"{name} (ε = ∞)")
    ax.set_xscale("log")
    ax.set_xlabel("ε spent (worst client, log scale)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("privacy–utility: accuracy vs ε (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(run_dir) / "privacy_utility.png"
    fig.savefig(path)
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


def account_spec(spec: Any, *, delta: float | None = None, png: str | Path | None = None) -> str:
    """The ``privfl account`` report: for each distinct federated configuration of ``spec``, ε(δ) per
    round by RDP and by PLD side by side (no training). Writes a PNG of ε vs round when ``png``."""
    from privfl.evaluations.scenario import cell_id

    if png is not None and not Path(png).parent.is_dir():
        raise ValueError(f"--png: directory {str(Path(png).parent)!r} does not exist")
    cells = spec.validate()
    seen: dict[str, tuple[str, Scenario]] = {}
    for cell in cells:
        key = cell_id(cell.scenario, 0)
        if key not in seen:
            seen[key] = (cell.label, cell.scenario)
    lines: list[str] = [f"# privacy accounting of spec {spec.name!r} (the accountant's ε, no training)", ""]
    curves: list[tuple[str, list[AuditRow]]] = []
    for label, scenario in seen.values():
        if scenario.mode != "federated":
            lines += [f"## {label}", "", f"mode {scenario.mode!r}: not a federated training run; skipped", ""]
            continue
        d = scenario.delta if delta is None else delta
        shown = _shown_rounds(scenario.rounds)
        pld_at = sorted({shown[int(i)] for i in np.linspace(0, len(shown) - 1, min(10, len(shown)))})
        rows, what = audit_scenario(scenario, delta=d, pld_rounds=pld_at)
        curves.append((label, rows))
        lines += [f"## {label}", "", f"{what}; δ = {d:g}; PLD at up to 10 of the rounds (— elsewhere)", "",
                  "| round | ε (RDP) | ε (PLD) |", "|---|---|---|"]
        for r in rows:
            if r.round in shown:
                lines.append(f"| {r.round} | {_fmt(r.epsilon_rdp)} | {_fmt(r.epsilon_pld)} |")
        lines.append("")
    if png is not None:
        _plot_audit(Path(png), curves, spec.name)
        lines.append(f"plot: {png}")
    return "\n".join(lines)


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
