"""ServerApp: privfl's robust aggregation (or central DP noise) with its privacy ledger and a curious
server that inverts one client's round-1 update with Inverting Gradients."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import privfl
from privfl.fl.simulation import evaluate
from privfl.flat import layout_of
from privfl.integrations.flower import CuriousServerTap, PrivflStrategy, record_to_vector
from privfl.seeding import make_generator
from privfl_flower import task

app = ServerApp()
#: what the last run in this process produced (for tests and notebooks)
LAST_RUN: dict = {}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = task.config(context.run_config)
    data, model = task.dataset(), task.model(cfg["seed"])
    layout = layout_of(model)
    tap = CuriousServerTap(model, input_shape=data.input_shape, num_classes=data.num_classes, rounds=[1],
                           clients=[cfg["tap-client"]], data_mean=tuple(data.mean), data_std=tuple(data.std))
    if cfg["central-noise"] > 0:  # DP-FedAvg: clipping and noise on the sum by the (trusted) server
        pipeline = dict(central_mechanism="dp-fedavg",
                        central_params={"clip_norm": cfg["clip-norm"], "noise_multiplier": cfg["central-noise"]})
    else:
        pipeline = dict(aggregator=cfg["aggregator"], aggregator_params={"f": cfg["f"]},
                        preaggregators=[privfl.make("preaggregator", "nnm", f=cfg["f"])] if cfg["nnm"] else [])
    client_mechanism = None
    if cfg["local-noise"] > 0:  # what the clients' local_mechanism_mod applies, for the ledger
        client_mechanism = privfl.make("mechanism", "gaussian", local=True, clip_norm=cfg["clip-norm"],
                                       noise_multiplier=cfg["local-noise"])
    strategy = PrivflStrategy(model, fraction_train=cfg["fraction-train"], fraction_evaluate=0.0,
                              client_mechanism=client_mechanism, rng=cfg["rng"], seed=cfg["seed"], tap=tap,
                              **pipeline)

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc, loss = evaluate(model, record_to_vector(arrays, layout), data.x_test, data.y_test)
        return MetricRecord({"accuracy": acc, "loss": loss})

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=cfg["num-server-rounds"], evaluate_fn=central_evaluate)
    accuracy = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    epsilon = strategy.epsilon(1e-5)
    privacy = "no DP: the server sees raw updates" if epsilon is None else f"ε(δ=1e-5) = {epsilon:.3f}"
    print(f"privfl: accuracy by round {accuracy}; {privacy}")
    reconstruction = None
    if tap.observations and cfg["attack-iterations"] > 0:
        obs = tap.observations[0]
        attack = privfl.make("privacy_attack", "inverting-gradients", iterations=cfg["attack-iterations"],
                             label_strategy="bias")  # labels are not granted: recovered from the update
        rec = attack.attack(obs, generator=make_generator(cfg["seed"], "attack"))
        print(f"privfl: curious server reconstructed {rec.data.shape[0]} images of client {obs.client} (round 1)")
        reconstruction = rec
    LAST_RUN.clear()
    LAST_RUN.update(strategy=strategy, accuracy=accuracy, epsilon=epsilon, observations=tap.observations,
                    reconstruction=reconstruction)
