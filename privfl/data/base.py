"""The in-memory dataset every privfl loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Dataset:
    """A classification dataset held as tensors.

    ``x_train``/``x_test`` are float32 and already normalised: ``(pixels - mean) / std`` per
    channel, with pixels in [0, 1]. Images are ``[N, C, H, W]`` with one ``mean``/``std`` entry per
    channel; vector data is ``[N, d]`` with one entry per feature or a single shared entry.
    ``y_train``/``y_test`` are int64 class ids in ``[0, num_classes)``.
    ``to_pixels``/``from_pixels`` map between the model's input space and pixel space, which is
    where reconstructions are scored.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        if self.is_image:
            shape = (-1, 1, 1)
        else:
            shape = (-1,)
        return mean.view(shape), std.view(shape)

    def to_pixels(self, x: Tensor) -> Tensor:
        """Model input space -> pixel space ([0, 1] for images)."""
        mean, std = self._stats(x)
        return x * std + mean

    def from_pixels(self, x: Tensor) -> Tensor:
        """Pixel space -> model input space."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            name=self.name,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            class_names=self.class_names,
        )
