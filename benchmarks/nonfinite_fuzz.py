"""Non-finite fuzz figures (issue 12 §2 and §3): how many outputs hold NaN/±Inf.

§3 — every robust aggregator, pre-aggregator and mixing rule (not ``mean``): ``--cases`` inputs per rule
from :func:`privfl.testing.robustness.fuzz_case` (float16/32/64 in turn; at most f faulty rows of NaN,
±Inf, one NaN entry, ±dtype-max, huge-norm, duplicates, 1e38, far ALIE; honest rows from 1e-3 up to the
dtype's max), split evenly over f = 1, 2, 3 (n = 4f + 3). Target: 0 non-finite outputs and 0 errors.

§2 — every vector mechanism: ``--mech-cases`` random inputs (random n, d, dtype; rows of NaN/±Inf/huge
values mixed with ordinary ones); the output is ``decode(privatize(x))`` and, for central mechanisms,
``aggregate(reports, byzantine=...)`` with faulty Byzantine rows, then one clean round (the state must
stay finite). A ``ValueError`` is the declared ``nonfinite = "raise"`` policy, counted apart.

Run: ``OMP_NUM_THREADS=1 python benchmarks/nonfinite_fuzz.py [--cases 10002] [--mech-cases 300]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import privfl.defenses  # noqa: F401  (registers the rules)
import privfl.mechanisms  # noqa: F401  (registers the mechanisms)
from privfl import registry
from privfl.testing.robustness import fuzz_nonfinite

MECHANISMS = [
    ("dp-fedavg", {}), ("gaussian", {"local": True}), ("dp-brem", {}), ("dp-brem-plus", {}), ("quantize", {}),
    ("top-k", {}), ("fp16", {}), ("pbm", {}), ("rqm", {}), ("ddg", {}), ("skellam", {}), ("fedrand", {}),
]


def robust_rules() -> list[tuple[str, str]]:
    out = []
    for kind in ("aggregator", "preaggregator", "mixing"):
        out += [(kind, name) for name in registry.available(kind) if name != "mean"]
    return out


def fuzz_rules(cases: int) -> None:
    per_f = [cases // 3 + (1 if i < cases % 3 else 0) for i in range(3)]
    print(f"§3: {cases} cases per rule (f = 1, 2, 3: {per_f}), dtypes float16/32/64, values up to the dtype's max")
    print(f"{'rule':<20} {'cases':>7} {'non-finite':>11} {'errors':>7} {'s':>7}")
    total_bad = 0
    for kind, name in robust_rules():
        start, bad, errors, done, examples = time.perf_counter(), 0, 0, 0, []
        for f, k in zip((1, 2, 3), per_f):
            kw = {"f": f} if "f" in registry.parameters(kind, name) else {}
            rep = fuzz_nonfinite(registry.make(kind, name, **kw), f, cases=k, seed=1000 * f,
                                 raise_on_failure=False)
            bad, errors, done = bad + rep.nonfinite, errors + rep.errors, done + rep.cases
            examples += rep.examples
        total_bad += bad + errors
        print(f"{name:<20} {done:>7} {bad:>11} {errors:>7} {time.perf_counter() - start:>7.1f}")
        for e in examples[:2]:
            print(f"    e.g. {e}")
    print(f"total non-finite outputs + errors: {total_bad}")


def _random_input(g: torch.Generator) -> torch.Tensor:
    dtype = (torch.float16, torch.float32, torch.float64)[int(torch.randint(0, 3, (1,), generator=g))]
    n, d = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 17, (1,), generator=g))
    big = torch.finfo(dtype).max
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 10.0 ** float(torch.randint(-3, 4, (1,), generator=g))
    for r in range(n):
        kind = int(torch.randint(0, 6, (1,), generator=g))
        if kind == 0:
            x[r] = float("nan")
        elif kind == 1:
            x[r, int(torch.randint(0, d, (1,), generator=g))] = float("inf") * (1 if r % 2 else -1)
        elif kind == 2:
            x[r] = big * torch.sign(torch.randn(d, generator=g, dtype=torch.float64))
    return torch.where(torch.isinf(x), x, x.clamp(-big, big)).to(dtype)


def fuzz_mechanisms(cases: int) -> None:
    print(f"\n§2: {cases} random inputs per mechanism (rows of NaN/±Inf/dtype-max among ordinary ones)")
    print(f"{'mechanism':<20} {'policy':<7} {'non-finite':>11} {'ValueError':>11} {'state non-finite':>17} "
          f"{'replaced':>9}")
    for name, kw in MECHANISMS:
        g = torch.Generator().manual_seed(12)
        label = name + (" local" if kw.get("local") else "")
        bad = raised = state_bad = replaced = 0
        mech = registry.make("mechanism", name, **kw)
        for i in range(cases):
            x = _random_input(g)
            m = mech if getattr(mech, "central", False) else registry.make("mechanism", name, **kw)
            try:
                reports = m.privatize(x, generator=torch.Generator().manual_seed(i))
                out = m.decode(reports) if reports.is_floating_point() or not m.central else None
                if out is not None and out.is_floating_point() and not bool(torch.isfinite(out).all()):
                    bad += 1
                if m.central:
                    byz = _random_input(g)[:, :1].expand(-1, x.shape[1]).to(x.dtype)
                    agg = m.aggregate(reports, byzantine=byz, generator=torch.Generator().manual_seed(i))
                    bad += int(not bool(torch.isfinite(agg).all()))
                    st = getattr(m, "state", None)
                    for t in (getattr(st, "momentum", None), getattr(st, "center", None)):
                        if t is not None and not bool(torch.isfinite(t).all()):
                            state_bad += 1
                            break
                    if st is not None:
                        replaced += m.nonfinite_replaced
                        m.reset()
            except ValueError:
                raised += 1
            replaced += getattr(m, "nonfinite_replaced", 0)
            if hasattr(m, "nonfinite_replaced"):
                m.nonfinite_replaced = 0
        print(f"{label:<20} {mech.nonfinite:<7} {bad:>11} {raised:>11} {state_bad:>17} {replaced:>9}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_002)
    p.add_argument("--mech-cases", type=int, default=300)
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    fuzz_mechanisms(args.mech_cases)
    print()
    fuzz_rules(args.cases)


if __name__ == "__main__":
    main()
