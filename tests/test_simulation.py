"""Federated rounds: batched vs loop training, determinism, participation, the mechanism / Byzantine /
data-poisoning / worker-momentum / observation slots, BatchNorm fallback, accuracy, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

import privfl
from privfl.core import Aggregator, ByzantineAttack, DataPoisoningAttack, Mechanism, PrivacyGuarantee
from privfl.fl.local import LocalSGD, plan_batches
from privfl.fl.partition import partition
from privfl.fl.simulation import FederatedSimulation
from privfl.flat import flatten, layout_of

SMALL = {"mlp": {"hidden": (32,)}, "convnet": {"width": 8}, "lenet": {}}


@pytest.fixture(scope="module")
def ds():
    return privfl.make("dataset", "digits")


def make_model(ds, name: str = "mlp", seed: int = 0, **opts):
    """Models are initialised from the global RNG: seed it so two builds are bit-identical."""
    opts = {**SMALL.get(name, {}), **opts}
    torch.manual_seed(seed)
    return privfl.make("model", name, input_shape=ds.input_shape, num_classes=ds.num_classes, **opts)


def split(ds, n: int, method: str = "iid", seed: int = 0, **params) -> list[Tensor]:
    return partition(method, ds.y_train, n, generator=torch.Generator().manual_seed(seed), **params)


def unequal_clients(ds, sizes=(5, 17, 40, 9)) -> list[Tensor]:
    """IID clients trimmed to unequal sizes (so full-batch plans need padding and a mask)."""
    return [c[:s] for c, s in zip(split(ds, len(sizes)), sizes)]


class Recording(Aggregator):
    """The mean, keeping a copy of every matrix it is given."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[Tensor] = []

    def __call__(self, updates: Tensor) -> Tensor:
        self.seen.append(updates.detach().clone())
        return updates.mean(dim=0)


OPT = LocalSGD(steps=3, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3)

# vmap and the loop compute the same arithmetic in a different association order (batched
# convolution / matmul kernels versus per-client ones): float32 reassociation only, which over
# 3 rounds × 3 momentum steps stays far below rtol=1e-4, atol=1e-5. A real difference (a wrong
# batch, a missing weight-decay or momentum term, a wrong mask) moves weights by > 1e-3.
RTOL, ATOL = 1e-4, 1e-5


def run_sim(ds, clients, rounds: int, *, model="mlp", model_seed=0, **kw) -> FederatedSimulation:
    kw.setdefault("eval_every", 1000)  # accuracy is not what these tests check
    sim = FederatedSimulation(make_model(ds, model, model_seed), ds, clients, **kw)
    sim.run(rounds)
    return sim


# --------------------------------------------------------------------------------------------
# Batched (vmap) training equals the per-client torch.optim.SGD loop
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "convnet", "lenet"])
def test_vmap_equals_loop_fedavg(ds, model):
    clients = split(ds, 5, "dirichlet", alpha=0.5)
    sims = {p: run_sim(ds, clients, 3, model=model, local=OPT, parallel=p, seed=3) for p in ("vmap", "loop")}
    assert sims["vmap"]._use_vmap and not sims["loop"]._use_vmap
    w0 = flatten(make_model(ds, model), sims["vmap"].layout)
    assert (sims["vmap"].weights - w0).abs().max() > 1e-3  # training moved the weights
    assert torch.allclose(sims["vmap"].weights, sims["loop"].weights, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", ["mlp", "convnet", "lenet"])
def test_vmap_equals_loop_fedsgd(ds, model):
    clients = split(ds, 5)
    opt = LocalSGD(batch_size=16, lr=0.1)
    sims = {
        p: run_sim(ds, clients, 3, model=model, protocol="fedsgd", local=opt, parallel=p, seed=4)
        for p in ("vmap", "loop")
    }
    assert torch.allclose(sims["vmap"].weights, sims["loop"].weights, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("protocol", ["fedavg", "fedsgd"])
def test_vmap_equals_loop_full_batch_unequal_sizes(ds, protocol):
    clients = unequal_clients(ds)
    opt = LocalSGD(steps=3, batch_size=None, lr=0.1, momentum=0.9, weight_decay=1e-3)
    sims = {
        p: run_sim(ds, clients, 3, protocol=protocol, local=opt, parallel=p, seed=5) for p in ("vmap", "loop")
    }
    plan = sims["vmap"]._last_plan
    assert plan.mask is not None  # the padded/masked path is the one under test
    assert plan.mask.sum(dim=-1)[:, 0].tolist() == [5.0, 17.0, 40.0, 9.0]
    assert torch.allclose(sims["vmap"].weights, sims["loop"].weights, rtol=RTOL, atol=ATOL)


def test_plan_batches_uses_own_data_epoch_by_epoch(ds):
    clients = unequal_clients(ds, sizes=(5, 17, 40, 9))
    opt = LocalSGD(steps=4, batch_size=6)
    plan = plan_batches(clients, opt, generator=torch.Generator().manual_seed(0))
    assert plan.mask is None and plan.index.shape == (4, 4, 6)
    for c, idx in zip(clients, plan.index):
        flat = idx.flatten()
        assert set(flat.tolist()) <= set(c.tolist())
        size = len(c)
        for lo in range(0, len(flat), size):  # each epoch is a permutation (a prefix of one at the end)
            epoch = flat[lo : lo + size]
            assert len(set(epoch.tolist())) == len(epoch)
    # fresh permutations every epoch: client 0 (5 samples, 24 draws) does not repeat one order
    epochs0 = plan.index[0].flatten()[:20].view(4, 5)
    assert len({tuple(e.tolist()) for e in epochs0}) > 1
    again = plan_batches(clients, opt, generator=torch.Generator().manual_seed(0))
    other = plan_batches(clients, opt, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plan.index, again.index) and not torch.equal(plan.index, other.index)


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
def test_same_seed_bit_identical_different_seed_differs(ds):
    clients = split(ds, 6, "dirichlet", alpha=0.5)
    kw = dict(local=OPT, sample_rate=0.5, seed=11)
    a = run_sim(ds, clients, 3, model="convnet", **kw)
    b = run_sim(ds, clients, 3, model="convnet", **kw)
    assert torch.equal(a.weights, b.weights)
    c = run_sim(ds, clients, 3, model="convnet", **{**kw, "seed": 12})
    assert not torch.allclose(a.weights, c.weights, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_client_chunk_does_not_change_result(ds, chunk):
    clients = split(ds, 5)
    ref = run_sim(ds, clients, 2, local=OPT, seed=2, client_chunk=None)
    got = run_sim(ds, clients, 2, local=OPT, seed=2, client_chunk=chunk)
    assert torch.allclose(ref.weights, got.weights, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Partial participation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "q"), [(20, 0.3), (7, 0.5), (10, 0.01), (9, 1.0)])
def test_uniform_sampling_size(ds, n, q):
    sim = FederatedSimulation(make_model(ds), ds, split(ds, n), sample_rate=q, sampling="uniform", seed=0)
    want = max(1, round(q * n))
    seen = set()
    for t in range(200):
        ids = sim._participants(t)
        assert len(ids) == want
        assert len(set(ids.tolist())) == want and 0 <= int(ids.min()) and int(ids.max()) < n
        assert torch.equal(ids, ids.sort().values)
        seen.update(ids.tolist())
    if q < 1:
        assert seen == set(range(n))  # every client gets picked at some point


def test_poisson_sampling_counts_are_binomial(ds):
    n, q, T = 40, 0.3, 3000
    sim = FederatedSimulation(make_model(ds), ds, split(ds, n), sample_rate=q, sampling="poisson", seed=7)
    member = torch.zeros(T, n)
    for t in range(T):
        member[t, sim._participants(t)] = 1.0
    counts = member.sum(1).numpy().astype(int)
    # Chi-square goodness of fit of the per-round counts to Binomial(n, q), bins pooled so every
    # expected count is >= 5. The seed is fixed, so this is deterministic; over random seeds a
    # correct sampler fails it with probability 1e-4 (the chosen significance level).
    pmf = stats.binom.pmf(np.arange(n + 1), n, q)
    lo, hi = int(stats.binom.ppf(0.005, n, q)), int(stats.binom.ppf(0.995, n, q))
    expected = np.concatenate([[pmf[: lo + 1].sum()], pmf[lo + 1 : hi], [pmf[hi:].sum()]]) * T
    observed = np.concatenate(
        [[np.sum(counts <= lo)], [np.sum(counts == k) for k in range(lo + 1, hi)], [np.sum(counts >= hi)]]
    )
    assert expected.min() >= 5
    assert stats.chisquare(observed, expected).pvalue > 1e-4
    # Each client is included independently with probability q: per-client frequencies within
    # 5 standard errors (family-wise false-failure rate < 40 * 6e-7).
    se = math.sqrt(q * (1 - q) / T)
    assert (member.mean(0) - q).abs().max() < 5 * se
    # Independence between clients: the count variance is n q (1-q), not inflated by correlation.
    assert abs(counts.var() / (n * q * (1 - q)) - 1) < 0.15


def test_participation_depends_only_on_seed(ds):
    clients = split(ds, 30)

    def sim(seed, sampling):
        return FederatedSimulation(make_model(ds), ds, clients, sample_rate=0.2, sampling=sampling, seed=seed)

    for sampling in ("uniform", "poisson"):
        a, b, c = sim(1, sampling), sim(1, sampling), sim(2, sampling)
        same = [torch.equal(a._participants(t), b._participants(t)) for t in range(50)]
        other = [torch.equal(a._participants(t), c._participants(t)) for t in range(50)]
        assert all(same)
        assert not all(other)
        per_round = [torch.equal(a._participants(t), a._participants(t + 1)) for t in range(50)]
        assert not all(per_round)


def test_poisson_round_records_and_empty_rounds(ds):
    clients = split(ds, 6)
    sim = FederatedSimulation(
        make_model(ds), ds, clients, local=LocalSGD(steps=1, batch_size=8, lr=0.05),
        sample_rate=0.15, sampling="poisson", seed=0, eval_every=1000,
    )
    counts = []
    for t in range(30):
        before = sim.weights.clone()
        rec = sim.step(t)
        counts.append(rec.participants)
        assert rec.participants == len(sim._participants(t))
        if rec.participants == 0:
            assert torch.equal(sim.weights, before)  # an empty round changes nothing
        else:
            assert not torch.equal(sim.weights, before)
    assert 0 in counts and max(counts) > 0  # with P(empty) = 0.85^6 ≈ 0.38 both kinds occur


# --------------------------------------------------------------------------------------------
# Mechanism slot
# --------------------------------------------------------------------------------------------
class NoisyMechanism(Mechanism):
    """Adds N(0, sigma²) noise drawn from the given generator; decode is the identity."""

    name = "test-noise"
    role = "client-vector"

    def __init__(self, sigma: float = 0.01) -> None:
        self.sigma = sigma
        self.calls: list[dict] = []

    def privatize(self, x, *, generator=None, client_ids=None):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        out = x + self.sigma * noise
        self.calls.append({"x": x.clone(), "out": out.clone(), "generator": generator, "ids": client_ids.clone()})
        return out

    def guarantee(self):
        return PrivacyGuarantee.none(self.name)


def test_mechanism_receives_honest_rows_and_generator(ds):
    clients = split(ds, 6)
    opt = LocalSGD(steps=2, batch_size=8, lr=0.05)
    clean_agg, noisy_agg, mech = Recording(), Recording(), NoisyMechanism()
    kw = dict(local=opt, sample_rate=0.5, seed=9)
    run_sim(ds, clients, 2, aggregator=clean_agg, **kw)
    sim = run_sim(ds, clients, 2, aggregator=noisy_agg, mechanism=mech, **kw)

    assert len(mech.calls) == 2
    for t, call in enumerate(mech.calls):
        assert isinstance(call["generator"], torch.Generator)
        assert torch.equal(call["ids"], sim._participants(t))
        # the aggregator gets decode(privatize(rows)) = the mechanism's output
        assert torch.equal(noisy_agg.seen[t], call["out"])
        noise = call["out"] - call["x"]
        assert 0.5 * mech.sigma < float(noise.std()) < 2 * mech.sigma
    # Round 0 starts from the same weights with the same batches: the mechanism's input is exactly
    # the honest updates of the clean run.
    assert torch.equal(mech.calls[0]["x"], clean_agg.seen[0])
    # The generator is the simulation's, derived from (seed, round): reproducible, fresh each round.
    again = NoisyMechanism()
    run_sim(ds, clients, 2, aggregator=Recording(), mechanism=again, **kw)
    for a, b in zip(mech.calls, again.calls):
        assert torch.equal(a["out"] - a["x"], b["out"] - b["x"])
    n0, n1 = (c["out"][0] - c["x"][0] for c in mech.calls)
    assert not torch.allclose(n0, n1)
    assert sim.history[0].bytes_per_client == sim.layout.dim * 4


# --------------------------------------------------------------------------------------------
# Byzantine slot
# --------------------------------------------------------------------------------------------
class SignFlip(ByzantineAttack):
    """Malicious row j = -(j + 1) · mean(honest); records what it was given."""

    name = "test-sign-flip"

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, int]] = []

    def __call__(self, honest, f, *, generator=None):
        assert isinstance(generator, torch.Generator)
        self.calls.append((honest.clone(), f))
        scale = torch.arange(1, f + 1, dtype=honest.dtype).unsqueeze(1)
        return -scale * honest.mean(dim=0, keepdim=True)


def test_byzantine_rows_in_client_id_order(ds):
    clients = split(ds, 8)
    byz = [1, 4, 6]
    opt = LocalSGD(batch_size=None, lr=0.1)  # full batch: honest rows do not depend on who else trains
    attack, agg, clean = SignFlip(), Recording(), Recording()
    mech = NoisyMechanism(sigma=0.0)  # identity, to see which rows reach the mechanism
    kw = dict(protocol="fedsgd", local=opt, sample_rate=0.75, seed=21)
    sim = run_sim(ds, clients, 6, aggregator=agg, byzantine_clients=byz, byzantine_attack=attack, mechanism=mech,
                  **kw)
    run_sim(ds, clients, 1, aggregator=clean, **kw)

    assert len(attack.calls) == len(agg.seen) == 6
    for t, ((honest, f), U, rec) in enumerate(zip(attack.calls, agg.seen, sim.history)):
        ids = sim._participants(t).tolist()
        byz_pos = [i for i, c in enumerate(ids) if c in byz]
        honest_pos = [i for i, c in enumerate(ids) if c not in byz]
        assert f == len(byz_pos) == rec.byzantine
        assert rec.participants == len(ids) == U.shape[0]
        assert torch.equal(U[honest_pos], honest)
        # only honest clients run the protocol (and the mechanism); the attack sees their reports
        assert mech.calls[t]["ids"].tolist() == [c for c in ids if c not in byz]
        assert torch.equal(mech.calls[t]["out"], honest)
        for j, i in enumerate(byz_pos):
            assert torch.allclose(U[i], -(j + 1) * honest.mean(0))
    assert any(rec.byzantine >= 2 for rec in sim.history)  # the ordering among attackers is exercised
    # round 0: the honest rows are exactly the clean run's rows of those clients
    ids0 = sim._participants(0).tolist()
    assert torch.equal(attack.calls[0][0], clean.seen[0][[i for i, c in enumerate(ids0) if c not in byz]])


class LabelFlip(DataPoisoningAttack):
    name = "test-label-flip"

    def poison(self, x, y, *, num_classes, generator=None):
        return x, num_classes - 1 - y


def test_data_poisoning_changes_only_byzantine_training(ds):
    clients = split(ds, 6)
    byz = [0, 3]
    y_before = ds.y_train.clone()
    opt = LocalSGD(steps=2, batch_size=8, lr=0.05)
    clean_agg, bad_agg = Recording(), Recording()
    clean = run_sim(ds, clients, 2, local=opt, aggregator=clean_agg, seed=1)
    bad = run_sim(ds, clients, 2, local=opt, aggregator=bad_agg, seed=1, byzantine_clients=byz,
                  byzantine_attack=LabelFlip())

    assert torch.equal(ds.y_train, y_before)  # the caller's dataset is not poisoned
    for c, idx in enumerate(clients):
        want = 9 - y_before[idx] if c in byz else y_before[idx]
        assert torch.equal(bad._y_pool[idx], want)
        assert torch.equal(bad._x_pool[idx], ds.x_train[idx])
    # round 0 starts from equal weights with equal batches: only the poisoners' rows differ
    diff = (bad_agg.seen[0] - clean_agg.seen[0]).abs().amax(dim=1)
    assert all(float(diff[c]) > 1e-4 for c in byz)
    assert all(float(diff[c]) == 0.0 for c in range(6) if c not in byz)
    assert not torch.allclose(bad.weights, clean.weights)
    assert [r.byzantine for r in bad.history] == [2, 2]
    assert [r.byzantine for r in clean.history] == [0, 0]


# --------------------------------------------------------------------------------------------
# Worker momentum
# --------------------------------------------------------------------------------------------
def test_worker_momentum_rows(ds):
    clients = split(ds, 4)
    beta = 0.7
    opt = LocalSGD(steps=2, batch_size=8, lr=0.05)
    agg = Recording()
    sim = run_sim(ds, clients, 1, local=opt, aggregator=agg, worker_momentum=beta, seed=3)
    w_after_0 = sim.weights.clone()
    sim.run(1)
    # Plain updates u_t from the same weights and batches, without momentum.
    plain = Recording()
    ref = FederatedSimulation(make_model(ds), ds, clients, local=opt, aggregator=plain, seed=3, eval_every=1000)
    ref.step(0)
    u0 = plain.seen[0]
    ref.weights = w_after_0.clone()
    ref.step(1)
    u1 = plain.seen[1]
    m0 = (1 - beta) * u0  # m starts at zero
    assert torch.allclose(agg.seen[0], m0, rtol=0, atol=1e-7)
    assert torch.allclose(agg.seen[1], beta * m0 + (1 - beta) * u1, rtol=0, atol=1e-7)
    assert not torch.allclose(agg.seen[1], u1, rtol=0, atol=1e-5)


def test_worker_momentum_is_per_client_across_the_rounds_it_joins(ds):
    clients = split(ds, 6)
    beta = 0.5
    opt = LocalSGD(batch_size=None, lr=0.1)  # full batch FedSGD: updates are a function of weights only
    agg = Recording()
    sim = FederatedSimulation(make_model(ds), ds, clients, protocol="fedsgd", local=opt, aggregator=agg,
                              worker_momentum=beta, sample_rate=0.5, seed=8, eval_every=1000)
    ref_agg = Recording()
    ref = FederatedSimulation(make_model(ds), ds, clients, protocol="fedsgd", local=opt, aggregator=ref_agg,
                              sample_rate=1.0, seed=8, eval_every=1000)
    m = torch.zeros(6, sim.layout.dim)
    for t in range(4):
        ref.weights = sim.weights.clone()
        ref.step(t)
        u_all = ref_agg.seen[-1]  # every client's gradient at the current weights
        ids = sim._participants(t)
        sim.step(t)
        m[ids] = beta * m[ids] + (1 - beta) * u_all[ids]
        assert torch.allclose(agg.seen[-1], m[ids], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Observation hook
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("protocol", "kind"), [("fedavg", "delta"), ("fedsgd", "gradient")])
def test_observation_records_what_the_client_sent(ds, protocol, kind):
    clients = split(ds, 4)
    opt = LocalSGD(steps=3, batch_size=8, lr=0.05)
    agg = Recording()
    sim = run_sim(ds, clients, 1, protocol=protocol, local=opt, aggregator=agg, observe=[(1, 2)], seed=6)
    w1 = sim.weights.clone()
    sim.run(2)
    assert len(sim.observations) == 1
    rec = sim.observations[0]
    obs = rec.observation
    assert (obs.round, obs.client, obs.kind) == (1, 2, kind)
    assert torch.equal(obs.update, agg.seen[1][2])
    assert torch.equal(flatten(obs.model, layout_of(obs.model)), w1)  # the model the client started from
    assert obs.labels is not None and torch.equal(obs.labels, rec.true_labels)
    assert (obs.lr, obs.batch_size) == (0.05, 8)
    assert obs.local_steps == (3 if protocol == "fedavg" else 1)
    assert obs.num_examples == len(rec.true_inputs) == len(rec.true_labels)
    assert obs.num_examples == (24 if protocol == "fedavg" else 8)  # 3 or 1 batches of 8 distinct samples
    assert obs.input_shape == ds.input_shape and obs.num_classes == ds.num_classes
    # ground truth is in pixel space and is client 2's own data
    assert float(rec.true_inputs.min()) >= -1e-6 and float(rec.true_inputs.max()) <= 1 + 1e-6
    x_model = ds.from_pixels(rec.true_inputs)
    own = ds.x_train[clients[2]].flatten(1)
    assert all(bool((own - xi.flatten()).abs().amax(1).min() < 1e-5) for xi in x_model)


@pytest.mark.parametrize("batch_size", [8, None, 12])
def test_fedsgd_observation_ground_truth_matches_gradient(ds, batch_size):
    # Full batch with unequal client sizes: the padded clients' gradients must ignore the padding.
    # Batch 12 with a 5- and a 9-sample client: those use each sample once (no wrap-around repeats).
    clients = unequal_clients(ds) if batch_size in (None, 12) else split(ds, 4)
    sim = run_sim(ds, clients, 2, protocol="fedsgd", local=LocalSGD(batch_size=batch_size, lr=0.1),
                  observe=[(1, c) for c in range(4)], seed=6)
    assert [r.observation.client for r in sim.observations] == [0, 1, 2, 3]
    for c, rec in enumerate(sim.observations):
        obs = rec.observation
        model = obs.model
        x = ds.from_pixels(rec.true_inputs)
        loss = F.cross_entropy(model(x), rec.true_labels)
        grads = torch.autograd.grad(loss, [p for p in model.parameters()])
        g = torch.cat([t.reshape(-1) for t in grads])
        assert torch.allclose(obs.update, g, rtol=0, atol=1e-5)
        expected = len(clients[c]) if batch_size is None else min(batch_size, len(clients[c]))
        assert obs.num_examples == expected


def test_client_batches_do_not_depend_on_other_participants(ds):
    clients = split(ds, 6)
    opt = LocalSGD(steps=4, batch_size=8)
    gens = {c: (lambda c=c: torch.Generator().manual_seed(100 + c)) for c in range(6)}
    full = plan_batches(clients, opt, generator=[gens[c]() for c in range(6)])
    some = [1, 4]
    part = plan_batches([clients[c] for c in some], opt, generator=[gens[c]() for c in some])
    for row, c in enumerate(some):
        assert torch.equal(part.index[row], full.index[c])
    with pytest.raises(ValueError, match="generators"):
        plan_batches(clients, opt, generator=[gens[0]()])
    # so, with minibatches, an attacked run's honest clients send what they send in the clean run
    clean, attacked = Recording(), Recording()
    run_sim(ds, clients, 1, local=opt, aggregator=clean, seed=3)
    run_sim(ds, clients, 1, local=opt, aggregator=attacked, byzantine_clients=[2, 5], byzantine_attack=SignFlip(),
            seed=3)
    honest = [0, 1, 3, 4]
    # float32 tolerance: vmap over 4 instead of 6 clients may reassociate sums
    assert torch.allclose(attacked.seen[0][honest], clean.seen[0][honest], rtol=0, atol=1e-6)


def test_observation_grant_nothing(ds):
    sim = run_sim(ds, split(ds, 4), 2, local=LocalSGD(steps=2, batch_size=8), observe=[(1, 2)], grant=())
    obs = sim.observations[0].observation
    assert (obs.labels, obs.lr, obs.local_steps, obs.batch_size) == (None, None, None, None)
    with pytest.raises(ValueError, match="labels"):
        obs.require("labels")
    obs.require()  # nothing required: fine


def test_observation_not_recorded_when_client_absent(ds):
    clients = split(ds, 10)
    sim = FederatedSimulation(make_model(ds), ds, clients, sample_rate=0.3, seed=0, observe=[(0, c) for c in
                              range(10)] + [(5, 0)], eval_every=1000)
    sim.run(2)
    ids = sim._participants(0).tolist()
    assert sorted(o.observation.client for o in sim.observations) == ids
    assert all(o.observation.round == 0 for o in sim.observations)


# --------------------------------------------------------------------------------------------
# BatchNorm fallback
# --------------------------------------------------------------------------------------------
def test_batchnorm_model_uses_loop_and_rejects_vmap(ds):
    clients = split(ds, 3)
    opt = LocalSGD(steps=1, batch_size=8, lr=0.05)
    sim = FederatedSimulation(make_model(ds, "resnet", norm="batch"), ds, clients, local=opt, seed=0)
    assert not sim._use_vmap
    sim.run(1)
    rec = sim.history[0]
    assert rec.accuracy is not None and math.isfinite(rec.loss)
    running = [b for n, b in sim.model.named_buffers() if n.endswith("running_mean")]
    assert running and any(float(b.abs().max()) > 0 for b in running)  # averaged client statistics
    with pytest.raises(ValueError, match="vmap"):
        FederatedSimulation(make_model(ds, "resnet", norm="batch"), ds, clients, parallel="vmap")
    # GroupNorm (the default) is vmap-friendly
    assert FederatedSimulation(make_model(ds, "resnet"), ds, clients)._use_vmap


# --------------------------------------------------------------------------------------------
# Utility
# --------------------------------------------------------------------------------------------
def test_fedavg_digits_accuracy(ds):
    clients = split(ds, 20, "dirichlet", alpha=0.5)
    torch.manual_seed(0)
    model = privfl.make("model", "mlp", input_shape=ds.input_shape, num_classes=10)
    opt = LocalSGD(steps=10, batch_size=16, lr=0.05, momentum=0.9)
    sim = FederatedSimulation(model, ds, clients, local=opt, seed=0, eval_every=10)
    hist = sim.run(30)
    assert [r.accuracy is not None for r in hist] == [(t + 1) % 10 == 0 for t in range(30)]
    assert hist[-1].accuracy >= 0.90
    assert hist[-1].loss < hist[9].loss


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"protocol": "fedprox"}, "protocol"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sampling": "stratified"}, "sampling"),
        ({"parallel": "gpu"}, "parallel"),
        ({"byzantine_clients": [1]}, "byzantine_attack"),
        ({"byzantine_clients": [7], "byzantine_attack": SignFlip()}, "byzantine_clients"),
        ({"grant": ("labels", "secrets")}, "grant"),
        ({"worker_momentum": 1.0}, "worker_momentum"),
        ({"server_lr": 0.0}, "server_lr"),
        ({"eval_every": 0}, "eval_every"),
        ({"clients": []}, "clients"),
    ],
)
def test_bad_input_names_the_field(ds, kw, field):
    args = {"clients": split(ds, 4), **kw}
    with pytest.raises(ValueError, match=field):
        FederatedSimulation(make_model(ds), ds, **args)


def test_bad_local_settings_and_rounds(ds):
    with pytest.raises(ValueError, match="local_steps"):
        LocalSGD(steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        LocalSGD(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        LocalSGD(lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        LocalSGD(momentum=1.0)
    sim = FederatedSimulation(make_model(ds), ds, split(ds, 2))
    with pytest.raises(ValueError, match="rounds must be int in \\[1, inf\\], got int 0"):
        sim.run(0)
    with pytest.raises(TypeError, match="rounds must be int in .*got bool True"):  # one check for both simulations
        sim.run(True)


def test_divergence_is_recorded_not_raised(ds):
    # IPM with epsilon = 100 (Xie et al. 2019) drives the plain mean away until honest training overflows.
    clients = split(ds, 10)
    kw = dict(byzantine_clients=[0, 1, 2], byzantine_attack=privfl.make("byzantine_attack", "ipm", epsilon=100.0),
              local=LocalSGD(steps=5, batch_size=16, lr=0.05, momentum=0.9))
    sim = FederatedSimulation(make_model(ds, "mlp", hidden=(200, 200)), ds, clients, **kw)
    sim.run(12)
    assert sim.diverged_round is not None and sim.diverged_round < 11
    after = [r for r in sim.history if r.round > sim.diverged_round]
    assert after and all(r.participants == 0 for r in after)  # nothing trained after divergence
    assert sim.history[-1].accuracy < 0.25  # the broken model is still scored, at about chance level
    # a robust rule under the same attack does not diverge
    robust = FederatedSimulation(make_model(ds, "mlp", hidden=(200, 200)), ds, clients,
                                 aggregator=privfl.make("aggregator", "trimmed-mean", f=3), **kw)
    robust.run(12)
    assert robust.diverged_round is None and robust.history[-1].accuracy > 0.8


def test_observation_edge_cases_full_batch_size_and_empty_batch(ds):
    from privfl.fl.local import BatchPlan

    clients = unequal_clients(ds)
    sim = run_sim(ds, clients, 1, protocol="fedsgd", local=LocalSGD(batch_size=None, lr=0.1), observe=[(0, 2)])
    obs = sim.observations[0].observation
    assert obs.batch_size == obs.num_examples == len(clients[2])  # granted full batch: its size, not None
    # a client whose (Poisson) batch came up empty has nothing to reconstruct: no observation, no crash
    sim._observe = {(5, 0)}
    sim._last_plan = BatchPlan(index=torch.zeros(1, 1, 4, dtype=torch.int64), mask=torch.zeros(1, 1, 4))
    sim._record_observations(5, torch.tensor([0]), torch.zeros(1, sim.layout.dim))
    assert len(sim.observations) == 1
