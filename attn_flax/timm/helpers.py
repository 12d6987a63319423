"""timm's small helpers (``timm/layers/helpers.py``) and the plain NHWC building blocks of
``attn_flax.timm``: convolutions and linears with torch's layout rules and initialisation; the
convolutions compute through ``attn_flax.cpu_kernels.conv_general_dilated`` like every other
attn_flax convolution (XLA's own op, with a few shapes rewritten in programs lowered for CPU)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_common.timm import get_padding, make_divisible, to_2tuple
from attn_flax import cpu_kernels
from attn_flax.layers import Dtype, Linear, torch_bias_init, torch_kernel_init

__all__ = ["Conv", "Conv1d", "Conv2d", "Conv3d", "Linear", "NamedSequential", "avg_pool2d", "get_padding",
           "interpolate_nearest", "make_divisible", "max_pool2d", "to_2tuple"]


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def Conv(n: int, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: Any = 1,
         padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True, *, dtype: Dtype | None = None,
         param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
    """``torch.nn.Conv{n}d`` on channels-last input: symmetric explicit padding, torch init."""
    kernel = _tuple(kernel_size, n)
    fan_in = in_channels // groups * math.prod(kernel)
    return nnx.Conv(
        in_channels, out_channels, kernel, strides=_tuple(stride, n), padding=[(p, p) for p in _tuple(padding, n)],
        kernel_dilation=_tuple(dilation, n), feature_group_count=groups, use_bias=bias, dtype=dtype,
        param_dtype=param_dtype, kernel_init=torch_kernel_init(), bias_init=torch_bias_init(fan_in),
        conv_general_dilated=cpu_kernels.conv_general_dilated, rngs=rngs,
    )


def Conv1d(*args: Any, **kwargs: Any) -> nnx.Conv:
    return Conv(1, *args, **kwargs)


def Conv2d(*args: Any, **kwargs: Any) -> nnx.Conv:
    return Conv(2, *args, **kwargs)


def Conv3d(*args: Any, **kwargs: Any) -> nnx.Conv:
    return Conv(3, *args, **kwargs)


class NamedSequential(nnx.Module):
    """Layers called in order and stored under torch's names (``conv1``, ``norm1``, ...),
    so they convert as ``gather.conv1.weight`` (``nnx.Sequential`` would give ``gather.0``)."""

    def __init__(self, *named: tuple[str, Any]):
        self.names = tuple(name for name, _ in named)
        for name, layer in named:
            setattr(self, name, layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        for name in self.names:
            x = getattr(self, name)(x)
        return x


def _pool(x: jax.Array, kernel: int, stride: int, padding: int, init: float, op: Callable) -> jax.Array:
    # A Python scalar init lets JAX recognise the sum/max monoid (differentiable reduce_window).
    window = (1, kernel, kernel, 1)
    strides = (1, stride, stride, 1)
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, init, op, window, strides, pads)


def avg_pool2d(x: jax.Array, kernel: int, stride: int | None = None, padding: int = 0,
               count_include_pad: bool = True) -> jax.Array:
    """``F.avg_pool2d`` on NHWC (floor mode)."""
    stride = stride or kernel
    total = _pool(x, kernel, stride, padding, 0.0, jax.lax.add)
    if count_include_pad or not padding:
        return total / (kernel * kernel)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / _pool(ones, kernel, stride, padding, 0.0, jax.lax.add)


def max_pool2d(x: jax.Array, kernel: int, stride: int | None = None, padding: int = 0) -> jax.Array:
    """``F.max_pool2d`` on NHWC (floor mode, implicit -inf padding)."""
    return _pool(x, kernel, stride or kernel, padding, -jnp.inf, jax.lax.max)


def interpolate_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """``F.interpolate(x, size)`` (mode ``"nearest"``: source index ``floor(i * in / out)``) on NHWC."""
    for axis, out in zip((1, 2), size):
        n = x.shape[axis]
        if n != out:
            scale = np.float32(n) / np.float32(out)
            idx = np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), n - 1)
            x = jnp.take(x, jnp.asarray(idx), axis=axis)
    return x
