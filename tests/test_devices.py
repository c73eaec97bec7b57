"""Every tensor path on a device: the contract battery, CPU-vs-device agreement of the deterministic
rules, FL rounds (vmap and loop), the privacy attacks, the empirical audit and the runner / CLI.

Each test takes the ``device`` fixture: ``"cpu"`` always runs (it proves the test itself works, here
and in CI); ``"cuda"`` runs where ``torch.cuda.is_available()``. On CUDA, TF32 is switched off for
the duration of a test: cuDNN convolutions default to TF32 (10-bit mantissa), which would move float32
results by ~1e-3 and hide real disagreements behind a loose tolerance.

cuDNN is also made deterministic (``cudnn.deterministic``, no benchmark autotuning), so repeated runs
with one seed are comparable; the remaining nondeterminism (atomics in some CUDA kernels) is covered by
small tolerances where a test repeats a run on CUDA.

Tolerances (CPU result moved to the device vs the device result, same input):

- float64 rules: ``rtol=1e-9, atol=1e-12`` — the only difference is the summation order of the
  distance / Gram reductions and of the means (each a few ulps of ~1e-16); selections (Krum, Bulyan,
  MDA, trimmed ranks) are the same on random Gaussian rows, whose gaps are ~1e-2, far above ~1e-13.
- float32 rules: ``rtol=1e-5, atol=1e-6`` on unit-scale rows (accumulation in float32 over ≤ 31 rows
  gives ~1e-7 relative error).
- geometric median: ``tol=0`` and a fixed iteration count, so both devices run the same number of
  Weiszfeld steps (a data-dependent stop could differ by one step, i.e. by ``tol``).
- FL rounds: the batch plan and participation come from CPU generators whatever the device, and the
  models are initialised on CPU, so a round on CUDA does the same arithmetic as on CPU: ``rtol=1e-4,
  atol=1e-5`` as for vmap vs loop in tests/test_simulation.py (float32 reassociation only).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from test_contracts import COMPONENTS, build
from test_simulation import OPT, SMALL

import privfl
from privfl.accounting.empirical import epsilon_lower_bound
from privfl.core import Observation
from privfl.defenses._common import median_window_mean, sorted_ranks
from privfl.evaluations.audit import black_box_audit, canary_audit, one_run_audit
from privfl.evaluations.scoring import score
from privfl.fl.local import LocalSGD
from privfl.fl.partition import partition
from privfl.fl.simulation import FederatedSimulation
from privfl.flat import flatten, layout_of
from privfl.testing import check_contract

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request):
    dev = torch.device(request.param)
    if dev.type != "cuda":
        yield dev
        return
    b = torch.backends
    saved = b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    b.cudnn.deterministic, b.cudnn.benchmark = True, False  # repeated runs comparable
    try:
        yield dev
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark = saved


@pytest.fixture(scope="module")
def digits():
    return privfl.make("dataset", "digits")


def on(x: torch.Tensor, device: torch.device) -> bool:
    return x.device.type == device.type


# --------------------------------------------------------------------------------------------
# The contract battery on the device (dtype and device kept, determinism, clear errors)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,name", COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_contract_on_device(device, kind, name):
    # the parameter checks do not touch tensors; tests/test_contracts.py runs them
    report = check_contract(build(kind, name), params=False, device=device)
    assert report.ok
    assert {"no input mutation", "dtype kept", "same seed, same output"} <= set(report.checks) or (
        kind == "mechanism" and {"no input mutation", "device kept", "same seed, same output"} <= set(report.checks)
    )


CENTRAL = [n for n in privfl.available("mechanism") if getattr(build("mechanism", n), "central", False)]


@pytest.mark.parametrize("name", CENTRAL)
def test_central_aggregate_of_a_fresh_instance_keeps_the_device(device, name):
    """The server step on an instance that has not privatized (no client state yet), as the audits call it."""
    client, server = build("mechanism", name), build("mechanism", name)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    reports = client.privatize(x, generator=torch.Generator(device=device).manual_seed(0))
    out = server.aggregate(reports, expected_rows=5.0, generator=torch.Generator(device=device).manual_seed(1))
    assert on(out, device) and out.shape == (6,) and bool(torch.isfinite(out).all())


# --------------------------------------------------------------------------------------------
# Deterministic rules: the device gives the CPU's result
# --------------------------------------------------------------------------------------------
RULES = [
    ("aggregator", "mean", {}),
    ("aggregator", "median", {}),
    ("aggregator", "trimmed-mean", {"f": 3}),
    ("aggregator", "meamed", {"f": 3}),
    ("aggregator", "krum", {"f": 3}),
    ("aggregator", "multi-krum", {"f": 3}),
    ("aggregator", "bulyan", {"f": 3}),
    ("aggregator", "bulyan", {"f": 0}),
    ("aggregator", "geometric-median", {"f": 3, "tol": 0.0, "max_iter": 40}),
    ("aggregator", "centered-clipping", {"f": 3}),
    ("aggregator", "mda", {"f": 2}),
    ("preaggregator", "nnm", {"f": 3}),
    ("preaggregator", "clipping", {}),
    ("preaggregator", "arc", {"f": 3}),
    ("mixing", "nna", {}),
]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


def _rows(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 5] += 4.0  # a few outliers, so selections and trims matter
    return x.to(dtype)


def _apply(rule, kind: str, x: torch.Tensor) -> torch.Tensor:
    rule = copy.deepcopy(rule)
    if kind == "preaggregator":
        return rule(x, generator=torch.Generator(device=x.device).manual_seed(0))
    return rule(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,name,kw", RULES, ids=[f"{n}{kw.get('f', '')}" for _, n, kw in RULES])
def test_rule_agrees_with_cpu(device, kind, name, kw, dtype):
    n = 15 if name == "mda" else 31
    rule = privfl.make(kind, name, **kw)
    x = _rows(n, 300, dtype)
    want = _apply(rule, kind, x)
    got = _apply(rule, kind, x.to(device))
    assert on(got, device) and got.dtype == dtype and got.shape == want.shape
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want.to(device), **TOL[dtype])


@pytest.mark.skipif(not CUDA, reason="the device chunk bound applies to GPUs only")
@pytest.mark.parametrize("kind,name,kw", RULES, ids=[f"{n}{kw.get('f', '')}" for _, n, kw in RULES])
def test_rule_in_bounded_device_chunks_agrees_with_cpu(monkeypatch, kind, name, kw):
    """Large models are processed in column chunks of ``_DEVICE_CHUNK_VALUES`` on a GPU: force several
    (ragged) chunks and compare with the CPU result."""
    import privfl.defenses._common as common

    n = 15 if name == "mda" else 31
    monkeypatch.setattr(common, "_DEVICE_CHUNK_VALUES", 64 * n)  # 64 columns, 300 = 4·64 + 44
    rule = privfl.make(kind, name, **kw)
    x = _rows(n, 300, torch.float64)
    want = _apply(rule, kind, x)
    got = _apply(rule, kind, x.to("cuda"))
    torch.testing.assert_close(got, want.to("cuda"), **TOL[torch.float64])


@pytest.mark.parametrize("m,lo,hi", [(7, 0, 6), (31, 10, 20), (200, 50, 120)])
def test_bulyan_coordinate_stage_agrees_with_sort(device, m, lo, hi):
    """The coordinate stage: a Batcher network (CPU, ≤ 128 rows) or torch.sort (more rows on CPU, any
    other device) — both give exactly the sorted ranks, and the window mean is the same on the device."""
    x = _rows(m, 257, torch.float64, seed=m)
    want = torch.sort(x, dim=0).values[lo : hi + 1]
    xd = x.to(device)
    assert torch.equal(sorted_ranks(xd, lo, hi), want.to(device))
    for k in (1, m // 3, m - 2):
        rows = torch.arange(0, m, 2, device=device)
        for r in (None, rows):
            got = median_window_mean(xd, k if r is None else max(1, min(k, len(rows) - 1)), rows=r)
            ref = median_window_mean(x, k if r is None else max(1, min(k, len(rows) - 1)),
                                     rows=None if r is None else r.cpu())
            assert on(got, device)
            torch.testing.assert_close(got, ref.to(device), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# One FL round on the device: vmap = loop, = the CPU round
# --------------------------------------------------------------------------------------------
def _sim(ds, device, model: str, parallel: str, rounds: int = 1, seed: int = 3, clients: int = 4,
         **kw) -> FederatedSimulation:
    torch.manual_seed(0)  # models initialise from the global RNG, on CPU, whatever the device
    net = privfl.make("model", model, input_shape=ds.input_shape, num_classes=ds.num_classes, **SMALL[model])
    clients = partition("iid", ds.y_train, clients, generator=torch.Generator().manual_seed(0))
    kw.setdefault("local", OPT)
    sim = FederatedSimulation(net, ds, clients, parallel=parallel, seed=seed, device=device, eval_every=1, **kw)
    sim.run(rounds)
    return sim


@pytest.mark.parametrize("protocol", ["fedavg", "fedsgd"])
@pytest.mark.parametrize("model", ["mlp", "convnet"])
def test_fl_round_vmap_equals_loop_and_cpu(digits, device, model, protocol):
    local = OPT if protocol == "fedavg" else LocalSGD(batch_size=16, lr=0.1)
    sims = {p: _sim(digits, device, model, p, protocol=protocol, local=local) for p in ("vmap", "loop")}
    assert sims["vmap"]._use_vmap and not sims["loop"]._use_vmap
    w = sims["vmap"].weights
    assert on(w, device) and on(sims["loop"].weights, device)
    w0 = flatten(sims["vmap"].model, sims["vmap"].layout)  # the module keeps the initial weights
    assert (w - w0).abs().max() > 1e-3  # the round trained
    torch.testing.assert_close(w, sims["loop"].weights, rtol=1e-4, atol=1e-5)
    acc = sims["vmap"].history[-1].accuracy
    assert acc is not None and 0.0 <= acc <= 1.0
    if device.type != "cpu":
        cpu = _sim(digits, "cpu", model, "vmap", protocol=protocol, local=local)
        torch.testing.assert_close(w, cpu.weights.to(device), rtol=1e-4, atol=1e-5)


FULL_ROUNDS = {
    # client mechanism + pre-aggregator + robust rule + omniscient attack + worker momentum + observations
    "local-dp+robust": dict(
        mechanism=("gaussian", {"noise_multiplier": 0.5, "clip_norm": 1.0, "local": True}),
        aggregator=("multi-krum", {"f": 1}), preaggregators=[("nnm", {"f": 1})],
        byzantine=("alie", {}), worker_momentum=0.5),
    # central mechanism (noise on the sum), its own protocol and record clipping, a Byzantine client
    "dp-brem": dict(mechanism=("dp-brem", {}), byzantine=("ipm-own-data", {})),  # own data: ε stays valid
    # example-level DP-SGD under Poisson client sampling, a data-poisoning client
    "dp-sgd": dict(local=LocalSGD(steps=2, batch_size=8, lr=0.05, dp_clip=1.0, dp_noise=0.8),
                   sampling="poisson", sample_rate=0.75, byzantine=("label-flip", {})),
}


def _full_round(ds, device, case: str, seed: int) -> FederatedSimulation:
    spec = FULL_ROUNDS[case]
    kw: dict = {}
    if "mechanism" in spec:
        name, p = spec["mechanism"]
        kw["mechanism"] = privfl.make("mechanism", name, **p)
    if "aggregator" in spec:
        name, p = spec["aggregator"]
        kw["aggregator"] = privfl.make("aggregator", name, **p)
    kw["preaggregators"] = [privfl.make("preaggregator", n, **p) for n, p in spec.get("preaggregators", [])]
    name, p = spec["byzantine"]
    kw["byzantine_attack"] = privfl.make("byzantine_attack", name, **p)
    kw["byzantine_clients"] = [2]
    for key in ("local", "sampling", "sample_rate", "worker_momentum"):
        if key in spec:
            kw[key] = spec[key]
    protocol = getattr(kw.get("mechanism"), "protocol", None) or "fedavg"
    return _sim(ds, device, "mlp", "auto", rounds=2, seed=seed, clients=6, protocol=protocol,
                observe=[(1, 0), (1, 1)], **kw)


@pytest.mark.parametrize("case", list(FULL_ROUNDS))
def test_fl_rounds_with_every_slot_on_device(digits, device, case):
    a, b = _full_round(digits, device, case, seed=5), _full_round(digits, device, case, seed=5)
    assert on(a.weights, device) and bool(torch.isfinite(a.weights).all())
    if device.type == "cpu":
        assert torch.equal(a.weights, b.weights)  # same seed, same run
    else:  # CUDA kernels may reorder float sums between runs; a wrong stream would differ by ≫ 1e-5
        torch.testing.assert_close(a.weights, b.weights, rtol=1e-5, atol=1e-6)
    assert all(r.accuracy is not None and math.isfinite(r.accuracy) for r in a.history)
    if a.ledger is not None:
        assert a.epsilon() > 0
    for rec in a.observations:
        assert on(rec.observation.update, device) and rec.true_inputs.shape[0] == rec.observation.num_examples
    c = _full_round(digits, device, case, seed=6)
    assert not torch.equal(a.weights, c.weights)


# --------------------------------------------------------------------------------------------
# Privacy attacks on the device
# --------------------------------------------------------------------------------------------
def _net(ds, name: str, device, **opts):
    torch.manual_seed(0)
    return privfl.make("model", name, input_shape=ds.input_shape, num_classes=ds.num_classes, **opts).to(device).eval()


def _observation(ds, model, x, y, *, kind: str, lr=0.1, steps=2, batch=1, labels=True) -> Observation:
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "gradient":
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)
        update = torch.cat([t.reshape(-1) for t in g])
    else:
        local = copy.deepcopy(model)
        opt = torch.optim.SGD(local.parameters(), lr=lr)
        for k in range(steps):
            idx = (torch.arange(batch, device=x.device) + k * batch) % len(x)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(local(x[idx]), y[idx]).backward()
            opt.step()
        layout = layout_of(model)
        update = flatten(local, layout) - flatten(model, layout)
    return Observation(
        model=model, update=update.detach(), kind=kind, num_examples=len(x), input_shape=ds.input_shape,
        num_classes=ds.num_classes, labels=y.clone() if labels else None,
        lr=lr if kind == "delta" else None, local_steps=steps if kind == "delta" else None,
        batch_size=batch if kind == "delta" else None, data_mean=ds.mean, data_std=ds.std,
    )


ATTACK_CASES = {
    "dlg": ({"iterations": 8}, "lenet", {}, {"kind": "gradient", "labels": False}, 1),
    "inverting-gradients": ({"iterations": 40, "tv_weight": 1e-2}, "mlp", {"hidden": (32,)}, {"kind": "gradient"}, 2),
    "fedavg-inversion": ({"iterations": 40, "tv_weight": 1e-2}, "mlp", {"hidden": (32,)},
                         {"kind": "delta", "steps": 2, "batch": 1}, 2),
    "sme": ({"iterations": 40, "lr": 0.1}, "mlp", {"hidden": (32,)}, {"kind": "delta", "steps": 2, "batch": 1}, 2),
}


def test_every_privacy_attack_is_covered():
    assert set(privfl.available("privacy_attack")) == set(ATTACK_CASES) | {"analytic"}


@pytest.mark.parametrize("name", list(ATTACK_CASES))
@pytest.mark.parametrize("gen_on", ["cpu", "device"])
def test_attack_runs_on_device(digits, device, name, gen_on):
    params, model_name, opts, facts, victims = ATTACK_CASES[name]
    model = _net(digits, model_name, device, **opts)
    x = digits.x_train[:1].to(device)
    obs = [_observation(digits, model, digits.x_train[i : i + 1].to(device), digits.y_train[i : i + 1].to(device),
                        **facts) for i in range(victims)]
    if victims > 1:  # several victims at once: the vmap path
        obs = Observation(**{**obs[0].__dict__, "update": torch.stack([o.update for o in obs]),
                             "labels": torch.stack([o.labels for o in obs])})
    else:
        obs = obs[0]

    def gen():
        return torch.Generator(device="cpu" if gen_on == "cpu" else device).manual_seed(0)

    short = privfl.make("privacy_attack", name, **{**params, "iterations": 1}).attack(obs, generator=gen())
    rec = privfl.make("privacy_attack", name, **params).attack(obs, generator=gen())
    want = (victims, 1, *digits.input_shape) if victims > 1 else (1, *digits.input_shape)
    assert tuple(rec.data.shape) == want and rec.data.dtype == torch.float32 and on(rec.data, device)
    assert float(rec.data.min()) >= 0.0 and float(rec.data.max()) <= 1.0  # pixel space
    assert math.isfinite(rec.loss) and rec.loss < short.loss  # the attack loss went down
    if victims > 1:
        assert rec.extra["vectorized"]
    again = privfl.make("privacy_attack", name, **params).attack(obs, generator=gen())
    if device.type == "cpu":
        assert torch.equal(rec.data, again.data)
    else:  # atomics in CUDA backward kernels may reorder float sums; another start would differ by ≫ 1e-2
        torch.testing.assert_close(rec.data, again.data, rtol=0, atol=1e-2)
    truth = digits.to_pixels(x)
    assert score(truth.cpu(), (rec.data[0] if victims > 1 else rec.data).cpu()).psnr > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_analytic_attack_exact_on_device(digits, device, dtype):
    model = _net(digits, "mlp", device, hidden=(32,)).to(dtype)
    for i in range(2):
        x = digits.x_train[i : i + 1].to(device, dtype)
        y = digits.y_train[i : i + 1].to(device)
        rec = privfl.make("privacy_attack", "analytic").attack(_observation(digits, model, x, y, kind="gradient",
                                                                            labels=False))
        assert on(rec.data, device) and rec.data.dtype == dtype
        torch.testing.assert_close(rec.data, digits.to_pixels(x), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Empirical audits on the device
# --------------------------------------------------------------------------------------------
def test_empirical_bound_takes_device_scores(device):
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(4000, generator=g, device=device) + 2.0
    b = torch.randn(4000, generator=g, device=device)
    bound = epsilon_lower_bound(a, b, delta=1e-5, confidence=0.95)
    ref = epsilon_lower_bound(a.cpu(), b.cpu(), delta=1e-5, confidence=0.95)
    assert bound.epsilon > 0.5 and bound.epsilon == ref.epsilon


def test_gaussian_audits_on_device(device):
    local = privfl.make("mechanism", "gaussian", noise_multiplier=1.0, clip_norm=1.0, local=True)
    res = black_box_audit(local, delta=1e-5, trials=20_000, device=device, seed=0)
    assert 0.0 < res.epsilon_lower <= res.epsilon_accounted
    again = black_box_audit(local, delta=1e-5, trials=20_000, device=device, seed=0)
    assert again.epsilon_lower == res.epsilon_lower
    central = privfl.make("mechanism", "gaussian", noise_multiplier=1.0, clip_norm=1.0, local=False)
    res = black_box_audit(central, delta=1e-5, trials=5_000, device=device, seed=0)
    assert 0.0 <= res.epsilon_lower <= res.epsilon_accounted
    res = canary_audit(central, delta=1e-5, trials=500, device=device, seed=0)
    assert 0.0 <= res.epsilon_lower <= res.epsilon_accounted
    res = one_run_audit(central, delta=1e-5, device=device, seed=0)
    assert 0.0 <= res.epsilon_lower <= res.epsilon_accounted


# --------------------------------------------------------------------------------------------
# Runner and CLI on the device
# --------------------------------------------------------------------------------------------
TINY = dict(dataset="digits", num_clients=4, rounds=2, local_steps=2, batch_size=8, model="mlp",
            model_params={"hidden": [16]}, aggregator="median")


def test_cli_run_on_device(device, tmp_path):
    from privfl.cli import main
    from privfl.evaluations.store import Store

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": TINY, "seeds": [0]}))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--workers", "0", "--device", device.type,
                 "--no-progress"]) == 0
    rows = Store(out).rows()
    assert len(rows) == 1 and rows[0].status == "done", [(r.status, r.error) for r in rows]
    summary = rows[0].result["summary"]
    assert summary["device"].startswith(device.type) and summary["parallel"] == "vmap"
    assert math.isfinite(summary["final_accuracy"]) and 0.0 <= summary["final_accuracy"] <= 1.0


def test_scenario_device_field(device):
    from privfl.evaluations import Scenario
    from privfl.evaluations.scenario import run

    result = run(Scenario(**{**TINY, "device": device.type}), seed=0)
    acc = result["series"]["accuracy"]
    assert len(acc) == TINY["rounds"] and all(math.isfinite(a) and 0 <= a <= 1 for a in acc)
    assert result["summary"]["device"].startswith(device.type)


HARNESS = {
    "federated+inversion": {**TINY, "batch_size": 2, "local_steps": 1, "inversion_attack": "inverting-gradients",
                            "inversion_attack_params": {"iterations": 5}, "inversion_victims": 2,
                            "byzantine": 1, "byzantine_attack": "alie", "aggregator": "bulyan",
                            "aggregator_params": {"f": 0}},
    "decentralized": {**TINY, "mode": "decentralized", "num_clients": 6, "byzantine": 1,
                      "byzantine_attack": "sign-flip", "mixing_params": {"f": 1}, "graph": "sampled"},
    "analytics": {"mode": "analytics", "mechanism": "loloha", "mechanism_params": {"k": 8, "eps_inf": 2.0}, "rounds": 2,
                  "analytics_users": 300, "sample_rate": 0.5, "device": "cpu"},
}


@pytest.mark.parametrize("mode", list(HARNESS))
def test_scenario_modes_on_device(device, mode):
    """Every runner mode through the harness on the device: finite metrics, the same result twice."""
    from privfl.evaluations import Scenario
    from privfl.evaluations.scenario import run

    scenario = Scenario(**{**HARNESS[mode], "device": device.type})
    a, b = run(scenario, seed=0), run(scenario, seed=0)
    key = "mse" if mode == "analytics" else "accuracy"
    values = a["series"][key]
    assert len(values) == scenario.rounds and all(v is not None and math.isfinite(v) for v in values)
    if device.type == "cpu" or mode == "analytics":
        assert values == b["series"][key]
    else:  # CUDA reductions may reorder float sums between runs: accuracies within one test example
        assert all(abs(x - y) <= 0.01 for x, y in zip(values, b["series"][key]))
    if mode == "federated+inversion":
        inv = {k: v for k, v in a["summary"].items() if "psnr" in k}
        assert inv and all(math.isfinite(v) for v in inv.values() if isinstance(v, float)), a["summary"].keys()
