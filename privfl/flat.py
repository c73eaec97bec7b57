"""Model parameters ⇄ one flat vector, with a fixed :class:`ParamLayout`.

Client updates are rows of one ``[n, d]`` tensor; this module fixes what ``d`` means: which
tensors (parameters, and buffers only when asked for), in which order, with which shapes.
Round trips are exact (the vector is a concatenation, no arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ParamLayout", "layout_of", "flatten", "unflatten", "unflatten_batch", "load_flat", "supports_vmap"]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and order of the tensors packed into a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    include_buffers: bool = False

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def dim(self) -> int:
        """Length ``d`` of the flat vector."""
        return sum(self.numels)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.numels:
            out.append(acc)
            acc += n
        return tuple(out)

    def slices(self) -> dict[str, slice]:
        """``name -> slice`` of the flat vector holding that tensor."""
        return {
            name: slice(off, off + n) for name, off, n in zip(self.names, self.offsets, self.numels)
        }


def layout_of(model: nn.Module, *, buffers: bool = False) -> ParamLayout:
    """The layout of ``model``'s trainable parameters (and floating buffers if ``buffers``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names, shapes = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
            shapes.append(tuple(p.shape))
    if buffers:
        for name, b in model.named_buffers():
            if b.is_floating_point():
                names.append(name)
                shapes.append(tuple(b.shape))
    return ParamLayout(tuple(names), tuple(shapes), include_buffers=buffers)


def _tensors_of(source: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if isinstance(source, nn.Module):
        out = dict(source.named_parameters())
        out.update(dict(source.named_buffers()))
        return out
    if isinstance(source, Mapping):
        return source
    raise TypeError(f"expected an nn.Module or a mapping name -> tensor, got {type(source).__name__}")


def flatten(source: nn.Module | Mapping[str, Tensor], layout: ParamLayout) -> Tensor:
    """Concatenate the layout's tensors of ``source`` into one vector ``[d]`` (a copy, detached).

    ``source`` may also map names to *batched* tensors ``[n, *shape]``; then the result is ``[n, d]``.
    """
    tensors = _tensors_of(source)
    missing = [n for n in layout.names if n not in tensors]
    if missing:
        raise ValueError(f"source lacks tensors named in the layout: {missing[:5]}")
    first = tensors[layout.names[0]] if layout.names else None
    if first is not None and first.dim() == len(layout.shapes[0]) + 1:
        n = first.shape[0]
        return torch.cat([tensors[name].detach().reshape(n, -1) for name in layout.names], dim=1)
    return torch.cat([tensors[name].detach().reshape(-1) for name in layout.names])


def _check_vec(vec: Tensor, layout: ParamLayout, batched: bool) -> None:
    if not isinstance(vec, Tensor):
        raise TypeError(f"vector must be a torch.Tensor, got {type(vec).__name__}")
    want = 2 if batched else 1
    if vec.dim() != want or vec.shape[-1] != layout.dim:
        shape = "[n, d]" if batched else "[d]"
        raise ValueError(f"expected a {shape} tensor with d = {layout.dim}, got shape {tuple(vec.shape)}")


def unflatten(vec: Tensor, layout: ParamLayout) -> dict[str, Tensor]:
    """Split ``[d]`` into ``name -> tensor`` views of the layout's shapes."""
    _check_vec(vec, layout, batched=False)
    parts = torch.split(vec, list(layout.numels))
    return {name: part.view(shape) for name, part, shape in zip(layout.names, parts, layout.shapes)}


def unflatten_batch(mat: Tensor, layout: ParamLayout) -> dict[str, Tensor]:
    """Split ``[n, d]`` into ``name -> [n, *shape]`` views (stacked parameters for ``vmap``)."""
    _check_vec(mat, layout, batched=True)
    n = mat.shape[0]
    parts = torch.split(mat, list(layout.numels), dim=1)
    return {
        name: part.reshape(n, *shape) for name, part, shape in zip(layout.names, parts, layout.shapes)
    }


@torch.no_grad()
def load_flat(model: nn.Module, vec: Tensor, layout: ParamLayout) -> nn.Module:
    """Copy ``vec`` into ``model``'s tensors in place (returns ``model``)."""
    tensors = _tensors_of(model)
    for name, value in unflatten(vec, layout).items():
        if name not in tensors:
            raise ValueError(f"model has no parameter or buffer named {name!r}")
        tensors[name].copy_(value)
    return model


def supports_vmap(model: nn.Module) -> bool:
    """False for models whose training-mode forward mutates buffers (BatchNorm running stats)."""
    return not any(
        isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats for mod in model.modules()
    )
