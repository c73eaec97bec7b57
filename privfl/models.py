"""Classifiers used in the federated-learning privacy literature, built for any input shape.

Every model is registered as ``make("model", NAME, input_shape=..., num_classes=..., **options)``.
``input_shape`` excludes the batch dimension: ``(C, H, W)`` for images, ``(d,)`` for vectors.
Sizes that depend on the input (e.g. the final ``Linear``'s fan-in) are found by a dummy forward
pass at construction, so the same architecture runs on 8x8 digits, 28x28 MNIST and 32x32 CIFAR.

All forwards are pure functions of ``(parameters, x)`` (no in-place ops on inputs, no ``.item()``,
no data-dependent control flow), so they compose with ``torch.func.functional_call``, ``vmap`` and
``grad`` over stacked parameters. The exception is ``resnet`` with ``norm="batch"``, whose
training-mode running-statistics update is a buffer mutation: loop over copies instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privfl.params import Choice, Constraint, Int, Sizes, validated
from privfl.registry import register

__all__ = ["MLP", "LeNet", "ConvNet", "ResNet"]


#: ``input_shape`` (without the batch dimension) and ``num_classes``, shared by every model
SHAPE = {"input_shape": Sizes(typical=(1, 8, 8)), "num_classes": Int(1, None, typical=(2, 10))}


def _check_image(model: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        hint = ' Use model "mlp" for vector (1-d) inputs.' if len(shape) == 1 else ""
        raise ValueError(
            f"{model}: input_shape must be (channels, height, width) for this convolutional model, "
            f"got {shape!r}.{hint}"
        )
    return shape  # type: ignore[return-value]


@torch.no_grad()
def _flat_size(body: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features ``body`` produces per example, found with one dummy forward."""
    was_training = body.training
    body.eval()  # keeps BatchNorm running statistics untouched
    try:
        out = body(torch.zeros(1, *input_shape))
    finally:
        body.train(was_training)
    return int(out[0].numel())


@register("model", "mlp")
@validated({**SHAPE, "hidden": Sizes(min_len=0, typical=(16,))}, name="mlp")
class MLP(nn.Module):
    """Fully connected ReLU network: flatten -> [Linear -> ReLU] x len(hidden) -> Linear.

    The default ``hidden=(200, 200)`` is the "2NN" of McMahan et al., "Communication-Efficient
    Learning of Deep Networks from Decentralized Data" (AISTATS 2017). ``hidden=()`` gives
    multinomial logistic regression. Works for any ``input_shape`` (inputs are flattened).
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (200, 200)
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        widths = [int(h) for h in hidden]
        self.input_shape = shape
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = 1
        for s in shape:
            fan_in *= s
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register("model", "lenet")
@validated({**SHAPE, "init": Choice("uniform", "default")}, name="lenet")
class LeNet(nn.Module):
    """The sigmoid LeNet of DLG (Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019).

    Conv(C, 12, 5, padding 2, stride 2) - Sigmoid - Conv(12, 12, 5, padding 2, stride 2) - Sigmoid -
    Conv(12, 12, 5, padding 2, stride 1) - Sigmoid - Flatten - Linear(-> num_classes), the stride
    pattern 2, 2, 1 of the DLG reference code (``models/vision.py``): a 32x32 input gives 12x8x8 =
    768 features, 28x28 gives 12x7x7 = 588. Twice-differentiable activations are what make
    gradient matching work. ``init="uniform"`` (default) draws every weight and bias from
    U(-0.5, 0.5) as the DLG code's ``weights_init`` does; ``init="default"`` keeps PyTorch's init.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, init: str = "uniform") -> None:
        super().__init__()
        shape = _check_image("lenet", tuple(int(s) for s in input_shape))
        self.input_shape = shape
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(shape[0], 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(_flat_size(self.body, shape), num_classes)
        if init == "uniform":
            with torch.no_grad():
                for p in self.parameters():
                    p.uniform_(-0.5, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


@register("model", "convnet")
@validated({**SHAPE, "width": Int(1, None, typical=(4, 16))}, name="convnet")
class ConvNet(nn.Module):
    """Two-block ConvNet of the Inverting Gradients / SME experiments.

    As described for Geiping et al., "Inverting Gradients" (NeurIPS 2020) and Zhu, Yao, Blaschko,
    "Surrogate Model Extension" (ICML 2023): Conv(C, width, 3, padding 1) - ReLU - MaxPool(2) -
    Conv(width, 2*width, 3, padding 1) - ReLU - MaxPool(2) - Flatten - Linear, ``width=64``.
    Pooling uses ``ceil_mode=True`` so any input size works: even sizes halve exactly as usual
    (32 -> 16 -> 8; 8x8 digits -> 4x4 -> 2x2), odd sizes round up (25 -> 13 -> 7, 1 -> 1 -> 1).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        super().__init__()
        shape = _check_image("convnet", tuple(int(s) for s in input_shape))
        self.input_shape = shape
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(shape[0], width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        self.fc = nn.Linear(_flat_size(self.body, shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class _BasicBlock(nn.Module):
    """3x3 conv - norm - ReLU - 3x3 conv - norm, plus shortcut, then ReLU (He et al. 2016).

    When the block downsamples, the shortcut is the parameter-free "option A" of the paper's CIFAR
    experiments: subsample by 2 and zero-pad the new channels.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.n1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.n2 = _norm(norm, c_out)
        self.stride = stride
        self.pad = c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        shortcut = x
        if self.stride != 1:
            shortcut = shortcut[..., :: self.stride, :: self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + shortcut)


@register("model", "resnet")
@validated({**SHAPE, "depth": Int(8, None, typical=(8, 8)), "norm": Choice("group", "batch", "none")}, name="resnet",
           constraints=(Constraint(("depth",), lambda v: (v["depth"] - 2) % 6 == 0,
                                   "depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...)"),))
class ResNet(nn.Module):
    """CIFAR ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2).

    3x3 conv to 16 channels, three stages of n = (depth - 2) / 6 basic blocks with 16/32/64
    channels (stride 2 entering stages 2 and 3, option-A identity shortcuts), global average
    pooling, Linear. ``depth=8`` (one block per stage) by default; 20 gives ResNet-20. Any input
    size works. ``norm="group"`` (default) uses GroupNorm with min(8, channels) groups, which is
    per-example (so ``vmap``-friendly) and suits non-IID FL (Hsieh et al., "The Non-IID Data
    Quagmire of Decentralized Machine Learning", ICML 2020); ``"batch"`` is the paper's BatchNorm2d;
    ``"none"`` uses no normalisation (convs then get biases).
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, depth: int = 8, norm: str = "group"
    ) -> None:
        super().__init__()
        shape = _check_image("resnet", tuple(int(s) for s in input_shape))
        self.input_shape = shape
        self.num_classes = num_classes
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(shape[0], 16, 3, padding=1, bias=norm == "none"), _norm(norm, 16), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(c_in, c_out, stride, norm))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.stem(x))
        return self.fc(h.mean(dim=(-2, -1)))
