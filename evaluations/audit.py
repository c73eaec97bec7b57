"""Empirical privacy audits: the accounted ε of a mechanism next to an ε lower bound measured by attacking it.

Three audits, each returning an :class:`AuditResult` (accounted ε, empirical lower bound, their ratio):

- :func:`black_box_audit` — any :class:`~privfl.core.Mechanism`: N releases on each of two neighbouring
  inputs (rows of one tensor, one batched call), a score per release, and the threshold distinguisher
  of :func:`privfl.accounting.empirical.epsilon_lower_bound` (Jagielski et al., NeurIPS 2020; Nasr et al.,
  IEEE S&P 2021).
- :func:`canary_audit` — white-box FL canary audit of a central (DP-FedAvg) mechanism in the style of
  Nasr, Hayes, Steinke, Balle, Tramèr, Jagielski, Carlini, Terzis, "Tight Auditing of Differentially
  Private Machine Learning", USENIX Security 2023: a canary client update is inserted or not among
  benign clients; the auditor sees the noisy aggregates and scores each trial by the aggregate's
  projection on the canary; ε lower bound by Clopper–Pearson and the Gaussian-DP estimate.
- :func:`one_run_audit` — Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023: m canaries each included with probability ½ in a single run; guesses for the most
  confident canaries; ε lower bound from the number of correct guesses (their Corollary 5.4, δ term
  included).

:func:`audit_spec_empirical` is ``privfl audit SPEC``: every configuration's mechanism, the
accounted ε of one release next to the empirical bounds, as a markdown table and a PNG.

A correct mechanism must never show an empirical bound above its accounted ε (beyond the stated
1 − confidence failure probability of a single audit); a bound above it is a bug in the mechanism,
its accounting or the audit.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from privfl import registry
from privfl.accounting.empirical import (
    epsilon_lower_bound,
    gdp_epsilon,
    gdp_mu_interval,
    one_run_epsilon_lower_bound,
)
from privfl.accounting.ledger import PrivacyLedger
from privfl.core import Mechanism
from privfl.params import CONFIDENCE, Instance, Int, check_delta
from privfl.progress import ProgressLog

__all__ = [
    "AuditResult",
    "accounted_epsilon",
    "audit_spec_empirical",
    "black_box_audit",
    "canary_audit",
    "neighbouring_pair",
    "one_run_audit",
]


# --------------------------------------------------------------------------------------------
# Results and shared validation
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AuditResult:
    """One audit: the accounted ε next to the empirical lower bound and ``ratio`` = lower / accounted.

    ``epsilon_lower`` is valid with probability ≥ ``confidence`` (Clopper–Pearson or the one-run
    theorem); ``epsilon_gdp`` / ``epsilon_gdp_lower`` (canary audit only) are the Gaussian-DP point
    estimate and its lower confidence end — estimates that assume Gaussian scores, not worst-case
    bounds. ``releases`` is the number of releases composed in the accounted ε; ``trials`` the
    number of scored releases per side (or of canaries, for the one-run audit).
    """

    audit: str
    mechanism: str
    epsilon_accounted: float
    epsilon_lower: float
    delta: float
    confidence: float
    trials: int
    releases: int = 1
    epsilon_gdp: float | None = None
    epsilon_gdp_lower: float | None = None
    seconds: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """ε_lower / ε_accounted (0 when both are 0; ``nan`` when the accounted ε is ∞)."""
        if math.isinf(self.epsilon_accounted):
            return math.nan
        if self.epsilon_accounted == 0:
            return 0.0 if self.epsilon_lower == 0 else math.inf
        return self.epsilon_lower / self.epsilon_accounted

    @property
    def exceeds(self) -> bool:
        """The empirical bound is above the accounted ε: the mechanism (or its accounting) is broken."""
        return self.epsilon_lower > self.epsilon_accounted * (1 + 1e-9)


def _describe(mechanism: Mechanism) -> str:
    """The mechanism's own repr when it defines one, else its guarantee's name (which holds its parameters)."""
    if type(mechanism).__repr__ is not object.__repr__:
        return repr(mechanism)
    return mechanism.guarantee().name


def _device(device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (TypeError, RuntimeError):
        raise ValueError(f"device must be a torch device or its name ('cpu', 'cuda', 'cuda:0'), "
                         f"got {device!r}") from None


def _generator(seed: Any, device: torch.device) -> torch.Generator:
    """A generator on ``device``: from an int seed, or the caller's generator (checked for the device)."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != device.type:
            raise ValueError(f"seed: a generator on {seed.device} cannot draw on device {device}")
        return seed
    Int(0, None).check("seed", seed)  # an int seed when not a generator
    return torch.Generator(device=device).manual_seed(int(seed))


def accounted_epsilon(mechanism: Mechanism, delta: float, *, releases: int = 1) -> float:
    """ε(δ) of ``releases`` releases of ``mechanism``'s guarantee (no subsampling), by the tightest
    accountant available: the privacy-loss distribution where the guarantee has one, else RDP
    (both capped by the pure ε); at δ = 0 the composed pure ε."""
    g = Instance(Mechanism).check("mechanism", mechanism, owner="accounted_epsilon").guarantee()
    delta = check_delta(delta, owner="accounted_epsilon")
    releases = int(Int(1, None).check("releases", releases, owner="accounted_epsilon"))
    if delta == 0.0:
        return releases * g.epsilon_pure
    ledger = PrivacyLedger()
    ledger.record(g, count=releases)
    return ledger.epsilon(delta, method="pld" if ledger.supports("pld") else "rdp")


# --------------------------------------------------------------------------------------------
# Drawing releases in one batch
# --------------------------------------------------------------------------------------------
def _is_categorical(mechanism: Mechanism) -> bool:
    return mechanism.role == "frequency-oracle"


#: how far outside the input domain the default vector pair lies (× the clip bound)
FAR = 10.0


def neighbouring_pair(mechanism: Mechanism, *, dim: int = 1) -> tuple[Any, Any, str]:
    """The default worst-case neighbouring inputs ``(x_in, x_out, relation)`` for a mechanism's sensitivity.

    Read from the mechanism's declarations: its ``role`` and its :meth:`~privfl.core.Mechanism.domain`.

    - role ``"server-noise"`` (DP-FedAvg): add/remove one client — ``x_in`` = one client update along
      e₁ (``[1, dim]``), ``x_out`` = no client (``[0, dim]``);
    - role ``"frequency-oracle"``: replace one user's value — categories 0 and 1;
    - local vector mechanisms: replace one row along e₁.

    Vector inputs lie **far outside the domain**: ``FAR`` × the domain's bound (the radius of the ℓ2
    clip ball, the half-width ``c`` of a per-coordinate box). A mechanism that clips maps them onto the
    boundary, the worst case of its analysis, so its audit is unchanged; one that forgets to clip
    releases them as they are and its empirical ε lower bound then exceeds the accounted ε.
    """
    mechanism = Instance(Mechanism).check("mechanism", mechanism, owner="neighbouring_pair")
    dim = int(Int(1, None).check("dim", dim, owner="neighbouring_pair"))
    if _is_categorical(mechanism):
        return 0, 1, "replace-one (categories 0 vs 1)"
    domain = mechanism.domain()
    if domain.bound is None:
        raise ValueError(f"{mechanism.name}: its input domain is {domain.kind} (no bound to build the worst-case "
                         "pair from); pass pair=(x_in, x_out) explicitly")
    e1 = torch.zeros(dim, dtype=torch.float64)
    e1[0] = FAR * domain.bound
    if mechanism.central:
        unit = mechanism.guarantee().unit
        if unit != "client":
            raise ValueError(f"{mechanism.name}: its guarantee is {unit}-level, so adding or removing a whole client "
                             "is not its neighbouring relation; pass pair=(x_in, x_out) explicitly")
        return (e1[None, :], torch.zeros(0, dim, dtype=torch.float64),
                f"add/remove one client ({FAR:g}·bound·e1 vs nobody)")
    return e1, -e1, f"replace-one (+{FAR:g}·bound·e1 vs −{FAR:g}·bound·e1)"


def _central_releases(mechanism: Mechanism, reports: Tensor, expected_rows: float,
                      generator: torch.Generator) -> Tensor:
    """``mechanism.aggregate`` on each of the ``[N, n, d]`` report sets at once (``torch.vmap`` with
    independent noise per set). vmap draws from the global RNG, so it is seeded from ``generator``
    inside a forked RNG state: same generator state → same releases, and the caller's RNG is untouched."""
    device = reports.device
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            fn = torch.vmap(lambda r: mechanism.aggregate(r, expected_rows=expected_rows), randomness="different")
            return fn(reports)
        except Exception as exc:  # noqa: BLE001 — vmap rejects data-dependent control flow with many types
            raise TypeError(
                f"{mechanism.name}.aggregate cannot be batched over trials with torch.vmap ({type(exc).__name__}: "
                f"{exc}); audit its local randomizer or pass release=... to black_box_audit"
            ) from None


def _releases(mechanism: Mechanism, x: Any, n: int, generator: torch.Generator, device: torch.device,
              dtype: torch.dtype) -> Tensor:
    """``n`` independent releases of the mechanism on input ``x`` (batched), as raw reports."""
    if _is_categorical(mechanism):
        mech = copy.deepcopy(mechanism)  # stateful oracles: fresh users, and the caller's state is kept
        if mech.stateful:
            mech.reset()
        values = torch.full((n,), int(x), dtype=torch.int64, device=device)
        ids = torch.arange(n, dtype=torch.int64, device=device)
        return mech.privatize(values, generator=generator, client_ids=ids)
    x = torch.as_tensor(x, dtype=dtype, device=device)
    if mechanism.central:
        if x.dim() != 2:
            raise ValueError(f"pair: a central mechanism's inputs are client sets [m, d], got shape {tuple(x.shape)}")
        return _central_releases(mechanism, x.expand(n, *x.shape), 1.0, generator)
    if x.dim() != 1:
        raise ValueError(f"pair: a local vector mechanism's inputs are one update [d], got shape {tuple(x.shape)}")
    return mechanism.privatize(x.expand(n, x.shape[0]).clone(), generator=generator)


def _lr_score(mechanism: Mechanism, x_in: Any, x_out: Any, device: torch.device,
              dtype: torch.dtype) -> Callable[[Tensor], Tensor] | None:
    """The exact log-likelihood-ratio score from the mechanism's output pmfs, when it exposes one
    pmf over whole-report outcomes without public randomness (GRR, RQM on one coordinate); ``None``
    otherwise (per-bit pmfs of unary encodings, per-report hash seeds, vector inputs). Applicability
    is checked on two probe releases drawn with a private generator (the caller's is not touched)."""
    if not mechanism.exact_pmf or mechanism.public_key is not None or mechanism.central:
        return None
    try:
        if _is_categorical(mechanism):
            p_in, p_out = mechanism.output_pmf(int(x_in)), mechanism.output_pmf(int(x_out))
        else:
            a, b = torch.as_tensor(x_in).reshape(-1), torch.as_tensor(x_out).reshape(-1)
            if a.numel() != 1 or b.numel() != 1:
                return None
            p_in, p_out = mechanism.output_pmf(float(a)), mechanism.output_pmf(float(b))
        p_in, p_out = np.asarray(p_in, dtype=np.float64), np.asarray(p_out, dtype=np.float64)
        probe = _releases(mechanism, x_in, 2, torch.Generator(device=device).manual_seed(0), device, dtype)
        outcome, public = mechanism.report_outcomes(probe)
    except (TypeError, ValueError, NotImplementedError):
        return None
    if p_in.ndim != 1 or p_in.shape != p_out.shape or public is not None or tuple(outcome.shape) != (2,):
        return None
    with np.errstate(divide="ignore"):
        llr = np.log(p_in) - np.log(p_out)
    finite = llr[np.isfinite(llr)]
    cap = (np.abs(finite).max() if finite.size else 0.0) + 1.0  # outcomes only one side can produce
    llr = np.clip(np.nan_to_num(llr, nan=0.0, posinf=cap, neginf=-cap), -cap, cap)

    def score(reports: Tensor) -> Tensor:
        outcome, _ = mechanism.report_outcomes(reports)
        return torch.as_tensor(llr, device=outcome.device)[outcome]

    return score


def _projection_score(mechanism: Mechanism, x_in: Any, x_out: Any, device: torch.device,
                      dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """Projection of the decoded release on the unit direction separating the two inputs' means
    (the likelihood-ratio test for Gaussian noise)."""
    if _is_categorical(mechanism):
        k = int(mechanism.domain().categories)
        direction = torch.zeros(k, dtype=torch.float64, device=device)
        direction[int(x_in)], direction[int(x_out)] = 1.0, -1.0
    else:
        a = torch.as_tensor(x_in, dtype=torch.float64, device=device)
        b = torch.as_tensor(x_out, dtype=torch.float64, device=device)
        if mechanism.central:
            a, b = a.sum(dim=0), b.sum(dim=0) if b.shape[0] else torch.zeros_like(a.sum(dim=0))
        direction = a - b
    norm = torch.linalg.vector_norm(direction)
    if not norm > 0:
        raise ValueError("pair: the two inputs are identical; a neighbouring pair must differ")
    direction = direction / norm
    central = mechanism.central

    def score(reports: Tensor) -> Tensor:
        out = reports if central else mechanism.decode(reports)
        return out.reshape(reports.shape[0], -1).to(torch.float64) @ direction

    return score


def black_box_audit(
    mechanism: Mechanism,
    *,
    trials: int = 500_000,
    delta: float = 1e-5,
    confidence: float = 0.95,
    pair: tuple[Any, Any] | None = None,
    score: Callable[[Tensor], Tensor] | str = "auto",
    dim: int = 1,
    seed: int | torch.Generator = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> AuditResult:
    """Distinguishing audit of one release of ``mechanism`` on a neighbouring pair.

    ``trials`` releases on each input are drawn as the rows of one batch (local mechanisms:
    ``privatize`` on an ``[N, d]`` matrix of copies; frequency oracles: N fresh users; central
    mechanisms: ``aggregate`` vmapped over N client sets), scored, and the best threshold test gives
    the ε lower bound at ``confidence`` (:func:`~privfl.accounting.empirical.epsilon_lower_bound`:
    threshold chosen on a held-out quarter, Clopper–Pearson on the rest). ``pair`` defaults to
    :func:`neighbouring_pair`. ``score="auto"``: the exact log-likelihood ratio for finite-output
    mechanisms that expose ``output_pmf`` (without public randomness), else the projection of the
    decoded release on the difference of the two inputs (LR-optimal for Gaussian noise, and for
    GRR/OLH/LOLOHA/unary-encoding reports: a monotone function of their likelihood ratio);
    ``score="projection"`` forces the latter; a callable maps the reports to ``[N]`` scores.
    Compared with :func:`accounted_epsilon` of one release (per coordinate for ``unit="coordinate"``
    guarantees: the default pair differs in one coordinate).
    """
    mechanism = Instance(Mechanism).check("mechanism", mechanism, owner="black_box_audit")
    trials = int(Int(8, None).check("trials", trials, owner="black_box_audit"))
    delta = check_delta(delta, owner="black_box_audit")
    confidence = float(CONFIDENCE.check("confidence", confidence, owner="black_box_audit"))
    dim = int(Int(1, None).check("dim", dim, owner="black_box_audit"))
    device = _device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    generator = _generator(seed, device)
    if pair is None:
        x_in, x_out, relation = neighbouring_pair(mechanism, dim=dim)
    else:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pair must be a (x_in, x_out) tuple, got {pair!r}")
        (x_in, x_out), relation = pair, "caller's pair"
    if isinstance(score, str):
        if score not in ("auto", "projection"):
            raise ValueError(f"score must be 'auto', 'projection' or a callable, got {score!r}")
        fn = _lr_score(mechanism, x_in, x_out, device, dtype) if score == "auto" else None
        score_name = "log-likelihood ratio" if fn is not None else "projection on the difference"
        if fn is None:
            fn = _projection_score(mechanism, x_in, x_out, device, dtype)
    elif callable(score):
        fn, score_name = score, getattr(score, "__name__", "caller's score")
    else:
        raise TypeError(f"score must be 'auto', 'projection' or a callable, got {type(score).__name__}")

    start = time.perf_counter()
    scores = []
    progress = ProgressLog("privfl.audit", f"black-box audit of {mechanism.name}: {trials:,} trials per side", 2,
                           unit="sides")
    for x in (x_in, x_out):
        s = fn(_releases(mechanism, x, trials, generator, device, dtype))
        progress.update(len(scores) + 1)
        if not isinstance(s, Tensor) or s.shape != (trials,):
            raise ValueError(f"score must return a [trials] = [{trials}] tensor, got "
                             f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
        scores.append(s)
    progress.finish()
    bound = epsilon_lower_bound(scores[0], scores[1], delta=delta, confidence=confidence)
    seconds = time.perf_counter() - start
    return AuditResult(
        audit="black-box", mechanism=_describe(mechanism), epsilon_accounted=accounted_epsilon(mechanism, delta),
        epsilon_lower=bound.epsilon, delta=delta, confidence=confidence, trials=trials, seconds=seconds,
        details={"bound": bound, "score": score_name, "pair": relation},
    )


# --------------------------------------------------------------------------------------------
# White-box FL canary audit (Nasr et al. 2023)
# --------------------------------------------------------------------------------------------
def _check_central(mechanism: Mechanism, audit: str) -> None:
    if not mechanism.central:
        raise ValueError(f"{audit} audits a central mechanism (role 'server-noise': a DP-FedAvg style aggregate); "
                         f"{mechanism.name} is local (role {mechanism.role!r})")
    domain = mechanism.domain()
    if domain.kind != "l2-ball":
        raise ValueError(f"{audit}: {mechanism.name}'s input domain is {domain.kind}, not an ℓ2 clip ball to size "
                         "the canary")
    unit = mechanism.guarantee().unit
    if unit != "client":
        raise ValueError(f"{audit}: {mechanism.name}'s guarantee is {unit}-level; a canary client audits "
                         "client-level guarantees only")


def canary_audit(
    mechanism: Mechanism,
    *,
    trials: int = 20_000,
    rounds: int = 1,
    num_clients: int = 10,
    dim: int = 100,
    delta: float = 1e-5,
    confidence: float = 0.95,
    batch_size: int = 4096,
    seed: int | torch.Generator = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AuditResult:
    """White-box canary audit of DP-FedAvg (Nasr et al., USENIX Security 2023, the gradient-canary
    audit transposed to client level).

    One trial = ``rounds`` rounds of the real mechanism (``mechanism.aggregate``: clipping, noise on
    the sum, division by the public ``expected_rows`` = ``num_clients + 1``) over ``num_clients``
    benign clients (fresh random updates of norm ``clip_norm``, random directions in ``dim``
    dimensions) plus, on the "in" side, a canary client whose update is ``clip_norm`` times a fixed
    random unit vector c, present in every round. The auditor sees the aggregates and scores a trial
    by Σ_t ⟨aggregate_t, c⟩·expected_rows. Accounted ε: ``rounds`` composed releases of the guarantee.

    Bounds: ``epsilon_lower`` is the Clopper–Pearson threshold bound of
    :func:`~privfl.accounting.empirical.epsilon_lower_bound` (valid at ``confidence``);
    ``epsilon_gdp`` is the Gaussian-DP estimate of the paper — μ̂ = (mean_in − mean_out)/pooled std
    and ε(δ) of μ̂-GDP — and ``epsilon_gdp_lower`` the same at the lower end of the two-sided
    ``confidence`` interval for μ (asymptotic normal interval of Cohen's d, Hedges & Olkin 1985);
    both assume Gaussian scores (true here: Gaussian noise, nearly Gaussian benign projections).
    Trials are drawn in batches of ``batch_size`` (a loop over batches, not over trials).
    """
    mechanism = Instance(Mechanism).check("mechanism", mechanism, owner="canary_audit")
    _check_central(mechanism, "canary_audit")
    trials = int(Int(8, None).check("trials", trials, owner="canary_audit"))
    rounds = int(Int(1, None).check("rounds", rounds, owner="canary_audit"))
    num_clients = int(Int(0, None).check("num_clients", num_clients, owner="canary_audit"))
    dim = int(Int(1, None).check("dim", dim, owner="canary_audit"))
    batch_size = int(Int(1, None).check("batch_size", batch_size, owner="canary_audit"))
    delta = check_delta(delta, owner="canary_audit")
    confidence = float(CONFIDENCE.check("confidence", confidence, owner="canary_audit"))
    device = _device(device)
    generator = _generator(seed, device)
    clip = float(mechanism.domain().bound)  # the clip norm
    canary = torch.randn(dim, generator=generator, device=device, dtype=dtype)
    canary = canary / torch.linalg.vector_norm(canary)
    expected_rows = float(num_clients + 1)

    start = time.perf_counter()
    sides = []
    progress = ProgressLog("privfl.audit", f"canary audit of {mechanism.name}: {trials:,} trials per side",
                           2 * -(-trials // batch_size), unit="batches")
    for present in (True, False):
        parts = []
        for lo in range(0, trials, batch_size):
            n = min(batch_size, trials - lo)
            total = torch.zeros(n, dtype=torch.float64, device=device)
            for _ in range(rounds):
                benign = torch.randn(n, num_clients, dim, generator=generator, device=device, dtype=dtype)
                benign = clip * benign / torch.linalg.vector_norm(benign, dim=2, keepdim=True).clamp_min(1e-30)
                if present:
                    benign = torch.cat([benign, (clip * canary).expand(n, 1, dim)], dim=1)
                agg = _central_releases(mechanism, benign, expected_rows, generator)
                total += (agg @ canary).to(torch.float64) * expected_rows
            parts.append(total)
            progress.update(progress.done + 1)
        sides.append(torch.cat(parts))
    progress.finish()
    bound = epsilon_lower_bound(sides[0], sides[1], delta=delta, confidence=confidence)
    mu, mu_lo, mu_hi = gdp_mu_interval(sides[0], sides[1], confidence=confidence)
    eps_gdp = gdp_epsilon(mu, delta) if delta > 0 else math.inf
    eps_gdp_lo = gdp_epsilon(mu_lo, delta) if delta > 0 else math.inf
    seconds = time.perf_counter() - start
    return AuditResult(
        audit="canary (white-box)", mechanism=_describe(mechanism),
        epsilon_accounted=accounted_epsilon(mechanism, delta, releases=rounds), epsilon_lower=bound.epsilon,
        delta=delta, confidence=confidence, trials=trials, releases=rounds, epsilon_gdp=eps_gdp,
        epsilon_gdp_lower=eps_gdp_lo, seconds=seconds,
        details={"bound": bound, "mu": mu, "mu_interval": (mu_lo, mu_hi), "num_clients": num_clients, "dim": dim},
    )


# --------------------------------------------------------------------------------------------
# One-run audit (Steinke, Nasr, Jagielski 2023)
# --------------------------------------------------------------------------------------------
def _default_guesses(m: int) -> tuple[int, ...]:
    picks = {max(2, int(round(m * f))) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)}
    return tuple(sorted(g for g in picks if g <= m))


def one_run_audit(
    mechanism: Mechanism,
    *,
    canaries: int = 1000,
    rounds: int = 1,
    guesses: int | tuple[int, ...] | None = None,
    delta: float = 1e-5,
    confidence: float = 0.95,
    seed: int | torch.Generator = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AuditResult:
    """One-run audit of a central mechanism (Steinke, Nasr, Jagielski, NeurIPS 2023), white-box,
    with Dirac canaries.

    m = ``canaries`` canary clients, canary i's update = ``clip_norm``·e_i in m dimensions (pairwise
    orthogonal, so canaries do not interfere), each included independently with probability ½ (S_i).
    One training run = ``rounds`` rounds of ``mechanism.aggregate`` over the included canaries with
    the public normaliser m/2. Score of canary i: Σ_t aggregate_t[i]. For r guesses the auditor says
    "in" for the ⌈r/2⌉ highest scores and "out" for the ⌊r/2⌋ lowest (abstains on the rest); v = the
    number of correct guesses. ε lower bound: the largest ε whose p-value under (ε, δ)-DP — the
    paper's Corollary 5.4, P[Binomial(r, e^ε/(1+e^ε)) ≥ v] + 2mδ·max_i P[v > Binomial(r, ·) ≥ v−i]/i
    — is below 1 − confidence. Several ``guesses`` values (default: 1 %, 2 %, 5 %, 10 %, 20 %, 50 %,
    100 % of m) are tried with a Bonferroni correction (level (1 − confidence)/#values), so the best
    of them is still valid at ``confidence``. Accounted ε: ``rounds`` releases, per canary (client).
    """
    mechanism = Instance(Mechanism).check("mechanism", mechanism, owner="one_run_audit")
    _check_central(mechanism, "one_run_audit")
    m = int(Int(2, None).check("canaries", canaries, owner="one_run_audit"))
    rounds = int(Int(1, None).check("rounds", rounds, owner="one_run_audit"))
    delta = check_delta(delta, owner="one_run_audit")
    confidence = float(CONFIDENCE.check("confidence", confidence, owner="one_run_audit"))
    if guesses is None:
        guesses = _default_guesses(m)
    elif isinstance(guesses, (int, np.integer)) and not isinstance(guesses, bool):
        guesses = (int(guesses),)
    if not isinstance(guesses, (tuple, list)) or not guesses or any(
        isinstance(g, bool) or not isinstance(g, (int, np.integer)) or not 1 <= g <= m for g in guesses
    ):
        raise ValueError(f"guesses must be an int or a non-empty tuple of ints in [1, canaries={m}], got {guesses!r}")
    device = _device(device)
    generator = _generator(seed, device)
    clip = float(mechanism.domain().bound)  # the clip norm

    start = time.perf_counter()
    included = torch.rand(m, generator=generator, device=device) < 0.5
    members = torch.nonzero(included).reshape(-1)
    updates = torch.zeros(members.numel(), m, dtype=dtype, device=device)
    updates[torch.arange(members.numel(), device=device), members] = clip  # Dirac canaries clip·e_i
    scores = torch.zeros(m, dtype=torch.float64, device=device)
    for _ in range(rounds):
        scores += mechanism.aggregate(updates, expected_rows=m / 2.0, generator=generator).to(torch.float64)
    order = torch.argsort(scores, descending=True, stable=True)
    truth = included[order].cpu().numpy()
    level = (1.0 - confidence) / len(guesses)
    best = (0.0, 0, 0)
    for r in sorted(set(int(g) for g in guesses)):
        top, bottom = (r + 1) // 2, r // 2
        v = int(truth[:top].sum()) + int((~truth[m - bottom:]).sum() if bottom else 0)
        eps = one_run_epsilon_lower_bound(m, r, v, delta=delta, significance=level)
        if eps > best[0] or best[1] == 0:
            best = (eps, r, v)
    seconds = time.perf_counter() - start
    eps, r, v = best
    return AuditResult(
        audit="one-run", mechanism=_describe(mechanism),
        epsilon_accounted=accounted_epsilon(mechanism, delta, releases=rounds), epsilon_lower=eps, delta=delta,
        confidence=confidence, trials=m, releases=rounds, seconds=seconds,
        details={"guesses": r, "correct": v, "tried": tuple(sorted(set(int(g) for g in guesses))),
                 "included": int(included.sum())},
    )


# --------------------------------------------------------------------------------------------
# `privfl audit SPEC`
# --------------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞"
    return f"{v:.3f}"


def _threat_model_notes(cells: list[Any]) -> list[str]:
    """Cells whose run's ε is void (omniscient attack + server noise): the audit above is of the mechanism
    alone, not a guarantee for those runs (:func:`privfl.accounting.ledger.threat_model_warning`)."""
    from privfl.accounting.ledger import threat_model_warning

    notes: dict[str, str] = {}
    for cell in cells:
        s = cell.scenario
        if not (s.mechanism and s.byzantine and s.byzantine_attack):
            continue
        attack = registry.make("byzantine_attack", s.byzantine_attack, **s.byzantine_attack_params)
        warning = threat_model_warning(registry.make("mechanism", s.mechanism, **s.mechanism_params), attack)
        if warning is not None:
            notes.setdefault(cell.label, warning)
    return [f"- [{label}] the run's ε is {w}" for label, w in notes.items()] + ([""] if notes else [])


def audit_spec_empirical(
    spec: Any,
    *,
    delta: float | None = None,
    png: str | Path | None = None,
    trials: int = 500_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> str:
    """The ``privfl audit SPEC`` report: for every distinct mechanism configuration of
    ``spec`` (mechanism, parameters, δ), the accounted ε of **one release** next to the empirical
    lower bounds — black-box (``trials`` per side) for every mechanism, plus the white-box canary
    audit (``trials``/10 per side, Clopper–Pearson and Gaussian-DP) and the one-run audit (1000
    canaries) for central ones — and their ratio, as a markdown table; a PNG of accounted vs
    empirical ε per configuration when ``png``."""
    from privfl.evaluations.scenario import SpecError

    if png is not None and not Path(png).parent.is_dir():
        raise ValueError(f"--png: directory {str(Path(png).parent)!r} does not exist")
    trials = int(Int(8, None).check("trials", trials, owner="audit_spec_empirical"))
    cells = spec.validate()
    seen: dict[tuple, tuple[str, Any, float]] = {}
    for cell in cells:
        s = cell.scenario
        if not s.mechanism:
            continue
        d = s.delta if delta is None else delta
        key = (s.mechanism, repr(sorted(s.mechanism_params.items())), d)
        seen.setdefault(key, (cell.label, s, d))
    lines = [f"# empirical privacy audit of spec {spec.name!r}", "",
             f"Accounted ε of one release (PLD where available, else RDP) next to empirical lower bounds at "
             f"{confidence:.0%} confidence; ratio = empirical / accounted. Black-box: {trials:,} trials per side. "
             "A ratio above 1 for a correct mechanism would be a bug.", "",
             "The Gaussian-DP column (canary audit) is an estimate that assumes Gaussian scores: the lower end of "
             "its confidence interval for μ, and in brackets the point estimate (which sits at the true ε on "
             "average, so it may exceed a tight accounted ε by chance).", "",
             "| configuration | mechanism | audit | δ | accounted ε | empirical ε (lower bound) | ratio "
             "| Gaussian-DP ε | trials | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if not seen:
        lines += ["", "no configuration of this spec uses a mechanism: nothing to audit"]
    points: list[tuple[str, AuditResult]] = []
    log = logging.getLogger("privfl")
    for k, (label, scenario, d) in enumerate(seen.values()):
        try:
            mech = registry.make("mechanism", scenario.mechanism, **scenario.mechanism_params)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"cell [{label}].mechanism_params: {exc}") from None
        common = {"delta": d, "confidence": confidence, "seed": seed}
        audits: list[tuple[str, Callable[..., AuditResult], dict[str, Any]]] = [
            ("black-box", black_box_audit, {"trials": trials})]
        if mech.central:
            audits += [("canary (white-box)", canary_audit, {"trials": max(8, trials // 10)}),
                       ("one-run", one_run_audit, {})]
        results = []
        for name, audit, kwargs in audits:
            log.info("empirical audit %d/%d: %s — %s (%s)", k + 1, len(seen), label, name,
                     f"{kwargs['trials']:,} trials per side" if "trials" in kwargs else "one training run")
            try:
                results.append(audit(mech, **kwargs, **common))
            except (ValueError, TypeError) as exc:  # the audit does not apply to this mechanism: say why
                lines.append(f"| {label} | {scenario.mechanism} | {name} | {d:g} | — | not audited: {exc} "
                             "| — | — | — | — |")
        for r in results:
            gdp = "—" if r.epsilon_gdp is None else f"≥ {_fmt(r.epsilon_gdp_lower)} (point {_fmt(r.epsilon_gdp)})"
            lines.append(f"| {label} | {scenario.mechanism} | {r.audit} | {d:g} | {_fmt(r.epsilon_accounted)} | "
                         f"{_fmt(r.epsilon_lower)} | {_fmt(r.ratio)} | {gdp} | {r.trials:,} | {r.seconds:.1f} |")
            points.append((label, r))
    lines.append("")
    lines += _threat_model_notes(cells)
    if png is not None and points:
        _plot_empirical(Path(png), points, spec.name)
        lines.append(f"plot: {png}")
    return "\n".join(lines)


def _plot_empirical(path: Path, points: list[tuple[str, AuditResult]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for label, _ in points))
    audits = list(dict.fromkeys(r.audit for _, r in points))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.5), dpi=120)
    x = np.arange(len(labels))
    width = 0.8 / (len(audits) + 1)
    accounted = {label: r.epsilon_accounted for label, r in points if r.audit == "black-box"}
    ax.bar(x - 0.4 + width / 2, [accounted.get(label, np.nan) for label in labels], width, label="accounted ε",
           color="black", alpha=0.75)
    for i, audit in enumerate(audits, start=1):
        vals = {label: r.epsilon_lower for label, r in points if r.audit == audit}
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [vals.get(label, np.nan) for label in labels], width, label=f"empirical lower bound: {audit}")
        gdp = {label: r.epsilon_gdp_lower for label, r in points if r.audit == audit and r.epsilon_gdp is not None}
        if gdp:
            ax.plot(pos, [gdp.get(label, np.nan) for label in labels], linestyle="none", marker="D", color="crimson",
                    markersize=4, label=f"Gaussian-DP estimate, lower end of its interval: {audit}")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("ε of one release")
    ax.set_title(f"{title}: accounted ε vs empirical lower bounds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
