"""Evaluation harness (``privfl.evaluations``): scenarios, YAML specs, runner, store and reports."""

from privfl.evaluations.errors import SpecError

__all__ = ["Scenario", "SpecError", "Spec", "load_spec", "parse_spec", "run", "run_spec", "write_report"]

# Imported on first use: scenarios pull in torch, the runner tqdm, reports matplotlib — and the command
# line must refuse a bad spec (e.g. a grid too large) without waiting for any of them.
_LAZY = {"Scenario": "scenario", "run": "scenario", "Spec": "spec", "load_spec": "spec", "parse_spec": "spec",
         "run_spec": "runner", "write_report": "report"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"privfl.evaluations.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'privfl.evaluations' has no attribute {name!r}")
