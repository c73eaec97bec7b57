"""The curious server in the harness: gradient inversion of observed client updates, scored.

Scenario fields (``# --- privacy attack (curious server) fields ---``):

- ``inversion_attack``: a ``privacy_attack`` name (``dlg``, ``inverting-gradients``,
  ``fedavg-inversion``, ``sme``, ``analytic``); ``None`` (default) runs no attack;
- ``inversion_attack_params``: the attack's keyword parameters;
- ``inversion_label_strategy``: ``idlg``, ``bias``, ``yin`` or ``None`` (passed to the attack as
  ``label_strategy``; needed by label-requiring attacks when labels are not granted);
- ``inversion_rounds``: the rounds whose updates the server attacks (default ``[0]``);
- ``inversion_victims``: how many clients it attacks in each of those rounds (drawn from the seed
  among the round's honest participants);
- ``inversion_grant``: the optional facts the threat model grants (subset of ``labels``, ``lr``,
  ``local_steps``, ``batch_size``);
- ``inversion_grid_images``: how many (true, reconstructed) image pairs the cell keeps for the PNG grid.

The server sees exactly what the simulation records: each victim's row after the scenario's
``mechanism`` (the defense; ``decode(privatize(update))``), the global model of that round, and
the granted facts. Victims of the same round with the same number of examples are attacked
together (one :class:`~privfl.core.Observation` with ``update`` ``[v, d]``, vmapped by the attack).
With a **central** mechanism (``gaussian`` by default, ``dp-brem``) the server adds the noise
itself, so a curious server sees the clipped rows (DP-BREM: the clients' momenta) without noise;
``gaussian`` with ``local: true`` is the defense against the server.

Each cell's summary gains ``inversion_psnr`` / ``inversion_ssim`` / ``inversion_label_accuracy``
(mean over victims; label accuracy only for labels the attack recovered, not granted ones) with
``*_std`` (standard deviation over victims), ``inversion_mse``,
``inversion_victims`` and ``inversion_seconds``; ``inversion_lpips`` only when LPIPS runs without
any download (otherwise the reason is in ``series.inversion.lpips``). Reports gain
``inversion_grid*.png`` (one per setting — same ground truth, model, protocol, K and batch size: the
ground-truth row, then one reconstruction row per defense or attack), ``inversion_psnr_eps.png``
(PSNR vs ε) and ``inversion.md``.

**No-information floor.** A defended PSNR means "nothing leaked" only if it is no better than what
the same attack reaches from an observation that carries no information about the victim. A cell
whose spec ``cases`` label is ``"no-information floor"`` is such a control —
e.g. local Gaussian noise so large (multiplier 1000 on clip norm 1) that the victim's update is
below float32 resolution of the noise, i.e. the attack inverts pure noise with the same grants,
model and victims. The table gives every row of the same setting (dataset, model, protocol, K,
batch, attack and its parameters) that floor's PSNR, and the PSNR-vs-ε plot draws it as a line.
Every row also shows the PSNR of a flat mid-gray image (0.5) against the same ground truth (the
grid images: the first example of each victim), the floor of a guess that uses no data at all.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import statistics
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from privfl import registry
from privfl.core import Observation
from privfl.evaluations.report import register_plot
from privfl.evaluations.scenario import (
    Extension,
    Scenario,
    Section,
    SpecError,
    register_extension,
    register_section,
    size,
)
from privfl.evaluations.scoring import lpips_status, mean_std, score
from privfl.seeding import make_generator

__all__ = ["attack_records", "group_observations", "FLOOR_LABEL"]

GRANTABLE = Observation.GRANTABLE
FLOOR_LABEL = "no-information floor"  # cells labelled so are the attack-on-noise control (see the docstring)


# --------------------------------------------------------------------------------------------
# Validation and configuration
# --------------------------------------------------------------------------------------------
def _attack_params(scenario: Scenario) -> dict[str, Any]:
    params = dict(scenario.inversion_attack_params)
    if scenario.inversion_label_strategy is not None:
        params["label_strategy"] = scenario.inversion_label_strategy
    return params


class InversionSection(Section):
    """A curious server attacks ``inversion_victims`` clients' updates in each of ``inversion_rounds``
    with the privacy_attack ``inversion_attack`` (null: no attack), knowing the facts in
    ``inversion_grant``; the defense is the scenario's ``mechanism``."""

    inversion_attack: str | None = Field(None, description="registry name of a privacy_attack (null: none)")
    inversion_attack_params: dict[str, Any] = Field(default_factory=dict)
    inversion_label_strategy: str | None = Field(None, description="registry name of a label_strategy")
    inversion_rounds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, description="0-based round indices, each < rounds")
    inversion_victims: size("inversion_victims") = 8
    inversion_grant: list[Literal[GRANTABLE]] = Field(default_factory=lambda: ["labels", "lr", "local_steps",
                                                                               "batch_size"])
    inversion_grid_images: size("inversion_grid_images", low=0) = 8


register_section("inversion", InversionSection)


def _validate(scenario: Scenario, where: str) -> None:
    if scenario.inversion_attack is None:
        return
    try:
        registry.get("privacy_attack", scenario.inversion_attack)
    except ValueError as exc:
        raise SpecError(f"{where}.inversion_attack: {exc}") from None
    if scenario.inversion_label_strategy is not None:
        if "label_strategy" not in registry.parameters("privacy_attack", scenario.inversion_attack):
            raise scenario.error(where, "inversion_label_strategy",
                                 f"null (attack {scenario.inversion_attack!r} takes no label strategy)")
        if scenario.inversion_label_strategy not in registry.available("label_strategy"):
            raise scenario.error(where, "inversion_label_strategy",
                                 ", ".join(registry.available("label_strategy")) + " or null")
    if "label_strategy" in scenario.inversion_attack_params:
        raise SpecError(f"{where}.inversion_attack_params: name the label strategy in inversion_label_strategy")
    try:
        registry.make("privacy_attack", scenario.inversion_attack, **_attack_params(scenario))
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.inversion_attack_params: {exc}") from None
    if not all(t < scenario.rounds for t in scenario.inversion_rounds):
        raise scenario.error(where, "inversion_rounds",
                             f"a non-empty list of round indices in [0, rounds={scenario.rounds})")


def _configure(scenario: Scenario, seed: int, kwargs: dict[str, Any]) -> None:
    if scenario.inversion_attack is None:
        return
    # Observe every client in the attacked rounds; the victims are drawn among those who took part.
    kwargs["observe"] = [(int(t), c) for t in sorted(set(scenario.inversion_rounds)) for c in
                         range(scenario.num_clients)]
    kwargs["grant"] = tuple(scenario.inversion_grant)


# --------------------------------------------------------------------------------------------
# Attacking recorded observations
# --------------------------------------------------------------------------------------------
def _with_full_batch(obs: Observation, full_batch: bool) -> Observation:
    """A granted full-batch size is the number of examples (the simulation records ``None``)."""
    if full_batch and obs.batch_size is None:
        return dataclasses.replace(obs, batch_size=obs.num_examples)
    return obs


def group_observations(records: list[Any]) -> list[tuple[Observation, list[Any]]]:
    """Stack records of the same round and number of examples into one multi-victim observation."""
    groups: dict[tuple[Any, int], list[Any]] = {}
    for rec in records:
        groups.setdefault((rec.observation.round, rec.observation.num_examples), []).append(rec)
    out = []
    for recs in groups.values():
        first = recs[0].observation
        if len(recs) == 1:
            out.append((first, recs))
            continue
        labels = None
        if first.labels is not None:
            labels = torch.stack([r.observation.labels for r in recs])
        obs = dataclasses.replace(first, update=torch.stack([r.observation.update for r in recs]), labels=labels,
                                  client=None)
        out.append((obs, recs))
    return out


def attack_records(attack: Any, records: list[Any], *, seed: int, full_batch: bool = False) -> list[dict[str, Any]]:
    """Run ``attack`` on observation records; one dict per victim with its scores and images."""
    results = []
    for obs, recs in group_observations(records):
        obs = _with_full_batch(obs, full_batch)
        rec = attack.attack(obs, generator=make_generator(seed, "inversion", obs.round, obs.num_examples))
        data = rec.data if len(recs) > 1 else rec.data.unsqueeze(0)
        labels = None if rec.labels is None else (rec.labels if len(recs) > 1 else rec.labels.unsqueeze(0))
        seconds = float(rec.extra.get("seconds", math.nan))
        source = rec.extra.get("label_source", "none")
        for v, r in enumerate(recs):
            # granted labels are not a recovery: no label accuracy for them
            s = score(r.true_inputs, data[v].to(r.true_inputs.device), r.true_labels,
                      None if labels is None or source == "granted" else labels[v])
            results.append({
                "round": obs.round, "client": r.observation.client, "score": s, "truth": r.true_inputs,
                "recon": data[v][torch.as_tensor(s.order)], "seconds": seconds / len(recs),
                "label_source": source,
            })
    return results


def _pick_victims(sim: Any, scenario: Scenario, seed: int) -> list[Any]:
    chosen = []
    for t in sorted(set(scenario.inversion_rounds)):
        recs = [r for r in sim.observations if r.observation.round == t]
        perm = torch.randperm(len(recs), generator=make_generator(seed, "inversion-victims", t)).tolist()
        chosen += [recs[i] for i in sorted(perm[: scenario.inversion_victims])]
    return chosen


def _encode(images: list[torch.Tensor]) -> dict[str, Any]:
    arr = np.stack([np.clip(np.rint(im.detach().cpu().double().numpy() * 255), 0, 255).astype(np.uint8)
                    for im in images])
    return {"shape": list(arr.shape), "uint8": base64.b64encode(arr.tobytes()).decode("ascii")}


def _decode(blob: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(blob["uint8"]), dtype=np.uint8).reshape(blob["shape"])


def _grid_images(results: list[dict[str, Any]], limit: int) -> tuple[list, list]:
    """Up to ``limit`` (true, reconstructed) pairs: the first example of every victim, then the next ones."""
    truth, recon = [], []
    depth = 0
    while len(truth) < limit:
        added = False
        for r in results:
            if depth < len(r["truth"]) and len(truth) < limit:
                truth.append(r["truth"][depth])
                recon.append(r["recon"][depth])
                added = True
        if not added:
            break
        depth += 1
    return truth, recon


def _finish(scenario: Scenario, seed: int, sim: Any, summary: dict[str, Any], series: dict[str, Any]) -> None:
    if scenario.inversion_attack is None:
        return
    attack = registry.make("privacy_attack", scenario.inversion_attack, **_attack_params(scenario))
    victims = _pick_victims(sim, scenario, seed)
    full_batch = scenario.batch_size is None and "batch_size" in scenario.inversion_grant
    results = attack_records(attack, victims, seed=seed, full_batch=full_batch) if victims else []
    per = {
        "psnr": [r["score"].psnr for r in results],
        "ssim": [r["score"].ssim for r in results],
        "label_accuracy": [r["score"].label_accuracy for r in results],
        "mse": [r["score"].mse for r in results],
    }
    for key in ("psnr", "ssim", "label_accuracy"):
        vals = [v for v in per[key] if v is not None]
        m, s = mean_std(vals) if vals else (None, None)
        summary[f"inversion_{key}"] = m
        summary[f"inversion_{key}_std"] = s
    summary["inversion_mse"] = mean_std(per["mse"])[0] if per["mse"] else None
    summary["inversion_victims"] = len(results)
    summary["inversion_seconds"] = float(sum(r["seconds"] for r in results))
    ok, reason = lpips_status()
    lp = [r["score"].lpips for r in results if r["score"].lpips is not None]
    if ok and lp:
        summary["inversion_lpips"] = statistics.fmean(lp)
    truth, recon = _grid_images(results, scenario.inversion_grid_images)
    series["inversion"] = {
        "attack": scenario.inversion_attack,
        "victims": [{"round": r["round"], "client": r["client"], "label_source": r["label_source"],
                     **r["score"].as_dict()} for r in results],
        "lpips": reason,
        "truth": _encode(truth) if truth else None,
        "recon": _encode(recon) if recon else None,
    }


register_extension(Extension(name="inversion", validate=_validate, configure=_configure, finish=_finish))


# --------------------------------------------------------------------------------------------
# Report: PNG grids, PSNR vs ε, inversion.md
# --------------------------------------------------------------------------------------------
def _inversion_rows(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.status == "done" and isinstance((r.result or {}).get("series"), dict)
            and isinstance(r.result["series"].get("inversion"), dict)]


def _attack_short(scenario: dict[str, Any]) -> str:
    """The attack's name for a grid row, marked when it is the adaptive variant on sparsified updates."""
    adaptive = (scenario.get("inversion_attack_params") or {}).get("support") == "observed"
    return f"{scenario.get('inversion_attack')}{' (adaptive: kept coordinates only)' if adaptive else ''}"


def _defense_name(scenario: dict[str, Any]) -> str:
    mech = scenario.get("mechanism")
    if not mech:
        return "no defense"
    params = scenario.get("mechanism_params") or {}
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{mech}({inner})" if inner else mech


@register_plot("inversion")
def plot_inversion(run_dir: str | Path, rows: list[Any]) -> list[Path]:
    """Reconstruction grids, PSNR vs ε and ``inversion.md`` for cells that ran an inversion attack."""
    cells = _inversion_rows(rows)
    if not cells:
        return []
    run_dir = Path(run_dir)
    paths = _plot_grids(run_dir, cells)
    eps_plot = _plot_psnr_eps(run_dir, cells)
    if eps_plot is not None:
        paths.append(eps_plot)
    paths.append(_write_table(run_dir, cells))
    return paths


def _plot_grids(run_dir: Path, cells: list[Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Any]] = {}
    for r in cells:
        inv = r.result["series"]["inversion"]
        if inv.get("truth") is None:
            continue
        sc = r.scenario
        key = hashlib.sha256(inv["truth"]["uint8"].encode()).hexdigest() + repr(
            (sc.get("model"), sc.get("protocol"), sc.get("local_steps") if sc.get("protocol") == "fedavg" else 1,
             sc.get("batch_size")))
        groups.setdefault(key, []).append(r)
    paths = []
    for k, (_, group) in enumerate(sorted(groups.items(), key=lambda kv: kv[1][0].label)):
        truth = _decode(group[0].result["series"]["inversion"]["truth"])
        n = truth.shape[0]
        nrows = 1 + len(group)
        fig, axes = plt.subplots(nrows, n, figsize=(1.1 * n + 2.6, 1.15 * nrows + 0.4), dpi=110, squeeze=False)
        rows_imgs = [("ground truth", truth)] + [
            (f"{r.scenario.get('label') or _defense_name(r.scenario)}\n{_attack_short(r.scenario)}, "
             f"seed {r.seed}: {_fmt(r.result['summary'].get('inversion_psnr'))} dB",
             _decode(r.result["series"]["inversion"]["recon"]))
            for r in group
        ]
        for i, (title, imgs) in enumerate(rows_imgs):
            for j in range(n):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < imgs.shape[0]:
                    im = imgs[j]
                    if im.ndim == 3 and im.shape[0] == 1:
                        ax.imshow(im[0], cmap="gray", vmin=0, vmax=255)
                    elif im.ndim == 3:
                        ax.imshow(np.transpose(im, (1, 2, 0)))
                    else:
                        ax.imshow(im.reshape(1, -1), cmap="gray", vmin=0, vmax=255, aspect="auto")
                if j == 0:
                    ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=6)
        first = group[0].scenario
        steps = f" K={first.get('local_steps')}" if first.get("protocol") == "fedavg" else ""
        fig.suptitle(f"gradient inversion: {first.get('dataset')} / {first.get('model')} / {first.get('protocol')}"
                     f"{steps}, batch {first.get('batch_size')}", fontsize=8)
        fig.tight_layout()
        path = run_dir / f"inversion_grid{'' if k == 0 else k}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _setting(scenario: dict[str, Any]) -> str:
    return (f"{scenario.get('dataset')}/{scenario.get('model')}/{scenario.get('protocol')}"
            f"/B{scenario.get('batch_size')}/{scenario.get('inversion_attack')}")


def _is_floor(r: Any) -> bool:
    """A floor cell's label holds the case label ``FLOOR_LABEL`` as one of its comma-separated parts
    (the spec prefixes the axes that vary in its block, e.g. ``"model=lenet, no-information floor"``)."""
    return FLOOR_LABEL in [part.strip() for part in str(r.label).split(",")]


def _floor_key(scenario: dict[str, Any]) -> str:
    """What a no-information floor must share with a row to be its floor: everything but the defense."""
    steps = scenario.get("local_steps") if scenario.get("protocol") == "fedavg" else 1
    return repr((scenario.get("dataset"), scenario.get("dataset_params"), scenario.get("model"),
                 scenario.get("model_params"), scenario.get("protocol"), steps, scenario.get("batch_size"),
                 scenario.get("inversion_attack"), sorted((scenario.get("inversion_attack_params") or {}).items()),
                 scenario.get("inversion_label_strategy"), scenario.get("inversion_rounds"),
                 sorted(scenario.get("inversion_grant") or [])))


def _floors(cells: list[Any]) -> dict[str, list[float]]:
    """Per setting, the PSNRs of every victim of its no-information floor cells."""
    out: dict[str, list[float]] = {}
    for r in cells:
        if _is_floor(r):
            out.setdefault(_floor_key(r.scenario), []).extend(
                v["psnr"] for v in r.result["series"]["inversion"]["victims"])
    return out


def _gray_psnr(cells: list[Any]) -> list[float]:
    """PSNR of a flat 0.5 image against each ground-truth grid image of ``cells``."""
    out = []
    for r in cells:
        blob = r.result["series"]["inversion"].get("truth")
        if blob is None:
            continue
        truth = _decode(blob).astype(np.float64) / 255.0
        mse = ((truth - 0.5) ** 2).reshape(truth.shape[0], -1).mean(axis=1)
        out += [float(-10.0 * np.log10(max(m, 1e-10))) for m in mse]
    return out


def psnr_eps_panels(cells: list[Any]) -> list[dict[str, Any]]:
    """The data of ``inversion_psnr_eps.png``: one panel per setting (dataset, model, protocol, batch,
    attack) that has a defense with finite ε. In it: one point per configuration (mean PSNR over its
    victims and seeds — cells that differ in seed alone), joined per defense and attack variant; one line
    per ε = ∞ configuration (its own mean, never pooled with another configuration, e.g. plain and
    adaptive IG stay apart); the no-information floor of each attack variant."""
    from privfl.evaluations.report import by_config

    panels: dict[str, dict[str, Any]] = {}
    for group in by_config(cells).values():
        first = group[0]
        psnrs = [v["psnr"] for r in group for v in r.result["series"]["inversion"]["victims"]]
        if not psnrs:
            continue
        panel = panels.setdefault(_setting(first.scenario), {"title": _setting_title(first.scenario), "curves": {},
                                                             "lines": [], "floors": []})
        mean = statistics.fmean(psnrs)
        eps = [r.result["summary"].get("epsilon") for r in group]
        if _is_floor(first):
            panel["floors"].append((f"{FLOOR_LABEL} ({_attack_short(first.scenario)})", mean, len(psnrs)))
        elif all(e is not None and math.isfinite(e) for e in eps):
            local = " (local)" if (first.scenario.get("mechanism_params") or {}).get("local") else ""
            name = f"{first.scenario.get('mechanism') or 'no defense'}{local} — {_attack_short(first.scenario)}"
            panel["curves"].setdefault(name, []).append((statistics.fmean(eps), mean, len(psnrs)))
        else:
            name = first.label or f"{_defense_name(first.scenario)} — {_attack_short(first.scenario)}"
            panel["lines"].append((name, mean, len(psnrs)))
    return [p for p in panels.values() if p["curves"]]


def _setting_title(scenario: dict[str, Any]) -> str:
    steps = f" K={scenario.get('local_steps')}" if scenario.get("protocol") == "fedavg" else ""
    return (f"{scenario.get('dataset')} · {scenario.get('model')} · {scenario.get('protocol')}{steps} · "
            f"batch {scenario.get('batch_size')} · attack {scenario.get('inversion_attack')}")


def _plot_psnr_eps(run_dir: Path, cells: list[Any]) -> Path | None:
    from privfl.evaluations.report import figure_title, panel_grid, series_style, style_panel

    panels = psnr_eps_panels(cells)
    if not panels:
        return None
    import matplotlib.pyplot as plt

    fig, pairs = panel_grid(len(panels), ncols=1, panel_w=5.2, legend_w=3.6, panel_h=3.4)
    for (ax, lax), panel in zip(pairs, panels):
        i = 0
        for name, pts in sorted(panel["curves"].items()):
            pts = sorted(pts)
            victims = ", ".join(sorted({str(n) for _, _, n in pts}))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} (victims: {victims})",
                    **series_style(i))
            i += 1
        for name, mean, n in panel["lines"]:
            ax.axhline(mean, linewidth=1.2, label=f"{name} (ε = ∞, {n} victims): {mean:.1f} dB",
                       **{**series_style(i), "linestyle": (0, (5, 2))})
            i += 1
        for name, mean, _n in panel["floors"]:
            ax.axhline(mean, linestyle=":", linewidth=2, color="black", alpha=0.6,
                       label=f"{name}: attack on pure noise, {mean:.1f} dB")
        style_panel(ax, lax, title=panel["title"], xlabel="ε spent (worst client, log scale)",
                    ylabel="reconstruction PSNR (dB)", log_x=True, legend_width=44)
    figure_title(fig, "gradient inversion: PSNR vs ε (mean over victims and seeds; higher = more leakage)", fontsize=9)
    path = run_dir / "inversion_psnr_eps.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _pm(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "—"
    m, s = mean_std(vals)
    return f"{m:.3g} ± {s:.2g}"


def _write_table(run_dir: Path, cells: list[Any]) -> Path:
    by_label: dict[str, list[Any]] = {}
    for r in cells:
        by_label.setdefault(r.label, []).append(r)
    floors = _floors(cells)
    lines = [
        "# Gradient inversion", "",
        "Mean ± std over every attacked victim (all seeds) after optimal matching of the batch order; "
        "ε from the privacy ledger (∞: no formal guarantee); accuracy: the final test accuracy of the same run.",
        "",
        f"*Floor*: the PSNR the same attack reaches, in the same setting (model, protocol, batch, attack, "
        f"grants, victims), from an observation that carries no information about the victim (the "
        f"`{FLOOR_LABEL}` cells: the update drowned in Gaussian noise); '—' where the spec has no such "
        f"cell. A defense whose PSNR is within the floor's spread leaked nothing this attack can use. "
        f"*Gray*: a flat mid-gray image against the same ground truth (first example of each victim).",
        "", "| setting | attack | defense | victims | PSNR (dB) | floor (dB) | gray (dB) | SSIM | label acc. | ε "
        "| accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reasons = set()
    for group in by_label.values():
        victims = [v for r in group for v in r.result["series"]["inversion"]["victims"]]
        reasons.add(group[0].result["series"]["inversion"].get("lpips", ""))
        eps = [r.result["summary"].get("epsilon") for r in group]
        eps = [e for e in eps if e is not None]
        acc = [r.result["summary"].get("final_accuracy") for r in group]
        sources = {v.get("label_source") for v in victims}
        labels = "granted" if sources == {"granted"} else _pm([v["label_accuracy"] for v in victims])
        sc = group[0].scenario
        steps = f" K={sc.get('local_steps')}" if sc.get("protocol") == "fedavg" else ""
        setting = (f"{sc.get('dataset')} / {sc.get('model')} / {sc.get('protocol')}{steps} / "
                   f"batch {sc.get('batch_size')}")
        params = dict(sc.get("inversion_attack_params") or {})
        if sc.get("inversion_label_strategy"):
            params["labels"] = sc["inversion_label_strategy"]
        attack = sc.get("inversion_attack") + (
            "(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")
        defense = _defense_name(sc)
        if _is_floor(group[0]):
            defense = f"**{FLOOR_LABEL}** (control): {defense}"
        lines.append(
            f"| {setting} | {attack} | {defense} | "
            f"{len(victims)} | {_pm([v['psnr'] for v in victims])} | {_pm(floors.get(_floor_key(sc), []))} | "
            f"{_pm(_gray_psnr(group))} | {_pm([v['ssim'] for v in victims])} | "
            f"{labels} | {_fmt(max(eps)) if eps else '—'} | "
            f"{_pm([a for a in acc if a is not None])} |"
        )
    lines += ["", *sorted(r for r in reasons if r), ""]
    path = run_dir / "inversion.md"
    path.write_text("\n".join(lines))
    return path
