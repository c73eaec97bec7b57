"""Evaluation harness (``privfl.evaluations``): scenarios, YAML specs, runner, store and reports."""

from privfl.evaluations.scenario import Scenario, SpecError, run
from privfl.evaluations.spec import Spec, load_spec, parse_spec

__all__ = ["Scenario", "SpecError", "Spec", "load_spec", "parse_spec", "run", "run_spec", "write_report"]


def __getattr__(name: str):  # runner and report pull in tqdm/matplotlib; import them on first use
    if name == "run_spec":
        from privfl.evaluations.runner import run_spec

        return run_spec
    if name == "write_report":
        from privfl.evaluations.report import write_report

        return write_report
    raise AttributeError(name)
