"""Time longitudinal LDP frequency estimation: users' reports (privatize) and the server's estimate.

For each protocol and population size ``n``: a Zipf(1.1) population over ``k`` categories whose values
change with probability 0.1 per step runs ``tau`` collections through one mechanism object (memo
tables and hash seeds persist across collections, as in deployment). Per collection we time
``privatize`` (every user's report, including joins and new memo entries) and ``estimate`` (the
server's frequency vector), synchronising the device around each call. Reported: mean seconds per
collection over the ``tau`` collections, the first collection (every user joins and memoizes) apart,
and reports per second = n / (privatize + estimate), overall.

Run: ``.venv/bin/python benchmarks/ldp.py [--threads 1] [--n 100000,1000000] [--k 100] [--tau 10]
[--protocols loloha,l-grr] [--eps-inf 2.0] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import privfl
from privfl.evaluations.analytics import ZipfPopulation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, n: int, k: int, tau: int, eps_inf: float, alpha: float, device: torch.device) -> dict:
    mech = privfl.make("mechanism", name, k=k, eps_inf=eps_inf, eps_1=alpha * eps_inf)
    pop = ZipfPopulation(k, s=1.1, change_prob=0.1)
    data_gen = torch.Generator().manual_seed(0)
    ldp_gen = torch.Generator(device=device).manual_seed(1)
    values = pop.initial(n, data_gen)
    ids = torch.arange(n, device=device)
    priv, est = [], []
    for t in range(tau):
        if t:
            values = pop.step(values, data_gen)
        v = values.to(device)
        _sync(device)
        t0 = time.perf_counter()
        reports = mech.privatize(v, generator=ldp_gen, client_ids=ids)
        _sync(device)
        t1 = time.perf_counter()
        estimate = mech.estimate(reports)
        _sync(device)
        t2 = time.perf_counter()
        priv.append(t1 - t0)
        est.append(t2 - t1)
        assert estimate.shape == (k,)
    total = sum(priv) + sum(est)
    return {
        "g": getattr(mech, "g", None),
        "priv_first": priv[0], "est_first": est[0],
        "priv_mean": sum(priv) / tau, "est_mean": sum(est) / tau,
        "priv_rest": sum(priv[1:]) / max(1, tau - 1), "est_rest": sum(est[1:]) / max(1, tau - 1),
        "reports_per_s": n * tau / total,
        "spent_mean": float(mech.spent().mean()), "spent_max": float(mech.spent().max()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--n", default="100000,1000000", help="comma-separated population sizes")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--tau", type=int, default=10)
    ap.add_argument("--protocols", default="loloha,l-grr")
    ap.add_argument("--eps-inf", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.4)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = ap.parse_args(argv)
    if args.threads < 1 or args.tau < 1 or args.k < 2:
        ap.error("--threads and --tau must be >= 1 and --k >= 2")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    sizes = [int(float(x)) for x in args.n.split(",") if x.strip()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"privfl LDP benchmark | torch {torch.__version__} | device {device} ({dev_name}) | threads "
          f"{torch.get_num_threads()} | k={args.k} tau={args.tau} eps_inf={args.eps_inf} alpha={args.alpha} | "
          "Zipf(1.1) values, change prob 0.1/step")
    print("seconds per collection: first = every user joins and memoizes; rest = mean of collections 2..tau")
    header = (f"{'protocol':<9} {'g':>3} {'n':>9} {'priv 1st':>9} {'est 1st':>8} {'priv rest':>9} {'est rest':>8} "
              f"{'reports/s':>11} {'spent mean':>10} {'max':>5}")
    print(header)
    print("-" * len(header))
    for n in sizes:
        for name in protocols:
            r = bench(name, n, args.k, args.tau, args.eps_inf, args.alpha, device)
            g = "-" if r["g"] is None else str(r["g"])
            print(f"{name:<9} {g:>3} {n:>9} {r['priv_first']:>9.4f} {r['est_first']:>8.4f} {r['priv_rest']:>9.4f} "
                  f"{r['est_rest']:>8.4f} {r['reports_per_s']:>11,.0f} {r['spent_mean']:>10.3f} "
                  f"{r['spent_max']:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
