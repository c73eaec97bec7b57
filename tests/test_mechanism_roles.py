"""Mechanism roles and capabilities are declared (privfl.core.Mechanism), checked when a class is defined,
and read by the simulation, the audits and privfl.testing — a user's mechanism, declared the same way,
is treated exactly like a built-in one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import privfl
from privfl import params, registry
from privfl.accounting import pure_guarantee
from privfl.cli import main
from privfl.core import MECHANISM_ROLES, InputDomain, Mechanism
from privfl.evaluations.audit import black_box_audit, neighbouring_pair
from privfl.params import Int, Real
from privfl.testing import check_contract, check_privacy_loss, check_unbiased


# ---- every registered mechanism declares its role ------------------------------------------------
def _built(name: str) -> Mechanism:
    factory = registry.get("mechanism", name)
    kwargs = params.example_params(params.space_of(factory))
    return factory(**{**kwargs, **({"local": True} if name == "gaussian" else {})})


CENTRAL = {"dp-fedavg", "dp-brem", "dp-brem-plus"}  # gaussian: central only with local=False


@pytest.mark.parametrize("name", registry.available("mechanism"))
def test_every_registered_mechanism_declares_a_role(name):
    cls = registry.get("mechanism", name)
    assert cls.roles and set(cls.roles) <= set(MECHANISM_ROLES), name
    mech = _built(name)
    assert mech.role in cls.roles
    # central / input_kind / noise_location follow from the role, as before the roles existed
    assert mech.central == (name in CENTRAL)
    assert mech.input_kind == ("categories" if mech.role == "frequency-oracle" else "vectors")
    assert mech.noise_location == ("server" if name in {"dp-fedavg", "dp-brem"} else "client")
    domain = mech.domain()
    assert isinstance(domain, InputDomain)
    assert domain.categorical == (mech.role == "frequency-oracle")
    if mech.role == "compressor":
        assert not mech.guarantee().is_private and domain.kind == "unbounded"
    else:
        assert domain.kind != "unbounded"  # every private mechanism states the domain of its guarantee


def test_gaussian_role_follows_local_and_domains_carry_the_old_bounds():
    assert registry.make("mechanism", "gaussian", local=False).role == "server-noise"
    assert registry.make("mechanism", "gaussian", local=False).central
    assert registry.make("mechanism", "gaussian", local=True, clip_norm=2.5).domain() == InputDomain.l2_ball(2.5)
    assert registry.make("mechanism", "rqm", c=0.7).domain() == InputDomain.box(0.7)
    assert registry.make("mechanism", "grr", k=5, eps=1.0).domain() == InputDomain.of_categories(5)
    secure = [n for n in registry.available("mechanism") if registry.get("mechanism", n).secure_sum]
    assert sorted(secure) == ["ddg", "pbm", "rqm", "skellam"]
    with pytest.raises(ValueError, match="bound"):
        InputDomain("box", bound=-1.0)
    with pytest.raises(ValueError, match="categories"):
        InputDomain("categories", categories=1)


# ---- inconsistent declarations fail when the class is defined ------------------------------------
def _vector(**members):
    def privatize(self, x, *, generator=None, client_ids=None):
        return x

    def guarantee(self):
        return pure_guarantee(1.0, name="t")

    return {"privatize": privatize, "guarantee": guarantee, "nonfinite": "raise", **members}


def _pmf(self, x, *, public=None):
    return np.array([0.5, 0.5])


def _outcomes(self, reports):
    return reports.reshape(-1).long(), None


BROKEN = {
    "no role": ({}, "declares no role"),
    "unknown role": ({"role": "local"}, "role must be one of"),
    "exact_pmf without its methods": ({"role": "client-vector", "exact_pmf": True}, "does not implement"),
    "pmf methods without exact_pmf": ({"role": "client-vector", "output_pmf": _pmf, "report_outcomes": _outcomes},
                                      "does not declare exact_pmf"),
    "public_key without exact_pmf": ({"role": "client-vector", "public_key": "seed"}, "exact_pmf"),
    "stateful without reset": ({"role": "client-vector", "stateful": True}, "does not implement reset"),
    "reset without stateful": ({"role": "client-vector", "reset": lambda self: None}, "stateful"),
    "secure_sum on server noise": ({"role": "server-noise", "secure_sum": True, "sum_guarantee": lambda s, n: None,
                                    "decode_sum": lambda s, t, c: t, "sum_bits": lambda s, n: 8,
                                    "aggregate": lambda s, r, **k: r}, "client-vector"),
    "server noise without aggregate": ({"role": "server-noise"}, "aggregate"),
    "oracle without domain": ({"role": "frequency-oracle", "nonfinite": "n/a"}, "domain"),
    "n/a policy on vectors": ({"role": "client-vector", "nonfinite": "n/a"}, "integer inputs"),
    "several roles without a role property": ({"roles": ("client-vector", "server-noise"),
                                               "aggregate": lambda s, r, **k: r}, "declares no role"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_inconsistent_declarations_raise_at_class_definition(case):
    members, match = BROKEN[case]
    with pytest.raises(TypeError, match=match):
        type("Broken", (Mechanism,), _vector(**members))


def test_consistent_declarations_define_and_abstract_classes_may_leave_the_role_open():
    ok = type("Fine", (Mechanism,), _vector(role="client-vector", exact_pmf=True, output_pmf=_pmf,
                                            report_outcomes=_outcomes))
    assert ok().exact_pmf and ok.roles == ("client-vector",)

    class Family(Mechanism):  # abstract (no privatize): declares what its members share, not a role
        unbiased = True

    class Member(Family):
        role = "client-vector"
        nonfinite = "raise"

        def privatize(self, x, *, generator=None, client_ids=None):
            return x

        def guarantee(self):
            return pure_guarantee(1.0, name="m")

    assert Member().role == "client-vector" and Member.unbiased


# ---- a user's frequency oracle gets the built-in treatment ----------------------------------------
@privfl.register("mechanism", "user-kary-rr")
class UserKaryRR(Mechanism):
    """A user's own k-ary randomized response (Warner 1965; Kairouz, Oh, Viswanath 2014 for k > 2),
    written against the public Mechanism base only: keep the value w.p. e^ε/(e^ε + k − 1), else
    report one of the other k − 1 uniformly. Sampled from the rows of its transition matrix."""

    name = "user-kary-rr"
    role = "frequency-oracle"
    exact_pmf = True
    unbiased = True
    nonfinite = "n/a"
    param_space = {"k": Int(2, 64, typical=(2, 8)), "eps": Real(0, None, lo_open=True, typical=(0.5, 4.0))}

    def __init__(self, k: int = 4, eps: float = 1.0) -> None:
        self.k, self.eps = int(k), float(eps)
        keep = math.exp(self.eps) / (math.exp(self.eps) + self.k - 1)
        other = (1.0 - keep) / (self.k - 1)
        self.matrix = torch.full((self.k, self.k), other, dtype=torch.float64)
        self.matrix.fill_diagonal_(keep)
        self.keep, self.other = keep, other

    def domain(self) -> InputDomain:
        return InputDomain.of_categories(self.k)

    def privatize(self, x, *, generator=None, client_ids=None):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 1:
            raise TypeError("x must be a [n] int64 tensor of category ids")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.k):
            raise ValueError(f"x must hold category ids in [0, {self.k}), got {x.min()}..{x.max()}")
        if x.numel() == 0:
            return x.clone()
        rows = self.matrix.to(x.device)[x]
        return torch.multinomial(rows, 1, generator=generator).reshape(-1)

    def decode(self, reports):
        onehot = torch.nn.functional.one_hot(reports, self.k).to(torch.float64)
        return (onehot - self.other) / (self.keep - self.other)

    def guarantee(self):
        return pure_guarantee(self.eps, name=f"user-kary-rr(k={self.k}, eps={self.eps})", unit="client")

    def output_pmf(self, v, *, public=None):
        return self.matrix[int(v)].numpy()

    def report_outcomes(self, reports):
        return reports.reshape(-1).to(torch.int64), None


def test_user_frequency_oracle_passes_the_testing_checks():
    mech = UserKaryRR(k=4, eps=1.5)
    check_contract(mech)
    loss = check_privacy_loss(mech)  # the exact path: read from exact_pmf and the declared domain
    assert loss.method == "exact" and loss.epsilon == pytest.approx(1.5, abs=1e-9)
    check_unbiased(mech, torch.tensor([0, 1, 1, 3]), trials=3000)


def test_user_frequency_oracle_is_audited_like_grr(tmp_path, capsys):
    user, grr = UserKaryRR(k=4, eps=2.0), registry.make("mechanism", "grr", k=4, eps=2.0)
    assert neighbouring_pair(user)[:2] == neighbouring_pair(grr)[:2] == (0, 1)
    a, b = (black_box_audit(m, trials=20_000, delta=0.0, seed=3) for m in (user, grr))
    assert a.details["score"] == b.details["score"] == "log-likelihood ratio"
    assert a.epsilon_accounted == b.epsilon_accounted == 2.0
    assert 0 < a.epsilon_lower <= 2.0 and 0 < b.epsilon_lower <= 2.0
    # from a spec, through the public entry point (`privfl audit SPEC`), in the analytics mode
    spec = tmp_path / "user_audit.yaml"
    spec.write_text(
        "name: user-audit\nbase: {rounds: 2, num_clients: 6, model_params: {hidden: [8]}}\ngrid:\n"
        "  - {mode: [analytics], analytics_users: [200], cases: [\n"
        "      {label: user, mechanism: user-kary-rr, mechanism_params: {k: 4, eps: 2.0}},\n"
        "      {label: grr, mechanism: grr, mechanism_params: {k: 4, eps: 2.0}}]}\n"
    )
    assert main(["audit", str(spec), "--trials", "20000"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| user") or
            line.startswith("| grr")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "black-box" and float(cells[4]) == pytest.approx(2.0)
        assert 0 < float(cells[5]) <= 2.0


def test_user_frequency_oracle_runs_in_the_analytics_mode():
    from privfl.evaluations.analytics import run_analytics
    from privfl.evaluations.scenario import Scenario

    scenario = Scenario(mode="analytics", mechanism="user-kary-rr", mechanism_params={"k": 4, "eps": 2.0},
                        analytics_users=300, rounds=2)
    out = run_analytics(scenario, 0)
    assert out["summary"]["k"] == 4 and out["summary"]["eps_bound"] == pytest.approx(4.0)
    assert out["summary"]["mse_avg"] > 0
