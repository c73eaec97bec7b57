"""The cost of secure noise (:mod:`privfl.secure_rng`) against seeded ``torch.Generator`` draws.

For ``[n, d]`` float32 rows (default ``n = 10``, ``d ∈ {1e4, 1e5, 1e6}``), in one process, one thread:

* ``gaussian local``  : ``GaussianMechanism(local=True).privatize`` — seeded (``torch.randn``) vs secure
  (CSPRNG, grid-exact discrete Gaussian, CKS 2020);
* ``gaussian central``: ``GaussianMechanism.aggregate`` (noise once on the sum) — seeded vs secure;
* ``rqm``             : ``RQM.privatize`` (three uniforms per coordinate) — seeded vs secure;
* ``uniform``         : the raw draws, ``torch.rand`` vs ``SecureRandom.uniform`` (ChaCha20 and ``os.urandom``).

Each call is warmed up once, then seeded and secure calls alternate ``--repeats`` times (median of
each; the ratio is secure / seeded). The header gives the thread count.

Run: ``.venv/bin/python benchmarks/secure_noise.py [--dims 10000,100000,1000000] [--rows 10] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

import privfl
from privfl.secure_rng import SecureRandom, with_rng


def _pair(fa, fb, repeats):
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def _privatize(mech, x, g):
    return mech.privatize(x, generator=g)


def _aggregate(mech, x, g):
    return mech.aggregate(x, expected_rows=float(x.shape[0]), generator=g)


def _torch_uniform(n, g):
    return torch.rand(n, generator=g, dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="10000,100000,1000000")
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"secure vs seeded noise, {args.rows} rows, float32, torch threads: {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'draw':<20}{'d':>9}{'seeded ms':>11}{'secure ms':>11}{'× seeded':>10}{'ns/value':>10}")
    local = privfl.make("mechanism", "gaussian", local=True, noise_multiplier=1.0)
    central = privfl.make("mechanism", "dp-fedavg", noise_multiplier=1.0)
    rqm = privfl.make("mechanism", "rqm")
    chacha, osrng = SecureRandom("chacha20"), SecureRandom("os")
    for d in [int(float(v)) for v in args.dims.split(",")]:
        x = torch.randn(args.rows, d) * 0.01
        g = torch.Generator().manual_seed(0)
        n = args.rows * d
        cases = [
            ("gaussian local", partial(_privatize, local, x, g),
             partial(_privatize, with_rng(local, "secure"), x, g), n),
            ("gaussian central", partial(_aggregate, central, x, g),
             partial(_aggregate, with_rng(central, "secure"), x, g), d),
            ("rqm", partial(_privatize, rqm, x, g), partial(_privatize, with_rng(rqm, "secure"), x, g), n),
            ("uniform chacha20", partial(_torch_uniform, n, g), partial(chacha.uniform, n), n),
            ("uniform os.urandom", partial(_torch_uniform, n, g), partial(osrng.uniform, n), n),
        ]
        for label, seeded, secure, values in cases:
            ts, tc = _pair(seeded, secure, args.repeats)
            print(f"{label:<20}{d:>9}{ts * 1e3:>11.1f}{tc * 1e3:>11.1f}{tc / ts:>10.1f}{tc / values * 1e9:>10.1f}")

if __name__ == "__main__":
    main()
