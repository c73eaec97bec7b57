"""The ``"membership"`` scenario mode: membership inference against federated models, scored.

Setup (LiRA's, Carlini et al. S&P 2022): the dataset's train and test splits form one pool; a random
fraction ``population`` of it is held out as population data (never trained on by the target or the
reference models; RMIA's z set); the other records (or a random ``records`` of them: fewer records, a
more overfit target, while the population stays large) are candidates, and each joins the target's
training data independently with probability ½ (Bernoulli, so membership is a fair coin per
record and the ROC bounds ε). The target is trained by the federated simulation exactly as the
scenario says (``num_clients`` clients, ``partition``, ``rounds``, local SGD, ``dp_clip``/``dp_noise``
for example-level DP-SGD, ``mechanism``, ``aggregator``); ``num_clients: 1, rounds: 1`` is a centrally
trained model. ``references`` reference models are trained **together** (vmap over stacked weights,
:func:`privfl.attacks.membership.train_reference_models`) on balanced random halves of the candidates
with the same optimiser, ``reference_steps`` steps (default: rounds × local_steps, centrally — the
attacker's approximation of the federated procedure).

``membership_params`` (all optional):

- ``threat``: ``"model"`` — (a) a client or outsider attacks the global model after T rounds (members:
  the target's training records); ``"update"`` — (b) a curious server attacks client 0's update of the
  last round (members: client 0's records; non-members: the target's non-members); ``"rounds"`` — (c)
  the sequence of global models of every round.
- ``attacks``: registry names or ``{name, params}`` of ``membership_attack`` components (defaults per
  threat: model → loss, population, LiRA online/offline, RMIA offline; update → update-loss,
  update-cosine, loss; rounds → trajectory, loss).
- ``references`` (16), ``reference_steps``, ``augment`` (``"none"`` or ``"flip"``), ``population`` (0.2),
  ``records`` (null: every record outside the population is a candidate).

Reported per attack (``mia_<attack>_*``): AUC, TPR at FPR 0.1 % and 1 % with two-sided 95 %
Clopper–Pearson intervals over the members (``tpr_1pct_lo/hi``; the FPR side is the empirical rate on
the non-members: with n non-members, FPR 0.1 % means ⌊0.001·n⌋ false positives, zero below 1,000);
the band a scorer without membership signal would fall in (``tpr_1pct_null_lo/hi``: exact, negative
hypergeometric, so it includes the threshold's randomness; simultaneous over the cell's k attacks by
Bonferroni, each at level 1 − 0.05/k: "every attack's TPR within its interval of the FPR" is then
a 95 % statement about the whole cell, not k separate ones); RMIA-offline's tuned ``a``; balanced accuracy
(best threshold), and an empirical ε lower bound at the run's δ
(:func:`privfl.accounting.empirical.epsilon_lower_bound`, threshold chosen on a held-out split). That
bound treats the records as independent trials: each record's membership is an independent coin, so
the per-record DP inequality bounds the attack's average TPR/FPR (Yeom et al. 2018), but the records
share one trained model, so the Clopper–Pearson confidence is nominal. ``membership_roc.png``: log-log
ROC per configuration, one curve per attack, TPR averaged over seeds on a fixed FPR grid.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from scipy.stats import rankdata

from privfl import registry
from privfl.accounting.empirical import clopper_pearson, epsilon_lower_bound
from privfl.attacks.membership import (
    AUGMENTATIONS,
    MembershipQuery,
    balanced_splits,
    query_views,
    reference_logits,
    train_reference_models,
)
from privfl.evaluations.report import by_config, register_plot
from privfl.evaluations.scenario import (
    EXTENSIONS,
    Component,
    Extension,
    Scenario,
    Section,
    SpecError,
    _load_dataset,
    build_simulation,
    number,
    register_extension,
    register_mode,
    register_section,
)
from privfl.fl.local import LocalSGD
from privfl.fl.partition import partition
from privfl.seeding import make_generator

__all__ = ["roc_points", "tpr_at_fpr", "auc", "membership_metrics", "null_tpr_interval", "run_membership",
           "plot_membership_roc", "FPR_GRID", "THREATS"]

THREATS = ("model", "update", "rounds")
DEFAULT_ATTACKS = {
    "model": ["loss", "population", {"name": "lira", "params": {"online": True}},
              {"name": "lira", "params": {"online": False}}, "rmia"],
    "update": ["update-loss", "update-cosine", "loss"],
    "rounds": ["trajectory", "loss"],
}
REPORT_FPRS = (0.001, 0.01)
#: FPR grid (log-spaced) on which each cell stores its ROC, so that seeds can be averaged
FPR_GRID = tuple(float(v) for v in np.logspace(-4, 0, 41))


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _scores_labels(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores.detach().cpu().double() if hasattr(scores, "detach") else scores, dtype=np.float64)
    m = np.asarray(is_member.detach().cpu() if hasattr(is_member, "detach") else is_member)
    if s.ndim != 1 or m.shape != s.shape:
        raise ValueError(f"scores and is_member must be 1-d of one length, got {s.shape} and {m.shape}")
    if m.dtype != np.bool_:
        raise TypeError(f"is_member must be boolean, got dtype {m.dtype}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if m.all() or not m.any():
        raise ValueError("is_member needs at least one member and one non-member")
    return s, m


def roc_points(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of "member iff score ≥ t" at every distinct score, from (0, 0) at t = +∞
    (sklearn's ``roc_curve(..., drop_intermediate=False)``)."""
    s, m = _scores_labels(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tp = np.cumsum(m)[last]
    fp = np.cumsum(~m)[last]
    tpr = np.r_[0.0, tp / m.sum()]
    fpr = np.r_[0.0, fp / (~m).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> float:
    """The largest TPR among thresholds whose FPR is ≤ ``alpha`` (LiRA's 'TPR at α FPR')."""
    return float(np.max(tpr[fpr <= alpha]))


def auc(scores: Any, is_member: Any) -> float:
    """Area under the ROC (Mann–Whitney U / (n_in·n_out), ties counted ½)."""
    s, m = _scores_labels(scores, is_member)
    ranks = rankdata(s)
    n_in, n_out = int(m.sum()), int((~m).sum())
    return float((ranks[m].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def null_tpr_interval(n_in: int, n_out: int, alpha: float, confidence: float = 0.95) -> tuple[float, float]:
    """Central ``confidence`` interval of the TPR at FPR ≤ ``alpha`` of a scorer with **no** membership
    signal (members and non-members exchangeable, no ties), exact: ranking the records at random, the
    members above the threshold that admits k = ⌊α·n_out⌋ non-members are those drawn before the
    (k+1)-th non-member, a negative hypergeometric count (n_in + n_out records, n_in members, k+1
    non-members). Unlike a Clopper–Pearson interval over the members alone, it includes the randomness
    of the threshold, which the non-members set. Ties at the top of the ranking (e.g. a model whose
    ReLUs died under DP noise gives many records identical logits) push the TPR at FPR ≤ α *below*
    this band: "member iff score ≥ t" cannot split a tied block."""
    from scipy.stats import nhypergeom

    k = int(math.floor(alpha * n_out + 1e-9))
    dist = nhypergeom(n_in + n_out, n_in, min(k + 1, n_out))
    tail = (1.0 - confidence) / 2.0
    return float(dist.ppf(tail)) / n_in, float(dist.isf(tail)) / n_in


def membership_metrics(scores: Any, is_member: Any, *, delta: float = 0.0, confidence: float = 0.95,
                       fprs: tuple[float, ...] = REPORT_FPRS, simultaneous: int = 1) -> dict[str, Any]:
    """AUC, balanced accuracy, TPR at each FPR in ``fprs`` with Clopper–Pearson intervals (``tpr_*_lo/hi``),
    the no-signal band of the TPR (``tpr_*_null_lo/hi``, :func:`null_tpr_interval`) at the Bonferroni level
    1 − (1 − confidence)/``simultaneous`` (``simultaneous`` attacks judged together), ε lower bound."""
    if isinstance(simultaneous, bool) or not isinstance(simultaneous, int) or simultaneous < 1:
        raise ValueError(f"simultaneous must be an int >= 1 (the number of attacks judged together), got "
                         f"{simultaneous!r}")
    s, m = _scores_labels(scores, is_member)
    fpr, tpr, _ = roc_points(s, m)
    n_in, n_out = int(m.sum()), int((~m).sum())
    out: dict[str, Any] = {"auc": auc(s, m), "balanced_accuracy": float(np.max((tpr + 1.0 - fpr) / 2.0))}
    for alpha in fprs:
        t = tpr_at_fpr(fpr, tpr, alpha)
        lo, hi = clopper_pearson(int(round(t * n_in)), n_in, confidence)
        key = _fpr_key(alpha)
        out[f"tpr_{key}"], out[f"tpr_{key}_lo"], out[f"tpr_{key}_hi"] = t, lo, hi
        out[f"tpr_{key}_null_lo"], out[f"tpr_{key}_null_hi"] = null_tpr_interval(
            n_in, n_out, alpha, 1.0 - (1.0 - confidence) / simultaneous)
    out["eps_lb"] = epsilon_lower_bound(s[m], s[~m], delta=delta, confidence=confidence).epsilon
    out["roc_grid"] = [tpr_at_fpr(fpr, tpr, a) for a in FPR_GRID]
    return out


def _fpr_key(alpha: float) -> str:
    return f"{alpha * 100:g}pct".replace(".", "_")


# --------------------------------------------------------------------------------------------
# Validation and the target's data
# --------------------------------------------------------------------------------------------
class MembershipParams(BaseModel):
    """The threat, the attacks and the reference models (see the module docstring)."""

    model_config = Section.model_config
    threat: Literal[THREATS] = "model"
    attacks: list[str | Component] | None = Field(
        None, min_length=1, description="membership_attack names or {name, params} (null: the threat's defaults)")
    references: Annotated[int, Field(ge=2, description="reference models (each candidate needs IN and OUT ones)")] = 16
    reference_steps: Annotated[int, Field(ge=1)] | None = Field(None, description="null: rounds × local_steps")
    augment: Literal[AUGMENTATIONS] = "none"
    population: number(gt=0, lt=1, description="fraction of the pool held out") = 0.2
    records: Annotated[int, Field(ge=20)] | None = Field(None, description="null: the whole pool")


class MembershipSection(Section):
    """Membership inference: ``membership_params`` (as a spec writes it: only the keys it sets)."""

    membership_params: MembershipParams = Field(default_factory=MembershipParams)


register_section("membership", MembershipSection)
PARAMS = tuple(MembershipParams.model_fields)


def _params(scenario: Scenario) -> dict[str, Any]:
    m = scenario.section("membership").membership_params
    q = {k: getattr(m, k) for k in PARAMS}
    q["attacks"] = [a.model_dump() if isinstance(a, BaseModel) else a
                    for a in (m.attacks or DEFAULT_ATTACKS.get(m.threat, []))]
    return q


def _attack_specs(attacks: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(attacks, list) or not attacks:
        raise SpecError(f"{where}.membership_params.attacks: expected a non-empty list, got {attacks!r}")
    out = []
    for i, item in enumerate(attacks):
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and set(item) <= {"name", "params"} and isinstance(item.get("name"), str):
            out.append((item["name"], dict(item.get("params") or {})))
        else:
            raise SpecError(f"{where}.membership_params.attacks[{i}]: expected a name or {{name, params}}, "
                            f"got {item!r}")
    return out


def validate_membership(scenario: Scenario, where: str = "scenario") -> None:
    """The federated fields, then ``membership_params``' attacks (raises :class:`SpecError`); the
    types and bounds of ``membership_params`` are declared in :class:`MembershipParams`."""
    scenario.validate_federated(where)
    q = _params(scenario)
    for name, params in _attack_specs(q["attacks"], where):
        try:
            registry.make("membership_attack", name, **params)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{where}.membership_params.attacks: {exc}") from None
    if q["threat"] == "update" and scenario.protocol == "fedsgd" and "lr" not in scenario.inversion_grant:
        raise SpecError(f"{where}.inversion_grant: threat 'update' on FedSGD gradients needs 'lr' granted")


@dataclasses.dataclass
class _Split:
    x: torch.Tensor  # candidates [N, ...]
    y: torch.Tensor
    member: torch.Tensor  # bool [N]: in the target's training data
    x_pop: torch.Tensor
    y_pop: torch.Tensor


def target_split(scenario: Scenario, seed: int) -> tuple[Any, _Split]:
    """The dataset, and the candidates / population / target membership drawn from ``seed``."""
    data = _load_dataset(scenario.dataset, scenario.dataset_params)
    q = _params(scenario)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    g = make_generator(seed, "membership-split")
    perm = torch.randperm(len(x), generator=g)
    n_pop = max(1, int(round(q["population"] * len(perm))))
    pop, cand = perm[:n_pop], perm[n_pop:]
    if q["records"] is not None:  # fewer candidates (a more overfit target); the population stays large
        cand = cand[: q["records"]]
    member = torch.rand(len(cand), generator=g) < 0.5
    return data, _Split(x[cand], y[cand], member, x[pop], y[pop])


def _configure(scenario: Scenario, seed: int, kwargs: dict[str, Any]) -> None:
    """In mode ``membership``: the simulation trains on the target's members (test split: non-members)."""
    if scenario.mode != "membership":
        return
    data, split = target_split(scenario, seed)
    target = dataclasses.replace(
        data, x_train=split.x[split.member], y_train=split.y[split.member],
        x_test=split.x[~split.member], y_test=split.y[~split.member],
    )
    kwargs["dataset"] = target
    kwargs["clients"] = partition(scenario.partition, target.y_train, scenario.num_clients,
                                  generator=make_generator(seed, "partition"), **scenario.partition_params)
    if _params(scenario)["threat"] == "update":
        kwargs["observe"] = [(scenario.rounds - 1, 0)]
        kwargs["grant"] = list(scenario.inversion_grant)


register_extension(Extension(name="membership", configure=_configure))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _reference_opt(scenario: Scenario, steps: int) -> LocalSGD:
    return LocalSGD(steps=steps, batch_size=scenario.batch_size, lr=scenario.lr, momentum=scenario.momentum,
                    weight_decay=scenario.weight_decay, dp_clip=scenario.dp_clip,
                    dp_noise=float(scenario.dp_noise) if scenario.dp_clip is not None else 0.0)


@register_mode("membership", validate=validate_membership)
def run_membership(scenario: Scenario, seed: int, *, on_round: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Train the target federatedly, train the reference models in one batch, run every attack, score."""
    start = time.perf_counter()
    q = _params(scenario)
    data, split = target_split(scenario, seed)
    sim = build_simulation(scenario, seed)
    device = sim.device
    snapshots: list[torch.Tensor] = []

    def after_round(rec: Any) -> None:
        if q["threat"] == "rounds":
            snapshots.append(sim.weights.detach().clone())
        if on_round is not None:
            on_round(rec)

    history = sim.run(scenario.rounds, on_round=after_round)
    x, y = split.x.to(device), split.y.to(device)
    x_pop, y_pop = split.x_pop.to(device), split.y_pop.to(device)
    views, views_pop = query_views(x, q["augment"]), query_views(x_pop, q["augment"])
    model = sim.model
    query: dict[str, Any] = {"labels": y, "population_labels": y_pop}
    member = split.member
    summary: dict[str, Any] = {}

    if q["threat"] == "model":
        query["target_logits"] = reference_logits(model, sim.weights, views)
        query["population_logits"] = reference_logits(model, sim.weights, views_pop)
        steps = q["reference_steps"] or scenario.rounds * scenario.local_steps
        g = make_generator(seed, "membership-references")
        ref_in = balanced_splits(q["references"], len(x), generator=g)
        t0 = time.perf_counter()
        W = train_reference_models(
            model, x, y, ref_in.to(device), _reference_opt(scenario, steps), generator=g,
            noise_generator=make_generator(seed, "membership-reference-noise", device=device),
        )
        seconds = time.perf_counter() - t0
        summary["reference_models"] = q["references"]
        summary["reference_models_per_minute"] = 60.0 * q["references"] / max(seconds, 1e-9)
        query["reference_logits"] = reference_logits(model, W, views)
        query["reference_in"] = ref_in.to(device)
        query["population_reference_logits"] = reference_logits(model, W, views_pop)
        query["inputs"] = x
    elif q["threat"] == "update":
        if not sim.observations:
            raise SpecError("membership: client 0 sent no update in the last round (not sampled, or an empty "
                            "Poisson batch); use sample_rate 1 for threat 'update'")
        client = sim.clients[0]
        is_client = torch.zeros(int(split.member.sum()), dtype=torch.bool)
        is_client[client] = True
        # candidates: client 0's records (members) and the target's non-members
        keep = torch.zeros(len(x), dtype=torch.bool)
        member_idx = torch.nonzero(split.member).flatten()
        keep[member_idx[is_client]] = True
        keep |= ~split.member
        x, y, member = x[keep.to(device)], y[keep.to(device)], split.member[keep]
        obs = sim.observations[-1].observation
        step = obs.update if obs.kind == "delta" else -float(scenario.lr) * obs.update
        query.update(labels=y, inputs=x, observation=obs,  # the loss baseline reads the client's model w0 + Δ
                     target_logits=reference_logits(model, _flat(obs.model) + step.to(device), query_views(x)))
    else:
        T = torch.stack(snapshots)
        query["trajectory_logits"] = reference_logits(model, T, query_views(x))[:, 0]
        query["population_trajectory_logits"] = reference_logits(model, T, query_views(x_pop))[:, 0]
        query["target_logits"] = reference_logits(model, sim.weights, query_views(x))

    mq = MembershipQuery(**query)
    roc: dict[str, list[float]] = {}
    specs = _attack_specs(q["attacks"], "scenario")
    for name, params in specs:
        attack = registry.make("membership_attack", name, **params)
        scores = attack.score(mq).detach().cpu()
        metrics = membership_metrics(scores, member.cpu(), delta=scenario.delta, simultaneous=len(specs))
        if getattr(attack, "tuned_a", None) is not None:
            metrics["a"] = attack.tuned_a  # RMIA's offline a, tuned on the reference models
        roc[attack.label] = metrics.pop("roc_grid")
        for k, v in metrics.items():
            summary[f"mia_{attack.label}_{k}"] = v

    evaluated = [r for r in history if r.accuracy is not None]
    summary.update(
        final_accuracy=evaluated[-1].accuracy if evaluated else None,
        train_accuracy=_accuracy(model, sim.weights, sim.data.x_train, sim.data.y_train),
        mia_members=int(member.sum()),
        mia_nonmembers=int((~member).sum()),
        num_params=sim.layout.dim,
    )
    series: dict[str, Any] = {
        "round": [r.round + 1 for r in history],
        "accuracy": [r.accuracy for r in history],
        "loss": [r.loss for r in history],
        "mia_roc_fpr": list(FPR_GRID),
        **{f"mia_roc_{k}": v for k, v in roc.items()},
    }
    for ext in EXTENSIONS.values():  # ε of the run (privacy accounting), like the federated mode
        if ext.finish is not None and ext.name == "privacy":
            ext.finish(scenario, seed, sim, summary, series)
    summary["wall_time_s"] = time.perf_counter() - start
    return {"summary": summary, "series": series}


def _flat(model: torch.nn.Module) -> torch.Tensor:
    from privfl.flat import flatten, layout_of

    return flatten(model, layout_of(model)).detach()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = reference_logits(model, w, x.unsqueeze(0))[0]
    return float((logits.argmax(-1) == y).float().mean())


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
@register_plot("membership_roc")
def plot_membership_roc(run_dir: str | Path, rows: list[Any]) -> list[Path]:
    """``membership_roc.png``: one log-log ROC panel per configuration (label), one curve per attack."""
    cells = [r for r in rows if r.result and r.scenario.get("mode") == "membership"]
    if not cells:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one panel per configuration: its curves average cells that differ in seed alone
    configs = by_config(cells)
    counts: dict[str, int] = defaultdict(int)
    for group in configs.values():
        counts[group[0].label or "membership"] += 1
    groups: dict[str, list[Any]] = {}
    for key, group in configs.items():
        label = group[0].label or "membership"
        groups[label if counts[label] == 1 else f"{label} [{key[:6]}]"] = group
    n = len(groups)
    cols = min(3, n)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 5.6 * rows_n), dpi=120, squeeze=False)
    grid = np.asarray(FPR_GRID)
    # one colour per attack across panels
    names = sorted({k[len("mia_roc_"):] for r in cells for k in r.result["series"]
                    if k.startswith("mia_roc_") and k != "mia_roc_fpr"})
    palette = plt.get_cmap("tab10")
    colour = {name: palette(i % 10) for i, name in enumerate(names)}
    for ax, (label, group) in zip(axes.flat, sorted(groups.items())):
        curves: dict[str, list[list[float]]] = defaultdict(list)
        for r in group:
            for k, v in r.result["series"].items():
                if k.startswith("mia_roc_") and k != "mia_roc_fpr":
                    curves[k[len("mia_roc_"):]].append(v)
        for name, tprs in sorted(curves.items()):
            mean = np.mean(np.asarray(tprs, dtype=np.float64), axis=0)
            auc_v = statistics.fmean(r.result["summary"][f"mia_{name}_auc"] for r in group)
            ax.plot(grid, np.maximum(mean, 1e-4), color=colour[name], label=f"{name} (AUC {auc_v:.2f})")
        ax.plot(grid, grid, color="gray", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(1e-3, 1)
        ax.set_ylim(1e-3, 1)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        seeds = len({r.seed for r in group})
        ax.set_title(f"{label}\n({seeds} seed{'s' if seeds > 1 else ''})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Membership inference: ROC (log-log)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # leave the suptitle its own band
    path = Path(run_dir) / "membership_roc.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]

