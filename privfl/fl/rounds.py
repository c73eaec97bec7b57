"""The round loop shared by the federated and the decentralized simulations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from privfl.params import Int

__all__ = ["run_rounds"]

R = TypeVar("R")

_ROUNDS = Int(1, None)


def run_rounds(step: Callable[[int], R], history: list[R], rounds: int,
               on_round: Callable[[R], Any] | None = None) -> list[R]:
    """Run ``rounds`` more rounds of ``step(t)`` (``t`` continues from ``len(history)``, ``step`` appends
    its record to ``history``), calling ``on_round(record)`` after each; returns ``history``."""
    _ROUNDS.check("rounds", rounds)
    first = len(history)
    for t in range(first, first + rounds):
        rec = step(t)
        if on_round is not None:
            on_round(rec)
    return history
