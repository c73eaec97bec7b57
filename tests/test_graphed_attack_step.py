"""The static attack step (privfl.attacks._graphed) runs the same iterations as run_adam: on CPU its eager
body is compared with run_adam on an Inverting-Gradients objective (same Adam, same step decay, same
projection); the CUDA-graph replay is compared the same way where a GPU is present (skipped here)."""

from __future__ import annotations

import pytest
import torch

from privfl.attacks import _common as C
from privfl.attacks import _graphed as Gr


def ig_problem(device):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(10, 3 * 8 * 8, generator=g).to(device)
    x_true = torch.rand(2, 3, 8, 8, generator=g).to(device)  # two victims, one image each
    y = torch.tensor([3, 7], device=device)

    def grads(x):  # per-victim gradient of a linear softmax model's loss wrt W, as [T, d]
        rows = []
        for t in range(x.shape[0]):
            Wr = W.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(x[t].flatten().unsqueeze(0) @ Wr.T, y[t : t + 1])
            rows.append(torch.autograd.grad(loss, Wr, create_graph=True)[0].flatten())
        return torch.stack(rows)

    target = grads(x_true).detach()
    x0 = torch.rand(2, 1, 3, 8, 8, generator=g).to(device)
    return grads, target, x0


def solve(runner, device, **kw):
    grads, target, x0 = ig_problem(device)
    X = x0.clone().requires_grad_(True)

    def objective():
        return C.cosine_distance(grads(X[:, 0]), target) + 0.01 * C.total_variation(X, 3)

    var = C.Variable(X, 0.1, signed=True, project=lambda t: t.data.clamp_(0, 1))
    runner([var], objective, iterations=30, lr_decay=True, **kw)
    return X.detach(), objective().detach()


def test_static_body_matches_run_adam_on_cpu():
    X_ref, loss_ref = solve(C.run_adam, torch.device("cpu"))
    X, loss = solve(Gr.run_adam_static, torch.device("cpu"), milestones=C.milestones(30), capture=False)
    torch.testing.assert_close(X, X_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert float(loss.mean()) < 0.5  # it did attack: the cosine cost fell from ~1


def test_graphs_need_cuda_and_the_switch(monkeypatch):
    x = torch.zeros(3)
    monkeypatch.setenv("PRIVFL_CUDA_GRAPHS", "1")
    assert not Gr.graphs_enabled([x])  # CPU tensors: run_adam keeps its own loop
    with pytest.raises(ValueError, match="capture=True needs CUDA"):
        Gr.run_adam_static([C.Variable(x.requires_grad_(True), 0.1)], lambda: x.sum().unsqueeze(0),
                           iterations=1, lr_decay=False, milestones=[], capture=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_matches_eager():
    dev = torch.device("cuda")
    X_ref, _ = solve(Gr.run_adam_static, dev, milestones=C.milestones(30), capture=False)
    X, _ = solve(Gr.run_adam_static, dev, milestones=C.milestones(30), capture=True)
    torch.testing.assert_close(X, X_ref, rtol=1e-4, atol=1e-4)
