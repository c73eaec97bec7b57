"""examples/flower: a Flower app as `flwr new` lays it out, checked with Flower's own pyproject validation
(its run through the entry points on Flower's simulation engine is in test_flower_simulation.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("flwr")

APP = Path(__file__).resolve().parents[1] / "examples" / "flower"



def test_pyproject_is_a_valid_flower_app_and_matches_the_defaults():
    from flwr.cli.config_utils import load_and_validate

    config, _ = load_and_validate(APP / "pyproject.toml", check_module=True)
    sys.path.insert(0, str(APP))
    try:
        from privfl_flower import task
    finally:
        sys.path.remove(str(APP))
    assert config["tool"]["flwr"]["app"]["config"] == task.DEFAULTS
    with open(APP / "pyproject.toml", "rb") as fh:
        assert "privfl[flower]" in tomllib.load(fh)["project"]["dependencies"]
