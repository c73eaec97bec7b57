"""The attack step as one static body, replayed from a CUDA graph (issue 18, goal 1; not yet measured).

:func:`privfl.attacks._common.run_adam` runs one Python-driven iteration at a time: the objective (the
victims' gradients through ``vmap``, the cosine cost and TV), ``autograd.grad`` (double backward), an
Adam step per variable and the projection — hundreds of small kernel launches, which bound a GPU at
batch 1. :func:`run_adam_static` performs exactly that iteration with no host synchronisation in it
(Adam with ``capturable=True`` and a device-tensor learning rate, the step decay applied by an in-place
update of that tensor between iterations, the sign of a signed gradient taken on the device), so on CUDA
the iteration can be captured once in a CUDA graph (``torch.cuda.graph``) after a few warm-up
iterations on a side stream, and replayed: one launch per iteration. ``torch.compile`` is not used:
its AOT autograd does not support the double backward the gradient-matching cost needs.

On CPU, or with ``capture=False``, the same body runs eagerly (the path the CPU tests compare with
:func:`~privfl.attacks._common.run_adam`). ``run_adam`` hands over to this module when every variable is
on CUDA and the environment sets ``PRIVFL_CUDA_GRAPHS=1`` (off by default until measured on a GPU).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from privfl.progress import ProgressLog

__all__ = ["run_adam_static", "graphs_enabled"]

WARMUP = 3  # eager iterations on a side stream before capture (cuDNN autotuning, allocator warm-up)


def graphs_enabled(tensors: Sequence[Tensor]) -> bool:
    """CUDA graphs are used when asked for (``PRIVFL_CUDA_GRAPHS=1``) and every tensor is on CUDA."""
    return os.environ.get("PRIVFL_CUDA_GRAPHS") == "1" and all(t.device.type == "cuda" for t in tensors)


def run_adam_static(
    variables: Sequence,
    objective: Callable[[], Tensor],
    *,
    iterations: int,
    lr_decay: bool,
    milestones: Sequence[int],
    capture: bool | None = None,
    progress: ProgressLog | None = None,
) -> dict[str, float]:
    """Minimise ``objective() -> [T]`` (summed) with one Adam per variable, as ``run_adam`` does (step decay
    ×0.1 at ``milestones`` when ``lr_decay``). ``capture``: replay a CUDA graph of the iteration (default:
    when every variable is on CUDA). ``progress``: a :class:`~privfl.progress.ProgressLog` told each iteration."""
    tensors = [v.tensor for v in variables]
    device = tensors[0].device
    if capture is None:
        capture = device.type == "cuda"
    if capture and device.type != "cuda":
        raise ValueError(f"capture=True needs CUDA tensors, got device {device}")
    lrs = [torch.tensor(float(v.lr), device=device) for v in variables]
    cuda = device.type == "cuda"  # capturable Adam exists on CUDA only; CPU runs the same body eagerly
    opts = [torch.optim.Adam([t], lr=lr, capturable=cuda, foreach=cuda) for t, lr in zip(tensors, lrs)]
    decay_at = set(milestones) if lr_decay else set()

    def body() -> None:
        grads = torch.autograd.grad(objective().sum(), tensors, allow_unused=True)
        for v, o, g in zip(variables, opts, grads):
            v.tensor.grad = torch.zeros_like(v.tensor) if g is None else (g.sign() if v.signed else g)
            o.step()
            if v.project is not None:
                with torch.no_grad():
                    v.project(v.tensor)

    if progress is None:
        progress = ProgressLog("privfl.attacks", "Adam (CUDA graph)", iterations, unit="iterations")

    def after(i: int) -> None:  # iteration i (1-based) done: the scheduler's step
        if i in decay_at:
            for lr in lrs:
                lr.mul_(0.1)
        progress.update(i)  # (host clock only: no synchronisation)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    done = 0
    if capture:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            while done < min(WARMUP, iterations):
                body()
                done += 1
                after(done)
        torch.cuda.current_stream(device).wait_stream(side)
        if done < iterations:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                body()  # recorded, not run
            while done < iterations:
                graph.replay()
                done += 1
                after(done)
    else:
        while done < iterations:
            body()
            done += 1
            after(done)
    progress.finish()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": float(iterations), "seconds_per_iteration": seconds / max(1, iterations),
            "cuda_graph": float(bool(capture))}
