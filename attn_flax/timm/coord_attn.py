"""Coordinate attention and its variants as timm builds them (``timm/layers/coord_attn.py``), NHWC.

Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907 . Efficient Local Attention: Xu and Wan, "ELA: Efficient
Local Attention for Deep Convolutional Neural Networks", 2024. https://arxiv.org/abs/2403.01123
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, Linear, stable_mean
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv2d, make_divisible
from attn_flax.timm.norm import get_norm_layer


def _skip(out: jax.Array, x: jax.Array, has_skip: bool) -> jax.Array:
    return out + x if has_skip else out


@register
class CoordAttn(DtypeModule):
    """Coordinate attention; the twin of ``attn_torch.timm.CoordAttn`` (same arguments and keys).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 8, se_factor: float = 2 / 3, bias: bool = False, act_layer: Any = "hard_swish",
                 norm_layer: Any = "batchnorm2d", gate_layer: Any = "sigmoid", has_skip: bool = False, *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.has_skip = has_skip
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio * se_factor, rd_divisor, round_limit=0.0)
        norm_layer = get_norm_layer(norm_layer)
        self.conv1 = Conv2d(channels, rd_channels, 1, bias=bias, **kw)
        self.bn1 = norm_layer(rd_channels, **kw) if norm_layer is not None else None
        self.act = create_act_layer(act_layer)
        self.conv_h = Conv2d(rd_channels, channels, 1, bias=bias, **kw)
        self.conv_w = Conv2d(rd_channels, channels, 1, bias=bias, **kw)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        h = x.shape[1]
        x_h = stable_mean(x, 2, keepdims=True)  # (N, H, 1, C)
        x_w = stable_mean(x, 1, keepdims=True).transpose(0, 2, 1, 3)  # (N, W, 1, C)
        y = self.conv1(jnp.concatenate([x_h, x_w], axis=1))
        if self.bn1 is not None:
            y = self.bn1(y)
        y = self.act(y)
        a_h = self.gate(self.conv_h(y[:, :h]))
        a_w = self.gate(self.conv_w(y[:, h:].transpose(0, 2, 1, 3)))
        return _skip(x * a_w * a_h, x, self.has_skip)


@register
class SimpleCoordAttn(DtypeModule):
    """Simplified coordinate attention; the twin of ``attn_torch.timm.SimpleCoordAttn`` (linears).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, rd_channels: int | None = None, rd_divisor: int = 8,
                 se_factor: float = 2 / 3, bias: bool = True, act_layer: Any = "silu", gate_layer: Any = "sigmoid",
                 has_skip: bool = False, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.has_skip = has_skip
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio * se_factor, rd_divisor, round_limit=0.0)
        self.fc1 = Linear(channels, rd_channels, bias=bias, **kw)
        self.act = create_act_layer(act_layer)
        self.fc_h = Linear(rd_channels, channels, bias=bias, **kw)
        self.fc_w = Linear(rd_channels, channels, bias=bias, **kw)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_h = self.act(self.fc1(stable_mean(x, 2)))  # (N, H, rd)
        x_w = self.act(self.fc1(stable_mean(x, 1)))  # (N, W, rd)
        a_h = self.fc_h(x_h)[:, :, None, :]
        a_w = self.fc_w(x_w)[:, None, :, :]
        return _skip(x * self.gate(a_h + a_w), x, self.has_skip)


@register
class EfficientLocalAttn(DtypeModule):
    """Efficient local attention; the twin of ``attn_torch.timm.EfficientLocalAttn``.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, kernel_size: int = 7, bias: bool = False, act_layer: Any = "silu",
                 gate_layer: Any = "sigmoid", norm_layer: Any = "groupnorm1", has_skip: bool = False, *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.has_skip = has_skip
        self.conv_h = Conv2d(channels, channels, (kernel_size, 1), padding=(kernel_size // 2, 0), groups=channels,
                             bias=bias, **kw)
        self.conv_w = Conv2d(channels, channels, (1, kernel_size), padding=(0, kernel_size // 2), groups=channels,
                             bias=bias, **kw)
        norm_layer = get_norm_layer(norm_layer)
        self.norm_h = norm_layer(channels, **kw) if norm_layer is not None else None
        self.norm_w = norm_layer(channels, **kw) if norm_layer is not None else None
        self.act = create_act_layer(act_layer)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_h = self.conv_h(stable_mean(x, 2, keepdims=True))
        x_w = self.conv_w(stable_mean(x, 1, keepdims=True))
        if self.norm_h is not None:
            x_h, x_w = self.norm_h(x_h), self.norm_w(x_w)
        out = x * self.gate(self.act(x_h)) * self.gate(self.act(x_w))
        return _skip(out, x, self.has_skip)


@register
class StripAttn(DtypeModule):
    """Strip attention; the twin of ``attn_torch.timm.StripAttn``.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, use_conv: bool = True, kernel_size: int = 3, bias: bool = False,
                 gate_layer: Any = "sigmoid", has_skip: bool = False, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs, **_: Any):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.has_skip = has_skip
        self.use_conv = use_conv
        if use_conv:
            self.conv_h = Conv2d(channels, channels, (kernel_size, 1), padding=(kernel_size // 2, 0),
                                 groups=channels, bias=bias, **kw)
            self.conv_w = Conv2d(channels, channels, (1, kernel_size), padding=(0, kernel_size // 2),
                                 groups=channels, bias=bias, **kw)
        else:
            self.conv_h = self.conv_w = None
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_h = stable_mean(x, 2, keepdims=True)
        x_w = stable_mean(x, 1, keepdims=True)
        if self.use_conv:
            x_h, x_w = self.conv_h(x_h), self.conv_w(x_w)
        return _skip(x * self.gate(x_h + x_w), x, self.has_skip)
