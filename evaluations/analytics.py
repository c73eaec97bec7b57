"""Federated analytics: LDP frequency estimation over users whose categorical values evolve.

``Scenario(mode="analytics", ...)`` runs ``rounds`` collections (τ) over a population of
``analytics_users`` users. Each user holds one category in ``[0, k)`` (``k`` is the mechanism's
``mechanism_params.k``) that evolves between collections (``analytics_data``):

- ``"zipf"`` — the initial values follow a Zipf law ``P(i) ∝ (i + 1)^-s`` and at every step each
  user's value changes with probability ``change_prob`` to a value drawn from the same Zipf law
  *conditioned on being different* (parameters ``s=1.1``, ``change_prob=0.1``);
- ``"markov"`` — Zipf initial values, then a Markov chain: with probability ``change_prob`` a user
  moves from state ``i`` to one of ``successors`` fixed random other states of ``i`` (weights drawn
  once from a flat Dirichlet), else stays (parameters ``s=1.1``, ``change_prob=0.1``,
  ``successors=4``). Its stationary law is not uniform, unlike a random walk on a ring.

At every collection each user participates with probability ``sample_rate`` (Poisson; 1.0 =
everybody), privatizes its current value with ``mechanism`` (any registered mechanism that declares the role
``"frequency-oracle"``: those of :mod:`privfl.mechanisms.ldp`, :mod:`~privfl.mechanisms.longitudinal`,
:mod:`~privfl.mechanisms.loloha`, or a user's) and the server estimates the participants' frequency vector.
``analytics_alpha`` sets ``eps_1 = alpha · eps_inf`` for protocols that take ``eps_1``.

Reported per collection: MSE of the unbiased estimate (mean over the k categories of
``(f̂ − f)²``), MSE after projection onto the simplex, and the longitudinal budget spent per user
(mean and max over the population; memoizing protocols: ``#distinct memoized values · eps_inf``,
one-shot protocols: ``#reports · ε``). Every release is also recorded in a
:class:`~privfl.accounting.PrivacyLedger`; its worst-user pure ε is reported as a cross-check.
Two plots come with the report: ``ldp_mse.png`` (time-averaged MSE vs ``eps_inf``) and
``ldp_budget.png`` (budget spent vs collection).
"""

from __future__ import annotations

import math
import statistics
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from privfl import registry
from privfl.accounting import PrivacyLedger
from privfl.core import Mechanism
from privfl.evaluations.report import register_plot
from privfl.evaluations.scenario import (
    Scenario,
    Section,
    SpecError,
    number,
    register_mode,
    register_section,
    resolve_device,
    size,
)
from privfl.mechanisms.ldp import project_simplex
from privfl.seeding import make_generator

__all__ = ["ZipfPopulation", "MarkovPopulation", "POPULATIONS", "make_population", "run_analytics",
           "validate_analytics", "build_oracle"]


# --------------------------------------------------------------------------------------------
# Evolving populations
# --------------------------------------------------------------------------------------------
def _number(params: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
        raise ValueError(f"{key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _check_keys(params: dict[str, Any], allowed: tuple[str, ...], name: str) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"parameters of {name!r} must be a mapping, got {params!r}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for data {name!r}; "
                         f"valid: {', '.join(allowed)}")


class ZipfPopulation:
    """Zipf(``s``) values over ``[0, k)``; each step a value changes w.p. ``change_prob`` to a
    Zipf draw conditioned on differing from the current value (exact inverse-CDF sampling)."""

    name = "zipf"
    PARAMS: tuple[str, ...] = ("s", "change_prob")

    def __init__(self, k: int, *, s: float = 1.1, change_prob: float = 0.1):
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"k must be an integer >= 2, got {k!r}")
        self.k = k
        self.s = _number({"s": s}, "s", 1.1, 0.0, 100.0)
        self.change_prob = _number({"change_prob": change_prob}, "change_prob", 0.1, 0.0, 1.0)
        pmf = (torch.arange(1, k + 1, dtype=torch.float64) ** -self.s)
        self.pmf = pmf / pmf.sum()
        self.cdf = torch.cumsum(self.pmf, 0)

    def _draw(self, u: Tensor) -> Tensor:
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.k - 1)

    def initial(self, n: int, generator: torch.Generator) -> Tensor:
        return self._draw(torch.rand(n, generator=generator, dtype=torch.float64))

    def _draw_other(self, old: Tensor, generator: torch.Generator) -> Tensor:
        p_old = self.pmf[old]
        u = torch.rand(old.shape[0], generator=generator, dtype=torch.float64) * (1 - p_old)
        start = self.cdf[old] - p_old  # where the current value's interval begins
        return self._draw(torch.where(u >= start, u + p_old, u))

    def step(self, values: Tensor, generator: torch.Generator) -> Tensor:
        change = torch.rand(values.shape[0], generator=generator, dtype=torch.float64) < self.change_prob
        out = values.clone()
        if bool(change.any()):
            out[change] = self._draw_other(values[change], generator)
        return out


class MarkovPopulation(ZipfPopulation):
    """Zipf(``s``) initial values; then w.p. ``change_prob`` a move to one of ``successors`` fixed
    random other states (Dirichlet(1) weights drawn once from the data seed), else stay."""

    name = "markov"
    PARAMS = ("s", "change_prob", "successors")

    def __init__(self, k: int, *, s: float = 1.1, change_prob: float = 0.1, successors: int = 4,
                 generator: torch.Generator | None = None):
        super().__init__(k, s=s, change_prob=change_prob)
        if isinstance(successors, bool) or not isinstance(successors, int) or successors < 1:
            raise ValueError(f"successors must be an integer >= 1, got {successors!r}")
        self.successors = successors
        other = torch.randint(0, k - 1, (k, successors), generator=generator)
        self.targets = other + (other >= torch.arange(k)[:, None]).to(other.dtype)  # never the state itself
        w = -torch.log(torch.rand(k, successors, generator=generator, dtype=torch.float64))  # Exp(1): Dirichlet(1)
        self.weights_cdf = torch.cumsum(w / w.sum(dim=1, keepdim=True), dim=1)

    def step(self, values: Tensor, generator: torch.Generator) -> Tensor:
        move = torch.rand(values.shape[0], generator=generator, dtype=torch.float64) < self.change_prob
        out = values.clone()
        if bool(move.any()):
            src = values[move]
            u = torch.rand(src.shape[0], 1, generator=generator, dtype=torch.float64)
            pick = torch.searchsorted(self.weights_cdf[src], u, right=True).clamp_(max=self.successors - 1)
            out[move] = self.targets[src, pick[:, 0]]
        return out


POPULATIONS: dict[str, type[ZipfPopulation]] = {"zipf": ZipfPopulation, "markov": MarkovPopulation}


def make_population(name: str, k: int, params: dict[str, Any], generator: torch.Generator) -> ZipfPopulation:
    """An evolving population by name (``zipf`` or ``markov``) with its parameters."""
    if name not in POPULATIONS:
        raise ValueError(f"unknown data {name!r}; allowed: {', '.join(sorted(POPULATIONS))}")
    cls = POPULATIONS[name]
    _check_keys(params, cls.PARAMS, name)
    if cls is MarkovPopulation:
        return MarkovPopulation(k, generator=generator, **params)
    return cls(k, **params)


# --------------------------------------------------------------------------------------------
# Validation and construction
# --------------------------------------------------------------------------------------------
def build_oracle(scenario: Scenario) -> Mechanism:
    """The scenario's frequency oracle, with ``eps_1 = analytics_alpha · eps_inf`` where it applies."""
    if not scenario.mechanism:
        raise ValueError("mode 'analytics' needs a frequency-oracle mechanism (e.g. loloha, l-grr, olh)")
    params = dict(scenario.mechanism_params)
    alpha = scenario.analytics_alpha
    if alpha is not None:
        accepted = registry.parameters("mechanism", scenario.mechanism)
        if "eps_1" in accepted and "eps_inf" in params:
            if "eps_1" in params:
                raise ValueError("give either analytics_alpha or mechanism_params.eps_1, not both")
            params["eps_1"] = alpha * params["eps_inf"]
    mech = registry.make("mechanism", scenario.mechanism, **params)
    if mech.role != "frequency-oracle":
        raise ValueError(f"mechanism {scenario.mechanism!r} is not a frequency oracle (mode 'analytics' needs one of "
                         f"{', '.join(_frequency_oracles())})")
    return mech


def _declared_oracle(factory: Any) -> bool | None:
    """Whether a registered mechanism class declares the role ``"frequency-oracle"`` (None: a factory
    function, known only once built)."""
    if isinstance(factory, type) and issubclass(factory, Mechanism):
        return "frequency-oracle" in factory.roles
    return None


def _frequency_oracles() -> list[str]:
    out = []
    for name in registry.available("mechanism"):
        factory = registry.get("mechanism", name)
        if _declared_oracle(factory) is True:
            out.append(name)
    return out


class AnalyticsSection(Section):
    """Federated analytics: ``rounds`` collections over ``analytics_users`` users whose categorical values
    evolve (``analytics_data``; k is ``mechanism_params.k``); ``sample_rate`` is the per-collection
    participation probability; ``eps_1 = analytics_alpha · eps_inf`` where the protocol takes ``eps_1``."""

    analytics_users: size("analytics_users") = 10000
    analytics_data: Literal[tuple(POPULATIONS)] = "zipf"
    analytics_data_params: dict[str, Any] = Field(default_factory=dict)
    analytics_alpha: number(gt=0, lt=1) | None = Field(
        None, description="eps_1 = analytics_alpha * eps_inf (null: the mechanism's own eps_1)")


register_section("analytics", AnalyticsSection)


def validate_analytics(scenario: Scenario, where: str = "scenario") -> None:
    """The analytics mode's cross-field checks (raises :class:`SpecError` naming field, value and what
    is allowed); each field's type and bounds are declared in :class:`AnalyticsSection`."""
    if not scenario.mechanism:
        raise SpecError(f"{where}.mechanism: mode 'analytics' needs a frequency oracle; allowed: "
                        f"{', '.join(_frequency_oracles())}")
    try:
        factory = registry.get("mechanism", scenario.mechanism)
    except ValueError as exc:
        raise SpecError(f"{where}.mechanism: {exc}") from None
    if _declared_oracle(factory) is False:
        raise SpecError(f"{where}.mechanism: got {scenario.mechanism!r}, which is not a frequency oracle; allowed: "
                        f"{', '.join(_frequency_oracles())}")
    try:
        mech = build_oracle(scenario)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.mechanism_params: {exc}") from None
    try:
        make_population(scenario.analytics_data, mech.domain().categories, scenario.analytics_data_params,
                        torch.Generator())
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.analytics_data_params: {exc}") from None


# --------------------------------------------------------------------------------------------
# The mode
# --------------------------------------------------------------------------------------------
@register_mode("analytics", validate=validate_analytics)
def run_analytics(scenario: Scenario, seed: int, *, on_round: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """τ = ``rounds`` collections of LDP frequency estimation; ``{"summary", "series"}`` like ``run_federated``."""
    start = time.perf_counter()
    device = resolve_device(scenario.device)
    mech = build_oracle(scenario)
    k, n = int(mech.domain().categories), scenario.analytics_users
    population = make_population(scenario.analytics_data, k, scenario.analytics_data_params,
                                 make_generator(seed, "analytics-data", "structure"))
    values = population.initial(n, make_generator(seed, "analytics-data", 0))
    guarantee = mech.guarantee()
    longitudinal = mech.longitudinal
    eps_report = guarantee.epsilon_pure
    ledger = PrivacyLedger()
    reports_made = torch.zeros(n, dtype=torch.int64)
    all_ids = torch.arange(n, device=device)
    series: dict[str, list[Any]] = defaultdict(list)
    changed_total = 0
    ldp_seconds = 0.0
    reports_total = 0
    for t in range(scenario.rounds):
        t0 = time.perf_counter()
        if t > 0:
            new_values = population.step(values, make_generator(seed, "analytics-data", t))
            changed_total += int((new_values != values).sum())
            values = new_values
        if scenario.sample_rate < 1:
            take = torch.rand(n, generator=make_generator(seed, "analytics-participation", t)) < scenario.sample_rate
            ids = torch.nonzero(take).flatten()
        else:
            ids = torch.arange(n)
        row: dict[str, Any] = {"round": t + 1, "participants": int(ids.numel())}
        if ids.numel() == 0:
            row.update(mse=None, mse_projected=None)
        else:
            user_values = values[ids].to(device)
            dev_ids = ids.to(device)
            t_ldp = time.perf_counter()
            reports = mech.privatize(user_values, generator=make_generator(seed, "analytics-ldp", t, device=device),
                                     client_ids=dev_ids)
            estimate = mech.estimate(reports)
            ldp_seconds += time.perf_counter() - t_ldp
            reports_total += int(ids.numel())
            truth = torch.bincount(user_values, minlength=k).to(torch.float64) / ids.numel()
            row["mse"] = float(((estimate - truth) ** 2).mean())
            row["mse_projected"] = float(((project_simplex(estimate) - truth) ** 2).mean())
            mech.account(ledger, clients=dev_ids, sampling_rate=1.0, dim=k, round=t)
            reports_made[ids] += 1
        spent = mech.spent(all_ids).cpu() if longitudinal else reports_made.to(torch.float64) * eps_report
        row["eps_spent_mean"] = float(spent.mean())
        row["eps_spent_max"] = float(spent.max())
        row["seconds"] = time.perf_counter() - t0
        for key, value in row.items():
            series[key].append(value)
        if on_round is not None:
            on_round(row)
    mses = [m for m in series["mse"] if m is not None]
    proj = [m for m in series["mse_projected"] if m is not None]
    extra = guarantee.extra
    bound = mech.budget_bound() if longitudinal else scenario.rounds * eps_report
    summary = {
        "mse_avg": statistics.fmean(mses) if mses else None,
        "mse_final": mses[-1] if mses else None,
        "mse_projected_avg": statistics.fmean(proj) if proj else None,
        "eps_spent_mean": series["eps_spent_mean"][-1],
        "eps_spent_max": series["eps_spent_max"][-1],
        "eps_bound": bound,
        "eps_ledger_max": ledger.pure_epsilon(),
        "eps_inf": float(getattr(mech, "eps_inf", getattr(mech, "eps", math.nan))),
        "eps_1": float(getattr(mech, "eps_1", getattr(mech, "eps", math.nan))),
        "eps_first_report": eps_report,
        "g": int(mech.g) if hasattr(mech, "g") else None,
        "k": k,
        "users": n,
        "changes_per_user": changed_total / n,
        "mean_participants": statistics.fmean(series["participants"]),
        "reports_per_s": reports_total / ldp_seconds if ldp_seconds > 0 else None,
        "bytes_per_client_round": extra.get("bits_per_report", 0) / 8,
        "device": str(device),
        "wall_time_s": time.perf_counter() - start,
    }
    return {"summary": summary, "series": dict(series)}


# --------------------------------------------------------------------------------------------
# Plots (added to every report whose run holds analytics cells)
# --------------------------------------------------------------------------------------------
_PARAM_SKIP = {"k", "eps", "eps_inf", "eps_1"}


def _analytics_rows(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.status == "done" and (r.scenario or {}).get("mode") == "analytics" and r.result]


def _protocol(row: Any) -> str:
    sc = row.scenario
    extra = {k: v for k, v in sorted((sc.get("mechanism_params") or {}).items()) if k not in _PARAM_SKIP}
    return sc["mechanism"] + ("(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else "")


def _setting(row: Any) -> tuple:
    """What else varies besides protocol, k and eps_inf (data, users, rounds, alpha)."""
    sc = row.scenario
    return (sc.get("analytics_data"), repr(sc.get("analytics_data_params")), sc.get("analytics_users"),
            sc.get("rounds"), sc.get("analytics_alpha"), sc.get("sample_rate"))


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h")


def _style(label: str, styles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One colour and marker per protocol label, the same in every panel."""
    if label not in styles:
        i = len(styles)
        styles[label] = {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)]}
    return styles[label]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@register_plot("ldp_mse")
def plot_mse(run_dir: str | Path, rows: list[Any]) -> list[Path]:
    """``ldp_mse.png``: time-averaged MSE vs eps_inf, one panel per k, one line per protocol (mean over seeds)."""
    rows = _analytics_rows(rows)
    if not rows:
        return []
    plt = _plt()
    ks = sorted({r.result["summary"]["k"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(5.2 * len(ks), 4.2), dpi=120, squeeze=False)
    styles: dict[str, dict[str, Any]] = {}
    for ax, k in zip(axes[0], ks):
        points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            s = r.result["summary"]
            if s["k"] == k and s.get("mse_avg") is not None:
                label = _protocol(r) if len({_setting(x) for x in rows}) == 1 else f"{_protocol(r)} {_setting(r)[0]}"
                points[label][s["eps_inf"]].append(s["mse_avg"])
        for label, by_eps in sorted(points.items()):
            xs = sorted(by_eps)
            ax.plot(xs, [statistics.fmean(by_eps[x]) for x in xs], label=label, **_style(label, styles))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("eps_inf (permanent budget)")
        ax.set_ylabel("MSE averaged over collections")
        ax.set_title(f"k = {k}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside the data
    fig.suptitle("LDP frequency estimation: utility (mean over seeds)")
    fig.tight_layout()
    path = Path(run_dir) / "ldp_mse.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return [path]


@register_plot("ldp_budget")
def plot_budget(run_dir: str | Path, rows: list[Any]) -> list[Path]:
    """``ldp_budget.png``: longitudinal budget spent vs collection (solid: mean user, dotted: max user);
    panels: rows = k, columns = eps_inf."""
    rows = _analytics_rows(rows)
    if not rows:
        return []
    plt = _plt()
    import matplotlib.ticker  # plain tick labels on the log axis

    ks = sorted({r.result["summary"]["k"] for r in rows})
    epss = sorted({r.result["summary"]["eps_inf"] for r in rows})
    fig, axes = plt.subplots(len(ks), len(epss), figsize=(3.6 * len(epss), 3.2 * len(ks)), dpi=120,
                             squeeze=False, sharex=True)
    styles: dict[str, dict[str, Any]] = {}
    for i, k in enumerate(ks):
        for j, eps in enumerate(epss):
            ax = axes[i][j]
            curves: dict[str, list[Any]] = defaultdict(list)
            for r in rows:
                s = r.result["summary"]
                if s["k"] == k and s["eps_inf"] == eps:
                    curves[_protocol(r)].append(r.result["series"])
            for label, runs in sorted(curves.items()):
                n = min(len(x["round"]) for x in runs)
                xs = runs[0]["round"][:n]
                mean = [statistics.fmean(x["eps_spent_mean"][t] for x in runs) for t in range(n)]
                worst = [statistics.fmean(x["eps_spent_max"][t] for x in runs) for t in range(n)]
                style = _style(label, styles)
                every = max(1, n // 8)
                ax.plot(xs, mean, label=label, markevery=every, markersize=4, **style)
                ax.plot(xs, worst, linestyle=":", color=style["color"])
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.set_title(f"k = {k}, eps_inf = {eps:g}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if i == len(ks) - 1:
                ax.set_xlabel("collection t")
            if j == 0:
                ax.set_ylabel("eps spent per user")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(handles), 4), fontsize=8, frameon=False)
    width = max(40, int(12 * 3.6 * len(epss)))  # characters that fit the figure's width at this font size
    fig.suptitle(textwrap.fill("Longitudinal budget spent per user (solid: mean user, dotted: max user; baselines "
                               "that memoize per value coincide)", width), fontsize=9)
    fig.tight_layout()
    path = Path(run_dir) / "ldp_budget.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return [path]
