"""Privacy in the FL simulation and the harness: central noise (DP-FedAvg, DP-BREM), the ledger as the
run goes, example-level DP-SGD, ε in results, `privfl audit`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import privfl
from privfl.accounting import PrivacyLedger, gaussian_epsilon_rdp, gaussian_guarantee
from privfl.cli import main
from privfl.core import Aggregator
from privfl.evaluations.scenario import Scenario, SpecError, run
from privfl.fl.local import LocalSGD, plan_batches, train_vmap
from privfl.fl.partition import partition
from privfl.fl.simulation import FederatedSimulation
from privfl.flat import flatten, layout_of


@pytest.fixture(scope="module")
def ds():
    return privfl.make("dataset", "digits")


def model(ds, seed=0, hidden=(16,)):
    torch.manual_seed(seed)
    return privfl.make("model", "mlp", input_shape=ds.input_shape, num_classes=ds.num_classes, hidden=hidden)


def clients_of(ds, n=6, seed=0):
    return partition("iid", ds.y_train, n, generator=torch.Generator().manual_seed(seed))


def sim(ds, rounds=3, n=6, **kw):
    kw.setdefault("eval_every", 1000)
    kw.setdefault("local", LocalSGD(steps=2, batch_size=8, lr=0.1))
    s = FederatedSimulation(model(ds), ds, clients_of(ds, n), **kw)
    s.run(rounds)
    return s


# --------------------------------------------------------------------------------------------
# Central DP-FedAvg
# --------------------------------------------------------------------------------------------
def test_central_gaussian_without_noise_and_clipping_is_fedavg(ds):
    plain = sim(ds, seed=1)
    quiet = sim(ds, seed=1, mechanism=privfl.make("mechanism", "dp-fedavg", clip_norm=1e6, noise_multiplier=0.0))
    assert torch.allclose(plain.weights, quiet.weights, atol=1e-6)
    assert all(r.epsilon == math.inf for r in quiet.history)


def test_central_gaussian_update_is_clipped_sum_over_expected_count(ds):
    mech = privfl.make("mechanism", "dp-fedavg", clip_norm=0.01, noise_multiplier=1e-9)
    s = sim(ds, rounds=1, seed=2, mechanism=mech, sampling="poisson", sample_rate=0.5)
    w0 = flatten(model(ds), s.layout)
    step = s.weights - w0
    participants = s.history[0].participants
    # every client's delta is far larger than 0.01, so each contributes exactly norm 0.01
    assert participants > 0
    assert float(step.norm()) <= 0.01 * participants / (0.5 * 6) + 1e-6


def test_epsilon_per_round_matches_the_subsampled_gaussian(ds):
    mech = privfl.make("mechanism", "dp-fedavg", clip_norm=1.0, noise_multiplier=1.1)
    s = sim(ds, rounds=4, seed=3, mechanism=mech, sampling="poisson", sample_rate=0.3)
    eps = [r.epsilon for r in s.history]
    for t, e in enumerate(eps):
        assert e == pytest.approx(gaussian_epsilon_rdp(sampling_rate=0.3, noise_multiplier=1.1, steps=t + 1,
                                                       delta=1e-5), rel=1e-12)
    assert eps == sorted(eps)
    assert s.epsilon(method="pld") < eps[-1]


def test_empty_poisson_round_still_releases_noise(ds):
    mech = privfl.make("mechanism", "dp-fedavg", clip_norm=1.0, noise_multiplier=1.0)
    s = FederatedSimulation(model(ds), ds, clients_of(ds, 3), mechanism=mech, sampling="poisson",
                            sample_rate=0.05, eval_every=1000, seed=0)
    before = s.weights.clone()
    empty = next(t for t in range(200) if len(s._participants(t)) == 0)
    for t in range(empty + 1):
        before = s.weights.clone()
        s.step(t)
    assert s.history[-1].participants == 0
    assert not torch.equal(before, s.weights)  # the noise was released and applied anyway
    assert len(s.ledger.events) == empty + 1


class Median(Aggregator):
    name = "median"

    def __call__(self, updates):
        return updates.median(dim=0).values


def test_central_mechanism_requires_the_mean(ds):
    with pytest.raises(ValueError, match="central"):
        FederatedSimulation(model(ds), ds, clients_of(ds), mechanism=privfl.make("mechanism", "dp-fedavg"),
                            aggregator=Median())


# --------------------------------------------------------------------------------------------
# Local mechanisms and DP-BREM
# --------------------------------------------------------------------------------------------
def test_rqm_is_accounted_per_participation_over_every_coordinate(ds):
    mech = privfl.make("mechanism", "rqm", c=0.05, delta=0.05, m=5, q=0.5)
    s = sim(ds, rounds=3, mechanism=mech, sample_rate=0.5)
    d = s.layout.dim
    joined = {}
    for t in range(3):
        for c in s._participants(t).tolist():
            joined[c] = joined.get(c, 0) + 1
    per = s.ledger.per_client_epsilon(1e-5)
    direct = PrivacyLedger()
    direct.record(mech.guarantee(), clients=[0], count=d * max(joined.values()), unit="client")
    assert max(per.values()) == pytest.approx(direct.epsilon(1e-5), rel=1e-12)
    assert set(per) == set(joined)
    assert s.history[0].bytes_per_client == d * 3 / 8


def test_dp_brem_runs_fedsgd_with_per_record_clipping(ds):
    mech = privfl.make("mechanism", "dp-brem", clip_norm=0.5, noise_multiplier=1.0, record_clip=1.0, batch_size=8)
    with pytest.raises(ValueError, match="fedsgd"):
        FederatedSimulation(model(ds), ds, clients_of(ds), mechanism=mech, protocol="fedavg")
    s = sim(ds, rounds=3, mechanism=mech, protocol="fedsgd", local=LocalSGD(batch_size=32, lr=0.5))
    assert s.local.dp_clip == 1.0 and s.local.batch_size == 8 and s.local.dp_noise == 0.0
    assert s.ledger.units == ["record"]
    eps = [r.epsilon for r in s.history]
    assert eps == sorted(eps) and math.isfinite(eps[-1])
    plus = privfl.make("mechanism", "dp-brem-plus", clip_norm=0.5, noise_multiplier=1.0, record_clip=1.0,
                       batch_size=8)
    sp = sim(ds, rounds=3, mechanism=plus, protocol="fedsgd", local=LocalSGD(batch_size=32, lr=0.5),
             observe=[(1, 0), (1, 1)])
    assert sp.history[-1].epsilon == pytest.approx(eps[-1])
    # the curious server's observation of a DP-BREM+ client is its masked report, not its momentum
    assert float(sp.observations[0].observation.update.abs().mean()) > 1e3


# --------------------------------------------------------------------------------------------
# Example-level DP-SGD inside clients
# --------------------------------------------------------------------------------------------
def test_dp_sgd_gradient_is_clipped_per_sample_sum_over_b(ds):
    net = model(ds)
    layout = layout_of(net)
    w0 = flatten(net, layout)
    clients = clients_of(ds, 3)
    opt = LocalSGD(steps=1, batch_size=5, lr=0.1, dp_clip=0.05, dp_noise=0.0)
    plan = plan_batches(clients, opt, generator=torch.Generator().manual_seed(0))
    got = train_vmap(net, layout, w0, ds.x_train, ds.y_train, plan, opt, gradient_only=True)
    for i in range(3):
        idx = plan.index[i, 0][plan.mask[i, 0] > 0]
        total = torch.zeros_like(w0)
        for j in idx.tolist():
            net.zero_grad()
            F.cross_entropy(net(ds.x_train[j : j + 1]), ds.y_train[j : j + 1]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
            total += g * min(1.0, 0.05 / float(g.norm()))
        assert torch.allclose(got[i], total / 5, atol=1e-6)


def test_dp_sgd_poisson_batches_have_the_expected_size(ds):
    clients = clients_of(ds, 2)
    opt = LocalSGD(steps=200, batch_size=10, lr=0.1, dp_clip=1.0)
    plan = plan_batches(clients, opt, generator=torch.Generator().manual_seed(0))
    sizes = plan.mask.sum(-1)  # [clients, steps]
    # mean of 200 Binomial(N, 10/N) draws: within 5 standard errors of 10 (error rate < 1e-6)
    assert torch.all((sizes.mean(1) - 10).abs() < 5 * math.sqrt(10 / 200))


def test_dp_sgd_accounting_per_client(ds):
    local = LocalSGD(steps=3, batch_size=8, lr=0.1, dp_clip=1.0, dp_noise=1.2)
    s = sim(ds, rounds=2, local=local)
    assert s.ledger.units == ["record"]
    q = 8 / min(len(c) for c in s.clients)
    expected = gaussian_epsilon_rdp(sampling_rate=q, noise_multiplier=1.2, steps=6, delta=1e-5)
    assert s.epsilon() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="dp_noise"):
        LocalSGD(dp_noise=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        LocalSGD(batch_size=None, dp_clip=1.0)


# --------------------------------------------------------------------------------------------
# Harness: ε in results, validation, the audit command
# --------------------------------------------------------------------------------------------
BASE = dict(num_clients=6, rounds=2, local_steps=2, model_params={"hidden": [16]}, eval_every=2)


def test_results_carry_epsilon(ds):
    dp = run(Scenario(**BASE, mechanism="dp-fedavg", mechanism_params={"clip_norm": 1.0, "noise_multiplier": 1.0},
                      sampling="poisson", sample_rate=0.5, accounting="both"), seed=0)
    s = dp["summary"]
    assert 0 < s["epsilon"] == s["epsilon_rdp"] and s["epsilon_pld"] < s["epsilon_rdp"]
    assert s["privacy_unit"] == "client" and s["delta"] == 1e-5
    assert len(dp["series"]["epsilon"]) == 2 and dp["series"]["epsilon"][-1] == s["epsilon"]
    for extra in ({"mechanism": "top-k"}, {}):
        out = run(Scenario(**BASE, **extra), seed=0)
        assert out["summary"]["epsilon"] == math.inf
        assert out["series"]["epsilon"] == [math.inf, math.inf]


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"delta": 0.0}, "delta"),
        ({"accounting": "prv"}, "accounting"),
        ({"dp_noise": 1.0}, "dp_clip"),
        ({"mechanism": "dp-brem"}, "protocol"),
        ({"mechanism": "dp-fedavg", "aggregator": "median"}, "aggregator"),
    ],
)
def test_scenario_validation_names_the_field(fields, name):
    with pytest.raises(SpecError, match=name):
        Scenario(**BASE, **fields).validate()


def test_audit_command(tmp_path, capsys):
    spec = tmp_path / "audit.yaml"
    spec.write_text(
        "name: audit-test\nbase: {rounds: 3, num_clients: 6, model_params: {hidden: [16]}}\n"
        "grid:\n  - {mechanism: [dp-fedavg], sampling: [poisson], sample_rate: [0.5]}\n  - {mechanism: [fp16]}\n"
    )
    png = tmp_path / "eps.png"
    tables = tmp_path / "tables.md"
    assert main(["account", str(spec), "--delta", "1e-6", "--png", str(png), "--tables", str(tables)]) == 0
    summary = capsys.readouterr().out
    assert len(summary.splitlines()) < 15 and str(tables) in summary  # a summary; the full tables in the file
    out = tables.read_text()
    assert "| round | ε (RDP) | ε (PLD) |" in out and png.is_file()
    expected = gaussian_epsilon_rdp(sampling_rate=0.5, noise_multiplier=1.0, steps=3, delta=1e-6)
    assert f"| 3 | {expected:.4g} |" in out
    assert "ε = ∞ in every round" in out and "| ∞ | ∞ |" in summary  # fp16: no guarantee
    with pytest.raises(SystemExit) as exc:  # argparse usage errors exit 2, as every command does
        main(["account", str(spec), "--delta", "2"])
    assert exc.value.code == 2 and "--delta" in capsys.readouterr().err
    spec.write_text("base: {rounds: 3, mechanism: dp-fedavg, mechanism_params: {clip_norm: -1}}\n")
    assert main(["account", str(spec)]) == 2
    assert "clip_norm" in capsys.readouterr().err


def test_ledger_is_public_on_the_simulation(ds):
    ledger = PrivacyLedger()
    ledger.record(gaussian_guarantee(1.0), count=1)
    s = sim(ds, rounds=1, ledger=ledger, mechanism=privfl.make("mechanism", "dp-fedavg", noise_multiplier=1.0))
    assert s.ledger is ledger and len(ledger.events) == 2
