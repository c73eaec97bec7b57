"""The ``privfl`` command line.

``privfl run [SPEC] [--out DIR] [--workers N] [--device D]``  run (or resume) an evaluation;
no SPEC runs the bundled default. ``privfl report RUN_DIR`` rewrites the tables and plots.
``privfl run ... --backend ray [--address A] [--cpus-per-cell N] [--gpus-per-cell F] [--retries R]``
runs the cells on Ray instead of the local pool (``evaluations/ray_backend.py``, extra ``privfl[ray]``).
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
import logging
import os
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
_max_cells = _int_at_least(1)


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
    p_run.add_argument("--no-progress", action="store_true", help="hide the progress bar / progress lines")
    p_run.add_argument("--force", action="store_true",
                       help="run into a directory that holds another spec's or another privfl/torch version's cells")
    p_run.add_argument("--max-cells", type=_max_cells, default=None,
                       help="refuse grids with more cells than this (default 10000)")
    p_run.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="where cells run: local process pool (default) or Ray (one machine or a cluster)")
    p_run.add_argument("--address", help="ray: auto, host:port or ray://host:port (default: a local Ray instance)")
    p_run.add_argument("--cpus-per-cell", type=_int_at_least(1), help="ray: CPUs (= torch threads) per cell (1)")
    p_run.add_argument("--gpus-per-cell", type=float, help="ray: GPUs per cell, fractions share a GPU (0)")
    p_run.add_argument("--retries", type=_int_at_least(0), help="ray: re-runs of a cell whose worker died (1)")
    p_report = sub.add_parser("report", help="write results.md, results.csv and plots for a run directory")
    p_report.add_argument("run_dir", type=Path)
    p_account = sub.add_parser("account", help="the accountant's ε per round for each configuration of a spec "
                                                 "(RDP and PLD, no training)")
    p_account.add_argument("spec", help="a YAML spec file or a bundled spec name")
    p_account.add_argument("--delta", type=_delta, help="δ for every configuration (default: each scenario's delta)")
    p_account.add_argument("--png", type=Path, help="also write a plot of ε vs round to this PNG")
    p_account.add_argument("--tables", type=Path,
                           help="where the per-round ε tables go (default: results/<spec name>/epsilon_per_round.md); "
                                "the terminal gets one summary row per configuration")
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
    p_schema = sub.add_parser("schema", help="print the JSON Schema of a spec file (for editors' autocompletion)")
    p_schema.add_argument("--out", type=Path, help="write the schema to this file instead of printing it")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from privfl.evaluations.errors import SpecError
    from privfl.evaluations.spec import MAX_CELLS, load_spec

    # A grid too large is refused before torch is imported (a cold process answers in well under a second).
    spec = load_spec(args.spec, max_cells=MAX_CELLS if args.max_cells is None else args.max_cells)
    from privfl.evaluations.runner import run_spec
    from privfl.evaluations.scenario import resolve_device

    backend = _backend(args)
    if args.device is not None:
        try:
            resolve_device(args.device)
        except ValueError as exc:
            raise SpecError(f"--device: {exc}") from None
        spec.base = spec.base.replace(device=args.device)
        for block in spec.grid:
            block.pop("device", None)
    out = _writable_dir(args.out if args.out is not None else Path("results") / spec.name, "--out")
    limit = {} if args.max_cells is None else {"max_cells": args.max_cells}
    summary = run_spec(spec, out, workers=args.workers, progress=not args.no_progress, force=args.force,
                         backend=backend, **limit)
    print(
        f"{spec.name}: {summary.total} cells — {summary.skipped} already done, {summary.done} ran, "
        f"{summary.failed} failed. Report: {summary.run_dir / 'results.md'}"
    )
    if summary.failed:
        print(f"privfl: {summary.failed} cell(s) failed; see {summary.run_dir / 'results.md'}; "
              "re-run the same command to retry them", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _writable_dir(path: Path, option: str) -> Path:
    """``path`` usable as a directory privfl may create and write; :class:`SpecError` naming ``option``
    otherwise. Nothing is created here (bad input elsewhere must leave no empty folders behind)."""
    from privfl.evaluations.errors import SpecError

    if path.exists() and not path.is_dir():
        raise SpecError(f"{option}: {str(path)!r} is an existing file, not a directory; allowed: a directory "
                        "(existing or new)")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SpecError(f"{option}: cannot create directory {str(path)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(f"{option}: cannot write in {str(parent)!r} (permission denied)")
    return path


def _backend(args: argparse.Namespace):
    """``--backend`` and its Ray options (which make sense with ``--backend ray`` only)."""
    from privfl.evaluations.errors import SpecError

    options = {k: getattr(args, k) for k in ("address", "cpus_per_cell", "gpus_per_cell", "retries")}
    given = {k: v for k, v in options.items() if v is not None}
    if args.backend == "local":
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise SpecError(f"{names}: options of the Ray backend; allowed with --backend ray only")
        return "local"
    from privfl.evaluations.ray_backend import RayBackend, resolve_backend

    backend = RayBackend(**given)
    resolve_backend(backend, args.workers)  # --workers and an unreachable --address fail before --out is made
    return backend


def _cmd_report(args: argparse.Namespace) -> int:
    from privfl.evaluations.report import write_report

    paths = write_report(args.run_dir)
    for p in paths.values():
        print(p)
    return EXIT_OK


def _cmd_account(args: argparse.Namespace) -> int:
    from privfl.evaluations.errors import SpecError
    from privfl.evaluations.privacy import account_spec
    from privfl.evaluations.spec import load_spec

    if args.png is not None and not args.png.parent.is_dir():
        raise SpecError(f"--png: directory {str(args.png.parent)!r} does not exist")
    spec = load_spec(args.spec)
    spec.validate()  # bad input fails before any folder is created
    tables = args.tables if args.tables is not None else Path("results") / spec.name / "epsilon_per_round.md"
    if tables.is_dir():
        raise SpecError(f"--tables: {str(tables)!r} is a directory; allowed: a file path")
    _writable_dir(tables.parent, "--tables")
    print(account_spec(spec, delta=args.delta, png=args.png, tables=tables))
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from privfl.evaluations.audit import audit_spec_empirical
    from privfl.evaluations.errors import SpecError
    from privfl.evaluations.spec import load_spec

    if args.png is not None and not args.png.parent.is_dir():
        raise SpecError(f"--png: directory {str(args.png.parent)!r} does not exist")
    print(audit_spec_empirical(load_spec(args.spec), delta=args.delta, png=args.png, trials=args.trials))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    """Each component: its name with its parameters and defaults, then the paper and variant (the first
    paragraph of its docstring)."""
    import textwrap

    from privfl.evaluations.errors import SpecError

    if args.kind is not None and args.kind not in registry.KINDS:
        raise SpecError(f"KIND: got {args.kind!r}; valid kinds: {', '.join(registry.KINDS)}")
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
            doc = (inspect.getdoc(registry.get(kind, name)) or "").split("\n\n")[0].replace("``", "")
            if doc:
                print(textwrap.fill(" ".join(doc.split()), width=110, initial_indent=" " * 6,
                                    subsequent_indent=" " * 6))
        if not names:
            print("  (none yet)")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of a spec: scenario fields of every registered section, and the spec's keys."""
    import json

    from privfl.evaluations.scenario import SpecError
    from privfl.evaluations.spec import spec_schema

    text = json.dumps(spec_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    elif args.out.is_dir() or not args.out.parent.is_dir():
        raise SpecError(f"--out: got {str(args.out)!r}; allowed: a file path in an existing directory")
    else:
        args.out.write_text(text)
    return EXIT_OK


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Only validation errors are bad input (exit 2); any other ValueError/TypeError is a bug (exit 1)."""
    from privfl.evaluations.errors import SpecError
    from privfl.evaluations.store import StoreError

    return (SpecError, StoreError)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # (setStream would flush the previous, possibly closed, stream)
        super().emit(record)


def _setup_logging() -> None:
    """``privfl`` logger → stderr: progress lines and summaries (a terminal also gets the progress bar)."""
    logger = logging.getLogger("privfl")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        fmt = "privfl: %(message)s" if sys.stderr.isatty() else "%(asctime)s privfl: %(message)s"
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = False  # some dependencies configure the root logger: print each line once


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"run": _cmd_run, "report": _cmd_report, "list": _cmd_list, "account": _cmd_account,
               "audit": _cmd_audit, "schema": _cmd_schema}[args.command]
    _setup_logging()
    try:
        return handler(args)
    except _bad_input_types() as exc:
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
