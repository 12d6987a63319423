"""timm's norm layers used by its attention blocks (``timm/layers/norm.py``), NCHW."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_common.timm import layer_name


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's default ``eps=1e-6``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, **kwargs: Any):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GroupNorm(nn.GroupNorm):
    """GroupNorm with ``num_channels`` first (timm's swap, to stand in for BatchNorm)."""

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True, **kwargs: Any):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, **kwargs)


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group (torch's ``eps=1e-5``)."""

    def __init__(self, num_channels: int, **kwargs: Any):
        super().__init__(1, num_channels, **kwargs)


_NORM_LAYERS: dict[str, type[nn.Module]] = {
    "batchnorm2d": nn.BatchNorm2d,
    "layernorm2d": LayerNorm2d,
    "groupnorm": GroupNorm,
    "groupnorm1": GroupNorm1,
}


def get_norm_layer(norm_layer: Any) -> type[nn.Module] | None:
    """A norm class from a ``torch.nn`` class, a name, or a Flax twin (by its name)."""
    if isinstance(norm_layer, type) and issubclass(norm_layer, nn.Module):
        return norm_layer
    key = layer_name(norm_layer)
    if key is None:
        return None
    if key not in _NORM_LAYERS:
        raise ValueError(f"norm layer `{norm_layer!r}` is not known; choose one of {sorted(_NORM_LAYERS)}")
    return _NORM_LAYERS[key]
