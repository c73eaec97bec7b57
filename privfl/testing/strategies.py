"""Hypothesis strategies for property tests of privfl components (public; needs ``hypothesis``).

- :func:`update_matrices`, :func:`adversarial_sets` — ``[n, d]`` update matrices (shapes, dtypes,
  scales, outliers, duplicates, NaN/Inf rows) and adversarial sets for a given ``f``
  (re-exported from :mod:`privfl.testing.robustness`).
- :func:`component_params` / :func:`mechanism_params` — valid keyword dicts drawn from a registered
  component's declared ``param_space`` (:mod:`privfl.params`), from its *typical* ranges so that
  drawn components stay cheap to run.
- :func:`mechanisms` — ``(name, instance)`` of registered mechanisms with drawn parameters.
- :func:`neighbouring_pairs` — pairs of datasets that differ in one user: *replace-one* (same size,
  one row changed) or *add/remove-one* (one row more), as rows of an ``[n, d]`` float matrix with
  every row in the ℓ2 ball of radius ``clip_norm`` (then ‖x_i − x'_i‖ ≤ 2·clip_norm for replace-one,
  ‖x_i‖ ≤ clip_norm for add/remove: :attr:`NeighbouringPair.bound`), or of ``[n]`` int64 category
  ids for frequency oracles (Hamming distance 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from privfl import registry
from privfl.core import Mechanism
from privfl.params import params_strategy, space_of
from privfl.testing.robustness import adversarial_sets, update_matrices

__all__ = [
    "update_matrices",
    "adversarial_sets",
    "component_params",
    "mechanism_params",
    "mechanisms",
    "NeighbouringPair",
    "neighbouring_pairs",
    "RELATIONS",
]

RELATIONS = ("replace-one", "add-remove")


def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover - hypothesis is a dev dependency
        raise ImportError("privfl.testing.strategies needs hypothesis (pip install hypothesis)") from exc
    return st


def _declared_space(kind: str, name: str) -> dict:
    factory = registry.get(kind, name)
    space = space_of(factory)
    if space is None:
        raise ValueError(f"{kind} {name!r} ({getattr(factory, '__qualname__', factory)}) declares no param_space; "
                         "add a class attribute param_space = {...} (privfl.params: Real, Int, Choice)")
    return space


def component_params(kind: str, name: str, **fixed: Any):
    """Strategy: valid keyword dicts for ``make(kind, name, **params)`` (``fixed`` values kept as given)."""
    _st()
    return params_strategy(_declared_space(kind, name), fixed)


def mechanism_params(name: str, **fixed: Any):
    """Strategy: valid keyword dicts for the registered mechanism ``name`` (``fixed`` kept as given)."""
    return component_params("mechanism", name, **fixed)


def _roles(factory: Any) -> tuple[str, ...]:
    """The roles a registered mechanism class declares (a factory function declares none)."""
    return factory.roles if isinstance(factory, type) and issubclass(factory, Mechanism) else ()


def mechanisms(names: Sequence[str] | None = None, *, input_kind: str | None = None, private_only: bool = False):
    """Strategy: ``(name, mechanism)`` for registered mechanisms (``names`` to restrict; ``input_kind``
    ``"categories"`` or ``"vectors"`` to pick frequency oracles or vector mechanisms; ``private_only``
    to skip those whose guarantee is ``none``)."""
    st = _st()
    pool = list(names) if names is not None else registry.available("mechanism")
    if input_kind is not None:
        if input_kind not in ("categories", "vectors"):
            raise ValueError(f"input_kind must be 'categories', 'vectors' or None, got {input_kind!r}")
        pool = [n for n in pool if ("frequency-oracle" in _roles(registry.get("mechanism", n)))
                == (input_kind == "categories")]
    if not pool:
        raise ValueError("no registered mechanism matches the selection")

    @st.composite
    def build(draw) -> tuple[str, Any]:
        name = draw(st.sampled_from(pool))
        params = draw(mechanism_params(name))
        mech = registry.make("mechanism", name, **params)
        if private_only and not mech.guarantee().is_private:
            from hypothesis import assume

            assume(False)
        return name, mech

    return build()


@dataclass
class NeighbouringPair:
    """Two datasets that differ in one user.

    ``x`` is the larger (add/remove) or the original (replace-one) dataset, ``x_prime`` its neighbour;
    ``index`` is the row that differs (removed from ``x`` for add/remove). ``bound`` is the stated
    bound on the difference: ‖x[index] − x_prime[index]‖₂ (replace-one) or ‖x[index]‖₂ (add/remove)
    for float rows; the Hamming distance 1 for category ids.
    """

    x: Tensor
    x_prime: Tensor
    index: int
    relation: str
    bound: float

    def difference(self) -> Tensor:
        """The differing row's change: ``x[index] − x_prime[index]`` (replace-one) or ``x[index]`` (add/remove)."""
        if self.relation == "add-remove":
            return self.x[self.index]
        return self.x[self.index] - self.x_prime[self.index]


def _clip(rows: Tensor, c: float) -> Tensor:
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows * torch.clamp(c / norms.clamp_min(1e-300), max=1.0)


def neighbouring_pairs(
    relation: str | None = None,
    *,
    min_rows: int = 1,
    max_rows: int = 10,
    min_dim: int = 1,
    max_dim: int = 8,
    clip_norm: float = 1.0,
    categories: int | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
):
    """Strategy for :class:`NeighbouringPair`.

    ``relation`` is ``"replace-one"``, ``"add-remove"`` or ``None`` (either). Float datasets have
    ``n`` rows (``min_rows``..``max_rows``; the add/remove neighbour has ``n − 1``) of dimension
    ``min_dim``..``max_dim``, each clipped to ℓ2 norm ``clip_norm``; the changed row is often on the
    sphere (the worst case) and may be its antipode. ``categories=k`` gives ``[n]`` int64 ids in ``[0, k)``.
    """
    st = _st()
    if relation is not None and relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS} or None, got {relation!r}")
    if not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a number > 0, got {clip_norm!r}")
    if categories is not None and (not isinstance(categories, int) or categories < 2):
        raise ValueError(f"categories must be an int >= 2 or None, got {categories!r}")
    if min_rows < 1 or max_rows < min_rows:
        raise ValueError(f"need 1 <= min_rows <= max_rows, got {min_rows}, {max_rows}")

    @st.composite
    def build(draw) -> NeighbouringPair:
        rel = relation or draw(st.sampled_from(RELATIONS))
        n = draw(st.integers(max(min_rows, 2 if rel == "add-remove" else 1), max(max_rows, 2)))
        index = draw(st.integers(0, n - 1))
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        if categories is not None:
            x = torch.randint(0, categories, (n,), generator=g)
            if rel == "add-remove":
                return NeighbouringPair(x, torch.cat([x[:index], x[index + 1:]]), index, rel, 1.0)
            x_prime = x.clone()
            shift = draw(st.integers(1, categories - 1))
            x_prime[index] = (x[index] + shift) % categories
            return NeighbouringPair(x, x_prime, index, rel, 1.0)
        d = draw(st.integers(min_dim, max_dim))
        dtype = draw(st.sampled_from(list(dtypes)))
        x = _clip(torch.randn(n, d, generator=g, dtype=torch.float64) * clip_norm, clip_norm)
        on_sphere = draw(st.booleans())
        if on_sphere:
            x[index] = _clip(x[index:index + 1] * 1e6, clip_norm)[0]
        x = x.to(dtype)
        if rel == "add-remove":
            return NeighbouringPair(x, torch.cat([x[:index], x[index + 1:]]), index, rel, float(clip_norm))
        x_prime = x.clone()
        if on_sphere and draw(st.booleans()):
            x_prime[index] = -x[index]  # the antipode: ‖x_i − x'_i‖ = 2C, the worst case
        else:
            row = torch.randn(1, d, generator=g, dtype=torch.float64) * clip_norm
            x_prime[index] = _clip(row, clip_norm)[0].to(dtype)
        return NeighbouringPair(x, x_prime, index, rel, 2.0 * float(clip_norm))

    return build()
