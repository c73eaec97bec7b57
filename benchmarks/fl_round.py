"""Time one FedAvg round: batched local training (vmap) vs the per-client loop vs an ideal floor.

One round = every one of ``--clients`` clients (IID split of ``digits``) runs ``--steps`` local SGD
steps (momentum 0.9) on minibatches of ``--batch``, all from the same :class:`BatchPlan`:

* ``vmap``  : :func:`privfl.fl.local.train_vmap` (default client chunking), what the simulation uses;
* ``loop``  : :func:`privfl.fl.local.train_loop`, one ``torch.optim.SGD`` model copy per client;
* ``floor`` : one forward/backward + SGD step per local step on the concatenation of all clients'
  batches with a single shared model. Any implementation of the round has to do at least this
  much arithmetic on this hardware (same samples, same layers), so ``loop/floor`` is the most a
  batched implementation could gain over the loop and ``vmap/floor`` is how far it is from that.

Each path is warmed up once, then timed ``--repeats`` times; the median is reported.
Run: ``.venv/bin/python benchmarks/fl_round.py [--threads 1] [--repeats 3] [--models convnet,lenet,mlp]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import privfl
from privfl.fl.local import LocalSGD, plan_batches, train_loop, train_vmap
from privfl.fl.partition import partition
from privfl.flat import flatten, layout_of


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run; also its last result."""
    out = fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def floor_round(model, x, y, plan, opt: LocalSGD) -> torch.Tensor:
    """K steps of one shared model on all clients' step-k batches concatenated."""
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    model.train()
    for k in range(opt.steps):
        idx = plan.index[:, k].reshape(-1).to(x.device)
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        sgd.step()
    return params[0].detach()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path; the median is reported")
    ap.add_argument("--models", default="convnet,lenet,mlp", help="comma-separated model names")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be >= 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    ds = privfl.make("dataset", "digits").to(device)
    clients = partition("iid", ds.y_train.cpu(), args.clients, generator=torch.Generator().manual_seed(0))
    opt = LocalSGD(steps=args.steps, batch_size=args.batch, lr=0.05, momentum=0.9)
    plan = plan_batches(clients, opt, generator=torch.Generator().manual_seed(1))
    sizes = [len(c) for c in clients]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"privfl FedAvg round benchmark | torch {torch.__version__} | device {device} ({name}) | "
          f"threads {torch.get_num_threads()} | repeats {args.repeats} (median, after 1 warm-up)")
    print(f"digits: {len(ds.y_train)} train samples, {args.clients} IID clients ({min(sizes)}-{max(sizes)} "
          f"samples each) x {args.steps} local steps x batch {args.batch} = "
          f"{args.clients * args.steps * args.batch} sample-gradients per round")
    header = f"{'model':<8} {'d':>8} {'chunk':>5} {'vmap s':>8} {'loop s':>8} {'floor s':>8} " \
             f"{'loop/vmap':>9} {'loop/floor':>10} {'vmap/floor':>10} {'max|vmap-loop|':>14}"
    print(header)
    print("-" * len(header))
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(0)
        model = privfl.make("model", model_name, input_shape=ds.input_shape, num_classes=ds.num_classes).to(device)
        layout = layout_of(model)
        w0 = flatten(model, layout)
        chunk = args.clients if device.type == "cuda" else max(1, (1 << 21) // max(1, layout.dim))
        def run_vmap(model=model, layout=layout, w0=w0):
            return train_vmap(model, layout, w0, ds.x_train, ds.y_train, plan, opt)

        def run_loop(model=model, layout=layout, w0=w0):
            return train_loop(model, layout, w0, ds.x_train, ds.y_train, plan, opt)[0]

        torch.manual_seed(0)
        shared = privfl.make("model", model_name, input_shape=ds.input_shape, num_classes=ds.num_classes).to(device)

        def run_floor(shared=shared):
            return floor_round(shared, ds.x_train, ds.y_train, plan, opt)

        t_vmap, w_vmap = timed(run_vmap, args.repeats, device)
        t_loop, w_loop = timed(run_loop, args.repeats, device)
        t_floor, _ = timed(run_floor, args.repeats, device)
        diff = float((w_vmap - w_loop).abs().max())
        print(f"{model_name:<8} {layout.dim:>8} {min(chunk, args.clients):>5} {t_vmap:>8.3f} {t_loop:>8.3f} "
              f"{t_floor:>8.3f} {t_loop / t_vmap:>9.2f} {t_loop / t_floor:>10.2f} {t_vmap / t_floor:>10.2f} "
              f"{diff:>14.2e}", flush=True)


if __name__ == "__main__":
    main()
