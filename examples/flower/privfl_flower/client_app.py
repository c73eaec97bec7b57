"""ClientApp: privfl's local training on this node's partition, with privfl's client mods.

Clients listed in ``byzantine-clients`` run ``byzantine-attack`` (an attack that needs only their own
update; ``sign-flip`` sends ``−byzantine-scale`` times it); with ``local-noise`` > 0 every client adds
local Gaussian noise (clip to ``clip-norm``) through ``local_mechanism_mod``, from a CSPRNG unless ``rng = "seeded"``.
"""

from __future__ import annotations

import functools

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privfl.fl.local import LocalSGD
from privfl.integrations.flower import byzantine_mod, local_mechanism_mod, privfl_client_app
from privfl_flower import task

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _inner(num_partitions: int, items: tuple) -> ClientApp:
    cfg = dict(items)
    mods = []
    byzantine = [int(c) for c in str(cfg["byzantine-clients"]).split(",") if c.strip()]
    if byzantine:
        params = {"scale": cfg["byzantine-scale"]} if cfg["byzantine-attack"] == "sign-flip" else {}
        mods.append(byzantine_mod(cfg["byzantine-attack"], clients=byzantine, seed=cfg["seed"], **params))
    if cfg["local-noise"] > 0:
        mods.append(local_mechanism_mod("gaussian", local=True, clip_norm=cfg["clip-norm"],
                                        noise_multiplier=cfg["local-noise"], rng=cfg["rng"], seed=cfg["seed"]))
    local = LocalSGD(steps=cfg["local-steps"], batch_size=cfg["batch-size"], lr=cfg["lr"])
    return privfl_client_app(task.dataset(), task.model(cfg["seed"]), task.clients(num_partitions, cfg["seed"]),
                             local, seed=cfg["seed"], mods=mods)


def _client(context: Context) -> ClientApp:
    cfg = task.config(context.run_config)
    return _inner(int(context.node_config["num-partitions"]), tuple(sorted(cfg.items())))


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _client(context)(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _client(context)(msg, context)
