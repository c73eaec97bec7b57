"""Membership inference (attacks/membership.py, evaluations/membership.py, mechanisms/fedrand.py).

Error rates: the "beats a random guess" tests compare an AUC with the null distribution of the
Mann–Whitney statistic (a random scorer's AUC is ≈ N(½, (n_in + n_out + 1)/(12·n_in·n_out))); the
threshold ½ + 3.1σ has a one-sided false-alarm rate of 1e-3. Everything is seeded, so a run is
deterministic. Exactness tests compare with sklearn's ``roc_curve`` / ``roc_auc_score`` and
scipy's ``norm`` / ``beta``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score, roc_curve

import privfl
from privfl import params, registry
from privfl.attacks.membership import (
    RMIA,
    LiRA,
    MembershipQuery,
    _rmia_log_ratio,
    balanced_splits,
    logit_confidence,
    query_views,
    random_inits,
    reference_logits,
    train_reference_models,
)
from privfl.evaluations import Scenario, SpecError, run
from privfl.evaluations.membership import auc, membership_metrics, roc_points, tpr_at_fpr
from privfl.fl.local import LocalSGD, plan_batches, train_vmap
from privfl.flat import ParamLayout, layout_of

ATTACKS = privfl.available("membership_attack")


def _null_threshold(n_in: int, n_out: int) -> float:
    return 0.5 + 3.1 * math.sqrt((n_in + n_out + 1) / (12.0 * n_in * n_out))


@pytest.fixture(scope="module")
def setup():
    """A deliberately overfit target (MLP, 300 steps on ~200 records) and 8 reference models, batched."""
    torch.manual_seed(0)
    data = privfl.make("dataset", "digits")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data.x_train), generator=g)
    x, y = data.x_train[perm[:400]], data.y_train[perm[:400]]
    xp, yp = data.x_test[:150], data.y_test[:150]
    model = privfl.make("model", "mlp", input_shape=data.input_shape, num_classes=10, hidden=(64,))
    target_in = torch.rand(1, len(x), generator=g) < 0.5
    members = torch.cat([target_in, balanced_splits(8, len(x), generator=g)])
    W = train_reference_models(model, x, y, members, LocalSGD(steps=300, batch_size=32, lr=0.1, momentum=0.9),
                               generator=g)
    views, views_p = query_views(x, "flip"), query_views(xp, "flip")
    L, Lp = reference_logits(model, W, views), reference_logits(model, W, views_p)
    query = MembershipQuery(labels=y, target_logits=L[0], reference_logits=L[1:], reference_in=members[1:],
                            population_labels=yp, population_logits=Lp[0], population_reference_logits=Lp[1:],
                            inputs=x)
    return {"query": query, "member": target_in[0], "model": model, "W": W, "x": x, "y": y}


# ------------------------------------------------------------------------------------ metrics
@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=60))
def test_roc_and_auc_match_sklearn(pairs):
    s = np.array([p[0] for p in pairs], dtype=float)
    m = np.array([p[1] for p in pairs])
    if m.all() or not m.any():
        return
    fpr, tpr, thr = roc_points(s, m)
    f2, t2, th2 = roc_curve(m, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, f2)
    np.testing.assert_array_equal(tpr, t2)
    np.testing.assert_array_equal(thr[1:], th2[1:])
    assert auc(s, m) == pytest.approx(roc_auc_score(m, s), abs=1e-12)
    for alpha in (0.0, 0.1, 0.5):
        assert tpr_at_fpr(fpr, tpr, alpha) == max(t for f, t in zip(f2, t2) if f <= alpha)


def test_metrics_intervals_are_clopper_pearson():
    rng = np.random.default_rng(0)
    m = rng.random(500) < 0.5
    s = rng.normal(size=500) + 1.5 * m
    out = membership_metrics(s, m, delta=1e-5)
    n_in = int(m.sum())
    k = round(out["tpr_1pct"] * n_in)
    assert out["tpr_1pct_lo"] == pytest.approx(beta.ppf(0.025, k, n_in - k + 1), rel=1e-9)
    assert out["tpr_1pct_hi"] == pytest.approx(beta.ppf(0.975, k + 1, n_in - k), rel=1e-9)
    fpr, tpr, _ = roc_curve(m, s)
    assert out["balanced_accuracy"] == pytest.approx(np.max((tpr + 1 - fpr) / 2))
    assert 0 < out["eps_lb"] < 5


def test_null_tpr_band_covers_a_signal_free_scorer_at_its_level():
    """Random scores (no membership signal), 150 members / 250 non-members, 2,000 trials: the TPR at 1 % FPR
    falls outside the exact 90 % band as often as the negative hypergeometric law says (two-sided binomial
    99.9 % limits on the count of misses: the test fails by chance with probability ≤ 1e-3)."""
    from scipy.stats import binom, nhypergeom

    from privfl.evaluations.membership import null_tpr_interval

    rng = np.random.default_rng(0)
    n_in, n_out, trials = 150, 250, 2000
    lo, hi = null_tpr_interval(n_in, n_out, 0.01, confidence=0.9)
    dist = nhypergeom(n_in + n_out, n_in, 3)  # ⌊0.01·250⌋ = 2 false positives allowed
    p_miss = dist.cdf(round(lo * n_in) - 1) + dist.sf(round(hi * n_in))
    assert 0.03 < p_miss <= 0.1  # a discrete law: the central band holds at least its level
    member = np.r_[np.ones(n_in, bool), np.zeros(n_out, bool)]
    miss = 0
    for _ in range(trials):
        fpr, tpr, _ = roc_points(rng.random(n_in + n_out), member)
        miss += not lo <= tpr_at_fpr(fpr, tpr, 0.01) <= hi
    assert binom.ppf(0.0005, trials, p_miss) <= miss <= binom.ppf(0.9995, trials, p_miss), (miss, p_miss)
    m = membership_metrics(rng.random(n_in + n_out), member, fprs=(0.01,), confidence=0.9)
    assert (m["tpr_1pct_null_lo"], m["tpr_1pct_null_hi"]) == (lo, hi)
    with pytest.raises(ValueError, match="simultaneous"):
        membership_metrics([0.1, 0.2], np.array([True, False]), simultaneous=0)
    lo5, hi5 = null_tpr_interval(n_in, n_out, 0.01, confidence=1 - 0.1 / 5)  # Bonferroni widens the band
    assert lo5 <= lo and hi5 >= hi and (lo5, hi5) != (lo, hi)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="member"):
        membership_metrics([0.1, 0.2], np.array([True, True]))
    with pytest.raises(TypeError, match="boolean"):
        membership_metrics([0.1, 0.2], np.array([1, 0]))
    with pytest.raises(ValueError, match="finite"):
        membership_metrics([0.1, float("nan")], np.array([True, False]))


# ------------------------------------------------------------------------------------ signals and fits
def test_logit_confidence_is_log_odds_of_the_true_class():
    logits = torch.randn(3, 7, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    p = torch.softmax(logits, -1).gather(-1, y.expand(3, 7).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logit_confidence(logits, y), torch.log(p / (1 - p)))
    big = torch.tensor([[60.0, 0.0]])  # p_y = 1 in float32: the stable form keeps the log-odds
    assert logit_confidence(big, torch.tensor([0])).item() == pytest.approx(60.0)


def test_threshold_baselines_separate_confident_records():
    """float32 cross-entropy is exactly 0 at margins 20 and 30; the baselines still rank them (float64)."""
    logits = torch.tensor([[[20.0, 0.0], [30.0, 0.0]]])
    q = MembershipQuery(labels=torch.tensor([0, 0]), target_logits=logits)
    assert torch.nn.functional.cross_entropy(logits[0], q.labels, reduction="none").eq(0).all()
    for statistic in ("loss", "max-confidence"):
        s = privfl.make("membership_attack", "loss", statistic=statistic).score(q)
        assert s[1] > s[0], statistic


def _synthetic_query(S=6, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref_in = balanced_splits(S, N, generator=g)
    ref = torch.randn(S, 1, N, 3, generator=g, dtype=torch.float64)
    tgt = torch.randn(1, N, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    pop = torch.randn(1, 9, 3, generator=g, dtype=torch.float64)
    pop_ref = torch.randn(S, 1, 9, 3, generator=g, dtype=torch.float64)
    yp = torch.randint(0, 3, (9,), generator=g)
    return MembershipQuery(labels=y, target_logits=tgt, reference_logits=ref, reference_in=ref_in,
                           population_labels=yp, population_logits=pop, population_reference_logits=pop_ref)


def test_lira_matches_scipy_gaussian_fits():
    q = _synthetic_query()
    phi_t = logit_confidence(q.target_logits, q.labels)[0].numpy()
    phi = logit_confidence(q.reference_logits, q.labels)[:, 0].numpy()
    ins = q.reference_in.numpy()
    online = LiRA(online=True, variance="per-example").score(q).numpy()
    offline = LiRA(online=False, variance="per-example").score(q).numpy()
    for j in range(len(phi_t)):
        a, b = phi[ins[:, j], j], phi[~ins[:, j], j]
        lr = norm.logpdf(phi_t[j], a.mean(), a.std(ddof=1)) - norm.logpdf(phi_t[j], b.mean(), b.std(ddof=1))
        assert online[j] == pytest.approx(lr, rel=1e-9)
        assert offline[j] == pytest.approx(norm.logcdf((phi_t[j] - b.mean()) / b.std(ddof=1)), rel=1e-9)
    # fixed ("global") variance, as in the LiRA code: the std of all IN / OUT values
    online_g = LiRA(online=True, variance="global").score(q).numpy()
    sd_in, sd_out = phi[ins].std(ddof=1), phi[~ins].std(ddof=1)
    for j in range(len(phi_t)):
        a, b = phi[ins[:, j], j], phi[~ins[:, j], j]
        lr = norm.logpdf(phi_t[j], a.mean(), sd_in) - norm.logpdf(phi_t[j], b.mean(), sd_out)
        assert online_g[j] == pytest.approx(lr, rel=1e-9)


def test_rmia_matches_brute_force():
    """Softmax at temperature 2 in float64 (unsaturated synthetic logits), the paper's ratios, z compared
    pairwise; offline, each z averages k = 3 models (as many as a candidate has OUT), cyclically."""
    q = _synthetic_query()
    S, Z = q.reference_logits.shape[0], q.population_labels.numel()
    for online in (True, False):
        attack = RMIA(online=online, a=0.3, gamma=1.5, temperature=2.0)
        got = attack.score(q).numpy()

        def prob(lg, yy):
            return torch.softmax(lg / 2.0, -1).gather(-1, yy.expand(lg.shape[:-1]).unsqueeze(-1)).squeeze(-1).numpy()

        px, rx = prob(q.target_logits[0], q.labels), prob(q.reference_logits[:, 0], q.labels)
        pz, rz = prob(q.population_logits[0], q.population_labels), prob(q.population_reference_logits[:, 0],
                                                                         q.population_labels)
        out_mask = ~q.reference_in.numpy()
        if online:
            ratio_z = pz / rz.mean(0)
        else:
            pout_z = np.array([rz[[(j + i) % S for i in range(3)], j].mean() for j in range(Z)])
            ratio_z = pz / (0.5 * (1.3 * pout_z + 0.7))
        for j in range(len(px)):
            marg = rx[:, j].mean() if online else 0.5 * (1.3 * rx[out_mask[:, j], j].mean() + 0.7)
            assert got[j] == pytest.approx(np.mean(px[j] / marg / ratio_z >= 1.5))


def test_rmia_orders_saturated_confidences_and_tunes_a_without_the_target():
    """A target confidence p_y = 1 − e^-40 (then 1 − e^-50) rounds to 1 in float64; RMIA's ratio for that
    record still grows with it. The tuned a lies on the authors' grid and does not depend on the target."""
    q = _synthetic_query(N=40)
    ratios = []
    for margin in (40.0, 50.0):
        sat = q.target_logits.clone()
        sat[0, 0] = 0.0
        sat[0, 0, q.labels[0]] = margin
        assert torch.softmax(sat[0, 0], -1)[q.labels[0]] == 1.0
        log_p = -torch.nn.functional.softplus(-logit_confidence(sat / 2.0, q.labels))
        ref_err = torch.sigmoid(-logit_confidence(q.reference_logits / 2.0, q.labels))
        ratios.append(_rmia_log_ratio(log_p, ref_err, ~q.reference_in, 0.3)[0])
        attack = RMIA()
        assert attack.tune_a(MembershipQuery(**{**vars(q), "target_logits": sat})) == attack.tune_a(q)
    assert ratios[1] > ratios[0]
    assert RMIA().tune_a(q) in RMIA.A_GRID


# ------------------------------------------------------------------------------------ attacks on a real target
def test_lira_beats_a_random_guess_on_an_overfit_target(setup):
    m = setup["member"].numpy()
    threshold = _null_threshold(int(m.sum()), int((~m).sum()))
    for attack in (LiRA(online=True), LiRA(online=False)):
        assert roc_auc_score(m, attack.score(setup["query"]).numpy()) > threshold, attack.label


@pytest.mark.parametrize("name", ATTACKS)
def test_membership_attack_contract(name, setup):
    """Registry-wide: declared param space, deterministic scores, inputs untouched, clear errors."""
    factory = registry.get("membership_attack", name)
    space = params.space_of(factory)
    assert space is not None, f"{name} declares no param_space"
    attack = factory(**params.example_params(space))
    for pname, value in params.invalid_values(space, params.example_params(space)):
        with pytest.raises((ValueError, TypeError), match=pname):
            factory(**{**params.example_params(space), pname: value})
    q = setup["query"]
    if "observation" in attack.reads:
        q = _update_query(setup)[0]
    elif "trajectory_logits" in attack.reads:
        q = MembershipQuery(labels=q.labels, trajectory_logits=q.reference_logits[:, 0],
                            population_labels=q.population_labels,
                            population_trajectory_logits=q.population_reference_logits[:, 0])
    before = {k: v.clone() for k, v in vars(q).items() if isinstance(v, torch.Tensor)}
    s1, s2 = attack.score(q), attack.score(q)
    assert s1.shape == q.labels.shape and torch.isfinite(s1).all()
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    for k, v in before.items():
        assert torch.equal(getattr(q, k), v), f"{name} modified query.{k}"
    with pytest.raises(ValueError, match="needs"):
        attack.score(MembershipQuery(labels=q.labels))
    with pytest.raises(TypeError, match="MembershipQuery"):
        attack.score({"labels": q.labels})


def _update_query(setup):
    """A client holding 40 of the records trains 50 full-batch steps from an early global model; candidates:
    its 40 records (members) and the target's non-members."""
    from privfl.core import Observation
    from privfl.flat import load_flat

    model, x, y = setup["model"], setup["x"], setup["y"]
    w0 = random_inits(model, 1, generator=torch.Generator().manual_seed(5))[0]
    client = torch.nonzero(setup["member"]).flatten()[:40]
    opt = LocalSGD(steps=50, batch_size=None, lr=0.5)
    w1 = train_vmap(model, layout_of(model), w0, x, y, plan_batches([client], opt, generator=torch.Generator()), opt)
    victim = load_flat(privfl.make("model", "mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64,)), w0,
                       layout_of(model))
    obs = Observation(model=victim, update=(w1[0] - w0), kind="delta", num_examples=len(client),
                      input_shape=(1, 8, 8), num_classes=10)
    keep = ~setup["member"]
    keep[client] = True
    is_member = torch.zeros(len(x), dtype=torch.bool)
    is_member[client] = True
    q = MembershipQuery(labels=y[keep], inputs=x[keep], observation=obs,
                        target_logits=setup["query"].target_logits[:, keep])
    return q, is_member[keep]


def test_update_attacks_beat_a_random_guess(setup):
    q, member = _update_query(setup)
    m = member.numpy()
    threshold = _null_threshold(int(m.sum()), int((~m).sum()))
    for name in ("update-loss", "update-cosine"):
        assert roc_auc_score(m, privfl.make("membership_attack", name).score(q).numpy()) > threshold, name


# ------------------------------------------------------------------------------------ batched reference training
def test_balanced_splits_put_every_record_in_half_the_models():
    ins = balanced_splits(6, 50, generator=torch.Generator().manual_seed(0))
    assert (ins.sum(0) == 3).all()
    with pytest.raises(ValueError, match="models"):
        balanced_splits(1, 5, generator=torch.Generator())


def test_batched_reference_models_equal_separate_training():
    """Stacked initialisations [S, d] through train_vmap = each model trained alone from its own start."""
    data = privfl.make("dataset", "digits")
    x, y = data.x_train[:120].double(), data.y_train[:120]
    model = privfl.make("model", "mlp", input_shape=data.input_shape, num_classes=10, hidden=(16,)).double()
    g = torch.Generator().manual_seed(3)
    members = balanced_splits(3, 120, generator=g)
    init = random_inits(model, 3, generator=g)
    assert not torch.equal(init[0], init[1])
    opt = LocalSGD(steps=7, batch_size=8, lr=0.1, momentum=0.9)
    W = train_reference_models(model, x, y, members, opt, generator=torch.Generator().manual_seed(1), init=init)
    plan = plan_batches([torch.nonzero(members[s]).flatten() for s in range(3)], opt,
                        generator=torch.Generator().manual_seed(1))
    for s in range(3):
        sub = type(plan)(index=plan.index[s : s + 1], mask=None)
        alone = train_vmap(model, layout_of(model), init[s], x, y, sub, opt)
        torch.testing.assert_close(W[s], alone[0])


# ------------------------------------------------------------------------------------ FedRand
def test_fedrand_releases_whole_layers_at_the_declared_rate():
    mech = privfl.make("mechanism", "fedrand", release_prob=0.3)
    layout = ParamLayout(names=("a.weight", "a.bias", "b.weight"), shapes=((2, 2), (2,), (3,)))
    mech.bind_layout(layout)
    mask = mech.release_mask(4000, layout.dim, generator=torch.Generator().manual_seed(0))
    assert (mask[:, :4] == mask[:, 4:6].any(1, keepdim=True)).all()  # a.weight and a.bias together
    assert (mask[:, 6:] == mask[:, 6:7]).all()
    for col in (0, 6):  # binomial(4000, 0.3): ±4.4σ ⇒ error rate < 1e-5 per check
        assert abs(mask[:, col].float().mean().item() - 0.3) < 4.4 * math.sqrt(0.21 / 4000)


def test_fedrand_lora_releases_exactly_one_factor_per_adapter():
    mech = privfl.make("mechanism", "fedrand", granularity="lora")
    layout = ParamLayout(names=("q.lora_A", "q.lora_B", "head.weight"), shapes=((2, 3), (3, 2), (4,)))
    mech.bind_layout(layout)
    mask = mech.release_mask(2000, layout.dim, generator=torch.Generator().manual_seed(0))
    a, b = mask[:, 0], mask[:, 6]
    assert (a ^ b).all() and mask[:, 12:].all()
    assert abs(a.float().mean().item() - 0.5) < 4.4 * math.sqrt(0.25 / 2000)
    with pytest.raises(ValueError, match="lora"):
        privfl.make("mechanism", "fedrand", granularity="lora").bind_layout(ParamLayout(("w",), ((3,),)))
    with pytest.raises(ValueError, match="release_prob"):
        privfl.make("mechanism", "fedrand", granularity="lora", release_prob=0.3)


# ------------------------------------------------------------------------------------ the mode
BASE = dict(mode="membership", dataset="digits", model="mlp", model_params={"hidden": [32]}, lr=0.1,
            momentum=0.9, batch_size=32, num_clients=1, rounds=1, local_steps=60)


def test_mode_validates_its_params():
    with pytest.raises(SpecError, match="threat"):
        Scenario.from_dict({**BASE, "membership_params": {"threat": "psychic"}}).validate()
    with pytest.raises(SpecError, match="unknown key"):
        Scenario.from_dict({**BASE, "membership_params": {"shadows": 3}}).validate()
    with pytest.raises(SpecError, match="references"):
        Scenario.from_dict({**BASE, "membership_params": {"references": 1}}).validate()
    with pytest.raises(SpecError, match="lira"):
        Scenario.from_dict({**BASE, "membership_params": {"attacks": [{"name": "lira", "params": {"x": 1}}]}}
                           ).validate()


DP_CELLS = {
    "dp-sgd": {"local_steps": 40, "dp_clip": 1.0, "dp_noise": 2.0},  # example level, ε ≈ 2.7
    # client level (20 clients, Poisson q = 0.5, 4 rounds): a record is in one client, so it is a record bound too
    "dp-fedavg": {"num_clients": 20, "sampling": "poisson", "sample_rate": 0.5, "rounds": 4, "local_steps": 10,
                  "partition": "iid", "partition_params": {}, "mechanism": "dp-fedavg",
                  "mechanism_params": {"clip_norm": 1.0, "noise_multiplier": 2.0}},
}


@pytest.mark.slow
@pytest.mark.parametrize("defense", sorted(DP_CELLS))
def test_mia_epsilon_lower_bound_never_exceeds_the_accounted_epsilon(defense):
    """A DP cell (DP-SGD, or client-level DP-FedAvg): every attack's ε lower bound ≤ the accounted ε; the
    same bound on oracle scores (the membership bits themselves) exceeds it, so the comparison is not
    vacuous."""
    s = Scenario.from_dict({**BASE, **DP_CELLS[defense], "membership_params": {"references": 4, "records": 400}})
    s.validate()
    summary = run(s, seed=0)["summary"]
    eps = summary["epsilon"]
    assert math.isfinite(eps) and eps < 4
    bounds = {k: v for k, v in summary.items() if k.endswith("_eps_lb")}
    assert len(bounds) == 5 and all(v <= eps for v in bounds.values()), (eps, bounds)
    member = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    assert membership_metrics(member.astype(float), member, delta=1e-5)["eps_lb"] > eps


@pytest.mark.parametrize("threat,mechanism", [("update", None), ("update", "fedrand"), ("rounds", None)])
def test_federated_threats_run_end_to_end(threat, mechanism):
    s = Scenario.from_dict({**BASE, "num_clients": 3, "rounds": 2, "local_steps": 10, "partition": "iid",
                            "partition_params": {}, "mechanism": mechanism,
                            "membership_params": {"threat": threat, "records": 300}})
    s.validate()
    out = run(s, seed=0)
    summary = out["summary"]
    names = {"update": ("update-loss", "update-cosine", "loss"), "rounds": ("trajectory", "loss")}[threat]
    for name in names:
        assert 0 <= summary[f"mia_{name}_auc"] <= 1
        lo, tpr, hi = (summary[f"mia_{name}_tpr_1pct{k}"] for k in ("_lo", "", "_hi"))
        assert lo <= tpr <= hi
        assert len(out["series"][f"mia_roc_{name}"]) == len(out["series"]["mia_roc_fpr"])
    if threat == "update":  # candidates: client 0's records and the target's non-members
        assert summary["mia_members"] < summary["mia_nonmembers"]
