"""timm's norm layers used by its attention blocks (``timm/layers/norm.py``), NHWC."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from attn_common.timm import layer_name
from attn_flax.layers import BatchNorm, Dtype


class LayerNorm2d(nnx.LayerNorm):
    """LayerNorm over the channels (last axis) of an NHWC map (timm's default ``eps=1e-6``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(num_channels, epsilon=eps, use_bias=affine, use_scale=affine, use_fast_variance=False,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class GroupNorm(nnx.GroupNorm):
    """GroupNorm with ``num_channels`` first (timm's order), torch's ``eps=1e-5``, NHWC."""

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True, *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(num_channels, num_groups=num_groups, epsilon=eps, use_bias=affine, use_scale=affine,
                         use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class GroupNorm1(GroupNorm):
    """GroupNorm with one group (torch's ``eps=1e-5``)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(num_channels, 1, eps, affine, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def BatchNorm2d(num_features: int, eps: float = 1e-5, momentum: float = 0.1, *, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> BatchNorm:
    """``torch.nn.BatchNorm2d`` (``attn_flax.layers.BatchNorm``: torch's update rule), NHWC."""
    return BatchNorm(num_features, eps=eps, momentum=momentum, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


_NORM_LAYERS: dict[str, Callable[..., nnx.Module]] = {
    "batchnorm2d": BatchNorm2d,
    "layernorm2d": LayerNorm2d,
    "groupnorm": GroupNorm,
    "groupnorm1": GroupNorm1,
}


def get_norm_layer(norm_layer: Any) -> Callable[..., nnx.Module] | None:
    """A norm constructor from a name, a torch twin's class (by its name), or an nnx class."""
    key = layer_name(norm_layer)
    if key is None:
        return None
    if key in _NORM_LAYERS:
        return _NORM_LAYERS[key]
    if isinstance(norm_layer, type) and issubclass(norm_layer, nnx.Module):
        return norm_layer
    raise ValueError(f"norm layer `{norm_layer!r}` is not known; choose one of {sorted(_NORM_LAYERS)}")
