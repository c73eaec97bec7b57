"""privfl.integrations.flower in process (no Ray): the strategy on hand-made replies, the client mods
(test e: the local-DP mod's reports are unbiased), and the errors at the public entry points."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

import privfl  # noqa: E402
from privfl.core import Mechanism  # noqa: E402
from privfl.flat import flatten, layout_of  # noqa: E402
from privfl.integrations.flower import (  # noqa: E402
    CuriousServerTap,
    PrivflStrategy,
    byzantine_mod,
    local_mechanism_mod,
    record_layout,
    record_to_vector,
    vector_to_record,
)
from privfl.testing import check_unbiased  # noqa: E402

NODES = [101, 102, 103, 104, 105, 106]


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages need a run and task id; a ServerApp/ClientApp process has them, a test sets them."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class _Grid:
    def get_node_ids(self):
        return list(NODES)


def _model():
    torch.manual_seed(0)
    return privfl.make("model", "mlp", input_shape=(8,), num_classes=3)


def _round(strategy, model, make_reply, server_round=1):
    init = ArrayRecord(model.state_dict())
    messages = list(strategy.configure_train(server_round, init, ConfigRecord(), _Grid()))
    replies = [Message(RecordDict(make_reply(i, m)), reply_to=m) for i, m in enumerate(messages)]
    return messages, strategy.aggregate_train(server_round, replies)


def _vec(arrays, model):
    return record_to_vector(arrays, layout_of(model))


def test_record_round_trip_keeps_keys_dtypes_and_values():
    model = _model()
    record = ArrayRecord(model.state_dict())
    layout = record_layout(record)
    assert layout == layout_of(model)
    v = record_to_vector(record, layout)
    assert torch.equal(v, flatten(model, layout))
    back = vector_to_record(v, layout, record)
    assert list(back.keys()) == list(record.keys())
    assert torch.equal(record_to_vector(back, layout), v)
    with pytest.raises(ValueError, match="lacks the array"):
        record_to_vector(ArrayRecord({"x": torch.zeros(2)}), layout)


def test_strategy_survives_nan_garbage_and_missing_metrics():
    model = _model()
    w0 = flatten(model, layout_of(model))
    s = PrivflStrategy(model, aggregator="median", aggregator_params={"f": 2}, rng="seeded", fraction_evaluate=0.0,
                       min_available_nodes=len(NODES))

    def reply(i, msg):
        if i == 0:
            return {"arrays": ArrayRecord({k: v * math.nan for k, v in model.state_dict().items()})}
        if i == 1:
            return {"arrays": ArrayRecord({"garbage": torch.zeros(3)}), "metrics": MetricRecord({"x": [1.0]})}
        sd = {k: v + 0.01 * i for k, v in model.state_dict().items()}
        return {"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": 4, "partition-id": i})}

    messages, (arrays, metrics) = _round(s, model, reply)
    assert len(messages) == len(NODES)  # fraction 1: every node, Poisson-sampled
    assert s.history[0]["nonfinite"] == 2 and not s.history[0]["skipped"]
    assert metrics["privfl-nonfinite"] == 2
    # median of the finite rows 0.02..0.05 per coordinate, the two faulty rows dropped (counted against f)
    assert torch.allclose(_vec(arrays, model) - w0, torch.full_like(w0, 0.035), atol=1e-6)


def test_mean_refuses_a_nan_round_and_keeps_the_model():
    model = _model()
    s = PrivflStrategy(model, rng="seeded", fraction_evaluate=0.0, min_available_nodes=len(NODES))

    def reply(i, msg):
        sd = {k: v * (math.nan if i == 3 else 1.0) for k, v in model.state_dict().items()}
        return {"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": 4})}

    _, (arrays, metrics) = _round(s, model, reply)
    assert arrays is None and metrics["privfl-skipped"] == 1
    assert "NaN" in s.history[0]["reason"]


def test_weighted_mean_is_fedavgs_weighted_average():
    model = _model()
    w0 = flatten(model, layout_of(model))
    s = PrivflStrategy(model, weighted=True, rng="seeded", fraction_evaluate=0.0, min_available_nodes=len(NODES))

    def reply(i, msg):
        sd = {k: v + float(i) for k, v in model.state_dict().items()}
        return {"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": i + 1, "partition-id": i})}

    _, (arrays, _) = _round(s, model, reply)
    expected = sum(i * (i + 1) for i in range(6)) / sum(i + 1 for i in range(6))
    assert torch.allclose(_vec(arrays, model) - w0, torch.full_like(w0, expected), atol=1e-5)


def test_poisson_sampling_rate_and_central_noise_every_round():
    model = _model()
    s = PrivflStrategy(model, central_mechanism="dp-fedavg", central_params={"noise_multiplier": 1.0},
                       fraction_train=0.5, rng="seeded", fraction_evaluate=0.0, min_available_nodes=len(NODES))
    counts = [len(_round(s, model, lambda i, m: {"arrays": ArrayRecord(model.state_dict()),
                                                  "metrics": MetricRecord({"num-examples": 1})}, r)[0])
              for r in range(1, 41)]
    # independent inclusion (Binomial(240, 1/2) nodes in all; seeded), not a fixed count per round
    assert len(set(counts)) >= 4 and 90 <= sum(counts) <= 150
    assert 0 in counts  # an empty round (probability 1/64 each) ...
    assert len(s.history) == 40 and not any(h["skipped"] for h in s.history)  # ... still releases noise
    assert s.sampling_rate == 0.5
    ref = privfl.accounting.PrivacyLedger()
    g = privfl.make("mechanism", "dp-fedavg", noise_multiplier=1.0).guarantee()
    ref.record(g, sampling_rate=0.5, count=40)
    assert s.epsilon(1e-5) == pytest.approx(ref.epsilon(1e-5), rel=1e-12)
    # secure noise (the default): the discrete Gaussian's RDP, with no subsampling credit
    secure = PrivflStrategy(model, central_mechanism="dp-fedavg", central_params={"noise_multiplier": 1.0},
                            fraction_train=0.5, fraction_evaluate=0.0)
    assert secure.central.rng == "secure" and secure.central.guarantee().noise_multiplier is None


def test_strategy_entry_point_errors():
    model = _model()
    with pytest.raises(TypeError, match="model"):
        PrivflStrategy("mlp")
    with pytest.raises(ValueError, match="sampling"):
        PrivflStrategy(model, sampling="uniform")
    with pytest.raises(ValueError, match="is local"):
        PrivflStrategy(model, central_mechanism="rqm")
    with pytest.raises(ValueError, match="client-side training"):
        PrivflStrategy(model, central_mechanism="dp-brem")
    with pytest.raises(ValueError, match="aggregator must be 'mean'"):
        PrivflStrategy(model, central_mechanism="dp-fedavg", aggregator="median")
    with pytest.raises(ValueError, match="weighted"):
        PrivflStrategy(model, weighted=True, aggregator="krum", aggregator_params={"f": 1})
    with pytest.raises(ValueError, match="rng"):
        PrivflStrategy(model, rng="urandom")
    with pytest.raises(ValueError, match="omniscient"):
        byzantine_mod("alie", clients=[0])
    with pytest.raises(ValueError, match="central"):
        local_mechanism_mod("gaussian")
    with pytest.raises(ValueError, match="secure noise"):
        local_mechanism_mod("pbm")
    with pytest.raises(ValueError, match="grant"):
        CuriousServerTap(model, input_shape=(8,), num_classes=3, grant=("labels",))


class _ModMechanism(Mechanism):
    """A Flower mod seen as a privfl mechanism: each row is one client's update sent through the mod
    (a fresh round per row), read back as the server reads it."""

    name = "flower-mod"
    role = "client-vector"
    unbiased = True

    def __init__(self, mod, d):
        self.mod, self.d = mod, d
        self.w0 = torch.linspace(-1, 1, d)

    def privatize(self, x, *, generator=None, client_ids=None):
        layout = record_layout(ArrayRecord({"w": self.w0}))
        # the seeded mod keys its noise by (seed, round, client): rounds drawn from ``generator`` make
        # different generators give different draws, as check_unbiased requires of a randomized mechanism
        first = 1 if generator is None else int(torch.randint(1, 2**30, (1,), generator=generator))
        out = []
        for r, row in enumerate(x):
            msg = Message(RecordDict({"arrays": ArrayRecord({"w": self.w0.clone()}),
                                      "config": ConfigRecord({"server-round": first + r})}),
                          dst_node_id=7, message_type=MessageType.TRAIN)

            def call_next(m, ctx, row=row):
                return Message(RecordDict({"arrays": ArrayRecord({"w": self.w0 + row}),
                                           "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

            ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 3}, state=RecordDict(), run_config={})
            reply = self.mod(msg, ctx, call_next)
            out.append(record_to_vector(reply.content["arrays"], layout) - self.w0)
        return torch.stack(out)

    def guarantee(self):
        raise NotImplementedError


@pytest.mark.slow
@pytest.mark.parametrize("name,params,rng", [
    ("gaussian", {"local": True, "clip_norm": 2.0, "noise_multiplier": 0.5}, "secure"),  # the mod's default
    ("rqm", {"c": 1.0, "delta": 1.0, "m": 5, "q": 0.5}, "seeded"),
])
def test_e_local_mechanism_mod_reports_are_unbiased(name, params, rng):
    d = 6
    mod = local_mechanism_mod(name, rng=rng, seed=0, **params)
    x = torch.tensor([0.4, -0.3, 0.2, 0.0, -0.5, 0.1])  # inside the clip ball / [-c, c]
    # secure noise is not seeded: this test then fails with probability alpha = 1e-4 (Bonferroni inside)
    result = check_unbiased(_ModMechanism(mod, d), x, trials=1000, alpha=1e-4, seed=0)  # raises if biased
    assert result.max_abs_z <= result.threshold
    # and the mod really adds noise (a pass-through would also be unbiased)
    reports = _ModMechanism(mod, d).privatize(x.repeat(50, 1))
    assert reports.std(dim=0).min() > 0.05


def test_byzantine_mod_sign_flips_only_chosen_clients():
    mod = byzantine_mod("sign-flip", clients=[3], scale=2.0)
    mech = _ModMechanism(mod, 4)
    u = torch.tensor([[0.5, -0.25, 1.0, 0.0]])
    assert torch.allclose(mech.privatize(u), -2.0 * u)
    other = byzantine_mod("sign-flip", clients=[4], scale=2.0)
    assert torch.allclose(_ModMechanism(other, 4).privatize(u), u)


def test_readme_flower_section_builds_up_to_the_run(monkeypatch):
    """The "Use with Flower" snippet builds its apps as written (the run itself is what
    test_flower_simulation.py exercises; here run_simulation stops the snippet)."""
    import re
    from pathlib import Path

    import flwr.simulation

    class _Stop(Exception):
        pass

    def stop(server_app, client_app, num_supernodes, **kwargs):
        assert num_supernodes == 10 and client_app is not None and server_app is not None
        raise _Stop

    monkeypatch.setattr(flwr.simulation, "run_simulation", stop)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use with Flower\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    scope: dict = {}
    with pytest.raises(_Stop):
        exec(compile(code, "README.md: Use with Flower", "exec"), scope)
    assert isinstance(scope["strategy"], PrivflStrategy) and scope["strategy"].rng == "secure"
