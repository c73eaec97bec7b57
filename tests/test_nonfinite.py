"""Issue 12 §2/§3: non-finite input never turns into non-finite output or state.

§2 — every mechanism declares its policy (``zero``: a NaN/Inf row becomes 0 before clipping, counted;
``raise``: ValueError; ``n/a``: integer input) and no state (DP-BREM momentum, centre) becomes NaN.
§3 — robust rules within f stay finite on NaN/±Inf/dtype-max/huge-norm rows in every float dtype
(the 10,000-case figure: ``benchmarks/nonfinite_fuzz.py``); ``mean`` never overflows on finite rows.
"""

from __future__ import annotations

import pytest
import torch

from privfl import registry
from privfl.core import Mechanism, PreAggregator
from privfl.mechanisms import _checks
from privfl.mechanisms.dp_brem import DPBREM
from privfl.testing import check_contract
from privfl.testing.robustness import FUZZ_DTYPES, fuzz_nonfinite

VECTOR = [("dp-fedavg", {}), ("gaussian", {"local": True}), ("dp-brem", {}), ("dp-brem-plus", {}),
          ("quantize", {}), ("top-k", {}), ("fp16", {}), ("pbm", {}), ("rqm", {})]


def test_every_registered_mechanism_declares_a_policy():
    for name in registry.available("mechanism"):
        m = registry.get("mechanism", name)  # the class: its declaration
        want = "n/a" if "frequency-oracle" in m.roles else ("zero", "raise")
        assert m.nonfinite in want, name


@pytest.mark.parametrize("name,kw", VECTOR, ids=lambda v: str(v))
def test_mechanisms_on_random_non_finite_inputs(name, kw):
    """30 random inputs with NaN/±Inf/dtype-max rows: finite reports (and releases) or the declared ValueError
    (the pre-fix code gave non-finite outputs for gaussian, dp-brem, quantize and top-k, and fp16 hid ±Inf)."""
    g = torch.Generator().manual_seed(3)
    proto = registry.make("mechanism", name, **kw)
    for i in range(30):
        dtype = FUZZ_DTYPES[i % 3] if name != "pbm" or i % 3 else torch.float32
        x = torch.randn(5, 4, generator=g, dtype=torch.float64)
        x[i % 5] = (float("nan"), float("inf"), -float("inf"), 1.0)[i % 4] if i % 4 < 3 else torch.finfo(dtype).max
        x = x.to(dtype)
        m = registry.make("mechanism", name, **kw)
        if proto.nonfinite == "raise" and not bool(torch.isfinite(x).all()):
            with pytest.raises(ValueError, match="NaN or Inf"):
                m.privatize(x, generator=torch.Generator().manual_seed(i))
            continue
        reports = m.privatize(x, generator=torch.Generator().manual_seed(i))
        if reports.is_floating_point():
            assert torch.isfinite(m.decode(reports)).all(), (name, i, dtype)
        if m.central:
            byz = torch.full((2, 4), float("nan"), dtype=dtype)
            assert torch.isfinite(m.aggregate(reports, byzantine=byz, generator=torch.Generator())).all()
        if proto.nonfinite == "zero" and not bool(torch.isfinite(x).all()):
            assert m.nonfinite_replaced >= 1


def test_dp_brem_momentum_recovers_after_a_nan_round():
    """Pre-fix: one NaN client made every later DP-BREM round NaN (the momentum kept it)."""
    m = DPBREM(noise_multiplier=1.0)
    clean = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    bad = clean.clone()
    bad[1] = float("nan")
    for t, x in enumerate([bad, clean, clean]):
        reports = m.privatize(x, client_ids=torch.arange(4))
        nan_byz = torch.full((1, 6), float("nan")) if t == 0 else None
        out = m.aggregate(reports, byzantine=nan_byz, generator=torch.Generator().manual_seed(t))
        assert torch.isfinite(out).all() and torch.isfinite(m.state.momentum).all()
        assert torch.isfinite(m.state.center).all()
    assert m.nonfinite_replaced == 2  # the NaN client row and the NaN Byzantine row


def test_gaussian_central_release_ignores_a_nan_client_and_keeps_the_sensitivity():
    m = registry.make("mechanism", "dp-fedavg", clip_norm=1.0, noise_multiplier=1.0)
    reports = m.privatize(torch.ones(3, 4))
    byz = torch.tensor([[float("nan")] * 4, [float("inf")] * 4])
    g = torch.Generator().manual_seed(0)
    with_bad = m.aggregate(reports, byzantine=byz, expected_rows=5.0, generator=g)
    without = m.aggregate(reports, expected_rows=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(with_bad, without)  # a faulty row contributes the zero vector
    assert m.nonfinite_replaced == 2


def test_clip_rows_near_the_dtype_max_clips_along_the_direction():
    x = torch.tensor([[3e38, -3e38, 0.0], [1.0, 0.0, 0.0]])
    out = _checks.clip_rows(x, 2.0)
    assert torch.allclose(out[0], torch.tensor([2 ** 0.5, -(2 ** 0.5), 0.0]))
    assert torch.equal(out[1], x[1])


def test_fp16_refuses_infinities_instead_of_hiding_them():
    with pytest.raises(ValueError, match="NaN or Inf"):
        registry.make("mechanism", "fp16").privatize(torch.tensor([[float("inf"), 1.0]]))
    big = torch.tensor([[1e6, -1e6]])
    assert torch.equal(registry.make("mechanism", "fp16").privatize(big), torch.tensor([[65504.0, -65504.0]]))


def test_quantize_stays_finite_near_the_dtype_max():
    x = torch.tensor([[3.3e38, -3.3e38, 0.0, 1e38]])
    out = registry.make("mechanism", "quantize", bits=4).privatize(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and out.min() >= -3.3e38 and out.max() <= 3.3e38


class LeakyZero(Mechanism):
    """Declares the ``zero`` policy but lets NaN rows through (the broken twin)."""

    name = "leaky-zero"
    role = "client-vector"
    nonfinite = "zero"
    param_space = {}

    def __init__(self):
        self.nonfinite_replaced = 0

    def privatize(self, x, *, generator=None, client_ids=None):
        _checks.updates(x)
        return x.clone()

    def guarantee(self):
        from privfl.core import PrivacyGuarantee

        return PrivacyGuarantee.none(self.name)


class ZeroingTwin(LeakyZero):
    """The correct twin: zeroes and counts."""

    name = "zeroing"

    def privatize(self, x, *, generator=None, client_ids=None):
        _checks.updates(x)
        out, k = _checks.zero_nonfinite_rows(x)
        self.nonfinite_replaced += k
        return out.clone()


class Undeclared(ZeroingTwin):
    name = "undeclared"
    nonfinite = "undeclared"


def test_check_contract_verifies_the_declared_policy():
    report = check_contract(ZeroingTwin())
    assert "non-finite policy holds" in report.checks and "non-finite rows counted" in report.checks
    with pytest.raises(AssertionError, match="non-finite policy holds"):
        check_contract(LeakyZero())
    with pytest.raises(AssertionError, match="non-finite policy declared"):
        check_contract(Undeclared())


# --------------------------------------------------------------------------------------------
# §3: robust rules
# --------------------------------------------------------------------------------------------
def test_geometric_median_minimal_case_from_the_issue():
    """float64, n = 15, f = 1, one row at 1e200: NaN before the fix."""
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[3] = 1e200
    out = registry.make("aggregator", "geometric-median", f=1)(x)
    assert torch.isfinite(out).all()
    honest = torch.cat([x[:3], x[4:]])
    assert float((out - honest.mean(0)).norm()) < 2.0  # and still robust


def test_bucketing_of_finite_rows_near_float32_max_stays_finite():
    x = torch.full((8, 3), 3.3e38)
    x[::2] *= 0.99
    out = registry.make("preaggregator", "bucketing", s=2)(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and float(out.min()) >= 0.99 * 3.3e38 * 0.999


def test_mean_never_overflows_on_finite_rows_and_documents_it():
    """``mean`` of 1e38 rows in float32 was Inf; it is the exact mean now (still not robust)."""
    mean = registry.make("aggregator", "mean")
    x = torch.full((10, 4), 1e38)
    x[0] = 3.4e38
    out = mean(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), x.double().mean(0), rtol=1e-6)
    assert "Overflow" in type(mean).__doc__
    with pytest.raises(ValueError, match="NaN or Inf"):
        mean(torch.tensor([[float("nan")], [1.0]]))


def _rules():
    out = []
    for kind in ("aggregator", "preaggregator", "mixing"):
        out += [(kind, n) for n in registry.available(kind) if n != "mean"]
    return out


@pytest.mark.parametrize("kind,name", _rules())
def test_fuzz_robust_rules_within_f(kind, name):
    """60 cases per rule here (10,002 per rule in benchmarks/nonfinite_fuzz.py: 0 non-finite)."""
    kw = {"f": 2} if "f" in registry.parameters(kind, name) else {}
    report = fuzz_nonfinite(registry.make(kind, name, **kw), 2, cases=60, seed=5)
    assert report.ok and report.cases == 60


class PlainTrimmedMean(PreAggregator):
    """Broken twin: a bucket mean computed with a plain float sum (overflows near the dtype max)."""

    name = "plain-buckets"

    def __call__(self, updates, *, generator=None):
        return (updates[0::2][: updates.shape[0] // 2] + updates[1::2][: updates.shape[0] // 2]) / 2


def test_the_fuzz_catches_a_rule_that_overflows_and_one_that_passes_nan_through():
    with pytest.raises(AssertionError, match="non-finite output"):
        fuzz_nonfinite(PlainTrimmedMean(), 2, cases=60)

    class FirstRow:
        name = "first-row"

        def __call__(self, updates):
            return updates[0].clone()

    report = fuzz_nonfinite(FirstRow(), 2, cases=60, raise_on_failure=False)
    assert report.nonfinite > 0 and not report.ok


def test_check_robust_runs_the_fuzz():
    rule = registry.make("aggregator", "median", f=1)
    from privfl.testing.robustness import check_robust, kappa_median

    report = check_robust(rule, 1, kappa_median(7, 1), trials=1, fuzz_cases=30)
    assert report.fuzz is not None and report.fuzz.cases == 30 and report.ok
    with pytest.raises(AssertionError, match="fuzz cases"):
        check_robust(PlainTrimmedMeanAgg(), 1, 1e30, trials=1, fuzz_cases=60)


class PlainTrimmedMeanAgg:
    """Broken twin of a robust aggregator: the coordinate-wise median of a plain float16-unsafe sum."""

    name = "plain-median-of-pairs"

    def __call__(self, updates):
        pairs = updates[: updates.shape[0] // 2 * 2].reshape(-1, 2, updates.shape[1]).sum(dim=1) / 2
        return pairs.median(dim=0).values
