"""The ``privfl`` command line.

``privfl run [SPEC] [--out DIR] [--workers N] [--device D]``  run (or resume) an evaluation;
no SPEC runs the bundled default. ``privfl report RUN_DIR`` rewrites the tables and plots.
``privfl list [KIND]`` shows the registered components. ``privfl account SPEC [--delta D] [--png PATH]``
prints the accountant's ε per round for each configuration's mechanism, sampling and rounds (RDP and
PLD side by side) without training. ``privfl audit [SPEC] [--delta D] [--trials N] [--png PATH]``
attacks each configuration's mechanism and prints the accounted ε of one release next to empirical
lower bounds (``evaluations/audit.py``; no SPEC audits the bundled ``dp_audit``).

Exit codes: 0 success; 2 bad input (the reason on stderr: which field, what it got, what is
allowed); 1 an internal error or a failed cell (recorded in the run's report).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from privfl import registry

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on bad usage, as we want
        self.print_usage(sys.stderr)
        print(f"privfl: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _int_at_least(low: int, note: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (argparse names the option; the error gives value and range)."""
    allowed = f"an integer >= {low}{note}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"got {value}; allowed: {allowed}")
        return value

    return parse


_workers = _int_at_least(0, " (0 = in this process)")
_trials = _int_at_least(8)


def _delta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a number in (0, 1)") from None
    if not (0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"got {value!r}; allowed: a number in (0, 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="privfl", description="Privacy and robustness evaluations for federated learning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_run = sub.add_parser("run", help="run or resume an evaluation spec (default: the bundled evaluation)")
    p_run.add_argument("spec", nargs="?", help="a YAML spec file or a bundled spec name (default: 'default')")
    p_run.add_argument("--out", type=Path, help="run directory (default: results/<spec name>)")
    p_run.add_argument("--workers", type=_workers, help="worker processes (default: number of cores; 0 = in-process)")
    p_run.add_argument("--device", help="override every cell's device: auto, cpu, cuda or cuda:N")
    p_run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_report = sub.add_parser("report", help="write results.md, results.csv and plots for a run directory")
    p_report.add_argument("run_dir", type=Path)
    p_account = sub.add_parser("account", help="the accountant's ε per round for each configuration of a spec "
                                                 "(RDP and PLD, no training)")
    p_account.add_argument("spec", help="a YAML spec file or a bundled spec name")
    p_account.add_argument("--delta", type=_delta, help="δ for every configuration (default: each scenario's delta)")
    p_account.add_argument("--png", type=Path, help="also write a plot of ε vs round to this PNG")
    p_audit = sub.add_parser("audit", help="empirical privacy audit: attack each configuration's mechanism, "
                                           "accounted ε of one release next to empirical lower bounds")
    p_audit.add_argument("spec", nargs="?", default="dp_audit",
                         help="a YAML spec file or a bundled spec name (default: 'dp_audit')")
    p_audit.add_argument("--delta", type=_delta, help="δ for every configuration (default: each scenario's delta)")
    p_audit.add_argument("--png", type=Path, help="also write a bar chart of the bounds to this PNG")
    p_audit.add_argument("--empirical", action="store_true", help=argparse.SUPPRESS)  # the old spelling: a no-op
    p_audit.add_argument("--trials", type=_trials, default=500_000,
                         help="black-box trials per side (default 500000)")
    p_list = sub.add_parser("list", help="list registered components")
    p_list.add_argument("kind", nargs="?", help=f"one of: {', '.join(registry.KINDS)}")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from privfl.evaluations.runner import run_spec
    from privfl.evaluations.scenario import SpecError, resolve_device
    from privfl.evaluations.spec import load_spec

    spec = load_spec(args.spec)
    if args.device is not None:
        try:
            resolve_device(args.device)
        except ValueError as exc:
            raise SpecError(f"--device: {exc}") from None
        spec.base = spec.base.replace(device=args.device)
        for block in spec.grid:
            block.pop("device", None)
    out = args.out if args.out is not None else Path("results") / spec.name
    summary = run_spec(spec, out, workers=args.workers, progress=not args.no_progress)
    print(
        f"{spec.name}: {summary.total} cells — {summary.skipped} already done, {summary.done} ran, "
        f"{summary.failed} failed. Report: {summary.run_dir / 'results.md'}"
    )
    if summary.failed:
        print(f"privfl: {summary.failed} cell(s) failed; see {summary.run_dir / 'results.md'}; "
              "re-run the same command to retry them", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from privfl.evaluations.report import write_report

    paths = write_report(args.run_dir)
    for p in paths.values():
        print(p)
    return EXIT_OK


def _cmd_account(args: argparse.Namespace) -> int:
    from privfl.evaluations.privacy import account_spec
    from privfl.evaluations.spec import load_spec

    print(account_spec(load_spec(args.spec), delta=args.delta, png=args.png))
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from privfl.evaluations.audit import audit_spec_empirical
    from privfl.evaluations.spec import load_spec

    print(audit_spec_empirical(load_spec(args.spec), delta=args.delta, png=args.png, trials=args.trials))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    for kind in kinds:
        names = registry.available(kind)
        print(f"{kind}:")
        for name in names:
            params = ", ".join(
                p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                for p in registry.parameters(kind, name).values()
            )
            print(f"  {name}({params})")
        if not names:
            print("  (none yet)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"run": _cmd_run, "report": _cmd_report, "list": _cmd_list, "account": _cmd_account,
               "audit": _cmd_audit}[args.command]
    try:
        return handler(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"privfl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("privfl: interrupted; finished cells are saved — re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("privfl: internal error (the traceback above); please report it", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
