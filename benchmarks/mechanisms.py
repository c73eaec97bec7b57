"""Throughput of the privacy mechanisms and speed of the accountant.

1. ``privatize`` on a ``[100, 1e6]`` float32 matrix (100 clients × one million coordinates) for the
   Gaussian mechanism (local: clip + noise; central: the client-side clip) and RQM (m = 5, q = 0.5),
   next to ``torch.rand`` of the same shape — the floor any randomized mechanism pays to draw one
   uniform per coordinate. Prints seconds (median of ``--repeats`` after a warm-up), coordinates per
   second and the ratio to the floor (target: RQM within 10×).
2. The accountant: ε(δ = 1e-5) after 10,000 rounds of RQM (one coordinate, m = 5, q = 0.5, Δ = c) and
   of the Poisson-subsampled Gaussian (q = 0.01, σ = 1), by RDP and by PLD, each timed from a fresh
   ledger (target: < 1 s each).

Run: ``.venv/bin/python benchmarks/mechanisms.py [--threads 1] [--repeats 3] [--rows 100] [--cols 1000000]
[--device cpu|cuda|auto]`` (on CUDA every timed call is followed by a synchronisation).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import privfl
from privfl.accounting import PrivacyLedger, gaussian_guarantee


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_privatize(rows: int, cols: int, repeats: int, device: torch.device) -> None:
    x = torch.randn(rows, cols, device=device) * 0.05
    g = torch.Generator(device=device).manual_seed(0)
    floor = timed(lambda: torch.rand(rows, cols, generator=g, device=device), repeats, device)
    cases = {
        "torch.rand (floor)": None,
        "gaussian local (clip + noise)": privfl.make("mechanism", "gaussian", clip_norm=1.0, noise_multiplier=1.0,
                                                      local=True),
        "dp-fedavg (client clip)": privfl.make("mechanism", "dp-fedavg", clip_norm=1.0, noise_multiplier=1.0),
        "rqm (m=5, q=0.5)": privfl.make("mechanism", "rqm", c=0.05, delta=0.05, m=5, q=0.5),
        "rqm (m=16, q=0.9)": privfl.make("mechanism", "rqm", c=0.05, delta=0.05, m=16, q=0.9),
    }
    print(f"privatize on [{rows}, {cols}] float32, {device}, {torch.get_num_threads()} thread(s), "
          f"median of {repeats}")
    print(f"{'case':34s} {'seconds':>9s} {'Mcoord/s':>9s} {'x floor':>8s}")
    for name, mech in cases.items():
        if mech is None:
            sec = floor
        else:
            sec = timed(lambda mech=mech: mech.privatize(x, generator=g), repeats, device)
        print(f"{name:34s} {sec:9.3f} {rows * cols / sec / 1e6:9.1f} {sec / floor:8.2f}")


def bench_accountant() -> None:
    print("\naccountant: ε(δ=1e-5) after 10,000 rounds, fresh ledger each time")
    print(f"{'events':46s} {'method':>6s} {'epsilon':>10s} {'seconds':>8s}")
    rqm = privfl.make("mechanism", "rqm", c=1.0, delta=1.0, m=5, q=0.5).guarantee()
    cases = [
        ("RQM m=5 q=0.5 Δ=c (one coordinate) × 10,000", lambda L: L.record(rqm, clients=[0], count=10_000)),
        ("subsampled Gaussian q=0.01 σ=1 × 10,000",
         lambda L: L.record(gaussian_guarantee(1.0), sampling_rate=0.01, count=10_000)),
        ("subsampled Gaussian, 10,000 separate events",
         lambda L: [L.record(gaussian_guarantee(1.0), sampling_rate=0.01, round=t) for t in range(10_000)]),
    ]
    for name, fill in cases:
        for method in ("rdp", "pld"):
            start = time.perf_counter()
            ledger = PrivacyLedger()
            fill(ledger)
            eps = ledger.epsilon(1e-5, method=method)
            print(f"{name:46s} {method:>6s} {eps:10.4f} {time.perf_counter() - start:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--cols", type=int, default=1_000_000)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="where privatize runs (auto: cuda when available); default cpu")
    parser.add_argument("--skip-privatize", action="store_true")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    if not args.skip_privatize:
        bench_privatize(args.rows, args.cols, args.repeats, torch.device(args.device))
    bench_accountant()


if __name__ == "__main__":
    main()
