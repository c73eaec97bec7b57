"""Splitting a labelled dataset across federated clients.

Every partition returns one sorted int64 CPU index tensor per client; together they cover
``range(len(labels))`` exactly once and no client is empty. All randomness comes from the
keyword-only ``generator`` (a CPU ``torch.Generator``), so equal generator states give equal
partitions.

* :func:`iid`: uniform random split into near-equal parts.
* :func:`dirichlet`: per-client class proportions ``p_i ~ Dir(alpha * 1_C)`` (Hsu, Qi & Brown 2019).
* :func:`shards`: sort-and-shard pathological non-IID split (McMahan et al. 2017).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from privfl.params import Int, Real, check_generator, validated
from privfl.registry import check_keywords, get, register

__all__ = ["iid", "dirichlet", "shards", "partition"]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def _check_labels(labels: object) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a 1-d integer torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"labels must be a 1-d integer torch.Tensor, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-d integer torch.Tensor, got shape {tuple(labels.shape)}")
    return labels.detach().to("cpu", torch.int64)


def _check_common(labels: object, num_clients: int, generator: object, owner: str) -> tuple[Tensor, int]:
    """The data-dependent checks (``num_clients`` itself is declared in each partition's param_space)."""
    y = _check_labels(labels)
    n = int(num_clients)
    check_generator(generator, owner=owner, device="cpu", required=True)
    if n > len(y):
        raise ValueError(
            f"num_clients={n} exceeds the number of samples ({len(y)}); every client needs at least one"
        )
    return y, n


def _sorted_parts(parts: list[Tensor]) -> list[Tensor]:
    return [torch.sort(p).values.to(torch.int64) for p in parts]


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------
NUM_CLIENTS = Int(1, None, typical=(1, 4))


@register("partition", "iid")
@validated({"num_clients": NUM_CLIENTS})
def iid(labels: Tensor, num_clients: int, *, generator: torch.Generator) -> list[Tensor]:
    """Uniformly random split: a random permutation cut into ``num_clients`` contiguous parts whose
    sizes differ by at most one (the first ``N % num_clients`` clients get the extra sample)."""
    y, n = _check_common(labels, num_clients, generator, "iid")
    perm = torch.randperm(len(y), generator=generator)
    return _sorted_parts(list(torch.tensor_split(perm, n)))


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded by one draw from ``generator`` (torch's Gamma/Dirichlet samplers
    take no generator)."""
    seed = int(torch.randint(2**63 - 1, (1,), generator=generator))
    return np.random.default_rng(seed)


@register("partition", "dirichlet")
@validated({"num_clients": NUM_CLIENTS, "alpha": Real(0, None, lo_open=True, log=True, typical=(0.1, 10.0))})
def dirichlet(
    labels: Tensor, num_clients: int, alpha: float, *, generator: torch.Generator
) -> list[Tensor]:
    """Label-skewed split with client class proportions ``p_i ~ Dir(alpha * 1_C)``.

    Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution for federated
    visual classification". ``C`` is the number of distinct label values present. Clients get equal
    quotas (``N // num_clients``, the remainder one each to the first clients) and are filled in
    order ``0..num_clients-1``: client ``i`` draws ``p_i``, then draws its class counts
    ``~ Multinomial(quota, p_i)`` and takes that many samples of each class, uniformly without
    replacement from what earlier clients left. When a draw asks for more of a class than is left,
    the class is used up and the shortfall is redrawn from ``p_i`` renormalised over the classes
    still available (if ``p_i`` puts no mass there, proportionally to the remaining pool sizes),
    repeating at most ``C`` times. So with small ``alpha`` the later clients deviate from
    ``Dir(alpha)``; client 0 follows it exactly whenever its quota is at most the smallest class
    count. ``p_i`` is drawn with NumPy (``Generator.dirichlet``, which stays accurate for tiny
    ``alpha``) seeded by one draw from ``generator``; the within-class choice uses ``generator``.
    """
    y, n = _check_common(labels, num_clients, generator, "dirichlet")
    alpha = float(alpha)

    rng = _numpy_rng(generator)
    _, cls = torch.unique(y, return_inverse=True)
    c = int(cls.max()) + 1
    # one random ordering of each class pool; a client takes the next `count` entries of a pool
    order = torch.sort(cls, stable=True).indices
    counts = torch.bincount(cls, minlength=c)
    pools = [p[torch.randperm(len(p), generator=generator)] for p in torch.split(order, counts.tolist())]
    left = counts.numpy().astype(np.int64)  # remaining pool sizes
    used = np.zeros(c, dtype=np.int64)

    quotas = [len(y) // n + (1 if i < len(y) % n else 0) for i in range(n)]
    parts = []
    for quota in quotas:
        p = rng.dirichlet(np.full(c, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # guard; modern NumPy does not get here
            p = np.zeros(c)
            p[rng.integers(c)] = 1.0
        take = np.zeros(c, dtype=np.int64)
        need = quota
        while need > 0:
            avail = left - take
            w = np.where(avail > 0, p, 0.0)
            if w.sum() <= 0:
                w = avail.astype(np.float64)
            draw = rng.multinomial(need, w / w.sum())
            got = np.minimum(draw, avail)
            take += got
            need -= int(got.sum())
        parts.append(
            torch.cat([pools[k][used[k] : used[k] + take[k]] for k in np.flatnonzero(take)])
        )
        used += take
        left -= take
    return _sorted_parts(parts)


@register("partition", "shards")
@validated({"num_clients": NUM_CLIENTS, "shards_per_client": Int(1, None, typical=(1, 3))})
def shards(
    labels: Tensor, num_clients: int, shards_per_client: int = 2, *, generator: torch.Generator
) -> list[Tensor]:
    """Pathological non-IID split of McMahan et al. 2017 ("Communication-efficient learning of deep
    networks from decentralized data"): sort samples by label (stable), cut the order into
    ``num_clients * shards_per_client`` contiguous shards of ``N // S`` samples (the last shard
    also takes the ``N % S`` leftovers), and deal shards to clients by a random permutation."""
    y, n = _check_common(labels, num_clients, generator, "shards")
    spc = int(shards_per_client)
    s = n * spc
    if s > len(y):
        raise ValueError(
            f"num_clients * shards_per_client = {n} * {spc} = {s} shards exceeds the number of samples "
            f"({len(y)}); every shard needs at least one"
        )
    order = torch.sort(y, stable=True).indices
    size = len(y) // s
    bounds = [k * size for k in range(s)] + [len(y)]
    shard_list = [order[bounds[k] : bounds[k + 1]] for k in range(s)]
    deal = torch.randperm(s, generator=generator).view(n, spc)
    return _sorted_parts([torch.cat([shard_list[k] for k in row.tolist()]) for row in deal])


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------
def _method_params(fn: Callable[..., list[Tensor]]) -> dict[str, inspect.Parameter]:
    skip = {"labels", "num_clients", "generator"}
    return {k: p for k, p in inspect.signature(fn).parameters.items() if k not in skip}


def partition(
    name: str, labels: Tensor, num_clients: int, *, generator: torch.Generator, **params: object
) -> list[Tensor]:
    """Partition by method name: ``"iid"``, ``"dirichlet"`` (needs ``alpha``) or ``"shards"``
    (``shards_per_client=2``)."""
    fn = get("partition", name)
    check_keywords(_method_params(fn), params, f"partition {name!r}")
    return fn(labels, num_clients, generator=generator, **params)
