"""MoNNA decentralized learning: the paper's exchange counts, two rounds against a per-node reference
(autograd + explicit Polyak momentum + brute-force NNA), vmap/loop parity, Byzantine nodes, and the
"decentralized" scenario mode (validation, result shape, determinism, learning)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import privfl
from privfl.evaluations import Scenario, SpecError, run
from privfl.fl.decentralized import DecentralizedSimulation, sampled_adjacency
from privfl.fl.local import LocalSGD, plan_batches
from privfl.fl.partition import partition
from privfl.flat import flatten, layout_of, load_flat
from privfl.seeding import make_generator


@pytest.fixture(scope="module")
def ds():
    return privfl.make("dataset", "digits")


def small_mlp(ds, seed=0):
    torch.manual_seed(seed)
    return privfl.make("model", "mlp", input_shape=ds.input_shape, num_classes=ds.num_classes, hidden=(16,))


def nodes(ds, n, seed=0):
    return partition("dirichlet", ds.y_train, n, generator=torch.Generator().manual_seed(seed), alpha=1.0)


# --------------------------------------------------------------------------------------------
# The exchange graph
# --------------------------------------------------------------------------------------------
def test_sampled_adjacency_has_the_paper_counts():
    n, byz = 16, [2, 7, 11]
    f = len(byz)
    A = sampled_adjacency(n, byz, generator=torch.Generator().manual_seed(0))
    B = sampled_adjacency(n, byz, generator=torch.Generator().manual_seed(0))
    C = sampled_adjacency(n, byz, generator=torch.Generator().manual_seed(1))
    assert torch.equal(A, B) and not torch.equal(A, C)
    honest = [i for i in range(n) if i not in byz]
    for i in honest:
        assert A[i, i] and A[i, byz].all()  # itself and every Byzantine node
        others = [j for j in honest if j != i and A[i, j]]
        assert len(others) == n - 2 * f - 1  # n − 2f − 1 other honest nodes
        assert int(A[i].sum()) == n - f
    with pytest.raises(ValueError, match="n >= 2f"):
        sampled_adjacency(5, [0, 1, 2], generator=torch.Generator())


# --------------------------------------------------------------------------------------------
# Two rounds against a per-node reference
# --------------------------------------------------------------------------------------------
def _reference(ds, model0, clients, *, rounds, local, beta, byz, attack, graph, seed):
    n = len(clients)
    layout = layout_of(model0)
    X = flatten(model0, layout).unsqueeze(0).repeat(n, 1).double()
    M = torch.zeros_like(X)
    honest = [i for i in range(n) if i not in byz]
    for t in range(rounds):
        plan = plan_batches([clients[c] for c in honest], local,
                            generator=[make_generator(seed, "batches", t, c) for c in honest])
        for r, c in enumerate(honest):
            net = copy.deepcopy(model0)
            for k in range(local.steps):
                load_flat(net, X[c].float(), layout)
                net.zero_grad()
                idx = plan.index[r, k]
                F.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx]).backward()
                g = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double()
                M[c] = beta * M[c] + (1 - beta) * g
                X[c] = X[c] - local.lr * M[c]
        half = X.clone()
        if byz:
            half[byz] = attack(half[honest].float(), len(byz)).double()
        A = (torch.ones(n, n, dtype=torch.bool) if graph == "complete"
             else sampled_adjacency(n, byz, generator=make_generator(seed, "graph", t)))
        H = half.numpy()
        new = H.copy()
        for i in honest:
            recv = np.nonzero(A[i].numpy())[0]
            dist = ((H[recv] - H[i]) ** 2).sum(1)
            keep = recv[np.argsort(dist, kind="stable")[: len(recv) - len(byz)]]
            new[i] = H[keep].mean(0)
        X = torch.from_numpy(new)
    return X[honest]


@pytest.mark.parametrize("graph,byz", [("complete", []), ("sampled", [1, 6]), ("complete", [0])])
def test_two_rounds_match_the_reference(ds, graph, byz):
    local = LocalSGD(steps=2, batch_size=8, lr=0.2)
    clients = nodes(ds, 8)
    atk = privfl.make("byzantine_attack", "alie", z=1.0) if byz else None
    sim = DecentralizedSimulation(small_mlp(ds), ds, clients, local=local, beta=0.9, graph=graph,
                                  byzantine_nodes=byz, byzantine_attack=atk, seed=5, eval_every=100)
    sim.run(2)
    ref = _reference(ds, small_mlp(ds), clients, rounds=2, local=local, beta=0.9, byz=byz, attack=atk,
                     graph=graph, seed=5)
    honest = [i for i in range(8) if i not in byz]
    assert torch.allclose(sim.models[honest].double(), ref, rtol=1e-4, atol=1e-5)


def test_vmap_and_loop_agree(ds):
    kw = dict(local=LocalSGD(steps=1, batch_size=16, lr=0.3), graph="sampled", byzantine_nodes=[3],
              byzantine_attack=privfl.make("byzantine_attack", "sign-flip"), seed=1, eval_every=3)
    a = DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 7), parallel="vmap", **kw)
    b = DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 7), parallel="loop", **kw)
    ha, hb = a.run(3), b.run(3)
    assert torch.allclose(a.models, b.models, rtol=1e-4, atol=1e-5)
    assert ha[-1].accuracy == pytest.approx(hb[-1].accuracy, abs=1e-9)
    assert ha[-1].loss == pytest.approx(hb[-1].loss, rel=1e-4)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


def test_batchnorm_model_runs_in_loop_mode_with_per_node_statistics(ds):
    torch.manual_seed(0)
    sim = DecentralizedSimulation(BNNet(), ds, nodes(ds, 5), local=LocalSGD(steps=1, batch_size=16, lr=0.1),
                                  eval_every=1)
    assert not sim._use_vmap
    sim.run(2)
    stats = [m.body[2].running_mean for m in sim._node_models]
    assert not torch.equal(stats[0], stats[1])  # each node keeps its own BatchNorm statistics
    with pytest.raises(ValueError, match="BatchNorm"):
        DecentralizedSimulation(BNNet(), ds, nodes(ds, 5), parallel="vmap")


# --------------------------------------------------------------------------------------------
# Byzantine nodes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,on", [("nan", "models"), ("ipm", "updates"), ("label-flip", "models"),
                                     ("gaussian", "updates")])
def test_byzantine_nodes_never_poison_honest_models_with_non_finite_values(ds, name, on):
    sim = DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 9), local=LocalSGD(steps=1, batch_size=16, lr=0.3),
                                  graph="sampled", byzantine_nodes=[0, 4],
                                  byzantine_attack=privfl.make("byzantine_attack", name), attack_on=on,
                                  eval_every=2)
    hist = sim.run(2)
    honest = [i for i in range(9) if i not in (0, 4)]
    assert torch.isfinite(sim.models[honest]).all()
    assert hist[-1].byzantine == 2 and 0 <= hist[-1].accuracy_min <= hist[-1].accuracy <= hist[-1].accuracy_max


def test_validation_errors(ds):
    with pytest.raises(ValueError, match="local.momentum must be 0"):
        DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 4), local=LocalSGD(momentum=0.9))
    with pytest.raises(ValueError, match="beta"):
        DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 4), beta=1.0)
    with pytest.raises(ValueError, match="graph"):
        DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 4), graph="ring")
    with pytest.raises(ValueError, match="byzantine_attack"):
        DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 4), byzantine_nodes=[1])
    with pytest.raises(ValueError, match="n >= 2f \\+ 1"):
        DecentralizedSimulation(small_mlp(ds), ds, nodes(ds, 4), graph="sampled", byzantine_nodes=[0, 1],
                                byzantine_attack=privfl.make("byzantine_attack", "nan"))


# --------------------------------------------------------------------------------------------
# The scenario mode
# --------------------------------------------------------------------------------------------
def scenario(**kw):
    base = dict(mode="decentralized", num_clients=8, byzantine=2, byzantine_attack="alie",
                byzantine_attack_params={"z": 1.0}, graph="sampled", local_steps=1, batch_size=16, lr=0.5,
                rounds=4, eval_every=2, model_params={"hidden": (16,)})
    base.update(kw)
    return Scenario.from_dict(base)


@pytest.mark.parametrize(
    "field,value,match",
    [("graph", "ring", "graph"), ("node_momentum", 1.0, "node_momentum"), ("mixing", "nope", "unknown mixing"),
     ("decentralized_attack_on", "grads", "decentralized_attack_on"), ("mechanism", "gaussian", "mechanism"),
     ("byzantine", 4, "graph"), ("preaggregators", ["nnm"], "preaggregators")],
)
def test_mode_validation_names_the_field(field, value, match):
    with pytest.raises(SpecError, match=match):
        scenario(**{field: value}).validate()


def test_mode_runs_deterministically_with_the_federated_result_shape():
    s = scenario()
    s.validate()
    a, b = run(s, 0), run(s, 0)
    for key in a["series"]:
        if key != "seconds":
            assert a["series"][key] == b["series"][key], key
    assert set(a) == {"summary", "series"}
    assert {"final_accuracy", "final_loss", "best_accuracy", "final_accuracy_min", "final_consensus",
            "wall_time_s", "bytes_per_client_round"} <= set(a["summary"])
    assert a["series"]["round"] == [1, 2, 3, 4] and a["series"]["accuracy"][0] is None
    assert a["summary"]["honest_nodes"] == 6
    # each of the 6 honest nodes draws n − 2f − 1 = 3 other honest senders, so an honest node is drawn 3
    # times on average; it also answers the 2 (omniscient) Byzantine nodes: 5 float32 models sent
    d = a["summary"]["num_params"]
    assert a["summary"]["bytes_per_client_round"] == pytest.approx(5 * d * 4)


@pytest.mark.slow
def test_monna_learns_under_attack():
    s = scenario(num_clients=10, rounds=200, eval_every=200, lr=0.5, batch_size=32, model_params={})
    acc = run(s, 0)["summary"]["final_accuracy"]
    assert acc > 0.8
