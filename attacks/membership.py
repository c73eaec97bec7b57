"""Membership inference: threshold, population, LiRA, RMIA and federated (update / trajectory) attacks.

Every attack maps a :class:`MembershipQuery` to one score per candidate record, **higher = more likely a
member**; the harness (:mod:`privfl.evaluations.membership`) turns scores into ROC curves, TPR at low FPR
with confidence intervals and an empirical ε lower bound. Attacks read only what the query grants:
the target model's logits on the candidates (and on augmented queries of them), reference ("shadow")
models' logits with the IN/OUT split each was trained on, population records known to be non-members,
a client's update (curious server) or the sequence of global models (any participant).

Attacks (registry kind ``"membership_attack"``):

- ``loss`` — Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning: Analyzing the
  Connection to Overfitting", IEEE CSF 2018: score = −cross-entropy of the true label (a threshold on it
  is their attack). ``statistic="max-confidence"`` thresholds the largest softmax probability instead
  (label-free; Salem et al., "ML-Leaks", NDSS 2019).
- ``population`` — the population attack (Ye, Maddi, Murakonda, Bindschaedler, Shokri, "Enhanced
  Membership Inference Attacks against Machine Learning Models", CCS 2022, attack P): the loss compared
  with the loss distribution of population (non-member) records; score = −log of the empirical p-value
  (1 + #{z: ℓ(z) ≤ ℓ(x)}) / (1 + Z), so a threshold at p ≤ α has FPR ≈ α on the population.
- ``lira`` — Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks From First
  Principles", IEEE S&P 2022. φ = log(p_y / (1 − p_y)) of the true-class confidence (computed as
  z_y − logsumexp_{c≠y} z_c, exact and stable); per candidate and query a Gaussian fit over the
  reference models that trained on it (IN) and those that did not (OUT). Online: mean over queries of
  log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²); offline: the one-sided test log Φ((φ − μ_out)/σ_out).
  ``variance="auto"`` uses per-example variances from 64 reference models on (the paper's threshold)
  and below that the fixed ("global") variance of the LiRA code: the variance of all IN (OUT) φ over
  models and candidates, which stays defined with one reference model per side.
- ``rmia`` — Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024.
  Pr(x|θ) = softmax probability of the true label at a temperature (computed in complement form from
  the exact log-odds, so saturated confidences keep their order); Pr(x) averages the reference models
  (online: all; offline: OUT only, with the paper's linear IN approximation Pr(x) = ½((1+a)·Pr_out(x) +
  (1−a)), ``a`` tuned as in the paper by attacking reference models with the other reference models);
  score(x) = fraction of population records z with (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) ≥ γ. Several
  queries multiply their ratios (geometric mean). Defaults: a tuned, γ = 1 (the authors' offline
  code), temperature 2 (LeakPro's default; the authors' code exposes it too).
- ``update-loss`` — curious server, one client's update Δ: score = ℓ(x; w₀) − ℓ(x; w₀ + Δ), the loss
  drop the update causes (the loss-based white-box feature of Nasr, Shokri, Houmansadr, "Comprehensive
  Privacy Analysis of Deep Learning", IEEE S&P 2019, used here as an unsupervised threshold score).
- ``update-cosine`` — curious server: cosine between −∇ℓ(x; w₀) and Δ (the gradient-alignment attack
  of Li, Li, Ribeiro, "Effective Passive Membership Inference Attacks in Federated Learning against
  Overparameterized Models", ICLR 2023).
- ``trajectory`` — any participant with the global models of rounds 1..T: per round, φ_t(x) standardised
  by the population's φ_t (mean, std), averaged over rounds. It uses the confidence series across
  rounds like CS-MIA (Gu, Bai, Xu, "CS-MIA: Membership inference attack based on prediction confidence
  series in federated learning", J. Inf. Secur. Appl. 2022) but without their trained classifier.

Reference models are trained together by :func:`train_reference_models` — the simulator's batched
local SGD (:func:`privfl.fl.local.train_vmap`: stacked weights, ``torch.func.vmap``), each model on its
own random half of the data (:func:`balanced_splits`, every record IN for exactly half of the models,
as in the LiRA code), each from its own random initialisation; :func:`reference_logits` evaluates all
of them at once.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from privfl.core import Component, Observation
from privfl.fl.local import LocalSGD, plan_batches, train_vmap
from privfl.flat import ParamLayout, flatten, layout_of, unflatten
from privfl.params import Choice, Int, Real
from privfl.progress import ProgressLog
from privfl.registry import register

__all__ = [
    "MembershipQuery",
    "MembershipAttack",
    "LossAttack",
    "PopulationAttack",
    "LiRA",
    "RMIA",
    "UpdateLossAttack",
    "UpdateCosineAttack",
    "TrajectoryAttack",
    "logit_confidence",
    "true_class_probability",
    "balanced_splits",
    "query_views",
    "random_inits",
    "train_reference_models",
    "reference_logits",
]

AUGMENTATIONS = ("none", "flip")


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------
def _check_logits(logits: Tensor, labels: Tensor, name: str) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [..., N, C], got {type(logits).__name__}")
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"labels for {name} must be an int64 tensor [N], got {getattr(labels, 'dtype', labels)!r}")
    if logits.dim() < 2 or logits.shape[-2] != labels.shape[-1]:
        raise ValueError(f"{name} has shape {tuple(logits.shape)}; expected [..., N={labels.shape[-1]}, C]")


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """LiRA's φ = log(p_y / (1 − p_y)) = z_y − logsumexp_{c≠y} z_c for logits ``[..., N, C]``, labels ``[N]``."""
    _check_logits(logits, labels, "logits")
    idx = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    true = logits.gather(-1, idx).squeeze(-1)
    others = logits.scatter(-1, idx, float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


def true_class_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax probability of the true label, ``[..., N]``."""
    _check_logits(logits, labels, "logits")
    idx = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    # float64: a confident model's p_y rounds to exactly 1 in float32, and RMIA's ratios would lose it
    return torch.softmax(logits.double(), dim=-1).gather(-1, idx).squeeze(-1).to(logits.dtype)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-record cross-entropy in float64: an overfit model's float32 loss is exactly 0 on most records,
    which would tie members with confident non-members and cripple the threshold baselines."""
    idx = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    return -torch.log_softmax(logits.double(), dim=-1).gather(-1, idx).squeeze(-1)


# --------------------------------------------------------------------------------------------
# The query
# --------------------------------------------------------------------------------------------
@dataclass
class MembershipQuery:
    """What a membership attacker is granted about ``N`` candidate records (fields it lacks are ``None``).

    - ``labels`` ``[N]`` (int64) and, for white-box attacks, ``inputs`` ``[N, ...]`` (model space).
    - ``target_logits`` ``[A, N, C]``: the attacked model on the candidates under ``A`` queries
      (``A = 1``: no augmentation; :func:`query_views`).
    - ``reference_logits`` ``[S, A, N, C]`` and ``reference_in`` (bool ``[S, N]``): reference models and
      which candidates each was trained on.
    - ``population_labels`` ``[Z]``, ``population_inputs``, ``population_logits`` ``[A, Z, C]`` (target),
      ``population_reference_logits`` ``[S, A, Z, C]``: records known not to be in the target's data.
    - ``observation``: a curious server's :class:`~privfl.core.Observation` of one client's update
      (model = global model w₀, ``update`` = Δ or gradient).
    - ``trajectory_logits`` ``[T, N, C]`` / ``population_trajectory_logits`` ``[T, Z, C]``: the global
      models of T rounds on the candidates / population.
    """

    labels: Tensor
    target_logits: Tensor | None = None
    inputs: Tensor | None = None
    reference_logits: Tensor | None = None
    reference_in: Tensor | None = None
    population_labels: Tensor | None = None
    population_inputs: Tensor | None = None
    population_logits: Tensor | None = None
    population_reference_logits: Tensor | None = None
    observation: Observation | None = None
    trajectory_logits: Tensor | None = None
    population_trajectory_logits: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"labels must be an int64 tensor [N], got {getattr(self.labels, 'dtype', self.labels)!r}")
        n = self.labels.shape[0]
        shapes = {
            "target_logits": (3, 1), "reference_logits": (4, 2), "trajectory_logits": (3, 1),
        }
        for name, (ndim, axis) in shapes.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() != ndim:
                raise ValueError(f"{name} must be a floating-point tensor with {ndim} dims, got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
            if value.shape[axis] != n:
                raise ValueError(f"{name} has shape {tuple(value.shape)}: axis {axis} must be N={n} (the labels)")
        if self.reference_in is not None:
            if self.reference_logits is None:
                raise ValueError("reference_in needs reference_logits")
            if self.reference_in.dtype != torch.bool or self.reference_in.shape != (self.reference_logits.shape[0], n):
                raise ValueError(f"reference_in must be bool [S, N] = {(self.reference_logits.shape[0], n)}, got "
                                 f"{self.reference_in.dtype} {tuple(self.reference_in.shape)}")

    def need(self, *fields: str, attack: str) -> None:
        """Raise a clear error when the query lacks what ``attack`` reads."""
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{attack} needs {', '.join(missing)} in the MembershipQuery; the threat model "
                             f"does not grant {'it' if len(missing) == 1 else 'them'}")


class MembershipAttack(Component, ABC):
    """``score(query) -> Tensor [N]``: higher = more likely a member; deterministic (no randomness).
    Constructor parameters are declared in ``param_space`` and checked from it (:class:`~privfl.core.Component`)."""

    name: ClassVar[str] = "membership_attack"
    #: which query fields the attack reads (for the harness and error messages)
    reads: ClassVar[tuple[str, ...]] = ("target_logits",)

    @property
    def label(self) -> str:
        """Short name with the variant (report column prefix)."""
        return self.name

    @abstractmethod
    def score(self, query: MembershipQuery) -> Tensor: ...

    def _check(self, query: MembershipQuery) -> None:
        if not isinstance(query, MembershipQuery):
            raise TypeError(f"query must be a MembershipQuery, got {type(query).__name__}")
        query.need(*self.reads, attack=self.name)


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------
@register("membership_attack", "loss")
class LossAttack(MembershipAttack):
    """Yeom et al. (CSF 2018) loss threshold; ``statistic="max-confidence"``: Salem et al.'s (NDSS 2019)."""

    name = "loss"
    param_space = {"statistic": Choice("loss", "max-confidence")}

    def __init__(self, statistic: str = "loss") -> None:
        self.statistic = statistic

    @property
    def label(self) -> str:
        return "loss" if self.statistic == "loss" else "confidence"

    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        logits = query.target_logits[:1]  # the plain query: the baseline's threat model has no augmentation
        if self.statistic == "loss":
            return -_cross_entropy(logits, query.labels)[0]
        # log(p_max / (1 − p_max)), a monotone map of p_max that does not round to 0 for confident records
        top = logits.double().max(dim=-1, keepdim=True)
        rest = logits.double().scatter(-1, top.indices, float("-inf"))
        return -torch.logsumexp(rest - top.values, dim=-1)[0]


@register("membership_attack", "population")
class PopulationAttack(MembershipAttack):
    """Ye et al. (CCS 2022) attack P: the loss as an empirical p-value against population losses."""

    name = "population"
    reads = ("target_logits", "population_logits", "population_labels")
    param_space: ClassVar[dict[str, Any]] = {}

    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        loss_x = _cross_entropy(query.target_logits[0], query.labels)
        loss_z = torch.sort(_cross_entropy(query.population_logits[0], query.population_labels)).values
        below = torch.searchsorted(loss_z, loss_x, right=True)  # #{z: ℓ(z) <= ℓ(x)}
        return -torch.log((1.0 + below.double()) / (1.0 + loss_z.numel()))


# --------------------------------------------------------------------------------------------
# LiRA
# --------------------------------------------------------------------------------------------
def _masked_moments(phi: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per (query, candidate) mean and variance of ``phi [S, A, N]`` over the models where ``mask [S, N]``."""
    w = mask.to(phi.dtype).unsqueeze(1)  # [S, 1, N]
    count = w.sum(dim=0)  # [1, N]
    mean = (w * phi).sum(dim=0) / count.clamp_min(1.0)
    var = (((phi - mean) * w) ** 2).sum(dim=0) / (count - 1.0).clamp_min(1.0)
    return mean, var


@register("membership_attack", "lira")
class LiRA(MembershipAttack):
    """Carlini et al. (S&P 2022) likelihood-ratio attack, online or offline, on logit-scaled confidences."""

    name = "lira"
    reads = ("target_logits", "reference_logits", "reference_in")
    param_space = {"online": Choice(True, False), "variance": Choice("auto", "per-example", "global")}
    PER_EXAMPLE_FROM = 64  # reference models from which "auto" fits per-example variances (the paper's)

    def __init__(self, online: bool = True, variance: str = "auto") -> None:
        self.online = online
        self.variance = variance

    @property
    def label(self) -> str:
        return f"lira-{'online' if self.online else 'offline'}"

    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        phi_t = logit_confidence(query.target_logits, query.labels).double()  # [A, N]
        phi = logit_confidence(query.reference_logits, query.labels).double()  # [S, A, N]
        if phi.shape[1] != phi_t.shape[0]:
            raise ValueError(f"reference_logits has {phi.shape[1]} queries, target_logits {phi_t.shape[0]}")
        ins = query.reference_in.to(phi.device)
        per_example = self.variance == "per-example" or (
            self.variance == "auto" and phi.shape[0] >= self.PER_EXAMPLE_FROM
        )
        mu_out, var_out = _masked_moments(phi, ~ins)
        fits = [(mu_out, var_out, ~ins, "without")]
        if self.online:
            mu_in, var_in = _masked_moments(phi, ins)
            fits.append((mu_in, var_in, ins, "with"))
        sds = []
        for _, var, mask, side in fits:
            if not bool(mask.any(dim=0).all()):
                raise ValueError(f"{self.label}: every candidate needs at least one reference model {side} it "
                                 "(use balanced_splits)")
            if per_example:
                sds.append(var.clamp_min(1e-12).sqrt())
            else:  # LiRA's fixed variance: the std of every φ on that side, over models and candidates
                w = mask.to(phi.dtype).unsqueeze(1)
                grand = (w * phi).sum(dim=(0, 2), keepdim=True) / w.sum()
                pooled = (w * (phi - grand) ** 2).sum(dim=(0, 2)) / (w.sum() - 1.0).clamp_min(1.0)
                sds.append(pooled.clamp_min(1e-12).sqrt().unsqueeze(-1).expand_as(var))
        out = torch.distributions.Normal(mu_out, sds[0])
        if self.online:
            inn = torch.distributions.Normal(fits[1][0], sds[1])
            stat = inn.log_prob(phi_t) - out.log_prob(phi_t)
        else:
            stat = torch.special.log_ndtr((phi_t - mu_out) / sds[0])
        return stat.mean(dim=0).to(query.target_logits.dtype)


# --------------------------------------------------------------------------------------------
# RMIA
# --------------------------------------------------------------------------------------------
def _log_prob_terms(logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log p_y, 1 − p_y) of the softmax at ``temperature``, in float64 and in complement form: both come
    from the exact log-odds φ = z_y − logsumexp_{c≠y} z_c (log p = −softplus(−φ), 1 − p = sigmoid(−φ)),
    so an overfit model's p_y, which rounds to 1 even in float64 at margins above ~37, keeps its rank."""
    phi = logit_confidence(logits.double() / temperature, labels)
    return -F.softplus(-phi), torch.sigmoid(-phi)


def _rmia_log_ratio(log_p_target: Tensor, err_ref: Tensor, weight: Tensor, a: float | None) -> Tensor:
    """log Pr(x|θ) − log Pr(x), averaged over queries. ``log_p_target`` ``[A, N]``; ``err_ref`` ``[S, A, N]``
    (1 − Pr(x|θ') of each reference model); ``weight`` ``[S, N]`` (which models Pr(x) averages).
    ``a is None``: Pr(x) = their mean (online); else the offline approximation
    Pr(x) = ½((1+a)·Pr_out(x) + (1−a)) = 1 − ½(1+a)·(1 − Pr_out(x))."""
    w = weight.to(err_ref.dtype).unsqueeze(1)
    err = (w * err_ref).sum(dim=0) / w.sum(dim=0)  # 1 − Pr_out(x) (or 1 − mean of all models, online)
    scale = 1.0 if a is None else 0.5 * (1.0 + a)
    log_marginal = torch.log1p(-(scale * err).clamp(max=1.0 - 2.0**-52))
    return (log_p_target - log_marginal).mean(dim=0)


def _cyclic_subsets(models: int, count: int, size: int, *, skip: int | None = None) -> Tensor:
    """Bool ``[models, count]``: record j uses models j, j+1, …, j+size−1 (mod ``models``, leaving out
    ``skip``), a deterministic balanced assignment of ``size`` models per population record."""
    pool = torch.tensor([m for m in range(models) if m != skip])
    idx = (torch.arange(count).unsqueeze(0) + torch.arange(size).unsqueeze(1)) % len(pool)  # [size, count]
    out = torch.zeros(models, count, dtype=torch.bool)
    out[pool[idx], torch.arange(count).expand(size, -1)] = True
    return out


def _pairwise_score(log_ratio_x: Tensor, log_ratio_z: Tensor, gamma: float) -> Tensor:
    """Fraction of population records z with (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) ≥ γ."""
    sorted_z = torch.sort(log_ratio_z).values
    count = torch.searchsorted(sorted_z, log_ratio_x - math.log(gamma), right=True)
    return count.double() / sorted_z.numel()


@register("membership_attack", "rmia")
class RMIA(MembershipAttack):
    """Zarifzadeh, Liu, Shokri (ICML 2024) RMIA: pairwise likelihood ratios against population records.

    Pr(x|θ) is the softmax probability of the true label at ``temperature`` (the paper's signal; the
    authors' code divides the logits by a temperature before the softmax). It is computed in complement
    form from the exact log-odds, so saturated confidences (p_y = 1 − 1e-20) are still ordered — the
    paper's formula, evaluated without the rounding that would tie an overfit model's records.

    Pr(x): online, the mean over all reference models; offline, from the models without x,
    Pr(x) = ½((1+a)·Pr_OUT(x) + (1−a)) (the paper's linear approximation of the IN models).
    Population records are OUT of every model; offline, each z averages as many models as a candidate
    has OUT models (a deterministic cyclic choice; the authors' code likewise uses the same number of
    models for x and z), so that a non-member's ratio and the population's ratios are exchangeable.
    score(x) = fraction of the population with LR(x, z) = (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) ≥ γ; several
    queries (augmentations) average the log ratios. With one population set for every x the score is a
    monotone map of Pr(x|θ)/Pr(x), so γ moves the ROC only through ties (its resolution is 1/Z: pass
    many population records; γ > 1 with few reference models sends many records to score 0, a tie).
    Defaults: γ = 1 (the authors' offline code), temperature 2 (LeakPro's default; on the membership
    spec's overfit digits target, where ~80 % of members and non-members sit at p_y > 1 − 1e-3, it kept
    more of the 2-reference low-FPR power than temperature 1: TPR at 1 % FPR 3.9 % vs 2.7 %, six seeds,
    1,437 candidates).

    ``a=None`` (default) tunes a as the paper does: on the reference models alone, attacking each
    reference model (at most :attr:`TUNE_MODELS` of them) with the other ones — members: the candidates
    it trained on, non-members: the candidates it did not and half of the population (only records
    with an OUT model among the other ones), z: the other half — and keeping the a in {0, 0.1, …, 1}
    (the authors' grid) with the best mean AUC (:meth:`tune_a`). The authors' code attacks one paired
    reference model the same way. The target model and the candidates' true membership play no part.
    """

    name = "rmia"
    reads = ("target_logits", "reference_logits", "reference_in", "population_logits",
             "population_labels", "population_reference_logits")
    param_space = {
        "online": Choice(False, True),
        "a": Real(0, 1, optional=True),
        "gamma": Real(0, None, lo_open=True, log=True, typical=(1.0, 4.0)),
        "temperature": Real(0, None, lo_open=True, log=True, typical=(0.5, 8.0)),
    }
    A_GRID = tuple(i / 10 for i in range(11))  # the authors' grid for a
    TUNE_MODELS = 8  # reference models attacked when tuning a

    def __init__(self, online: bool = False, a: float | None = None, gamma: float = 1.0,
                 temperature: float = 2.0) -> None:
        self.online = online
        self.a = None if a is None else float(a)
        self.gamma, self.temperature = float(gamma), float(temperature)
        self.tuned_a: float | None = None  # the a the last offline score() used

    @property
    def label(self) -> str:
        return f"rmia-{'online' if self.online else 'offline'}"

    def _signals(self, query: MembershipQuery) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        t = self.temperature
        log_x, _ = _log_prob_terms(query.target_logits, query.labels, t)  # [A, N]
        _, err_x = _log_prob_terms(query.reference_logits, query.labels, t)  # [S, A, N]
        log_z, _ = _log_prob_terms(query.population_logits, query.population_labels, t)  # [A, Z]
        _, err_z = _log_prob_terms(query.population_reference_logits, query.population_labels, t)  # [S, A, Z]
        if err_x.shape[1] != log_x.shape[0] or err_z.shape[1] != log_z.shape[0] or log_z.shape[0] != log_x.shape[0]:
            raise ValueError("target, reference and population logits must have the same number of queries")
        return log_x, err_x, log_z, err_z, query.reference_in.to(err_x.device)

    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        log_x, err_x, log_z, err_z, ins = self._signals(query)
        S, Z = err_x.shape[0], err_z.shape[-1]
        if self.online:
            ratio_x = _rmia_log_ratio(log_x, err_x, torch.ones_like(ins), None)
            ratio_z = _rmia_log_ratio(log_z, err_z, torch.ones(S, Z, dtype=torch.bool), None)
        else:
            out = ~ins
            if not bool(out.any(dim=0).all()):
                raise ValueError("rmia-offline: every candidate needs at least one reference model without it")
            a = self.a if self.a is not None else self.tune_a(query)
            self.tuned_a = a
            k = max(1, round(float(out.sum(dim=0).double().mean())))
            ratio_x = _rmia_log_ratio(log_x, err_x, out, a)
            ratio_z = _rmia_log_ratio(log_z, err_z, _cyclic_subsets(S, Z, k).to(err_z.device), a)
        return _pairwise_score(ratio_x, ratio_z, self.gamma).to(query.target_logits.dtype)

    def tune_a(self, query: MembershipQuery) -> float:
        """The paper's choice of a: attack reference models with the other reference models (offline,
        population split in halves: one half non-members, the other the z set) and keep the a of
        :attr:`A_GRID` with the best mean AUC. Needs no target model."""
        self._check(query)
        _, err_x, _, err_z, ins = self._signals(query)
        S, Z = err_x.shape[0], err_z.shape[-1]
        if Z < 2:
            raise ValueError(f"rmia: tuning a needs at least 2 population records, got {Z}")
        log_p_x, log_p_z = torch.log1p(-err_x), torch.log1p(-err_z)  # each reference model as the target
        games = []
        for s in range(min(S, self.TUNE_MODELS)):
            others = [m for m in range(S) if m != s]
            usable = (~ins[others]).any(dim=0)  # candidates with an OUT model among the others
            half = torch.arange(Z, device=err_z.device) % 2 == s % 2
            is_member = torch.cat([ins[s][usable], torch.zeros(int(half.sum()), dtype=torch.bool,
                                                                  device=ins.device)])
            if is_member.all() or not is_member.any():
                continue
            out_x = torch.cat([~ins[others][:, usable], torch.ones(len(others), int(half.sum()), dtype=torch.bool,
                                                                   device=ins.device)], dim=1)
            k = max(1, round(float(out_x.sum(dim=0).double().mean())))
            games.append((
                torch.cat([log_p_x[s][:, usable], log_p_z[s][:, half]], dim=1),
                torch.cat([err_x[others][:, :, usable], err_z[others][:, :, half]], dim=2),
                out_x, log_p_z[s][:, ~half], err_z[others][:, :, ~half],
                _cyclic_subsets(len(others), int((~half).sum()), k).to(err_z.device), is_member,
            ))
        if not games:
            raise ValueError("rmia: cannot tune a: no reference model has both members and non-members with "
                             "an OUT model among the others (use balanced_splits, or pass a)")
        best, best_auc = self.A_GRID[0], -1.0
        for a in self.A_GRID:
            aucs = []
            for lx, ex, wx, lz, ez, wz, member in games:
                sc = _pairwise_score(_rmia_log_ratio(lx, ex, wx, a), _rmia_log_ratio(lz, ez, wz, a), self.gamma)
                aucs.append(_auc(sc, member))
            mean = sum(aucs) / len(aucs)
            if mean > best_auc + 1e-12:
                best, best_auc = a, mean
        return best


def _auc(scores: Tensor, member: Tensor) -> float:
    """Mann–Whitney AUC with ties counted ½ (average ranks)."""
    s = scores.double()
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=s.dtype, device=s.device)
    uniq, inverse = torch.unique(s, return_inverse=True)  # average the ranks of tied scores
    mean_rank = torch.zeros(len(uniq), dtype=s.dtype, device=s.device).index_add_(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=len(uniq)).to(s.dtype)
    r = mean_rank[inverse]
    n_in = int(member.sum())
    n_out = len(s) - n_in
    return float((r[member].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


# --------------------------------------------------------------------------------------------
# Federated threat models
# --------------------------------------------------------------------------------------------
def _observed_step(obs: Observation) -> Tensor:
    """The weight change Δ the observation implies (a gradient becomes −lr·g: the server knows lr)."""
    update = obs.update if obs.update.dim() == 1 else obs.update[0]
    if obs.kind == "delta":
        return update
    obs.require("lr", attack="an update-based membership attack on a gradient")
    return -float(obs.lr) * update


def _per_sample(model: nn.Module, w: Tensor, x: Tensor, y: Tensor, *, gradients: bool) -> Tensor:
    layout = layout_of(model)
    buffers = dict(model.named_buffers())

    def loss(wflat: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
        logits = functional_call(model, {**buffers, **unflatten(wflat, layout)}, (xs.unsqueeze(0),))
        return F.cross_entropy(logits, ys.unsqueeze(0))

    fn = grad(loss) if gradients else loss
    return vmap(fn, in_dims=(None, 0, 0))(w, x, y)


@register("membership_attack", "update-loss")
class UpdateLossAttack(MembershipAttack):
    """Curious server: the loss drop ℓ(x; w₀) − ℓ(x; w₀ + Δ) one client's update causes on x."""

    name = "update-loss"
    reads = ("observation", "inputs")
    param_space: ClassVar[dict[str, Any]] = {}

    @torch.no_grad()
    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        obs = query.observation
        w0 = flatten(obs.model, layout_of(obs.model))
        step = _observed_step(obs).to(w0)
        before = _per_sample(obs.model, w0, query.inputs, query.labels, gradients=False)
        after = _per_sample(obs.model, w0 + step, query.inputs, query.labels, gradients=False)
        return before - after


@register("membership_attack", "update-cosine")
class UpdateCosineAttack(MembershipAttack):
    """Curious server: cos(−∇ℓ(x; w₀), Δ) (Li, Li, Ribeiro, ICLR 2023, gradient alignment)."""

    name = "update-cosine"
    reads = ("observation", "inputs")
    param_space = {"chunk": Int(1, None, typical=(16, 256))}

    def __init__(self, chunk: int = 128) -> None:
        self.chunk = int(chunk)

    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        obs = query.observation
        w0 = flatten(obs.model, layout_of(obs.model)).detach()
        step = _observed_step(obs).to(w0)
        out = []
        for lo in range(0, query.labels.numel(), self.chunk):  # bounds the [chunk, d] per-sample gradients
            g = _per_sample(obs.model, w0, query.inputs[lo : lo + self.chunk], query.labels[lo : lo + self.chunk],
                            gradients=True)
            out.append(F.cosine_similarity(-g, step.unsqueeze(0), dim=1))
        return torch.cat(out).detach()


@register("membership_attack", "trajectory")
class TrajectoryAttack(MembershipAttack):
    """Global models over T rounds: per-round population-standardised φ_t, averaged (CS-MIA's signal)."""

    name = "trajectory"
    reads = ("trajectory_logits", "population_trajectory_logits", "population_labels")
    param_space: ClassVar[dict[str, Any]] = {}

    def score(self, query: MembershipQuery) -> Tensor:
        self._check(query)
        phi = logit_confidence(query.trajectory_logits, query.labels).double()  # [T, N]
        phi_z = logit_confidence(query.population_trajectory_logits, query.population_labels).double()
        if phi_z.shape[0] != phi.shape[0]:
            raise ValueError(f"population_trajectory_logits has {phi_z.shape[0]} rounds, trajectory_logits "
                             f"{phi.shape[0]}")
        z = (phi - phi_z.mean(dim=1, keepdim=True)) / phi_z.std(dim=1, keepdim=True).clamp_min(1e-12)
        return z.mean(dim=0).to(query.trajectory_logits.dtype)


# --------------------------------------------------------------------------------------------
# Reference (shadow) models, batched
# --------------------------------------------------------------------------------------------
def balanced_splits(models: int, records: int, *, generator: torch.Generator) -> Tensor:
    """Bool ``[models, records]``: every record IN for exactly ⌊models/2⌋ models, chosen at random
    per record (the LiRA code's split; with an odd count the extra model is OUT)."""
    Int(2, None).check("models", models, owner="balanced_splits")  # each record needs IN and OUT models
    Int(1, None).check("records", records, owner="balanced_splits")
    keys = torch.rand(models, records, generator=generator)
    return keys.argsort(dim=0).argsort(dim=0) < models // 2


def query_views(x: Tensor, augment: str = "none") -> Tensor:
    """The queries of every record, ``[A, N, ...]``: ``"none"`` (A = 1) or ``"flip"`` (A = 2: the image
    and its horizontal mirror, LiRA's augmented queries; images ``[N, C, H, W]`` only)."""
    Choice(*AUGMENTATIONS).check("augment", augment, owner="query_views")
    if augment == "none":
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"augment='flip' needs images [N, C, H, W], got shape {tuple(x.shape)}")
    return torch.stack([x, x.flip(-1)])


def random_inits(model: nn.Module, count: int, *, generator: torch.Generator) -> Tensor:
    """``[count, d]`` flat weights, each from the model's own ``reset_parameters`` under a seed drawn
    from ``generator`` (independent random initialisations, same distribution as the model's)."""
    layout = layout_of(model)
    seeds = torch.randint(0, 2**62, (count,), generator=generator).tolist()
    out = []
    work = copy.deepcopy(model).cpu()
    for s in seeds:  # setup only: `count` re-initialisations of one small module
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            for mod in work.modules():
                if hasattr(mod, "reset_parameters") and mod is not work:
                    mod.reset_parameters()
        out.append(flatten(work, layout).detach().clone())
    return torch.stack(out)


def train_reference_models(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    members: Tensor,
    opt: LocalSGD,
    *,
    generator: torch.Generator,
    init: Tensor | None = None,
    chunk: int | None = None,
    noise_generator: torch.Generator | None = None,
) -> Tensor:
    """Train ``S`` reference models at once; model s trains on the records where ``members[s]`` is True.

    ``opt.steps`` steps of the simulator's local SGD (batches from :func:`privfl.fl.local.plan_batches`:
    epoch-style shuffling, or Poisson sampling under DP-SGD) for all models in one vmapped computation
    (:func:`privfl.fl.local.train_vmap`). ``init`` ``[S, d]``: start weights (default: :func:`random_inits`
    from ``generator``). Returns the trained weights ``[S, d]`` on ``x``'s device.
    """
    if not isinstance(members, Tensor) or members.dtype != torch.bool or members.dim() != 2:
        raise TypeError(f"members must be a bool tensor [S, N], got {getattr(members, 'dtype', type(members))!r}")
    if members.shape[1] != len(x) or len(x) != len(y):
        raise ValueError(f"members has {members.shape[1]} columns, x {len(x)} rows, y {len(y)}: they must agree")
    if not isinstance(opt, LocalSGD):
        raise TypeError(f"opt must be a LocalSGD, got {type(opt).__name__}")
    layout = layout_of(model)
    S = members.shape[0]
    if init is None:
        init = random_inits(model, S, generator=generator)
    if init.shape != (S, layout.dim):
        raise ValueError(f"init must have shape {(S, layout.dim)}, got {tuple(init.shape)}")
    clients = [torch.nonzero(members[s].cpu()).flatten() for s in range(S)]
    plan = plan_batches(clients, opt, generator=generator)
    progress = ProgressLog("privfl.attacks", f"membership: training {S} reference models", opt.steps)
    W = train_vmap(model, layout, init.to(x), x, y, plan, opt, chunk=chunk, noise_generator=noise_generator,
                   progress=progress.update)
    progress.finish()
    return W


@torch.no_grad()
def reference_logits(model: nn.Module, weights: Tensor, views: Tensor, *, chunk: int = 16) -> Tensor:
    """Logits of every model in ``weights [S, d]`` (or one ``[d]``) on ``views [A, N, ...]``:
    ``[S, A, N, C]`` (``[A, N, C]`` for one model), computed with ``vmap`` over the stacked weights."""
    layout: ParamLayout = layout_of(model)
    single = weights.dim() == 1
    W = weights.unsqueeze(0) if single else weights
    buffers = dict(model.named_buffers())
    A, N = views.shape[:2]
    flat = views.reshape(A * N, *views.shape[2:])
    was = model.training
    model.eval()

    def forward(w: Tensor) -> Tensor:
        return functional_call(model, {**buffers, **unflatten(w, layout)}, (flat,))

    outs = [vmap(forward)(W[lo : lo + chunk]) for lo in range(0, W.shape[0], chunk)]
    model.train(was)
    logits = torch.cat(outs).reshape(W.shape[0], A, N, -1)
    return logits[0] if single else logits
