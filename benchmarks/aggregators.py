"""Time every robust aggregator, pre-aggregator and NNA on ``[n, d]`` float32 updates.

Default: ``n = 50`` rows, ``f = 10``, ``d ∈ {1e5, 1e6}``: 40 honest rows i.i.d. N(0, 1) (one fixed
seed) and 10 ALIE rows (z = 1; ``--attack none`` makes all 50 rows honest), one thread. Next to
each rule, three references measured in the same process on the same matrix: ``U.mean(0)`` (one
pass over the data: the memory floor), the Gram matrix ``U @ U.T`` and ``torch.median(U, 0)``.
Each call is warmed up once, then timed ``--repeats`` times (median). Single-threaded by default
(``--threads``); the header states the thread count torch runs with.

Targets from issue 3, checked in the ``target`` column:
  - median, trimmed mean, Meamed: within 3× ``torch.median(U, 0)``;
  - Krum, Multi-Krum, NNM, Bulyan: within 3× one Gram matrix;
  - geometric median: within (iterations + 1)× the mean (iterations: what the call reported).
The ``×mean``/``×gram``/``×median`` columns divide by the references measured once per ``d``; on a
shared machine the load drifts during the run, so the ``target`` column decides PASS/FAIL on a second
measurement that alternates the rule with its own reference call by call (``--repeats`` pairs,
ratio of medians), and prints that ratio.

A fresh ``[n, d]`` output costs its first touch (page faults and zeroing, ``torch.zeros(n, d)``
below): a floor for pre-aggregators (NNM, bucketing, clipping, ARC) that ``U @ U.T`` does not pay.
With 4 KiB pages that alone is ~1.1× the Gram at d = 1e6, so by default the benchmark runs under
torch's own transparent-huge-page CPU allocator (``THP_MEM_ALLOC_ENABLE=1``, re-executing itself
with it set; the header says which); ``--no-thp`` measures the default allocator. Users with large
``d`` get the same effect by exporting that variable.

Peak extra memory (on unless ``--no-memory``): each rule runs once in a fresh subprocess that
first builds ``U``, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, Linux) and
reports the peak resident set size during the call (``VmHWM``) minus the resident size before it:
everything the call held at its peak, output and allocator overheads included. Shown in MB and as a
multiple of ``U``'s own size (``n·d·4`` bytes).

MDA at ``f = 10`` would visit C(50, 10) ≈ 1e10 subsets: its guard refuses, and the table says so;
``mda (f=2)`` (1,225 subsets) is timed instead.

``--device cuda`` (or ``auto``: CUDA when present) moves ``U`` to the GPU and synchronises around every
timed call; the THP re-exec is skipped (it concerns the CPU allocator) and the peak extra memory is
``torch.cuda.max_memory_allocated`` during the call minus the memory allocated before it, measured in
the same process (the CUDA caching allocator's own reserve is not counted).

**Against ByzFL** (issue 18), when ByzFL is installed (``pip install --no-deps byzfl``: its rules need only
torch, numpy and scipy; the package's own ``__init__`` imports torchvision for its training benchmark,
so only ``byzfl.aggregators`` is loaded, without that ``__init__``): the ``vs ByzFL`` column gives ByzFL's
time over privfl's on the same matrix (interleaved, ratio of medians; > 1 means privfl is faster)
for the rules issue 18 sets targets on: median and trimmed mean ≥ 3×, Meamed ≥ 5×, centered clipping
≥ 1× (ByzFL's ``Median`` is ``torch.quantile(·, 0.5)``, ``TrMean`` a full sort, ``CenteredClipping(tau=1.0,
L=1)`` as privfl's, both stateful). Centered clipping is also swept over ``--cc-dims`` (default
1e3, 1e4, 1e5: the target is "never slower at any d ≥ 1e3"), with more repeats at small ``d``.

Run: ``.venv/bin/python benchmarks/aggregators.py [--dims 100000,1000000] [--repeats 3] [--no-memory]
[--device cpu|cuda|auto] [--cc-dims 1000,10000,100000] [--only median,trimmed-mean,...]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from functools import partial

import torch

import privfl

CPU = torch.device("cpu")

RULES: list[tuple[str, str, str, dict]] = [
    # (label, kind, name, params); f is added for rules that take it
    ("median", "aggregator", "median", {}),
    ("trimmed-mean", "aggregator", "trimmed-mean", {}),
    ("meamed", "aggregator", "meamed", {}),
    ("geometric-median", "aggregator", "geometric-median", {}),
    ("krum", "aggregator", "krum", {}),
    ("multi-krum", "aggregator", "multi-krum", {}),
    ("bulyan", "aggregator", "bulyan", {}),
    ("centered-clipping", "aggregator", "centered-clipping", {"tau": 1.0}),
    ("mda", "aggregator", "mda", {}),
    ("mda (f=2)", "aggregator", "mda", {"f": 2}),
    ("mean (privfl)", "aggregator", "mean", {}),
    ("nnm", "preaggregator", "nnm", {}),
    ("bucketing (s=2)", "preaggregator", "bucketing", {"s": 2}),
    ("clipping", "preaggregator", "clipping", {"tau": 1.0}),
    ("arc", "preaggregator", "arc", {}),
    ("nna (mixing)", "mixing", "nna", {}),
]
COORDINATE = {"median", "trimmed-mean", "meamed"}
GRAM = {"krum", "multi-krum", "nnm", "bulyan"}


# issue 18's targets: ByzFL's time / privfl's, at least this
BYZFL_TARGETS = {"median": 3.0, "trimmed-mean": 3.0, "meamed": 5.0, "centered-clipping": 1.0}


def load_byzfl():
    """ByzFL's ``aggregators`` module, or ``None`` when ByzFL is not installed. The package's ``__init__`` is
    skipped (it imports torchvision for ByzFL's training benchmark): a bare package object stands in."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "byzfl" not in sys.modules:
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    from byzfl.aggregators import aggregators

    return aggregators


def byzfl_rule(A, label: str, f: int):
    """ByzFL's counterpart of privfl's rule ``label`` (same parameters), or ``None``."""
    makers = {"median": lambda: A.Median(), "trimmed-mean": lambda: A.TrMean(f=f),
              "meamed": lambda: A.Meamed(f=f), "centered-clipping": lambda: A.CenteredClipping(tau=1.0, L=1)}
    return makers[label]() if label in makers else None


def byzfl_text(label: str, ratio: float) -> str:
    need = BYZFL_TARGETS[label]
    return f"vs ByzFL {ratio:.2f}× (≥{need:g}×: {'PASS' if ratio >= need else 'FAIL'})"


def centered_clipping_sweep(A, n: int, f: int, dims: list[int], attack: str, repeats: int,
                            device: torch.device) -> None:
    """Centered clipping against ByzFL's at each ``d`` (interleaved, ratio of medians)."""
    print(f"\ncentered clipping (tau = 1.0, L = 1) vs ByzFL, {torch.get_num_threads()} thread(s); "
          "ByzFL time / privfl time (target ≥ 1 at every d ≥ 1e3)")
    for d in dims:
        U = matrix(n, f, d, attack, device)
        ours = build("aggregator", "centered-clipping", {"tau": 1.0}, f)
        theirs = byzfl_rule(A, "centered-clipping", f)
        reps = max(repeats, min(2001, int(2e7 // (n * d))))
        r = interleaved_ratio(partial(theirs, U), partial(ours, U), reps, device)
        print(f"  d = {d:>9,}  ({reps} pairs)  {byzfl_text('centered-clipping', r)}")


def build(kind: str, name: str, params: dict, f: int):
    params = dict(params)
    if "f" in privfl.registry.parameters(kind, name):
        params.setdefault("f", f)
    return privfl.make(kind, name, **params)


def call(rule, kind: str, U: torch.Tensor):
    if kind == "preaggregator":
        return rule(U, generator=torch.Generator(device=U.device).manual_seed(0))
    return rule(U)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# wall clock by default; --clock cpu: this thread's CPU time (user + system, page faults included), which a
# loaded shared machine does not inflate by preempting the process (single-threaded CPU runs only)
CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def _once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call, the device's queued work included."""
    _sync(device)
    start = _clock()
    fn()
    _sync(device)
    return _clock() - start


def timed(fn: Callable[[], object], repeats: int, device: torch.device = CPU) -> float:
    fn()
    _sync(device)
    return statistics.median(_once(fn, device) for _ in range(repeats))


def interleaved_ratio(fn: Callable[[], object], ref: Callable[[], object], repeats: int,
                      device: torch.device = CPU) -> float:
    """median(fn) / median(ref) over ``repeats`` alternating calls (after one warm-up of each)."""
    fn()
    ref()
    a, b = [], []
    for _ in range(repeats):
        for f, acc in ((fn, a), (ref, b)):
            acc.append(_once(f, device))
    return statistics.median(a) / statistics.median(b)


def matrix(n: int, f: int, d: int, attack: str, device: torch.device = CPU) -> torch.Tensor:
    """``n − f`` honest rows N(0, 1) and ``f`` rows of ``attack`` (``none``: all ``n`` rows honest), drawn
    on CPU (the same matrix whatever the device) and moved to ``device``."""
    g = torch.Generator().manual_seed(0)
    if attack == "none" or f == 0:
        return torch.randn(n, d, generator=g, dtype=torch.float32).to(device)
    honest = torch.randn(n - f, d, generator=g, dtype=torch.float32)
    params = {"z": 1.0} if attack == "alie" else {}
    bad = privfl.make("byzantine_attack", attack, **params)(honest, f, generator=g)
    return torch.cat([bad, honest]).to(device)


def cuda_peak_memory(rule, kind: str, U: torch.Tensor) -> float | None:
    """Peak extra GPU memory (MB) of one call: ``max_memory_allocated`` during it minus the memory
    allocated before it (``None`` when the rule refuses the input)."""
    _sync(U.device)
    torch.cuda.reset_peak_memory_stats(U.device)
    base = torch.cuda.memory_allocated(U.device)
    try:
        call(rule, kind, U)
    except ValueError:
        return None
    _sync(U.device)
    return (torch.cuda.max_memory_allocated(U.device) - base) / 2**20


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(label: str, n: int, f: int, d: int, attack: str) -> None:
    """Peak extra memory of one call (run in a fresh process): the peak RSS (VmHWM, reset through
    /proc/self/clear_refs right before the call) minus the RSS before it."""
    torch.set_num_threads(1)
    kind, name, params = next((k, nm, p) for lab, k, nm, p in RULES if lab == label)
    rule = build(kind, name, params, f)
    U = matrix(n, f, d, attack)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kb("VmRSS")
    try:
        call(rule, kind, U)
        print(json.dumps({"extra_kb": _status_kb("VmHWM") - base}))
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))


def peak_memory(label: str, n: int, f: int, d: int, attack: str) -> float | None:
    out = subprocess.run(
        [sys.executable, __file__, "--child", label, "--n", str(n), "--f", str(f), "--dims", str(d),
         "--attack", attack],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return None if "error" in data else data["extra_kb"] / 1024.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--f", type=int, default=10)
    p.add_argument("--dims", default="100000,1000000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attack", default="alie", choices=["none", "alie", "sign-flip", "gaussian"],
                   help="what the f faulty rows are (default: ALIE with z = 1)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-thp", action="store_true",
                   help="keep torch's default CPU allocator (no THP_MEM_ALLOC_ENABLE=1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where U lives (auto: cuda when available); default cpu")
    p.add_argument("--cc-dims", default="1000,10000,100000",
                   help="d values of the centered-clipping sweep against ByzFL ('' to skip)")
    p.add_argument("--clock", default="wall", choices=tuple(CLOCK),
                   help="wall (default) or cpu: the thread's CPU time, robust to other load (1 thread, CPU only)")
    p.add_argument("--only", default="", help="comma-separated rule labels to time (default: all)")
    p.add_argument("--no-byzfl", action="store_true", help="skip the ByzFL comparison even when installed")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    if device.type == "cpu" and not args.no_thp and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")  # read by torch's allocator: set before start
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    dims = [int(float(x)) for x in args.dims.split(",")]
    if args.child:
        child(args.child, args.n, args.f, dims[0], args.attack)
        return
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (args.threads != 1 or device.type != "cpu"):
        p.error("--clock cpu measures one thread on the CPU: use --threads 1 --device cpu")
    global _clock
    _clock = CLOCK[args.clock]
    if device.type == "cuda":
        where = (f"device cuda ({torch.cuda.get_device_name(device)}), synchronised around each call; "
                 "memory: torch.cuda.max_memory_allocated\nthe targets are the CPU acceptance figures; on a GPU "
                 "the references take well under a millisecond and every rule is bound by kernel launches and "
                 "host synchronisations, so PASS/FAIL there is for reference only")
    else:
        where = ("device cpu; CPU allocator: "
                 f"{'transparent huge pages' if os.environ.get('THP_MEM_ALLOC_ENABLE') == '1' else 'default pages'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), n={args.n}, f={args.f} "
          f"({args.attack} rows), float32, median of {args.repeats} timed calls after one warm-up; clock: "
          f"{args.clock}; {where}")
    timed_ = partial(timed, repeats=args.repeats, device=device)
    A = None if args.no_byzfl else load_byzfl()
    print("ByzFL: " + ("byzfl.aggregators loaded; the vs ByzFL column is ByzFL's time / privfl's" if A is not None
                       else "not installed or --no-byzfl (pip install --no-deps byzfl): no vs ByzFL column"))
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if A is not None and args.cc_dims.strip():
        centered_clipping_sweep(A, args.n, args.f, [int(float(x)) for x in args.cc_dims.split(",")],
                                args.attack, args.repeats, device)
    for d in dims:
        U = matrix(args.n, args.f, d, args.attack, device)
        size_mb = U.numel() * U.element_size() / 2**20
        t_mean = timed_(lambda U=U: U.mean(0))
        t_gram = timed_(lambda U=U: U @ U.T)
        t_med = timed_(lambda U=U: torch.median(U, 0))
        t_zeros = timed_(lambda U=U: torch.zeros_like(U))
        print(f"\nd = {d:,}  (U: {size_mb:.0f} MB)   references: U.mean(0) {t_mean * 1e3:.1f} ms, "
              f"U @ U.T {t_gram * 1e3:.1f} ms, torch.median(U, 0) {t_med * 1e3:.1f} ms")
        print(f"first touch of a fresh [n, d] output, torch.zeros(n, d): {t_zeros * 1e3:.1f} ms "
              f"({t_zeros / t_gram:.2f}× gram)")
        header = (f"{'rule':20s} {'ms/call':>9s} {'×mean':>7s} {'×gram':>7s} {'×median':>8s} "
                  f"{'peak extra MB':>14s} {'×U':>5s}  target")
        print(header)
        print("-" * len(header))
        for label, kind, name, params in RULES:
            if only and label not in only:
                continue
            rule = build(kind, name, params, args.f)
            try:
                call(rule, kind, U)
            except ValueError as exc:
                print(f"{label:20s} refused: {exc}")
                continue
            t = timed_(lambda rule=rule, kind=kind, U=U: call(rule, kind, U))
            if args.no_memory:
                mem = None
            elif device.type == "cuda":
                mem = cuda_peak_memory(build(kind, name, params, args.f), kind, U)
            else:
                mem = peak_memory(label, args.n, args.f, d, args.attack)
            target = ""
            run = partial(call, rule, kind, U)
            if label in COORDINATE:
                r = interleaved_ratio(run, lambda U=U: torch.median(U, 0), args.repeats, device)
                target = f"≤3× median: {'PASS' if r <= 3 else 'FAIL'} ({r:.2f}×, interleaved)"
            elif label in GRAM:
                r = interleaved_ratio(run, lambda U=U: U @ U.T, args.repeats, device)
                target = f"≤3× gram: {'PASS' if r <= 3 else 'FAIL'} ({r:.2f}×, interleaved)"
            elif label == "geometric-median":
                it = rule.last_iterations
                r = interleaved_ratio(run, lambda U=U: U.mean(0), args.repeats, device)
                target = f"≤(it+1)× mean, it={it}: {'PASS' if r <= it + 1 else 'FAIL'} ({r:.1f}×, interleaved)"
            theirs = byzfl_rule(A, label, args.f) if A is not None else None
            if theirs is not None:
                r = interleaved_ratio(lambda theirs=theirs, U=U: theirs(U), run, args.repeats, device)
                target += ("; " if target else "") + byzfl_text(label, r)
            mem_txt = f"{mem:14.1f} {mem / size_mb:5.2f}" if mem is not None else f"{'—':>14s} {'':5s}"
            print(f"{label:20s} {t * 1e3:9.1f} {t / t_mean:7.1f} {t / t_gram:7.2f} {t / t_med:8.2f} "
                  f"{mem_txt}  {target}")


if __name__ == "__main__":
    main()
