"""The ``"decentralized"`` scenario mode: MoNNA (Farhadkhani et al., ICML 2023) through the harness.

A scenario with ``mode: decentralized`` runs :class:`privfl.fl.decentralized.DecentralizedSimulation`:
``num_clients`` nodes (``byzantine`` of them Byzantine, ids drawn from the seed) hold the data split by
``partition``; every round each node takes ``local_steps`` steps of SGD with Polyak momentum
``node_momentum`` (β = 0.99 by default, learning rate ``lr``, batch ``batch_size``, weight decay
``weight_decay``), sends its model over ``graph`` and mixes what it receives with ``mixing``
(``"nna"``; ``f = byzantine`` unless ``mixing_params`` says otherwise). Byzantine nodes send
``byzantine_attack`` models, computed from the honest half-step models or updates
(``decentralized_attack_on``), or train on poisoned data (``label-flip``).

Fields of the federated mode that have no meaning here are ignored: ``protocol``, ``momentum``
(the local optimiser has no momentum of its own; the node momentum is ``node_momentum``),
``worker_momentum``, ``server_lr``, ``aggregator``, ``sample_rate``, ``sampling``. A ``mechanism``
or ``preaggregators`` are rejected rather than ignored.

Results have the federated mode's shape: ``summary`` (final / best mean accuracy over honest nodes,
the worst honest node's final accuracy, consensus distance, wall time, bytes a node sends per round)
and per-round ``series`` (mean / min / max accuracy, mean loss, consensus distance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from privfl import registry
from privfl.evaluations.scenario import (
    MAX_CHECKED_ROWS,
    Scenario,
    Section,
    SpecError,
    accuracy_summary,
    number,
    register_mode,
    register_section,
    resolve_device,
    round_series,
    seeded_setup,
    train,
)
from privfl.fl.decentralized import DecentralizedRecord, DecentralizedSimulation
from privfl.fl.local import LocalSGD
from privfl.seeding import derive_seed

__all__ = ["validate_decentralized", "check_mixing_sizes", "run_decentralized", "build_decentralized"]

GRAPHS = ("complete", "sampled")
ATTACK_TARGETS = ("models", "updates")


class DecentralizedSection(Section):
    """MoNNA's fields: each round K = ``local_steps`` steps with Polyak momentum ``node_momentum`` (β),
    exchange over ``graph`` ("complete", or "sampled": n − f models received, as in MoNNA's experiments),
    mix with ``mixing``; Byzantine nodes attack the honest ``models`` or ``updates``."""

    graph: Literal[GRAPHS] = "complete"
    node_momentum: number(ge=0, lt=1, description="Polyak momentum β; MoNNA uses 0.99") = 0.99
    mixing: str = Field("nna", description="registry name of a mixing rule")
    mixing_params: dict[str, Any] = Field(default_factory=dict)
    decentralized_attack_on: Literal[ATTACK_TARGETS] = "models"


register_section("decentralized", DecentralizedSection)


def validate_decentralized(scenario: Scenario, where: str = "scenario") -> None:
    """Check the fields the decentralized mode uses (raises :class:`SpecError`)."""
    s = scenario
    s.validate_learning(where, min_clients=2)
    if s.graph == "sampled" and s.num_clients < 2 * s.byzantine + 1:
        raise s.error(where, "graph",
                      f"'complete' (graph='sampled' needs num_clients >= 2·byzantine + 1 = {2 * s.byzantine + 1})")
    if s.mechanism:
        raise SpecError(f"{where}.mechanism: got {s.mechanism!r}; allowed in mode 'decentralized': null")
    if s.preaggregators:
        raise SpecError(f"{where}.preaggregators: got {s.preaggregators!r}; allowed in mode 'decentralized': []")
    if getattr(s, "dp_clip", None) is not None:
        raise SpecError(f"{where}.dp_clip: got {s.dp_clip!r}; allowed in mode 'decentralized': null")
    try:
        resolve_device(s.device)
        parts = _components(s)
    except SpecError:
        raise
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {exc}") from None
    check_mixing_sizes(s, parts["mixing"], where)


# Above MAX_CHECKED_ROWS nodes the size check is skipped: the rule's [n, n] distances would cost validation
# more than a few MB (such a run is checked by its first round instead).


def check_mixing_sizes(s: Scenario, mixing: Callable[..., Any], where: str = "scenario") -> None:
    """The mixing rule's own requirement on what a node receives (NNA: more than f models), checked by
    calling it on random models of the run's size over the run's graph: all ``num_clients`` models on the
    complete graph, the paper's ``n − f`` (``f = byzantine``) on the sampled one. A failure is a
    :class:`SpecError` naming ``mixing`` / ``mixing_params`` and what a node receives."""
    import torch

    from privfl.fl.decentralized import sampled_adjacency

    n, f = s.num_clients, s.byzantine
    if n > MAX_CHECKED_ROWS:
        return
    g = torch.Generator().manual_seed(0)
    models = torch.randn(n, 4, generator=g)
    if s.graph == "sampled":
        adjacency = sampled_adjacency(n, range(n - f, n), generator=g)
        receives = f"each honest node receives n − f = {n - f} model(s), its own included (graph='sampled')"
    else:
        adjacency = None
        receives = f"each node receives all {n} models, its own included (graph='complete')"
    try:
        mixing(models, adjacency=adjacency)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.mixing: {exc}; {receives}, num_clients={n}, byzantine={f}, "
                        f"mixing_params={s.mixing_params!r}") from None


def _components(s: Scenario) -> dict[str, Any]:
    mixing_params = dict(s.mixing_params)
    if "f" in registry.parameters("mixing", s.mixing) and "f" not in mixing_params:
        mixing_params["f"] = s.byzantine
    return {
        "mixing": registry.make("mixing", s.mixing, **mixing_params),
        "byzantine_attack": (
            registry.make("byzantine_attack", s.byzantine_attack, **s.byzantine_attack_params)
            if s.byzantine_attack
            else None
        ),
    }


def build_decentralized(scenario: Scenario, seed: int) -> DecentralizedSimulation:
    """Everything the scenario names, built deterministically from ``seed``."""
    setup = seeded_setup(scenario, seed)
    parts = _components(scenario)
    return DecentralizedSimulation(
        model=setup.model,
        dataset=setup.data,
        clients=setup.clients,
        local=LocalSGD(
            steps=scenario.local_steps, batch_size=scenario.batch_size, lr=scenario.lr,
            weight_decay=scenario.weight_decay,
        ),
        beta=scenario.node_momentum,
        mixing=parts["mixing"],
        graph=scenario.graph,  # type: ignore[arg-type]
        byzantine_nodes=setup.byzantine_ids,
        byzantine_attack=parts["byzantine_attack"],
        attack_on=scenario.decentralized_attack_on,  # type: ignore[arg-type]
        parallel=scenario.parallel,  # type: ignore[arg-type]
        eval_every=scenario.eval_every,
        seed=derive_seed(seed, "simulation"),
        device=setup.device,
    )


@register_mode("decentralized", validate=validate_decentralized)
def run_decentralized(
    scenario: Scenario, seed: int, *, on_round: Callable[[DecentralizedRecord], Any] | None = None
) -> dict[str, Any]:
    """MoNNA with every slot the scenario names; accuracy and loss are means over honest nodes."""
    start, sim, history = train(build_decentralized, scenario, seed, on_round)
    final = next((r for r in reversed(history) if r.accuracy is not None), None)
    summary = {
        **accuracy_summary(history),
        "final_accuracy_min": final.accuracy_min if final else None,
        "final_consensus": history[-1].consensus,
        "wall_time_s": time.perf_counter() - start,
        "bytes_per_client_round": sum(r.bytes_per_node for r in history) / len(history),
        "nodes": sim.n,
        "honest_nodes": int(len(sim._honest)),
        "num_params": sim.layout.dim,
        "device": str(sim.device),
        "parallel": "vmap" if sim._use_vmap else "loop",
    }
    series = round_series(history, ("accuracy", "loss", "accuracy_min", "accuracy_max", "consensus", "byzantine",
                                    "seconds"))
    summary["wall_time_s"] = time.perf_counter() - start
    return {"summary": summary, "series": series}
