"""privfl's RDP accountant against Opacus' ``RDPAccountant``, same numbers, measured in one run.

For each ``(q, σ)`` setting: ``T`` Poisson-subsampled Gaussian steps recorded one at a time, then ε at
``δ``, by

- Opacus: ``RDPAccountant.step(noise_multiplier=σ, sample_rate=q)`` ``T`` times, ``get_epsilon(δ)``
  (its default orders);
- privfl: ``PrivacyLedger(orders=<Opacus' default orders>).record(gaussian_guarantee(σ), sampling_rate=q)``
  ``T`` times, ``epsilon(δ)`` — the same orders, so the same number (checked: the run stops if the two
  ε differ by more than 1e-12 relative);

cold (privfl's per-(q, σ) RDP cache cleared before each timed run) and while monitoring (ε queried every
``--every`` steps, as a training loop that logs its budget does; Opacus recomputes the RDP curve at each
query, privfl reuses it). A third line times privfl's own default orders (Opacus' grid extended to 4096)
against Opacus on that same grid (Opacus returns NaN at orders 2048 and 4096, where ``binom`` overflows;
privfl computes them through log-gamma, so ε may only be smaller or equal there).

Times are the median of ``--repeats`` runs, alternating the two libraries; the ratio is Opacus' time over
privfl's (> 1: privfl faster). Pure Python + NumPy on one thread (``OMP_NUM_THREADS=1`` is set).

Run: ``.venv/bin/python benchmarks/accountant.py [--steps 10000] [--repeats 3] [--every 100]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from functools import partial

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from opacus.accountants import RDPAccountant  # noqa: E402

from privfl.accounting import PrivacyLedger  # noqa: E402
from privfl.accounting import analysis as A  # noqa: E402
from privfl.accounting.guarantees import gaussian_guarantee  # noqa: E402

SETTINGS = [(0.01, 1.1), (0.001, 0.8), (0.05, 2.0), (0.3, 1.0)]


def run_opacus(q: float, sigma: float, steps: int, delta: float, every: int, alphas) -> float:
    acc = RDPAccountant()
    eps = None
    for t in range(1, steps + 1):
        acc.step(noise_multiplier=sigma, sample_rate=q)
        if every and t % every == 0:
            eps = acc.get_epsilon(delta, alphas=alphas)
    return eps if every else acc.get_epsilon(delta, alphas=alphas)


def run_privfl(q: float, sigma: float, steps: int, delta: float, every: int, orders) -> float:
    A._sgm_rdp.cache_clear()
    ledger = PrivacyLedger(orders=orders)
    g = gaussian_guarantee(sigma)
    eps = None
    for t in range(1, steps + 1):
        ledger.record(g, sampling_rate=q)
        if every and t % every == 0:
            eps = ledger.epsilon(delta)
    return eps if every else ledger.epsilon(delta)


def paired(fa, fb, repeats: int) -> tuple[float, float, object, object]:
    ta, tb = [], []
    for _ in range(repeats):
        for f, acc in ((fa, ta), (fb, tb)):
            start = time.perf_counter()
            out = f()
            acc.append(time.perf_counter() - start)
            if f is fa:
                va = out
            else:
                vb = out
    return statistics.median(ta), statistics.median(tb), va, vb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--every", type=int, default=100, help="query interval of the monitoring line (steps)")
    p.add_argument("--delta", type=float, default=1e-5)
    args = p.parse_args()
    warnings.simplefilter("ignore")  # Opacus' "optimal order is the largest alpha"
    opacus_alphas = list(RDPAccountant.DEFAULT_ALPHAS)
    print(f"T = {args.steps:,} steps, δ = {args.delta:g}, median of {args.repeats} alternating runs, 1 thread "
          f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}); ratio = Opacus time / privfl time")
    print(f"{'q':>6s} {'σ':>5s}  {'case':34s} {'Opacus ms':>10s} {'privfl ms':>10s} {'ratio':>6s}  ε (Opacus / privfl)")
    worst = np.inf
    for q, sigma in SETTINGS:
        cases = [
            ("cold, Opacus' orders", 0, opacus_alphas, opacus_alphas),
            (f"monitoring (ε every {args.every}), Opacus' orders", args.every, opacus_alphas, opacus_alphas),
            ("cold, privfl's default orders", 0, list(A.DEFAULT_ORDERS), A.DEFAULT_ORDERS),
        ]
        for name, every, alphas, orders in cases:
            t_o, t_p, e_o, e_p = paired(
                partial(run_opacus, q, sigma, args.steps, args.delta, every, alphas),
                partial(run_privfl, q, sigma, args.steps, args.delta, every, orders), args.repeats)
            same = alphas is opacus_alphas
            if same and abs(e_o - e_p) > 1e-12 * abs(e_o):
                raise SystemExit(f"ε differs: Opacus {e_o!r}, privfl {e_p!r}")
            ratio = t_o / t_p
            if same:
                worst = min(worst, ratio)
            print(f"{q:6g} {sigma:5g}  {name:34s} {t_o * 1e3:10.1f} {t_p * 1e3:10.1f} {ratio:6.2f}  "
                  f"{e_o:.12g} / {e_p:.12g}")
    print(f"\nworst ratio on Opacus' orders (same numbers): {worst:.2f}× — target ≥ 1: "
          f"{'PASS' if worst >= 1 else 'FAIL'}")


if __name__ == "__main__":
    main()
