"""The curious server in the harness: Scenario fields, the inversion extension (configure → the
simulation records observations; finish → scores in the summary), defenses through `mechanism`,
and the report's grid / table / PSNR-vs-ε outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfl import registry
from privfl.core import Mechanism, PrivacyGuarantee
from privfl.evaluations.runner import run_spec
from privfl.evaluations.scenario import Scenario, SpecError, build_simulation, run
from privfl.evaluations.spec import parse_spec


class _TestNoise(Mechanism):
    """Test-only defense: i.i.d. N(0, sigma²) added to every coordinate of every row."""

    name = "test-noise"
    role = "client-vector"

    def __init__(self, sigma: float = 0.1) -> None:
        self.sigma = float(sigma)

    def privatize(self, x, *, generator=None, client_ids=None):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.sigma * noise

    def guarantee(self) -> PrivacyGuarantee:
        # a Gaussian release of an update of norm <= 1: RDP eps(a) = a / (2 z^2), z = sigma / 2 (diameter 2)
        z = self.sigma / 2
        return PrivacyGuarantee(self.name, rdp_curve=lambda a: a / (2 * z * z), noise_multiplier=z)


@pytest.fixture
def test_noise(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY["mechanism"], "test-noise", _TestNoise)
    return "test-noise"


BASE = dict(
    dataset="digits", model="mlp", model_params={"hidden": [32]}, protocol="fedsgd", batch_size=1, rounds=1,
    num_clients=10, partition="iid", partition_params={}, eval_every=1, inversion_attack="analytic",
    inversion_victims=3,
)


def test_analytic_attack_in_the_harness_is_exact():
    scenario = Scenario.from_dict(BASE)
    scenario.validate()
    result = run(scenario, seed=0)
    s = result["summary"]
    assert s["inversion_victims"] == 3
    assert s["inversion_psnr"] > 90 and s["inversion_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert s["inversion_label_accuracy"] is None  # labels granted (the default): nothing recovered to score
    inv = result["series"]["inversion"]
    assert len(inv["victims"]) == 3 and len({v["client"] for v in inv["victims"]}) == 3
    assert inv["truth"]["shape"] == [3, 1, 8, 8] and inv["lpips"].startswith("LPIPS")
    # the same seed attacks the same victims with the same result
    again = run(scenario, seed=0)["series"]["inversion"]["victims"]
    assert [v["client"] for v in again] == [v["client"] for v in inv["victims"]]


def test_configure_observes_the_attacked_rounds_only():
    scenario = Scenario.from_dict({**BASE, "rounds": 3, "inversion_rounds": [1, 2],
                                   "inversion_grant": ["lr"]})
    sim = build_simulation(scenario, seed=0)
    assert set(sim.observe) == {(t, c) for t in (1, 2) for c in range(10)}
    assert tuple(sim.grant) == ("lr",)
    none = build_simulation(Scenario.from_dict({**BASE, "inversion_attack": None}), seed=0)
    assert list(none.observe) == []


def test_defense_lowers_psnr_and_labels_need_a_grant_or_strategy(test_noise):
    clean = run(Scenario.from_dict(BASE), seed=1)["summary"]
    noisy = run(Scenario.from_dict({**BASE, "mechanism": test_noise, "mechanism_params": {"sigma": 0.05}}),
                seed=1)["summary"]
    assert noisy["inversion_psnr"] < clean["inversion_psnr"] - 30
    # without granted labels IG needs a label strategy; with iDLG it recovers them (batch 1)
    ig = {**BASE, "inversion_attack": "inverting-gradients", "inversion_attack_params": {"iterations": 5},
          "inversion_grant": ["lr", "local_steps", "batch_size"], "inversion_victims": 2}
    with pytest.raises(ValueError, match="needs labels"):
        run(Scenario.from_dict(ig), seed=0)
    out = run(Scenario.from_dict({**ig, "inversion_label_strategy": "idlg"}), seed=0)["summary"]
    assert out["inversion_label_accuracy"] == 1.0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"inversion_attack": "telepathy"}, "inversion_attack"),
        ({"inversion_attack_params": {"iterations": 0}, "inversion_attack": "sme"}, "inversion_attack_params"),
        ({"inversion_rounds": [1]}, "inversion_rounds"),
        ({"inversion_rounds": []}, "inversion_rounds"),
        ({"inversion_victims": 0}, "inversion_victims"),
        ({"inversion_grant": ["labels", "weights"]}, "inversion_grant"),
        ({"inversion_attack_params": {"label_strategy": "idlg"}}, "inversion_attack_params"),
        ({"inversion_attack": "sme", "inversion_label_strategy": "guess"}, "inversion_label_strategy"),
    ],
)
def test_bad_inversion_fields_fail_validation(change, field):
    with pytest.raises(SpecError, match=field):
        Scenario.from_dict({**BASE, **change}).validate()


def test_report_writes_grid_table_and_psnr_vs_eps(tmp_path, test_noise):
    spec = parse_spec({
        "name": "inversion-test",
        "base": BASE,
        "grid": [{"mechanism": [None]},
                 {"mechanism": [test_noise], "mechanism_params": [{"sigma": 0.05}, {"sigma": 0.5}]},
                 {"cases": [{"label": "no-information floor", "mechanism": test_noise,
                             "mechanism_params": {"sigma": 1000.0}}]}],
        "seeds": [0],
    })
    summary = run_spec(spec, tmp_path, workers=0, progress=False)
    assert summary.ok and summary.done == 4
    assert (tmp_path / "inversion_grid.png").is_file() and (tmp_path / "inversion_psnr_eps.png").is_file()
    table = (tmp_path / "inversion.md").read_text()
    assert "no defense" in table and "test-noise(sigma=0.05)" in table and "LPIPS absent" in table
    assert "| analytic |" in table and "| ∞ |" in table  # no defense: ε = ∞
    assert "| granted |" in table
    header = next(line for line in table.splitlines() if line.startswith("| setting"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| digits"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[cols.index("defense")]] = dict(zip(cols, cells))
    floor = next(r for name, r in rows.items() if name.startswith("**no-information floor** (control)"))
    from types import SimpleNamespace

    from privfl.evaluations.inversion import _is_floor

    assert _is_floor(SimpleNamespace(label="model=lenet, no-information floor"))  # axes prefixed by the spec
    assert not _is_floor(SimpleNamespace(label="model=lenet, gaussian, no-information floor (not)"))
    assert len(rows) == 4
    # every row of the setting carries the floor cell's own PSNR; the floor is far below the attack's
    assert all(r["floor (dB)"] == floor["PSNR (dB)"] for r in rows.values())
    assert float(floor["PSNR (dB)"].split(" ± ")[0]) < float(rows["no defense"]["PSNR (dB)"].split(" ± ")[0]) - 30
    # the gray column: a flat 0.5 image against the stored ground truth, computed independently
    from skimage.metrics import peak_signal_noise_ratio

    from privfl.evaluations.inversion import _decode
    from privfl.evaluations.store import Store

    done = [r for r in Store(tmp_path).rows() if r.scenario.get("mechanism") is None]
    truth = _decode(done[0].result["series"]["inversion"]["truth"]).astype(float) / 255
    gray = [peak_signal_noise_ratio(t, 0.5 * np.ones_like(t), data_range=1.0) for t in truth]
    assert rows["no defense"]["gray (dB)"] == f"{np.mean(gray):.3g} ± {np.std(gray, ddof=1):.2g}"  # sample std
