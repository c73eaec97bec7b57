"""Gradient inversion acceptance figures: PSNR and seconds of the privacy attacks on this machine.

Five measurements (``--only`` picks some; all by default), each on freshly initialised models
(``torch.manual_seed(seed)``, eval mode) and real images of the bundled datasets:

* ``ig``    : undefended Inverting Gradients on single 32×32 RGB ``natural-patches`` images (the
  IG ConvNet, ``--width`` 64), ``--ig-iterations`` 2000, TV weight ``--tv`` 1e-3 (the setting
  REFERENCES.md quotes; the attack's library default is 0.1), labels granted; mean PSNR over
  ``--images`` images and seconds per image (target: ≥ 23 dB, < 30 s per image);
* ``dlg``   : DLG on ``--dlg-images`` single ``lfw-faces`` images with the sigmoid LeNet (300 L-BFGS
  steps, labels recovered jointly), the default variant (normalised distance, strong-Wolfe line
  search) and, unless ``--dlg-no-paper``, the reference code's variant (fixed step, absolute
  tolerances); each image's PSNR, label and final loss (target: ≥ 30 dB, label right, every image);
* ``sme``   : FedAvg updates after K = ``--local-steps`` (20) local SGD steps of a client holding
  ``--local-images`` images (batch ``--local-batch``, lr ``--local-lr``); SME, IG-on-the-update as
  in the SME paper (SME's optimiser with α fixed at 0), our ``inverting-gradients`` attack on the
  update (``--sme-iterations`` 1000 each), and the unrolled ``fedavg-inversion`` (``--unrolled-iterations``
  100: enough for its seconds per iteration; its PSNR after so few iterations is not comparable);
  PSNR and seconds per iteration, with the ratio SME / unrolled (targets: SME's PSNR ≥
  IG-on-update's; ratio ≤ 1/5);
* ``vmap``  : IG on ``--victims`` victims of one model, vmapped together vs one at a time
  (ms per victim-iteration, same PSNR expected);
* ``noise`` : IG (as in ``ig``: same iterations and TV, labels granted) on gradients scaled to unit
  norm plus Gaussian noise of σ per coordinate — the registered ``gaussian`` mechanism
  (``local=True``, clip 1, multiplier σ: clip to norm 1, then add N(0, σ²) to each of the d
  coordinates, so the noise norm is ≈ σ·√d) — for σ in ``--sigmas`` (0.01 is the acceptance
  figure: mean PSNR < 10 dB), on natural-patches / ConvNet and on lfw-faces / sigmoid LeNet
  (``--noise-settings``), ``--images`` victims each, each victim with its own model and all its
  observations attacked together (vmapped, independent trials). Beside them, two
  **no-information controls** (the prior-only floor): the same attack on pure Gaussian noise of
  the norm of a σ = 0.01 observation, and on the unit-norm gradient of an independent image of
  the same dataset (another victim's). A defended PSNR at the floor means the observation told
  the attacker nothing it could use; the printout names the smallest swept σ whose mean PSNR is
  within 1 dB of the noise floor. IG's cosine cost ignores the norm, so the noise floor does not
  depend on the noise's scale.

* ``rates`` (issue 18, for ``--device cuda``): Inverting Gradients iterations per second on breaching's
  cnn6 (six bias-free convolutions with LeakyReLU 0.2, as in breaching / GRNN) and a CIFAR ResNet-18
  (BatchNorm, eval mode), both defined here, for 1 and ``--rate-victims`` (64) single-image victims
  attacked together, each with the plain loop and with the iteration replayed from a CUDA graph
  (``PRIVFL_CUDA_GRAPHS=1``, :mod:`privfl.attacks._graphed`); ``--rate-iterations`` each. Printed: it/s
  (victim-iterations/s), the ratio to breaching's single-victim rate on an H200 (constants quoted in
  issue 18: cnn6 174 it/s, ResNet-18 42 it/s; targets ×2 at batch 1, ×50 at 64 victims), the mean PSNR
  reached in those iterations (not breaching's 24,000-iteration PSNR), and the projected minutes of
  breaching's 100-victim ResNet-18 benchmark (24,000 iterations) at the best rate (target < 20 min).
  A setting that fails (e.g. a CUDA-graph capture) is printed as FAILED and the others still run.
* ``update-rates`` (issue 18, for ``--device cuda``): the same loop-vs-CUDA-graph rates for the two attacks
  on FedAvg updates that share that Adam step, SME and the unrolled ``fedavg-inversion``
  (``--rate-unrolled-iterations``), on the SME ConvNet at 1 and ``--rate-victims`` victims (no breaching
  reference: it has neither attack).

Single-threaded by default (``--threads``); the machine is shared, so seconds are noisy.
``--device cuda`` (or ``auto``: CUDA when present) puts the datasets and models on the GPU (models are
initialised on CPU from the same seeds, and the attacks' CPU generators give the same starting points)
and synchronises around every timed attack; the ``noise`` mechanism then draws its noise with a
generator on the GPU (other draws than on CPU, same distribution).
Run: ``.venv/bin/python benchmarks/inversion.py [--only ig,dlg,sme,noise,vmap,rates,update-rates] [--images 4]
[--device cpu|cuda|auto]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import privfl
from privfl.core import Observation
from privfl.evaluations.scoring import score
from privfl.flat import flatten, layout_of

DEVICE = torch.device("cpu")  # set by --device


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _now() -> float:
    """``time.perf_counter()`` after the device's queued work has finished."""
    _sync()
    return time.perf_counter()


def load(name: str):
    return privfl.make("dataset", name).to(DEVICE)


def build(ds, name: str, seed: int, **opts):
    torch.manual_seed(seed)  # initialised on CPU (same weights whatever the device), then moved
    model = privfl.make("model", name, input_shape=ds.input_shape, num_classes=ds.num_classes, **opts)
    return model.to(DEVICE).eval()


def gradient(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(model(x), y), params)])


def observation(ds, model, update, kind, n, labels, **facts) -> Observation:
    return Observation(model=model, update=update, kind=kind, num_examples=n, input_shape=ds.input_shape,
                       num_classes=ds.num_classes, labels=labels, data_mean=ds.mean, data_std=ds.std, **facts)


def pick(ds, count: int, offset: int = 0) -> list[int]:
    """Evenly spaced training indices (every class of natural-patches is visited)."""
    n = len(ds.x_train)
    return [(offset + (i * n) // count) % n for i in range(count)]


def bench_ig(args, dataset_name: str = "natural-patches", model_name: str = "convnet") -> dict:
    ds = load(dataset_name)
    opts = {"width": args.width} if model_name == "convnet" else {}
    attack = privfl.make("privacy_attack", "inverting-gradients", iterations=args.ig_iterations, tv_weight=args.tv)
    psnrs, secs = [], []
    for k, i in enumerate(pick(ds, args.images)):
        model = build(ds, model_name, args.seed + k, **opts)
        x, y = ds.x_train[i : i + 1], ds.y_train[i : i + 1]
        obs = observation(ds, model, gradient(model, x, y), "gradient", 1, y)
        start = _now()
        rec = attack.attack(obs, generator=torch.Generator().manual_seed(k))
        secs.append(_now() - start)
        psnrs.append(score(ds.to_pixels(x), rec.data).psnr)
        print(f"  image {i:4d} (class {int(y)}): PSNR {psnrs[-1]:6.2f} dB in {secs[-1]:5.1f} s", flush=True)
    return {"psnr_mean": statistics.fmean(psnrs), "psnr_std": statistics.pstdev(psnrs), "s_per_image":
            statistics.fmean(secs), "s_max": max(secs), "images": len(psnrs),
            "params": layout_of(build(ds, model_name, 0, **opts)).dim}


def bench_dlg(args, **params) -> dict:
    """DLG on single lfw-faces images, one freshly initialised sigmoid LeNet per image."""
    ds = load("lfw-faces")
    attack = privfl.make("privacy_attack", "dlg", **params)
    rows = []
    for k, i in enumerate(pick(ds, args.dlg_images, offset=3)):
        model = build(ds, "lenet", args.seed + k)
        x, y = ds.x_train[i : i + 1], ds.y_train[i : i + 1]
        g = gradient(model, x, y)
        obs = observation(ds, model, g, "gradient", 1, None)
        start = _now()
        rec = attack.attack(obs, generator=torch.Generator().manual_seed(k))
        sec = _now() - start
        s = score(ds.to_pixels(x), rec.data, y, rec.labels)
        with torch.no_grad():
            p_true = float(torch.softmax(model(x), -1)[0, int(y)])
        rows.append((s.psnr, s.label_accuracy, sec))
        got = "recovered" if s.label_accuracy == 1.0 else "WRONG"
        print(f"  image {i:4d}: label {int(y)} -> {int(rec.labels[0])} ({got}), PSNR {s.psnr:6.2f} dB, final loss "
              f"{rec.loss:.2e} (|g|^2 {float(g.pow(2).sum()):.1e}, model's p(true) {p_true:.4f}), {sec:5.1f} s, "
              f"{rec.extra['function_evaluations']} evaluations", flush=True)
    return {"psnr_mean": statistics.fmean(r[0] for r in rows), "psnr_min": min(r[0] for r in rows),
            "passed": sum(r[0] >= 30.0 and r[1] == 1.0 for r in rows),
            "labels_recovered": sum(r[1] == 1.0 for r in rows), "images": len(rows),
            "s_per_image": statistics.fmean(r[2] for r in rows)}


def local_update(model, x, y, *, steps: int, batch: int, lr: float, seed: int):
    """The victim's K local SGD steps (its own shuffled order, unknown to the attacker); w_K − w_0."""
    local = copy.deepcopy(model)
    opt = torch.optim.SGD(local.parameters(), lr=lr)
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-steps * batch // n) + 1)])
    for k in range(steps):
        idx = order[k * batch : (k + 1) * batch]
        opt.zero_grad()
        F.cross_entropy(local(x[idx]), y[idx]).backward()
        opt.step()
    layout = layout_of(model)
    return flatten(local, layout) - flatten(model, layout)


def bench_sme(args) -> dict:
    ds = load("natural-patches")
    N, B, K = args.local_images, args.local_batch, args.local_steps
    model = build(ds, "convnet", args.seed, width=args.sme_width)
    victims = []
    for v in range(args.victims):
        gen = torch.Generator().manual_seed(100 + v)
        idx = torch.randperm(len(ds.x_train), generator=gen)[:N]
        x, y = ds.x_train[idx], ds.y_train[idx]
        victims.append((x, y, local_update(model, x, y, steps=K, batch=B, lr=args.local_lr, seed=v)))
    obs = observation(ds, model, torch.stack([d for _, _, d in victims]), "delta", N,
                      torch.stack([y for _, y, _ in victims]), lr=args.local_lr, local_steps=K, batch_size=B)
    truth = [ds.to_pixels(x) for x, _, _ in victims]
    methods = [
        ("sme", "sme", {"iterations": args.sme_iterations}),
        ("IG-on-update (SME, alpha=0)", "sme", {"iterations": args.sme_iterations, "alpha": 0.0}),
        ("inverting-gradients on update", "inverting-gradients", {"iterations": args.sme_iterations}),
        ("fedavg-inversion (unrolled)", "fedavg-inversion", {"iterations": args.unrolled_iterations}),
    ]
    out = {}
    for label, name, params in methods:
        attack = privfl.make("privacy_attack", name, **params)
        rec = attack.attack(obs, generator=torch.Generator().manual_seed(0))
        psnrs = [score(t, rec.data[v]).psnr for v, t in enumerate(truth)]
        spi = rec.extra["seconds_per_iteration"]
        out[label] = {"psnr_mean": statistics.fmean(psnrs), "psnr_std": statistics.pstdev(psnrs),
                      "s_per_iteration": spi, "iterations": params["iterations"], "alpha": rec.extra.get("alpha")}
        print(f"  {label:32s} PSNR {out[label]['psnr_mean']:6.2f} ± {out[label]['psnr_std']:.2f} dB over "
              f"{len(psnrs)} victims; {spi * 1e3:7.1f} ms/iteration ({params['iterations']} iterations, "
              f"{len(psnrs)} victims vmapped)", flush=True)
    out["ratio"] = out["sme"]["s_per_iteration"] / out["fedavg-inversion (unrolled)"]["s_per_iteration"]
    return out


NOISE_ATTACKS = {  # --noise-attacks name -> (registered attack, its parameters beyond the benchmark's)
    "ig": ("inverting-gradients", {}),
    "dlg": ("dlg", {}),
    "dlg-paper": ("dlg", {"normalize": False, "line_search": False}),
}


def bench_noise(args, dataset_name: str, model_name: str, attack_name: str = "ig") -> dict:
    """An attack on unit-norm gradients + N(0, σ²) per coordinate for each σ, and the two no-information
    controls, per victim. IG: labels granted, all observations of one victim (same model) attacked
    together (vmapped). DLG: labels recovered jointly (as in ``dlg``), each observation attacked on
    its own from the same initialisation, plus the raw undefended gradient and, with σ = 0.01 swept,
    that report multiplied by ‖g‖ (DLG's distance is not scale-invariant: this row hands it the norm)."""
    ds = load(dataset_name)
    opts = {"width": args.width} if model_name == "convnet" else {}
    registered, params = NOISE_ATTACKS[attack_name]
    ig = registered == "inverting-gradients"
    if ig:
        params = {"iterations": args.ig_iterations, "tv_weight": args.tv}
    attack = privfl.make("privacy_attack", registered, **params)
    sigmas = [float(v) for v in args.sigmas.split(",")]
    names = [f"sigma={s:g}" for s in sigmas] + ["floor: pure noise", "floor: other image"]
    if not ig:
        names += ["no defence (raw gradient)"] + (["sigma=0.01 x |g| (norm given)"] if 0.01 in sigmas else [])
    victims = pick(ds, args.images)
    table: dict[str, list[float]] = {n: [] for n in names}
    ssims: dict[str, list[float]] = {n: [] for n in names}
    accs: dict[str, list[float]] = {n: [] for n in names}
    secs: list[float] = []
    d = None
    for k, i in enumerate(victims):
        model = build(ds, model_name, args.seed + k, **opts)
        x, y = ds.x_train[i : i + 1], ds.y_train[i : i + 1]
        raw = gradient(model, x, y)
        d = raw.numel()
        g = raw / raw.norm()
        rows = []
        for j, sigma in enumerate(sigmas):
            mech = privfl.make("mechanism", "gaussian", clip_norm=1.0, noise_multiplier=sigma, local=True)
            gen = torch.Generator(device=DEVICE).manual_seed(1000 + 100 * k + j)  # the mechanism draws on g's device
            rows.append(mech.decode(mech.privatize(g.unsqueeze(0), generator=gen))[0])
        gen = torch.Generator().manual_seed(5000 + k)
        noise = torch.randn(g.shape, generator=gen).to(DEVICE)
        rows.append(noise * (math.sqrt(1.0 + 0.01**2 * d) / noise.norm()))  # the norm of a sigma = 0.01 report
        j = victims[(k + 1) % len(victims)]  # another victim's image, independent of this one
        if j == i:  # a single victim: the next training image
            j = (i + 1) % ds.x_train.shape[0]
        other = gradient(model, ds.x_train[j : j + 1], ds.y_train[j : j + 1])
        rows.append(other / other.norm())
        if not ig:
            rows.append(raw)
            if 0.01 in sigmas:
                rows.append(rows[sigmas.index(0.01)] * raw.norm())
        truth = ds.to_pixels(x)
        start = _now()
        if ig:
            obs = observation(ds, model, torch.stack(rows), "gradient", 1, y.repeat(len(rows), 1))
            rec = attack.attack(obs, generator=torch.Generator().manual_seed(k))
            recs = [(r, y) for r in rec.data]
        else:  # one observation at a time, each from the same initialisation (seed k)
            recs = []
            for row in rows:
                rec = attack.attack(observation(ds, model, row, "gradient", 1, None),
                                    generator=torch.Generator().manual_seed(k))
                recs.append((rec.data, rec.labels))
        secs.append((_now() - start) / len(rows))
        cells = []
        for n, (r, labels) in zip(names, recs):
            s = score(truth, r, y, labels)
            table[n].append(s.psnr)
            ssims[n].append(s.ssim if s.ssim is not None else math.nan)
            accs[n].append(s.label_accuracy)
            wrong = "" if ig or s.label_accuracy == 1.0 else " (label wrong)"
            cells.append(f"{s.psnr:5.1f}{wrong}")
        print(f"  image {i:4d} (class {int(y)}), PSNR dB: " + ", ".join(f"{n} {c}" for n, c in zip(names, cells)),
              flush=True)
    out = {n: (statistics.fmean(v), statistics.pstdev(v)) for n, v in table.items()}
    floor = out["floor: pure noise"][0]
    reached = [s for s in sigmas if out[f"sigma={s:g}"][0] <= floor + 1.0]
    return {"table": out, "params": d, "images": len(victims), "floor": floor,
            "sigma_at_floor": min(reached) if reached else None, "sigmas": sigmas, "psnrs": table,
            "ssim": {n: statistics.fmean(v) for n, v in ssims.items()},
            "label_accuracy": {n: statistics.fmean(v) for n, v in accs.items()},
            "s_per_observation": statistics.fmean(secs)}


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean."""
    from scipy import stats

    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return (math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return (m - half, m + half)


def bench_vmap(args) -> dict:
    """IG on ``--victims`` single-image victims of one model: vmapped together vs one at a time."""
    ds = load("natural-patches")
    model = build(ds, "convnet", args.seed, width=args.width)
    idx = pick(ds, args.victims)
    rows = torch.stack([gradient(model, ds.x_train[i : i + 1], ds.y_train[i : i + 1]) for i in idx])
    labels = ds.y_train[idx].unsqueeze(1)
    obs = observation(ds, model, rows, "gradient", 1, labels)
    out = {}
    for mode in (True, False):
        attack = privfl.make("privacy_attack", "inverting-gradients", iterations=args.vmap_iterations,
                             tv_weight=args.tv, vectorize=mode)
        rec = attack.attack(obs, generator=torch.Generator().manual_seed(0))
        psnrs = [score(ds.to_pixels(ds.x_train[i : i + 1]), rec.data[v]).psnr for v, i in enumerate(idx)]
        out["vmap" if mode else "loop"] = {"s_per_victim_iteration": rec.extra["seconds"] / (
            args.victims * args.vmap_iterations), "psnr_mean": statistics.fmean(psnrs)}
    out["speedup"] = out["loop"]["s_per_victim_iteration"] / out["vmap"]["s_per_victim_iteration"]
    return out


# breaching's single-victim Inverting-Gradients rates on an H200 (iterations/s, batch 1), quoted in issue 18
BREACHING_RATES = {"cnn6": 174.0, "resnet18": 42.0}


class CNN6(nn.Module):
    """breaching's / GRNN's cnn6: six bias-free convolutions (12, 36, 36, 36, 64, 128 channels; the first
    4×4 stride 2, then strides 2, 1, 1, 2, 1) with LeakyReLU(0.2), and one linear layer."""

    def __init__(self, num_classes: int, channels: int = 3, size: int = 32) -> None:
        super().__init__()
        spec = [(channels, 12, 4, 2, 2), (12, 36, 3, 2, 1), (36, 36, 3, 1, 1), (36, 36, 3, 1, 1),
                (36, 64, 3, 2, 1), (64, 128, 3, 1, 1)]
        layers = []
        for c_in, c_out, k, stride, pad in spec:
            layers += [nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(self.body(torch.zeros(1, channels, size, size)).shape[1], num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (He et al. 2016; 3×3 stem, stages of 2 basic blocks at 64/128/256/512 channels)."""

    def __init__(self, num_classes: int, channels: int = 3) -> None:
        super().__init__()
        layers, c = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(c, width, stride), _Block(width, width, 1)]
            c = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def _rate_setting(label: str, attack_name: str, params: dict, obs: Observation, truth: list, iterations: int,
                  victims: int, graphs: str, reference: float | None) -> dict | None:
    """One setting of 'rates': runs the attack, prints its line at once (a step cut short by its time limit
    keeps what it printed) and returns its figures; an error (e.g. a CUDA-graph capture that fails) is printed
    and the setting left out, so the other settings still run."""
    os.environ["PRIVFL_CUDA_GRAPHS"] = graphs
    path = "CUDA graph" if graphs == "1" else "loop      "
    try:
        attack = privfl.make("privacy_attack", attack_name, iterations=iterations, **params)
        rec = attack.attack(obs, generator=torch.Generator().manual_seed(0))
    except Exception as err:  # noqa: BLE001 - reported, and the remaining settings still run
        print(f"  {label:16s} {victims:3d} victim(s) {path}: FAILED: {type(err).__name__}: {err}", flush=True)
        return None
    finally:
        os.environ.pop("PRIVFL_CUDA_GRAPHS", None)
    data = rec.data if victims > 1 else rec.data.unsqueeze(0)
    psnr = statistics.fmean(score(t, data[v]).psnr for v, t in enumerate(truth))
    its = iterations / rec.extra["seconds"]
    row = {"it_s": its, "victim_it_s": its * victims, "psnr": psnr,
           "ratio": its * victims / reference if reference else None}
    if graphs == "1" and not rec.extra.get("cuda_graph"):  # the switch was set, but the attack ran its loop
        path = "CUDA graph NOT USED (loop ran)"
    versus = f"{row['ratio']:6.2f}x breaching, " if reference else ""
    print(f"  {label:16s} {victims:3d} victim(s) {path}: {its:8.1f} it/s, {its * victims:9.1f} victim-it/s, "
          f"{versus}mean PSNR {psnr:.2f} dB (after {iterations} it.)", flush=True)
    return row


def _graph_paths() -> tuple[str, ...]:
    return ("0", "1") if DEVICE.type == "cuda" else ("0",)


def bench_rates(args) -> dict:
    """IG it/s on cnn6 and ResNet-18, 1 and ``--rate-victims`` victims, loop vs CUDA graph."""
    ds = load("natural-patches")
    out = {}
    for name, make in (("cnn6", CNN6), ("resnet18", ResNet18)):
        torch.manual_seed(args.seed)
        model = make(ds.num_classes, ds.input_shape[0]).to(DEVICE).eval()
        for victims in (1, args.rate_victims):
            idx = pick(ds, victims)
            rows = torch.stack([gradient(model, ds.x_train[i : i + 1], ds.y_train[i : i + 1]) for i in idx])
            labels = ds.y_train[idx].unsqueeze(1)
            obs = observation(ds, model, rows if victims > 1 else rows[0], "gradient", 1,
                              labels if victims > 1 else labels[0])
            truth = [ds.to_pixels(ds.x_train[i : i + 1]) for i in idx]
            for graphs in _graph_paths():
                row = _rate_setting(name, "inverting-gradients", {"tv_weight": args.tv}, obs, truth,
                                    args.rate_iterations, victims, graphs, BREACHING_RATES[name])
                if row is not None:
                    out[(name, victims, graphs)] = row
    return out


def bench_update_rates(args) -> dict:
    """SME and the unrolled fedavg-inversion (the two attacks on FedAvg updates that share IG's Adam step) on
    the SME ConvNet: it/s at 1 and ``--rate-victims`` victims, loop vs CUDA graph (no breaching reference)."""
    ds = load("natural-patches")
    N, B, K = args.local_images, args.local_batch, args.local_steps
    model = build(ds, "convnet", args.seed, width=args.sme_width)
    pool = []
    for v in range(args.rate_victims):
        idx = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(100 + v))[:N]
        x, y = ds.x_train[idx], ds.y_train[idx]
        pool.append((ds.to_pixels(x), y, local_update(model, x, y, steps=K, batch=B, lr=args.local_lr, seed=v)))
    out = {}
    for name, iterations in (("sme", args.rate_iterations), ("fedavg-inversion", args.rate_unrolled_iterations)):
        for victims in (1, args.rate_victims):
            chosen = pool[:victims]
            deltas, labels = torch.stack([d for *_, d in chosen]), torch.stack([y for _, y, _ in chosen])
            obs = observation(ds, model, deltas if victims > 1 else deltas[0], "delta", N,
                              labels if victims > 1 else labels[0], lr=args.local_lr, local_steps=K, batch_size=B)
            for graphs in _graph_paths():
                row = _rate_setting(name, name, {}, obs, [t for t, *_ in chosen], iterations, victims, graphs, None)
                if row is not None:
                    out[(name, victims, graphs)] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="ig,dlg,sme,noise,vmap",
                   help="also: rates, update-rates (issue 18, meant for --device cuda)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=4, help="images for ig; victims per setting for noise")
    p.add_argument("--dlg-images", type=int, default=8)
    p.add_argument("--dlg-no-paper", action="store_true", help="skip the reference-code variant of DLG")
    p.add_argument("--sigmas", default="0.001,0.003,0.01,0.03,0.1", help="noise sweep for 'noise'")
    p.add_argument("--noise-settings", default="natural-patches/convnet,lfw-faces/lenet",
                   help="dataset/model pairs for 'noise'")
    p.add_argument("--noise-attacks", default=None,
                   help="attacks for 'noise', comma-separated: ig (default), dlg (labels recovered jointly), "
                        "dlg-paper (normalize=False, line_search=False); naming any also prints SSIM, label "
                        "accuracy, seconds and the 95%% t-interval of each mean")
    p.add_argument("--width", type=int, default=64, help="ConvNet width for ig / noise")
    p.add_argument("--ig-iterations", type=int, default=2000)
    p.add_argument("--tv", type=float, default=1e-3, help="IG's TV weight for ig / noise (library default 0.1)")
    p.add_argument("--victims", type=int, default=4, help="FedAvg victims for sme")
    p.add_argument("--local-images", type=int, default=4)
    p.add_argument("--local-batch", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--local-lr", type=float, default=0.05)
    p.add_argument("--sme-width", type=int, default=32)
    p.add_argument("--sme-iterations", type=int, default=1000)
    p.add_argument("--unrolled-iterations", type=int, default=100,
                   help="iterations of the unrolled attack (its seconds per iteration is what the ratio needs)")
    p.add_argument("--vmap-iterations", type=int, default=200)
    p.add_argument("--rate-iterations", type=int, default=300, help="IG iterations per setting of 'rates'")
    p.add_argument("--rate-victims", type=int, default=64, help="victims attacked together in 'rates'")
    p.add_argument("--rate-unrolled-iterations", type=int, default=20,
                   help="fedavg-inversion iterations per setting of 'update-rates'")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where datasets, models and attacks run (auto: cuda when available); default cpu")
    args = p.parse_args()
    for flag, value, least in (("--rate-iterations", args.rate_iterations, 1), ("--rate-victims", args.rate_victims, 2),
                               ("--rate-unrolled-iterations", args.rate_unrolled_iterations, 1)):
        if value < least:
            p.error(f"{flag} must be an integer >= {least} (1 victim is always measured beside it), got {value}"
                    if flag == "--rate-victims" else f"{flag} must be an integer >= {least}, got {value}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    gpu = f" ({torch.cuda.get_device_name(DEVICE)}, TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'} for " \
        "convolutions)" if DEVICE.type == "cuda" else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {DEVICE.type}{gpu}")
    checks = []
    if "ig" in only:
        print(f"IG, natural-patches 32x32 RGB, ConvNet width {args.width}, {args.ig_iterations} iterations, "
              f"TV {args.tv}:")
        r = bench_ig(args)
        print(f"  mean PSNR {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} dB over {r['images']} images, "
              f"{r['s_per_image']:.1f} s per image (max {r['s_max']:.1f} s), {r['params']} parameters")
        checks.append(("IG mean PSNR >= 23 dB", r["psnr_mean"] >= 23.0, f"{r['psnr_mean']:.2f} dB"))
        checks.append(("IG < 30 s per image", r["s_max"] < 30.0, f"max {r['s_max']:.1f} s"))
    if "dlg" in only:
        variants = [("default (normalize=True, line_search=True)", {})]
        if not args.dlg_no_paper:
            variants.append(("paper's reference code (normalize=False, line_search=False)",
                             {"normalize": False, "line_search": False}))
        for title, params in variants:
            print(f"DLG {title}, lfw-faces 25x25, sigmoid LeNet, 300 L-BFGS steps, labels not granted:")
            r = bench_dlg(args, **params)
            print(f"  mean PSNR {r['psnr_mean']:.2f} dB (min {r['psnr_min']:.2f}), labels recovered "
                  f"{r['labels_recovered']}/{r['images']}, >= 30 dB with the label: {r['passed']}/{r['images']}, "
                  f"{r['s_per_image']:.1f} s per image")
            if not params:
                checks.append(("DLG PSNR >= 30 dB and label recovered (every image)", r["passed"] == r["images"],
                               f"{r['passed']}/{r['images']}, min {r['psnr_min']:.2f} dB"))
    if "sme" in only:
        print(f"FedAvg updates: K={args.local_steps} steps, {args.local_images} images/client, batch "
              f"{args.local_batch}, lr {args.local_lr}; ConvNet width {args.sme_width}:")
        r = bench_sme(args)
        print(f"  seconds per iteration, SME / unrolled = {r['ratio']:.3f} (1/{1 / r['ratio']:.1f})")
        ig = r["IG-on-update (SME, alpha=0)"]["psnr_mean"]
        checks.append(("SME PSNR >= IG-on-update", r["sme"]["psnr_mean"] >= ig,
                       f"{r['sme']['psnr_mean']:.2f} vs {ig:.2f} dB"))
        checks.append(("SME s/iteration <= 1/5 unrolled", r["ratio"] <= 0.2, f"ratio {r['ratio']:.3f}"))
    if "noise" in only:
        detail = args.noise_attacks is not None
        attacks = [a.strip() for a in (args.noise_attacks or "ig").split(",") if a.strip()]
        for a in attacks:
            if a not in NOISE_ATTACKS:
                p.error(f"--noise-attacks: unknown attack {a!r}; choose from {sorted(NOISE_ATTACKS)}")
        for setting in args.noise_settings.split(","):
            dataset, model_name = setting.strip().split("/")
            for attack_name in attacks:
                if attack_name == "ig":
                    print(f"IG ({args.ig_iterations} it., TV {args.tv}) on unit-norm gradients + N(0, sigma^2) per "
                          f"coordinate (registered 'gaussian', local, clip 1), {dataset} / {model_name}:")
                else:
                    print(f"DLG {attack_name} ({NOISE_ATTACKS[attack_name][1] or 'library defaults'}, labels "
                          f"recovered jointly) on unit-norm gradients + N(0, sigma^2) per coordinate (registered "
                          f"'gaussian', local, clip 1), {dataset} / {model_name}:")
                r = bench_noise(args, dataset, model_name, attack_name)
                d = r["params"]
                for name, (m, sd) in r["table"].items():
                    extra = ""
                    if name.startswith("sigma=") and " " not in name:
                        sigma = float(name[6:])
                        extra = f"  (noise norm ~ {sigma * math.sqrt(d):.3g} vs signal 1)"
                    if detail:
                        lo, hi = t_interval(r["psnrs"][name])
                        extra = (f", 95% t-CI of mean [{lo:.2f}, {hi:.2f}], SSIM {r['ssim'][name]:.3f}, label "
                                 f"accuracy {r['label_accuracy'][name]:.2f}" + extra)
                    print(f"  {name:22s} mean PSNR {m:6.2f} ± {sd:.2f} dB over {r['images']} victims{extra}")
                if detail:
                    print(f"  {r['s_per_observation']:.1f} s per observation (mean over victims)")
                at = r["sigma_at_floor"]
                print(f"  d = {d} parameters; smallest swept sigma within 1 dB of the pure-noise floor "
                      f"({r['floor']:.2f} dB): {at if at is not None else 'none of ' + str(r['sigmas'])}")
                if 0.01 in r["sigmas"]:
                    m = r["table"]["sigma=0.01"][0]
                    who = "" if attack_name == "ig" else f"{attack_name}, "
                    checks.append((f"noise sigma=0.01 ({who}{dataset} / {model_name}, d={d}): mean PSNR < 10 dB",
                                   m < 10.0, f"{m:.2f} dB; no-information floor {r['floor']:.2f} dB (pure noise), "
                                   f"{r['table']['floor: other image'][0]:.2f} dB (other image)"))
    if "vmap" in only:
        print(f"IG on {args.victims} victims of one ConvNet (width {args.width}), {args.vmap_iterations} iterations: "
              f"vmap over victims vs one victim at a time (plain autograd):")
        r = bench_vmap(args)
        for mode in ("vmap", "loop"):
            print(f"  {mode}: {r[mode]['s_per_victim_iteration'] * 1e3:6.2f} ms per victim-iteration, "
                  f"mean PSNR {r[mode]['psnr_mean']:.2f} dB")
        print(f"  speed-up of vmap: {r['speedup']:.2f}x")
    if "rates" in only:
        print(f"IG iterations/s, natural-patches 32x32, {args.rate_iterations} iterations, TV {args.tv}; ratio = "
              f"victim-iterations/s over breaching's single-victim rate on an H200 ({BREACHING_RATES}):", flush=True)
        r = bench_rates(args)
        for name in BREACHING_RATES:
            ones = [v["ratio"] for (n, k, _), v in r.items() if n == name and k == 1]
            many = [v["ratio"] for (n, k, _), v in r.items() if n == name and k == args.rate_victims]
            checks.append((f"{name} batch 1 >= 2x breaching", bool(ones) and max(ones) >= 2.0,
                           f"{max(ones):.2f}x" if ones else "not measured (every setting failed)"))
            checks.append((f"{name} {args.rate_victims} victims >= 50x breaching", bool(many) and max(many) >= 50.0,
                           f"{max(many):.2f}x" if many else "not measured (every setting failed)"))
        best = [v["victim_it_s"] for (n, k, _), v in r.items() if n == "resnet18"]
        minutes = 100 * 24_000 / max(best) / 60 if best else math.inf
        checks.append(("ResNet-18 100 victims x 24,000 it. < 20 min (projected from the best rate; PSNR after "
                       f"{args.rate_iterations} it. only)", minutes < 20, f"{minutes:.1f} min"))
    if "update-rates" in only:
        print(f"SME ({args.rate_iterations} it.) and fedavg-inversion ({args.rate_unrolled_iterations} it.) "
              f"iterations/s on FedAvg updates (ConvNet width {args.sme_width}, {args.local_images} images, "
              f"K={args.local_steps}, batch {args.local_batch}), 1 and {args.rate_victims} victims:", flush=True)
        r = bench_update_rates(args)
        for name in ("sme", "fedavg-inversion"):
            for victims in (1, args.rate_victims):
                loop, graph = r.get((name, victims, "0")), r.get((name, victims, "1"))
                if loop and graph:
                    print(f"  {name} {victims} victim(s): CUDA graph / loop = "
                          f"{graph['it_s'] / loop['it_s']:.2f}x", flush=True)
            one, many = r.get((name, 1, "0")), r.get((name, args.rate_victims, "0"))
            if one and many:
                print(f"  {name}: {args.rate_victims} victims batched / 1 victim, victim-it/s (loop) = "
                      f"{many['victim_it_s'] / one['victim_it_s']:.2f}x", flush=True)
    print("\nacceptance:")
    for name, ok, value in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {value}")


if __name__ == "__main__":
    main()
