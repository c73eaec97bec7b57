"""Reference ("shadow") models per minute: batched training vs one model after another, in one run.

LiRA needs tens to hundreds of reference models, each trained on its own random half of the data.

* ``batched``: :func:`privfl.attacks.membership.train_reference_models` — all ``--models`` models as
  one computation (stacked weights, ``torch.func.vmap`` over them: the simulator's
  :func:`privfl.fl.local.train_vmap`), each from its own random initialisation;
* ``one at a time``: :func:`privfl.fl.local.train_loop` — a ``torch.optim.SGD`` copy of the model per
  reference model, trained after the previous one (how attack libraries train shadow models), on the
  **same** batch plan and initialisations, so both do the same arithmetic; the script checks that the
  two give the same weights (float32 tolerance);
* ``floor``: one model, one SGD step per step on the concatenation of all models' batches — the same
  arithmetic as the batched run in the most efficient form this hardware has (one large GEMM per
  layer). ``one at a time / floor`` bounds what any batching can gain: when the per-model GEMMs are
  already compute-bound (wide layers on a CPU), no batched implementation reaches a large ratio.

Each path is warmed up once (a short run), then timed once; models/minute and the ratio are printed
with the thread count. Other processes on a shared machine slow both paths; the ratio, measured in
the same run, is what counts. The CPU target is ≥ 5× for the MLP on digits. On a GPU (``--device
cuda``) the issue's target is 64 ResNet-style models no slower than 8 one after another:
``--device cuda --model resnet --dataset natural-patches --models 64 --loop-models 8`` (ResNet-8 with
GroupNorm, ``--depth 20`` for ResNet-20, on 32×32 RGB patches of the embedded scikit-image photos);
the script prints PASS / FAIL for it (batched time ≤ one-at-a-time time).

Run: ``.venv/bin/python benchmarks/shadow_training.py [--threads 1] [--models 64] [--steps 200]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

import privfl
from privfl.attacks.membership import balanced_splits, random_inits, train_reference_models
from privfl.fl.local import LocalSGD, plan_batches, train_loop
from privfl.flat import layout_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", type=int, default=64, help="reference models trained in the batched run")
    ap.add_argument("--loop-models", type=int, default=8, help="models trained one at a time (the reference)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--hidden", default="64", help="MLP widths (64: the membership spec's; 200,200: the 2NN)")
    ap.add_argument("--depth", type=int, default=8, help="ResNet depth 6n+2 (8: ResNet-8; 20: ResNet-20)")
    ap.add_argument("--norm", default="group", help="ResNet normalisation: group (vmap-friendly), none")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = privfl.make("dataset", args.dataset).to(device)
    x, y = torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])
    torch.manual_seed(0)
    extra: dict = {}
    if args.model == "mlp":
        extra = {"hidden": tuple(int(h) for h in args.hidden.split(",") if h)}
    elif args.model == "resnet":
        extra = {"depth": args.depth, "norm": args.norm}
    model = privfl.make("model", args.model, input_shape=data.input_shape, num_classes=data.num_classes,
                        **extra).to(device)
    opt = LocalSGD(steps=args.steps, batch_size=args.batch, lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    members = balanced_splits(args.models, len(x), generator=g)
    init = random_inits(model, args.models, generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def batched(count: int, steps: int) -> tuple[float, torch.Tensor]:
        o = LocalSGD(**{**opt.__dict__, "steps": steps})
        sync()
        t0 = time.perf_counter()
        W = train_reference_models(model, x, y, members[:count].to(device), o,
                                   generator=torch.Generator().manual_seed(1), init=init[:count])
        sync()
        return time.perf_counter() - t0, W

    def one_at_a_time(count: int, steps: int) -> tuple[float, torch.Tensor]:
        o = LocalSGD(**{**opt.__dict__, "steps": steps})
        # the batched run's plan (it depends on how many models share it), sliced per model
        clients = [torch.nonzero(members[s]).flatten() for s in range(args.models)]
        plan = plan_batches(clients, o, generator=torch.Generator().manual_seed(1))
        layout = layout_of(model)
        outs = []
        sync()
        t0 = time.perf_counter()
        for s in range(count):  # the reference: each model trained after the previous one
            sub = type(plan)(index=plan.index[s : s + 1], mask=None)
            w, _ = train_loop(model, layout, init[s], x, y, sub, o)
            outs.append(w[0])
        sync()
        return time.perf_counter() - t0, torch.stack(outs)

    def floor(steps: int) -> float:
        clients = [torch.nonzero(members[s]).flatten() for s in range(args.models)]
        o = LocalSGD(**{**opt.__dict__, "steps": steps})
        index = plan_batches(clients, o, generator=torch.Generator().manual_seed(1)).index.to(device)
        one = copy.deepcopy(model)
        sgd = torch.optim.SGD(one.parameters(), lr=opt.lr, momentum=opt.momentum)
        sync()
        t0 = time.perf_counter()
        for k in range(steps):
            idx = index[:, k].reshape(-1)
            sgd.zero_grad(set_to_none=True)
            F.cross_entropy(one(x[idx]), y[idx]).backward()
            sgd.step()
        sync()
        return time.perf_counter() - t0

    batched(min(4, args.models), 5)  # warm-up
    one_at_a_time(1, 5)
    t_b, W_b = batched(args.models, args.steps)
    t_l, W_l = one_at_a_time(args.loop_models, args.steps)
    t_f = floor(args.steps)
    err = float((W_b[: args.loop_models] - W_l).abs().max())
    rate_b, rate_l = 60.0 * args.models / t_b, 60.0 * args.loop_models / t_l
    print(f"threads={torch.get_num_threads()} device={device} model={args.model} {extra} "
          f"({layout_of(model).dim} params) "
          f"dataset={args.dataset} steps={args.steps} batch={args.batch}")
    print(f"batched       : {args.models:4d} models in {t_b:7.2f} s -> {rate_b:8.1f} models/minute")
    print(f"one at a time : {args.loop_models:4d} models in {t_l:7.2f} s -> {rate_l:8.1f} models/minute")
    print(f"floor         : {args.models:4d} models' arithmetic in {t_f:7.2f} s -> {60.0 * args.models / t_f:8.1f} "
          f"models/minute (bound on any batching: {t_l / args.loop_models * args.models / t_f:.1f}x)")
    print(f"speed-up (batched / one at a time): {rate_b / rate_l:.1f}x   (max |weight difference|: {err:.2e})")
    if device.type == "cpu" and args.model == "mlp":
        print(f"target >= 5x on CPU for the MLP: {'PASS' if rate_b / rate_l >= 5 else 'FAIL'}")
    if device.type == "cuda" and args.model == "resnet":
        print(f"target: {args.models} ResNet-style models batched no slower than {args.loop_models} one after "
              f"another ({t_b:.2f} s vs {t_l:.2f} s): {'PASS' if t_b <= t_l else 'FAIL'}")


if __name__ == "__main__":
    main()
