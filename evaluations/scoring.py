"""Scoring reconstructions against the ground truth: MSE, PSNR, SSIM, label accuracy (and LPIPS
when its weights are already on disk).

A reconstructed batch comes back in an arbitrary order, so every score is computed after the
**optimal matching** of reconstructed to true examples: the assignment minimising the total
pixel MSE (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``). All images are in
pixel space, range [0, 1].

* MSE: mean squared error per image, then the mean over the batch.
* PSNR: ``10·log10(1 / MSE)`` per image (data range 1), then the mean; an MSE below 1e-10 counts
  as 1e-10, i.e. PSNR is capped at 100 dB.
* SSIM: ``skimage.metrics.structural_similarity`` per image (data range 1, channels on axis 0,
  uniform 7×7 window, or the largest odd window that fits a smaller image); ``None`` for
  vector data.
* Label accuracy: the fraction of the true labels that the reconstruction recovers, after the
  optimal matching of labels to labels (the size of the multiset intersection over N): label
  rules recover the batch's labels as a set, not in the images' order; ``None`` when the attack
  returns no labels.
* LPIPS (Zhang et al. 2018): only when the ``lpips`` package and its AlexNet weights are already
  installed and cached — never downloaded; otherwise absent, with :func:`lpips_status` giving the
  one-line reason.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["match", "psnr", "mse", "ssim", "score", "BatchScore", "lpips_status", "PSNR_CAP_MSE"]

PSNR_CAP_MSE = 1e-10
_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _check_pair(true: Tensor, rec: Tensor) -> tuple[Tensor, Tensor]:
    for name, t in (("true", true), ("rec", rec)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [N, ...], got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape [N, ...] (a batch), got shape {tuple(t.shape)}")
    if true.shape != rec.shape:
        raise ValueError(f"true and rec must have the same shape, got {tuple(true.shape)} and {tuple(rec.shape)}")
    return true.detach().to("cpu", torch.float64), rec.detach().to("cpu", torch.float64)


def mse(true: Tensor, rec: Tensor) -> Tensor:
    """Per-example MSE ``[N]`` (no matching)."""
    t, r = _check_pair(true, rec)
    return (t - r).pow(2).flatten(1).mean(1)


def psnr(true: Tensor, rec: Tensor) -> Tensor:
    """Per-example PSNR in dB ``[N]`` for data range 1 (no matching; capped at 100 dB)."""
    return -10.0 * torch.log10(mse(true, rec).clamp_min(PSNR_CAP_MSE))


def _window(h: int, w: int) -> int | None:
    size = min(7, h, w)
    size -= 1 - size % 2  # largest odd size <= min(7, h, w)
    return size if size >= 3 else None


def ssim(true: Tensor, rec: Tensor) -> Tensor | None:
    """Per-example SSIM ``[N]`` with scikit-image (images ``[N, C, H, W]``); ``None`` otherwise."""
    t, r = _check_pair(true, rec)
    if t.dim() != 4 or _window(t.shape[2], t.shape[3]) is None:
        return None
    from skimage.metrics import structural_similarity

    win = _window(t.shape[2], t.shape[3])
    out = [
        structural_similarity(a.numpy(), b.numpy(), data_range=1.0, channel_axis=0, win_size=win)
        for a, b in zip(t, r)
    ]
    return torch.tensor(out, dtype=torch.float64)


def match(true: Tensor, rec: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment (min total MSE): ``rec[cols[i]]`` is matched with ``true[rows[i]]``."""
    t, r = _check_pair(true, rec)
    cost = (t.flatten(1).unsqueeze(1) - r.flatten(1).unsqueeze(0)).pow(2).mean(-1)
    rows, cols = linear_sum_assignment(cost.numpy())
    return rows, cols


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can be computed here without any download, and why not."""
    if importlib.util.find_spec("lpips") is None:
        return False, "LPIPS absent: the 'lpips' package is not installed (its weights are never downloaded)"
    if importlib.util.find_spec("torchvision") is None:
        return False, "LPIPS absent: torchvision (its AlexNet backbone) is not installed"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / _ALEXNET_FILE
    if not cached.is_file():
        return False, f"LPIPS absent: AlexNet weights not on disk ({cached}); privfl never downloads them"
    return True, "LPIPS available (lpips AlexNet, weights on disk)"


_LPIPS_MODEL = None


def _lpips(true: Tensor, rec: Tensor) -> Tensor | None:
    ok, _ = lpips_status()
    if not ok or true.dim() != 4 or true.shape[1] not in (1, 3):
        return None
    global _LPIPS_MODEL
    if _LPIPS_MODEL is None:
        import lpips  # type: ignore[import-not-found]

        _LPIPS_MODEL = lpips.LPIPS(net="alex", verbose=False).eval()
    t, r = true.float(), rec.float()
    if t.shape[1] == 1:
        t, r = t.expand(-1, 3, -1, -1), r.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return _LPIPS_MODEL(t * 2 - 1, r * 2 - 1).flatten().double()


@dataclass
class BatchScore:
    """Scores of one reconstructed batch after matching (per-example lists and their means)."""

    mse: float
    psnr: float
    ssim: float | None
    label_accuracy: float | None
    lpips: float | None
    per_example: dict[str, list[float]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # rec index matched to true example i

    def as_dict(self) -> dict[str, float | None]:
        return {"mse": self.mse, "psnr": self.psnr, "ssim": self.ssim, "label_accuracy": self.label_accuracy,
                "lpips": self.lpips}


def score(true: Tensor, rec: Tensor, true_labels: Tensor | None = None, rec_labels: Tensor | None = None) -> BatchScore:
    """Match ``rec`` to ``true`` (Hungarian on MSE) and score every metric on the matched pairs
    (labels: on their own optimal matching, see the module docstring)."""
    t, r = _check_pair(true, rec)
    rows, cols = match(t, r)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    r_matched = r[torch.as_tensor(order)]
    m = mse(t, r_matched)
    p = psnr(t, r_matched)
    s = ssim(t, r_matched)
    acc = None
    if true_labels is not None and rec_labels is not None:
        tl = torch.as_tensor(true_labels).detach().cpu().reshape(-1).long()
        rl = torch.as_tensor(rec_labels).detach().cpu().reshape(-1).long()
        if len(tl) != len(t) or len(rl) != len(t):
            raise ValueError(f"labels must have one entry per example ({len(t)}), got {len(tl)} and {len(rl)}")
        if bool((tl < 0).any() or (rl < 0).any()):
            raise ValueError("labels must be class ids >= 0")
        size = int(max(tl.max(), rl.max())) + 1
        overlap = torch.minimum(torch.bincount(tl, minlength=size), torch.bincount(rl, minlength=size)).sum()
        acc = float(overlap) / len(tl)
    lp = _lpips(t, r_matched)
    per = {"mse": m.tolist(), "psnr": p.tolist()}
    if s is not None:
        per["ssim"] = s.tolist()
    if lp is not None:
        per["lpips"] = lp.tolist()
    return BatchScore(
        mse=float(m.mean()),
        psnr=float(p.mean()),
        ssim=None if s is None else float(s.mean()),
        label_accuracy=acc,
        lpips=None if lp is None else float(lp.mean()),
        per_example=per,
        order=order.tolist(),
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
