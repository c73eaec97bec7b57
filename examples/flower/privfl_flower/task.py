"""What both apps share: the run configuration's defaults, the data, the model and the partition."""

from __future__ import annotations

import functools

import torch

import privfl
from privfl.fl.partition import partition
from privfl.seeding import make_generator

#: the defaults of ``[tool.flwr.app.config]`` in pyproject.toml (used when a runner passes no run config)
DEFAULTS = {
    "num-server-rounds": 3, "fraction-train": 1.0, "local-steps": 5, "batch-size": 8, "lr": 0.1,
    "aggregator": "trimmed-mean", "f": 2, "nnm": True,
    "byzantine-clients": "0,1", "byzantine-attack": "sign-flip", "byzantine-scale": 4.0,
    "local-noise": 0.0, "central-noise": 0.0, "clip-norm": 1.0, "rng": "secure", "tap-client": 2,
    "attack-iterations": 100, "seed": 0,
}


def config(run_config) -> dict:
    """The run configuration with the defaults filled in."""
    return {**DEFAULTS, **dict(run_config or {})}


@functools.lru_cache(maxsize=1)
def dataset():
    return privfl.make("dataset", "digits")


@functools.lru_cache(maxsize=4)
def clients(num_partitions: int, seed: int):
    return tuple(partition("iid", dataset().y_train, num_partitions, generator=make_generator(seed, "partition")))


def model(seed: int):
    data = dataset()
    torch.manual_seed(seed)
    return privfl.make("model", "mlp", input_shape=data.input_shape, num_classes=data.num_classes)
