"""Issue 12 §1/§5: what each Byzantine attack reads, and when the accounted ε is a DP guarantee.

An omniscient attack (reads the honest rows) against a mechanism that adds its noise at the server
(DP-FedAvg, DP-BREM) puts honest data into the release through the Byzantine rows: no ε is reported
there (results, report, ``privfl audit``). Own-data / public attacks, data poisoning and local
mechanisms keep the ε.
"""

from __future__ import annotations

import math

import pytest
import torch

import privfl
from privfl import registry
from privfl.accounting import NOT_A_GUARANTEE, PrivacyLedger, VoidedGuaranteeError, gaussian_guarantee
from privfl.accounting.ledger import threat_model_warning
from privfl.core import BYZANTINE_KNOWLEDGE, ByzantineAttack
from privfl.fl.local import LocalSGD
from privfl.fl.partition import partition
from privfl.fl.simulation import FederatedSimulation
from privfl.mechanisms.dp_brem import DPBREM

OMNISCIENT = {"sign-flip", "ipm", "alie", "min-max", "min-sum", "mimic"}
OWN_DATA = {"ipm-own-data", "alie-own-data", "min-max-own-data", "min-sum-own-data", "label-flip"}
PUBLIC = {"gaussian", "nan", "inf"}


def test_every_byzantine_attack_declares_what_it_reads():
    names = set(registry.available("byzantine_attack"))
    assert names == OMNISCIENT | OWN_DATA | PUBLIC
    for name in names:
        attack = registry.make("byzantine_attack", name)
        assert attack.knowledge in BYZANTINE_KNOWLEDGE
        want = "omniscient" if name in OMNISCIENT else "own-data" if name in OWN_DATA else "public"
        assert attack.knowledge == want, name


@pytest.mark.parametrize("base", ["ipm", "alie", "min-max", "min-sum"])
def test_own_data_variants_compute_the_same_rule_on_the_rows_they_are_given(base):
    own = torch.randn(5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = {"z": 1.0} if base == "alie" else {}
    expected = registry.make("byzantine_attack", base, **kw)(own, 3)
    got = registry.make("byzantine_attack", f"{base}-own-data", **kw)(own, 3)
    assert torch.equal(got, expected)


def _mech(name, **kw):
    return registry.make("mechanism", name, **kw)


@pytest.mark.parametrize("mech,attack,void", [
    (("dp-fedavg", {}), "mimic", True),              # DP-FedAvg: server noise
    (("dp-brem", {}), "alie", True),
    (("dp-brem", {}), "alie-own-data", False),        # own data only: ε stays valid
    (("dp-brem", {}), "gaussian", False),             # public
    (("dp-brem", {}), "label-flip", False),           # data poisoning
    (("gaussian", {"local": True}), "mimic", False),  # local: the honest rows are already privatized
    (("dp-brem-plus", {}), "mimic", False),           # masked reports: only the noisy sum is learned
    (("dp-fedavg", {"noise_multiplier": 0.0}), "mimic", False),  # no guarantee to void (ε = ∞)
])
def test_threat_model_warning(mech, attack, void):
    m = _mech(mech[0], **mech[1])
    a = registry.make("byzantine_attack", attack)
    w = threat_model_warning(m, a)
    assert (w is not None) == void
    if void:
        assert w.startswith(NOT_A_GUARANTEE) and attack in w
    assert threat_model_warning(m, a, byzantine=False) is None


def test_mimic_multiplies_the_dp_brem_sensitivity_by_f_plus_one():
    """Why the ε is void: mimic copies one honest momentum f times, so one record moves the noisy sum by
    (f + 1)·Δ, not Δ (same noise draw on both neighbours)."""
    f, d = 2, 5
    x = torch.zeros(4, d, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 0] = 1.0 / 16  # one record's clipped gradient over B = 16 changes client 0's row by R/B
    releases = []
    for rows in (x, x2):
        m = DPBREM(clip_norm=10.0, noise_multiplier=1.0, momentum=0.0)
        reports = m.privatize(rows)
        mimic = registry.make("byzantine_attack", "mimic", target=0)(reports, f)
        releases.append(m.aggregate(reports, byzantine=mimic, generator=torch.Generator().manual_seed(0)) * 6)
    gap = float((releases[1] - releases[0]).norm())
    assert gap == pytest.approx((f + 1) * m.sensitivity(1), rel=1e-9)


def test_issue_figures_the_ledger_under_reports_without_the_warning():
    """DP-BREM σ = 8, T = 1,000, δ = 1e-5: the single-client accounting gives ε ≈ 25.5; the same
    composition at sensitivity (f + 1)·Δ (mimic) gives far more — the number must not be reported."""
    eps = {}
    for f in (0, 1, 2):
        ledger = PrivacyLedger()
        ledger.record(gaussian_guarantee(8.0 / (f + 1), unit="record"), clients=[0], count=1000)
        eps[f] = ledger.epsilon(1e-5)
    assert eps[0] == pytest.approx(25.52, abs=0.05)
    assert eps[1] > 2.5 * eps[0] and eps[2] > 4.5 * eps[0]


def test_a_voided_ledger_reports_no_epsilon():
    ledger = PrivacyLedger()
    ledger.record(gaussian_guarantee(2.0), count=3)
    figure = ledger.epsilon(1e-5)
    ledger.void(NOT_A_GUARANTEE)
    with pytest.raises(VoidedGuaranteeError, match=NOT_A_GUARANTEE):
        ledger.epsilon(1e-5)
    with pytest.raises(VoidedGuaranteeError):
        ledger.per_client_epsilon(1e-5)
    assert ledger.epsilon_ignoring_void(1e-5) == figure
    with pytest.raises(ValueError, match="reason"):
        ledger.void("")


# --------------------------------------------------------------------------------------------
# The simulation: what attacks are handed, and the ε it reports
# --------------------------------------------------------------------------------------------
class Spy(ByzantineAttack):
    """Records what it reads; sends the mean of it."""

    name = "spy"

    def __init__(self, knowledge: str):
        self.knowledge = knowledge
        self.seen: list[torch.Tensor] = []

    def __call__(self, rows, f, *, generator=None):
        self.seen.append(rows.clone())
        return rows.mean(dim=0, keepdim=True).expand(f, -1).clone()


@pytest.fixture(scope="module")
def digits():
    return privfl.make("dataset", "digits")


def _sim(digits, mechanism, attack, *, byz=(1, 3), rounds=2):
    torch.manual_seed(0)
    model = privfl.make("model", "mlp", input_shape=digits.input_shape, num_classes=digits.num_classes,
                        hidden=(8,))
    clients = partition("iid", digits.y_train, 6, generator=torch.Generator().manual_seed(0))
    sim = FederatedSimulation(model=model, dataset=digits, clients=clients, protocol="fedsgd",
                              local=LocalSGD(steps=1, batch_size=16, lr=0.5), mechanism=mechanism,
                              byzantine_clients=list(byz), byzantine_attack=attack, seed=0)
    if rounds:
        sim.run(rounds)
    return sim


def test_attacks_are_handed_exactly_what_they_declare(digits):
    own, omni, public = Spy("own-data"), Spy("omniscient"), Spy("public")
    a = _sim(digits, None, own, rounds=1)
    _sim(digits, None, omni, rounds=1)
    _sim(digits, None, public, rounds=1)
    d = a.layout.dim
    assert own.seen[0].shape == (2, d)  # the two Byzantine clients' own honest updates
    assert omni.seen[0].shape == (4, d)  # the four honest rows
    assert public.seen[0].shape == (4, d) and not public.seen[0].any()
    # own rows are what honest clients 1 and 3 would have sent, not any honest client's row
    fresh = _sim(digits, None, Spy("own-data"), rounds=0)  # the same public model as round 0
    expected = fresh._local_updates(torch.tensor([1, 3]), 0)
    assert torch.allclose(own.seen[0], expected.to(own.seen[0].dtype))
    assert not any(torch.allclose(own.seen[0][0], r) for r in omni.seen[0])


def test_central_mechanism_with_omniscient_attack_reports_no_epsilon(digits):
    """Fails on the pre-fix code: the run reported the single-client ε (a number, not a guarantee)."""
    sim = _sim(digits, DPBREM(noise_multiplier=3.0), registry.make("byzantine_attack", "mimic"))
    assert sim.privacy_warning is not None and sim.privacy_warning.startswith(NOT_A_GUARANTEE)
    assert sim.epsilon() is None and all(r.epsilon is None for r in sim.history)
    own = _sim(digits, DPBREM(noise_multiplier=3.0), registry.make("byzantine_attack", "alie-own-data"))
    assert own.privacy_warning is None and math.isfinite(own.epsilon()) and own.epsilon() > 0


def test_local_mechanism_keeps_its_epsilon_under_omniscient_attack(digits):
    sim = _sim(digits, _mech("gaussian", local=True, noise_multiplier=2.0), registry.make("byzantine_attack", "mimic"))
    assert sim.privacy_warning is None and math.isfinite(sim.epsilon())


def test_audit_cli_shows_the_warning_instead_of_epsilon(capsys, tmp_path):
    from privfl.cli import main

    tables = tmp_path / "tables.md"
    assert main(["account", "threat_model", "--tables", str(tables)]) == 0
    out = capsys.readouterr().out
    mimic = next(line for line in out.splitlines() if line.startswith("| byzantine_attack=mimic"))
    own = next(line for line in out.splitlines() if line.startswith("| byzantine_attack=alie-own-data"))
    assert NOT_A_GUARANTEE in mimic and "none reported" in mimic
    assert NOT_A_GUARANTEE not in own and "none reported" not in own
    assert "record-level, per participating client, no sampling amplification" in own  # §5: the unit
    mimic_tables, own_tables = tables.read_text().split("## byzantine_attack=alie-own-data")
    assert NOT_A_GUARANTEE in mimic_tables and "| round |" not in mimic_tables
    assert NOT_A_GUARANTEE not in own_tables and "| 5 |" in own_tables


@pytest.mark.slow
def test_privfl_run_on_the_bundled_spec(tmp_path):
    """Acceptance: `privfl run threat_model` — DP-BREM + mimic shows the warning, + alie-own-data shows ε
    with its unit, in the markdown and CSV report."""
    import csv

    from privfl.cli import main

    assert main(["run", "threat_model", "--out", str(tmp_path), "--no-progress", "--workers", "0"]) == 0
    md = (tmp_path / "results.md").read_text()
    mimic_line = next(line for line in md.splitlines() if line.startswith("| byzantine_attack=mimic"))
    own_line = next(line for line in md.splitlines() if line.startswith("| byzantine_attack=alie-own-data"))
    assert NOT_A_GUARANTEE in mimic_line
    assert NOT_A_GUARANTEE not in own_line and "(record-level, per participating client" in own_line
    rows = {r["scenario.byzantine_attack"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert rows["mimic"]["epsilon"] == "" and rows["mimic"]["privacy_warning"].startswith(NOT_A_GUARANTEE)
    assert float(rows["alie-own-data"]["epsilon"]) > 0 and not rows["alie-own-data"]["privacy_warning"]


def test_check_contract_requires_a_knowledge_declaration():
    from privfl.testing import check_contract

    good = check_contract(Spy("own-data"), params=False, raise_on_failure=False)
    assert "knowledge declared" in good.checks
    bad = check_contract(Spy("reads minds"), params=False, raise_on_failure=False)
    assert any(f.startswith("knowledge declared") for f in bad.failures)


def test_empirical_audit_notes_the_voided_runs():
    from privfl.evaluations.audit import _threat_model_notes
    from privfl.evaluations.spec import load_spec

    notes = _threat_model_notes(load_spec("threat_model").validate())
    assert len(notes) == 2 and "[byzantine_attack=mimic]" in notes[0] and NOT_A_GUARANTEE in notes[0]
