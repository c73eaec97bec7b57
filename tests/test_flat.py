"""Flat parameter vectors: exact round trips, layout order, buffers, batched views, validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import privfl
from privfl.flat import ParamLayout, flatten, layout_of, load_flat, unflatten, unflatten_batch

INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 5


def build(name: str, seed: int, **opts) -> nn.Module:
    torch.manual_seed(seed)
    return privfl.make("model", name, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, **opts)


MODEL_CONFIGS = [(name, {}) for name in privfl.available("model")] + [
    ("resnet", {"norm": "batch"}),
    ("convnet", {"width": 4}),
    ("mlp", {"hidden": ()}),
]


@pytest.mark.parametrize(("name", "opts"), MODEL_CONFIGS)
def test_round_trip_exact_every_model(name, opts):
    model = build(name, 0, **opts)
    layout = layout_of(model)
    vec = flatten(model, layout)
    assert vec.shape == (layout.dim,)
    assert layout.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)

    parts = unflatten(vec, layout)
    params = dict(model.named_parameters())
    assert list(parts) == list(layout.names)
    for n, t in parts.items():
        assert torch.equal(t, params[n])

    fresh = build(name, 1, **opts)
    assert not torch.equal(flatten(fresh, layout), vec)  # a different init, so the load matters
    assert load_flat(fresh, vec, layout) is fresh
    again = flatten(fresh, layout)
    assert torch.equal(again, vec)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), fresh.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_flatten_is_a_detached_copy():
    model = build("mlp", 0, hidden=(3,))
    layout = layout_of(model)
    vec = flatten(model, layout)
    assert not vec.requires_grad
    vec.add_(1.0)
    assert not torch.equal(flatten(model, layout), vec)


@pytest.mark.parametrize("name", privfl.available("model"))
def test_layout_order_is_named_parameters_order(name):
    model = build(name, 0)
    layout = layout_of(model)
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert list(zip(layout.names, layout.shapes)) == named
    # offsets/slices agree with that order
    vec = flatten(model, layout)
    for (n, p), (off, numel) in zip(model.named_parameters(), zip(layout.offsets, layout.numels)):
        assert torch.equal(vec[off : off + numel], p.detach().reshape(-1))
        assert layout.slices()[n] == slice(off, off + numel)


def test_frozen_parameters_excluded():
    model = build("mlp", 0, hidden=(4,))
    model.net[1].weight.requires_grad_(False)
    layout = layout_of(model)
    assert "net.1.weight" not in layout.names
    assert layout.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_buffers_excluded_by_default_included_on_request():
    model = build("resnet", 0, norm="batch")
    param_names = [n for n, _ in model.named_parameters()]
    float_buffers = [n for n, b in model.named_buffers() if b.is_floating_point()]
    int_buffers = [n for n, b in model.named_buffers() if not b.is_floating_point()]
    assert float_buffers and int_buffers  # running_mean/var and num_batches_tracked

    plain = layout_of(model)
    assert list(plain.names) == param_names
    assert not plain.include_buffers

    full = layout_of(model, buffers=True)
    assert full.include_buffers
    assert list(full.names) == param_names + float_buffers
    assert not set(int_buffers) & set(full.names)

    # give the running statistics non-default values, then round-trip them into a fresh model
    model.train()
    with torch.no_grad():
        model(torch.randn(6, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0)))
    vec = flatten(model, full)
    assert vec.shape == (full.dim,)
    fresh = build("resnet", 1, norm="batch")
    load_flat(fresh, vec, full)
    assert torch.equal(flatten(fresh, full), vec)
    buffers = dict(fresh.named_buffers())
    for n, b in model.named_buffers():
        if b.is_floating_point():
            assert torch.equal(buffers[n], b)


def test_batched_round_trip():
    models = [build("convnet", s, width=4) for s in range(3)]
    layout = layout_of(models[0])
    rows = torch.stack([flatten(m, layout) for m in models])
    stacked = unflatten_batch(rows, layout)
    assert list(stacked) == list(layout.names)
    for name, shape in zip(layout.names, layout.shapes):
        assert stacked[name].shape == (3, *shape)
        for i, m in enumerate(models):
            assert torch.equal(stacked[name][i], dict(m.named_parameters())[name])
    assert torch.equal(flatten(stacked, layout), rows)  # a mapping of batched tensors -> [n, d]


def test_wrong_length_and_rank_rejected():
    model = build("mlp", 0, hidden=(3,))
    layout = layout_of(model)
    d = layout.dim
    for bad in (torch.zeros(d - 1), torch.zeros(d + 1)):
        with pytest.raises(ValueError, match=f"d = {d}"):
            unflatten(bad, layout)
        with pytest.raises(ValueError, match=f"d = {d}"):
            load_flat(model, bad, layout)
    with pytest.raises(ValueError):
        unflatten(torch.zeros(2, d), layout)
    with pytest.raises(ValueError):
        unflatten_batch(torch.zeros(d), layout)
    with pytest.raises(ValueError):
        unflatten_batch(torch.zeros(2, d + 1), layout)
    with pytest.raises(TypeError):
        unflatten([0.0] * d, layout)  # type: ignore[arg-type]


def test_source_missing_a_layout_tensor():
    model = build("mlp", 0, hidden=(3,))
    layout = layout_of(model)
    tensors = dict(model.named_parameters())
    tensors.pop(layout.names[-1])
    with pytest.raises(ValueError, match="lacks"):
        flatten(tensors, layout)
    other = ParamLayout(names=("nope",), shapes=((2,),))
    with pytest.raises(ValueError, match="nope"):
        load_flat(model, torch.zeros(2), other)


@settings(max_examples=25, deadline=None)
@given(
    in_dim=st.integers(1, 6),
    hidden=st.lists(st.integers(1, 5), max_size=3),
    classes=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_mlp_round_trip(in_dim, hidden, classes, seed):
    torch.manual_seed(seed)
    model = privfl.make("model", "mlp", input_shape=(in_dim,), num_classes=classes, hidden=tuple(hidden))
    layout = layout_of(model)
    widths = [in_dim, *hidden, classes]
    assert layout.dim == sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    vec = torch.randn(layout.dim, generator=torch.Generator().manual_seed(seed))
    load_flat(model, vec, layout)
    assert torch.equal(flatten(model, layout), vec)
    parts = unflatten(vec, layout)
    assert torch.equal(torch.cat([t.reshape(-1) for t in parts.values()]), vec)
    batch = torch.stack([vec, -vec])
    assert torch.equal(flatten(unflatten_batch(batch, layout), layout), batch)
