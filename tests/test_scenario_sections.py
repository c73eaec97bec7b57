"""Typed scenario sections: cell ids pinned from before the redesign, one error shape, JSON Schema."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re

import jsonschema
import pytest
import yaml

from privfl.cli import main
from privfl.evaluations.scenario import (
    FIELD_OWNER,
    SECTIONS,
    Scenario,
    Section,
    SpecError,
    cell_id,
    register_section,
    size,
)
from privfl.evaluations.spec import bundled_specs, load_spec, parse_spec, spec_schema

# Computed on main before the scenario became typed sections (commit 9987de3): a digest of every cell's
# (id, seed, label) in order, the spec's content hash, the first cell's id and the cell count. Existing
# result stores resume only while these hold.
PINNED = {
    "default": ("69771c050e357c14", "a732354db644ec7a", "8181d0e700421f95", 50),
    # distributed_dp and membership gained cells after 9987de3 (a third seed, a tuned RQM row; a more overfit
    # 2-reference target, DP-FedAvg cells): their 9987de3 files still give that commit's pins under this code
    # (all 58 and 16 of 18 old cells keep their ids), so these are the edited specs' values.
    "distributed_dp": ("69f322873caa5ee1", "0200f6f2298dafb3", "7ab86cc0cc31224f", 99),
    "dp_audit": ("15fc094fe9a63655", "f86a2d70ccf4aba0", "b67a4b4d2b798d6c", 7),
    "inversion": ("f517a0338ccd687c", "9af9c95c9d9b2a43", "b54f37ec43bb3476", 96),
    "longitudinal": ("69d9d9e097dd8f54", "11421f626b309525", "c995839fabaedc8c", 72),
    "membership": ("47e74750e46beb16", "b7976b16a0505a50", "626781473436c91f", 24),
    "monna": ("247148ae291c0881", "cfabdc5ce2cae931", "1fe865dc9dd2f7dd", 18),
    "privacy_utility": ("9a96ccc225acf915", "d7ad6393eaa62def", "3e901fe82aa95974", 48),
    "robustness": ("ce191f36a0dcfbaa", "053bea2aea3f0fc4", "cb1a032a299bd71b", 2952),
    "threat_model": ("e27e18b44646f6f1", "34e5a24805067692", "69fcc7232efea5a3", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PINNED))
def test_bundled_cell_ids_are_unchanged(name):
    spec = load_spec(name)
    cells = spec.cells()
    digest = hashlib.sha256("\n".join(f"{c.id} {c.seed} {c.label}" for c in cells).encode()).hexdigest()[:16]
    assert (digest, spec.content_hash(), cells[0].id, len(cells)) == PINNED[name]


def test_python_built_cell_ids_are_unchanged():
    assert sorted(PINNED) == sorted(bundled_specs())
    assert cell_id(Scenario(), 0) == "f630db512c756ad9"
    # an int where a float is declared stays an int (1 and 1.0 hash differently); tuples hash as lists
    s = Scenario(lr=1, delta=1e-6, membership_params={"threat": "update"}, model_params={"hidden": (16,)})
    assert cell_id(s, 3) == "346ee89e2b4dc220"


# ------------------------------------------------------------------------------------ one error shape
@pytest.mark.parametrize("change, message", [
    ({"rounds": True}, "scenario.rounds: got True; allowed: an integer in [1, 100,000]"),  # no bool-as-int
    ({"rounds": "3"}, "scenario.rounds: got '3'; allowed: an integer in [1, 100,000]"),  # no "3"-as-int
    ({"rounds": 10**6}, "scenario.rounds: got 1000000; allowed: at most 100,000"),
    ({"lr": math.nan}, "scenario.lr: got nan; allowed: a finite number > 0"),
    ({"sample_rate": 0.0}, "scenario.sample_rate: got 0.0; allowed: a number in (0, 1]"),
    ({"dp_clip": True}, "scenario.dp_clip: got True; allowed: a number > 0, or null"),  # float | None checked
    ({"dp_clip": "1"}, "scenario.dp_clip: got '1'; allowed: a number > 0, or null"),
    ({"batch_size": 0}, "scenario.batch_size: got 0; allowed: an integer in [1, 100,000], or null"),
    ({"protocol": "fedprox"}, "scenario.protocol: got 'fedprox'; allowed: 'fedavg' or 'fedsgd'"),
    ({"node_momentum": 1}, "scenario.node_momentum: got 1; allowed: a number in [0, 1)"),
    ({"inversion_rounds": [0, False]}, "scenario.inversion_rounds[1]: got False; allowed: an integer >= 0"),
    ({"membership_params": {"threat": "psychic"}},
     "scenario.membership_params.threat: got 'psychic'; allowed: 'model', 'update' or 'rounds'"),
    ({"membership_params": {"references": 1}}, "scenario.membership_params.references: got 1; allowed: an integer"),
    ({"membership_params": {"shadows": 3}}, "scenario.membership_params: unknown key(s) 'shadows'; allowed: threat"),
    ({"privacy": {"delta": 1}}, "scenario.privacy.delta: got 1; allowed: a number in (0, 1)"),
    ({"privacy": {"rounds": 3}}, "scenario.privacy.rounds: got 3; allowed: fields of section 'privacy'"),
    ({"colour": 1}, "scenario: unknown field(s) 'colour'; valid fields: label, mode"),
])
def test_every_field_error_has_one_shape(change, message):
    with pytest.raises(SpecError) as info:
        Scenario(**change)
    assert str(info.value).startswith(message)
    with pytest.raises(SpecError, match=re.escape(message.replace("scenario", "spec.base", 1))):
        parse_spec({"base": change})


def test_cross_field_checks_raise_through_the_same_path():
    with pytest.raises(SpecError, match=r"^scenario\.byzantine: got 5; allowed: an integer in \[0, num_clients=5\)"):
        Scenario(num_clients=5, byzantine=5, byzantine_attack="sign-flip").validate()
    with pytest.raises(SpecError, match=r"^scenario\.dp_clip: got None; allowed: a number > 0 when dp_noise > 0"):
        Scenario(dp_noise=1.0).validate()


# ------------------------------------------------------------------------------------ sections
def test_fields_flat_or_by_section_are_one_scenario():
    flat = Scenario.from_dict({"delta": 1e-6, "dp_clip": 1, "graph": "sampled", "membership_params": {"records": 40}})
    nested = Scenario.from_dict({"privacy": {"delta": 1e-6, "dp_clip": 1}, "decentralized": {"graph": "sampled"},
                                 "membership": {"membership_params": {"records": 40}}})
    assert flat == nested and cell_id(flat, 0) == cell_id(nested, 0)
    assert nested.delta == 1e-6 and nested.dp_clip == 1 and type(nested.dp_clip) is int
    assert nested.membership_params == {"records": 40}  # as a spec wrote it: the keys it set
    assert nested.section("membership").membership_params.references == 16  # typed, with its default
    assert pickle.loads(pickle.dumps(nested)) == nested and nested.replace(rounds=2).rounds == 2
    with pytest.raises(SpecError, match="given twice"):
        Scenario.from_dict({"delta": 1e-6, "privacy": {"delta": 1e-7}})
    spec = parse_spec({"base": {"rounds": 2}, "grid": {"privacy.delta": [1e-6, 1e-7],
                                                        "cases": [{"privacy": {"dp_noise": 0.5}}]}})
    assert [(c.scenario.delta, c.scenario.dp_noise) for c in spec.cells()] == [(1e-6, 0.5), (1e-7, 0.5)]
    s = Scenario()
    s.rounds = 3
    assert s.rounds == 3
    with pytest.raises(SpecError, match=r"scenario\.rounds: got 0"):
        s.rounds = 0


def test_an_extension_adds_a_section_and_duplicates_are_refused():
    class Extra(Section):
        extra_knob: size("rounds") = 4

    register_section("extra-test", Extra)
    try:
        s = Scenario.from_dict({"extra_knob": 7})
        assert s.extra_knob == 7 and "extra_knob" in Scenario.fields() and s.to_dict()["extra_knob"] == 7
        assert "extra_knob" in spec_schema()["$defs"]["Scenario"]["properties"]
        with pytest.raises(SpecError, match=r"scenario\.extra_knob: got 0; allowed: an integer in \[1, 100,000\]"):
            Scenario(extra_knob=0)

        class Other(Section):
            extra_knob: int = 1

        with pytest.raises(ValueError, match="already registered"):
            register_section("extra-test", Other)
        with pytest.raises(ValueError, match="'extra_knob' already belongs to section 'extra-test'"):
            register_section("other-test", Other)

        class Clash(Section):
            privacy: int = 1

        with pytest.raises(ValueError, match="both a section and a field"):
            register_section("clash-test", Clash)
        assert "other-test" not in SECTIONS and "clash-test" not in SECTIONS
    finally:
        del SECTIONS["extra-test"], FIELD_OWNER["extra_knob"]


# ------------------------------------------------------------------------------------ JSON Schema
def _validator() -> jsonschema.Draft202012Validator:
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_every_bundled_spec_and_rejects_bad_fields():
    validator = _validator()
    for name, path in bundled_specs().items():
        raw = yaml.safe_load(path.read_text())
        assert not [e.message for e in validator.iter_errors(raw)], name
    raw = yaml.safe_load(bundled_specs()["default"].read_text())
    for bad in ({"rounds": True}, {"rounds": "3"}, {"dp_clip": "1"}, {"colour": 1}, {"privacy": {"rounds": 3}},
                {"membership_params": {"threat": "psychic"}}, {"sample_rate": 0}):
        assert not validator.is_valid({**raw, "base": {**raw["base"], **bad}}), bad
    assert not validator.is_valid({**raw, "grid": {"roundz": [1]}})
    assert validator.is_valid({**raw, "grid": {"privacy.delta": [1e-6], "cases_x": [{"rounds": 2}]}})


def test_cli_schema_command(tmp_path, capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "privfl-spec.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == printed
    assert set(printed["$defs"]["Scenario"]["properties"]) >= {"rounds", "delta", "graph", "privacy", "membership"}
    assert main(["schema", "--out", str(tmp_path / "missing" / "x.json")]) == 2
    assert "--out" in capsys.readouterr().err
