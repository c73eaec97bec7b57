"""Models: shapes for any input, parameter counts, init, determinism, validation, torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import privfl
from privfl.models import ConvNet, LeNet, ResNet

IMAGE_SHAPES = [(1, 8, 8), (1, 25, 25), (3, 32, 32), (1, 28, 28)]
CONFIGS = [
    ("mlp", {}),
    ("mlp", {"hidden": (16,)}),
    ("lenet", {}),
    ("lenet", {"init": "default"}),
    ("convnet", {"width": 8}),
    ("resnet", {}),
    ("resnet", {"norm": "batch"}),
    ("resnet", {"norm": "none"}),
]


def test_all_registered() -> None:
    assert {"mlp", "lenet", "convnet", "resnet"} <= set(privfl.available("model"))


@pytest.mark.parametrize("name,opts", CONFIGS)
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_output_shape_images(name: str, opts: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = privfl.make("model", name, input_shape=shape, num_classes=7, **opts)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("hidden", [(200, 200), (), [32]])
def test_mlp_vector_input(hidden) -> None:
    model = privfl.make("model", "mlp", input_shape=(20,), num_classes=3, hidden=hidden)
    assert model(torch.randn(4, 20)).shape == (4, 3)


def test_mlp_default_is_2nn() -> None:
    model = privfl.make("model", "mlp", input_shape=(1, 28, 28), num_classes=10)
    # McMahan et al.'s 2NN: 784 -> 200 -> 200 -> 10.
    expected = (784 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_convnet_parameter_count() -> None:
    model = ConvNet((3, 32, 32), 10, width=64)
    conv1 = 3 * 64 * 3 * 3 + 64  # 1,728 weights + 64 biases = 1,792
    conv2 = 64 * 128 * 3 * 3 + 128  # 73,728 + 128 = 73,856
    # 32x32 -> pool -> 16x16 -> pool -> 8x8, so 128 * 8 * 8 = 8,192 features.
    fc = 128 * 8 * 8 * 10 + 10  # 81,920 + 10 = 81,930
    assert conv1 + conv2 + fc == 157_578
    assert sum(p.numel() for p in model.parameters()) == 157_578


def test_convnet_small_inputs_pool_to_2x2() -> None:
    model = ConvNet((1, 8, 8), 10, width=4)
    assert model.fc.in_features == 8 * 2 * 2
    assert ConvNet((1, 1, 1), 10, width=4)(torch.randn(2, 1, 1, 1)).shape == (2, 10)


def test_lenet_feature_sizes_match_dlg() -> None:
    # Strides 2, 2, 1: 32 -> 16 -> 8 -> 8 (768 features as in the DLG code); 28 -> 14 -> 7 -> 7.
    assert LeNet((3, 32, 32), 100).fc.in_features == 768
    assert LeNet((1, 28, 28), 10).fc.in_features == 588


def test_lenet_uniform_init_range() -> None:
    torch.manual_seed(1)
    model = LeNet((3, 32, 32), 10)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert flat.min() >= -0.5 and flat.max() <= 0.5
    # U(-0.5, 0.5) has std 1/sqrt(12) ~ 0.289; PyTorch's default init is far narrower for the fc layer.
    assert 0.25 < flat.std() < 0.33
    default = LeNet((3, 32, 32), 10, init="default")
    assert default.fc.weight.abs().max() < 1 / 768**0.5 + 1e-6


@pytest.mark.parametrize("name,opts", CONFIGS)
def test_same_seed_same_weights(name: str, opts: dict) -> None:
    shape = (3, 32, 32)
    torch.manual_seed(123)
    a = privfl.make("model", name, input_shape=shape, num_classes=10, **opts)
    torch.manual_seed(123)
    b = privfl.make("model", name, input_shape=shape, num_classes=10, **opts)
    torch.manual_seed(124)
    c = privfl.make("model", name, input_shape=shape, num_classes=10, **opts)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resnet_depth_and_norm() -> None:
    r8 = ResNet((3, 32, 32), 10, depth=8)
    r20 = ResNet((3, 32, 32), 10, depth=20)
    assert len(r8.blocks) == 3 and len(r20.blocks) == 9
    assert any(isinstance(m, torch.nn.GroupNorm) for m in r8.modules())
    gn = [m for m in r8.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.num_groups == min(8, m.num_channels) for m in gn)
    rb = ResNet((3, 32, 32), 10, norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in rb.modules())
    rn = ResNet((3, 32, 32), 10, norm="none")
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in rn.modules())


@pytest.mark.parametrize(
    "name,kwargs,exc,match",
    [
        ("lenet", {"input_shape": (20,)}, ValueError, '"mlp"'),
        ("convnet", {"input_shape": (20,)}, ValueError, '"mlp"'),
        ("resnet", {"input_shape": (20,)}, ValueError, '"mlp"'),
        ("convnet", {"input_shape": (8, 8)}, ValueError, "channels, height, width"),
        ("mlp", {"input_shape": 20}, TypeError, "input_shape"),
        ("mlp", {"input_shape": (1, 2.5)}, TypeError, "input_shape"),
        ("mlp", {"input_shape": (1, 0, 8)}, ValueError, "input_shape"),
        ("mlp", {"input_shape": ()}, ValueError, "input_shape"),  # the right type, an empty shape
        ("mlp", {"num_classes": 0}, ValueError, "num_classes"),
        ("mlp", {"num_classes": 2.0}, TypeError, "num_classes"),
        ("mlp", {"hidden": 200}, TypeError, "hidden"),
        ("mlp", {"hidden": (200, 0)}, ValueError, r"hidden must be a tuple of ints >= 1.*\(200, 0\)"),
        ("lenet", {"init": "xavier"}, ValueError, "init"),
        ("lenet", {"init": 1}, TypeError, "init"),
        ("convnet", {"width": 0}, ValueError, "width"),
        ("convnet", {"width": True}, TypeError, "width"),
        ("resnet", {"depth": 10}, ValueError, "depth"),
        ("resnet", {"depth": 2}, ValueError, "depth"),
        ("resnet", {"norm": "layer"}, ValueError, "norm"),
    ],
)
def test_bad_arguments(name: str, kwargs: dict, exc: type, match: str) -> None:
    args = {"input_shape": (1, 8, 8), "num_classes": 10, **kwargs}
    with pytest.raises(exc, match=match):
        privfl.make("model", name, **args)


VMAP_CONFIGS = [
    ("mlp", {"hidden": (16, 16)}),
    ("lenet", {}),
    ("convnet", {"width": 4}),
    ("resnet", {"norm": "group"}),
    ("resnet", {"norm": "none"}),
]


@pytest.mark.parametrize("name,opts", VMAP_CONFIGS)
def test_vmap_grad_over_stacked_parameters(name: str, opts: dict) -> None:
    shape, classes, copies = (1, 8, 8), 5, 3
    torch.manual_seed(0)
    models = [
        privfl.make("model", name, input_shape=shape, num_classes=classes, **opts) for _ in range(copies)
    ]
    x = torch.randn(4, *shape)
    y = torch.randint(0, classes, (4,))
    base = models[0]

    def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, params, (x,)), y)

    params = [dict(m.named_parameters()) for m in models]
    stacked = {k: torch.stack([p[k].detach() for p in params]) for k in params[0]}
    batched = vmap(grad(loss), in_dims=(0, None, None))(stacked, x, y)
    for i, m in enumerate(models):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for k, p in m.named_parameters():
            torch.testing.assert_close(batched[k][i], p.grad, atol=1e-5, rtol=1e-5)
