"""Client partitions: coverage, determinism, IID balance, Dirichlet statistics, shard structure."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.fl.partition import dirichlet, iid, partition, shards


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> torch.Tensor:
    y = torch.arange(num_classes * per_class) % num_classes
    return y[torch.randperm(len(y), generator=gen(seed))]


def assert_valid(parts: list[torch.Tensor], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == torch.int64 and p.dim() == 1 and len(p) > 0
        assert torch.all(p[1:] > p[:-1])  # sorted ascending, no duplicates within a client
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(n))


METHODS = [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {"shards_per_client": 2})]


# --------------------------------------------------------------------------------------------
# Coverage and determinism
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "params"), METHODS)
def test_every_index_exactly_once(name, params):
    y = balanced_labels(7, 143)  # 1,001 samples: not divisible by the client count
    parts = partition(name, y, 13, generator=gen(1), **params)
    assert_valid(parts, len(y), 13)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 120),
    num_classes=st.integers(1, 6),
    method=st.sampled_from(["iid", "dirichlet", "shards"]),
    seed=st.integers(0, 2**31),
)
def test_coverage_property(data, n, num_classes, method, seed):
    y = torch.randint(num_classes, (n,), generator=gen(seed)) * 3 - 2  # arbitrary, non-contiguous ids
    if method == "shards":
        spc = data.draw(st.integers(1, 3))
        num_clients = data.draw(st.integers(1, max(1, n // spc)))
        if num_clients * spc > n:
            return
        params = {"shards_per_client": spc}
    else:
        num_clients = data.draw(st.integers(1, n))
        params = {}
        if method == "dirichlet":
            params = {"alpha": data.draw(st.sampled_from([1e-3, 0.1, 1.0, 100.0]))}
    parts = partition(method, y, num_clients, generator=gen(seed), **params)
    assert_valid(parts, n, num_clients)


@pytest.mark.parametrize(("name", "params"), METHODS)
def test_same_seed_same_partition_different_seed_different(name, params):
    y = balanced_labels(10, 100)
    a = partition(name, y, 10, generator=gen(5), **params)
    b = partition(name, y, 10, generator=gen(5), **params)
    c = partition(name, y, 10, generator=gen(6), **params)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert any(len(p) != len(q) or not torch.equal(p, q) for p, q in zip(a, c))


def test_dispatch_matches_direct_calls():
    y = balanced_labels(4, 50)
    for got, want in [
        (partition("iid", y, 5, generator=gen(0)), iid(y, 5, generator=gen(0))),
        (partition("dirichlet", y, 5, generator=gen(0), alpha=2.0), dirichlet(y, 5, 2.0, generator=gen(0))),
        (partition("shards", y, 5, generator=gen(0)), shards(y, 5, 2, generator=gen(0))),
    ]:
        assert all(torch.equal(p, q) for p, q in zip(got, want))


def test_single_client_gets_everything():
    y = balanced_labels(3, 5)
    for name, params in METHODS:
        params = {"shards_per_client": 1} if name == "shards" else params
        assert torch.equal(partition(name, y, 1, generator=gen(0), **params)[0], torch.arange(15))


# --------------------------------------------------------------------------------------------
# IID
# --------------------------------------------------------------------------------------------
def test_iid_sizes_and_class_histograms_match_global():
    y = balanced_labels(10, 1000)
    parts = iid(y, 10, generator=gen(3))
    assert sorted({len(p) for p in parts}) == [1000]
    sizes = [len(p) for p in iid(y[:1003], 10, generator=gen(3))]
    assert sizes == [101, 101, 101] + [100] * 7
    glob = torch.bincount(y, minlength=10) / len(y)
    for p in parts:
        # hypergeometric sd of a class share is ~0.009 here; 0.05 is > 5 sd
        assert torch.max(torch.abs(torch.bincount(y[p], minlength=10) / len(p) - glob)) < 0.05


# --------------------------------------------------------------------------------------------
# Dirichlet (Hsu et al. 2019 convention)
# --------------------------------------------------------------------------------------------
C, PER_CLASS, CLIENTS, REPS = 10, 2000, 20, 400
QUOTA = C * PER_CLASS // CLIENTS  # 1,000 <= 2,000: client 0's pools never run out
Z = 4.5  # two-sided normal tail 6.8e-6 per check; 22 checks -> overall false-failure rate < 2e-4


@pytest.fixture(scope="module")
def client0_shares():
    """Client 0's class shares over REPS seeds, for alpha in {0.3, 3}: {alpha: [REPS, C]}."""
    y = balanced_labels(C, PER_CLASS)
    out = {}
    for alpha, base in [(0.3, 0), (3.0, 10_000)]:
        rows = []
        for r in range(REPS):
            parts = dirichlet(y, CLIENTS, alpha, generator=gen(base + r))
            assert len(parts[0]) == QUOTA
            rows.append(torch.bincount(y[parts[0]], minlength=C).double() / QUOTA)
        out[alpha] = torch.stack(rows)
    return out


def expected_variance(alpha: float) -> float:
    """Var of a client's empirical class share: Var(p)(1 - 1/s) + E[p](1 - E[p])/s."""
    mean = 1 / C
    var_p = mean * (1 - mean) / (alpha * C + 1)
    return var_p * (1 - 1 / QUOTA) + mean * (1 - mean) / QUOTA


@pytest.mark.parametrize("alpha", [0.3, 3.0])
def test_dirichlet_client0_mean_and_variance(client0_shares, alpha):
    shares = client0_shares[alpha]
    v = expected_variance(alpha)
    # every class share has mean 1/C; standard error sqrt(V/R)
    assert torch.all(torch.abs(shares.mean(0) - 1 / C) <= Z * math.sqrt(v / REPS)), shares.mean(0)
    # per-repetition mean squared deviation d_r has expectation V; the d_r are iid over seeds
    d = ((shares - 1 / C) ** 2).mean(1)
    se = float(d.std()) / math.sqrt(REPS)
    assert abs(float(d.mean()) - v) <= Z * se, (float(d.mean()), v, se)


def test_dirichlet_small_alpha_is_more_skewed(client0_shares):
    small = client0_shares[0.3].max(1).values.mean()
    large = client0_shares[3.0].max(1).values.mean()
    assert small > large + 0.15, (small, large)


def test_dirichlet_quotas_and_tiny_alpha():
    y = balanced_labels(5, 41)  # 205 samples, 7 clients: quotas 30 x 2 ... 29 x 5
    for alpha in (1e-4, 1.0, 1e4):
        parts = dirichlet(y, 7, alpha, generator=gen(2))
        assert_valid(parts, len(y), 7)
        assert [len(p) for p in parts] == [30] * 2 + [29] * 5
    # alpha -> 0: client 0 (quota 29 <= 41) holds a single class
    parts = dirichlet(y, 7, 1e-4, generator=gen(2))
    assert len(torch.unique(y[parts[0]])) == 1


def test_dirichlet_huge_alpha_is_near_iid():
    y = balanced_labels(4, 2500)
    for p in dirichlet(y, 10, 1e5, generator=gen(4)):
        assert torch.max(torch.abs(torch.bincount(y[p], minlength=4) / len(p) - 0.25)) < 0.07


# --------------------------------------------------------------------------------------------
# Shards (McMahan et al. 2017)
# --------------------------------------------------------------------------------------------
def test_shards_aligned_each_client_at_most_spc_classes():
    y = balanced_labels(10, 100)  # 50 clients x 2 shards of 10: every shard is one class
    parts = shards(y, 50, 2, generator=gen(0))
    assert_valid(parts, 1000, 50)
    assert all(len(p) == 20 for p in parts)
    assert max(len(torch.unique(y[p])) for p in parts) <= 2


def test_shards_unaligned_bound_and_sizes():
    y = balanced_labels(10, 97)  # 970 samples, 90 shards of 10, last shard takes 70 more
    parts = shards(y, 30, 3, generator=gen(1))
    assert_valid(parts, 970, 30)
    assert sorted(len(p) for p in parts) == [30] * 29 + [100]
    # a shard no longer than the smallest class spans at most 2 classes
    assert max(len(torch.unique(y[p])) for p in parts) <= 2 * 3
    # the shards are contiguous runs of the stable label order
    rank = torch.empty(970, dtype=torch.int64)
    rank[torch.sort(y, stable=True).indices] = torch.arange(970)
    for p in parts:
        r = torch.sort(rank[p]).values
        assert int((r[1:] != r[:-1] + 1).sum()) <= 2  # at most 3 runs


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda y: iid(y.float(), 2, generator=gen(0)), TypeError, "labels"),
        (lambda y: iid(y.bool(), 2, generator=gen(0)), TypeError, "labels"),
        (lambda y: iid(y.tolist(), 2, generator=gen(0)), TypeError, "labels"),
        (lambda y: iid(y.view(4, 5), 2, generator=gen(0)), ValueError, "labels"),
        (lambda y: iid(y, 0, generator=gen(0)), ValueError, "num_clients"),
        (lambda y: iid(y, 2.0, generator=gen(0)), TypeError, "num_clients"),
        (lambda y: iid(y, True, generator=gen(0)), TypeError, "num_clients"),
        (lambda y: iid(y, 21, generator=gen(0)), ValueError, "num_clients"),
        (lambda y: iid(y, 2, generator=0), TypeError, "generator"),
        (lambda y: dirichlet(y, 21, 1.0, generator=gen(0)), ValueError, "num_clients"),
        (lambda y: dirichlet(y, 2, 0.0, generator=gen(0)), ValueError, "alpha"),
        (lambda y: dirichlet(y, 2, -1.0, generator=gen(0)), ValueError, "alpha"),
        (lambda y: dirichlet(y, 2, float("nan"), generator=gen(0)), ValueError, "alpha"),
        (lambda y: dirichlet(y, 2, float("inf"), generator=gen(0)), ValueError, "alpha"),
        (lambda y: dirichlet(y, 2, "1", generator=gen(0)), TypeError, "alpha"),
        (lambda y: shards(y, 2, 0, generator=gen(0)), ValueError, "shards_per_client"),
        (lambda y: shards(y, 2, 1.5, generator=gen(0)), TypeError, "shards_per_client"),
        (lambda y: shards(y, 7, 3, generator=gen(0)), ValueError, "shards_per_client"),
        (lambda y: partition("pathological", y, 2, generator=gen(0)), ValueError, "names: dirichlet, iid, shards"),
        (lambda y: partition("iid", y, 2, generator=gen(0), alpha=1.0), ValueError, "alpha"),
        (lambda y: partition("dirichlet", y, 2, generator=gen(0)), ValueError, "missing.*alpha"),
        (lambda y: partition("shards", y, 2, generator=gen(0), shard=2), ValueError, "shards_per_client=2"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.arange(20) % 3)
