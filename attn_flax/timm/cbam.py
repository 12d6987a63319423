"""CBAM as timm builds it (``timm/layers/cbam.py``), NHWC.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521 . timm's spatial gate concatenates ``[mean, max]``
and convolves with BatchNorm (``ConvNormAct``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_mean
from attn_flax.timm.conv_bn_act import ConvNormAct
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv2d, make_divisible


@register
class ChannelAttn(DtypeModule):
    """CBAM's channel gate; the twin of ``attn_torch.timm.ChannelAttn``."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: Any = "relu", gate_layer: Any = "sigmoid", mlp_bias: bool = False,
                 *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = Conv2d(channels, rd_channels, 1, bias=mlp_bias, **kw)
        self.act = create_act_layer(act_layer)
        self.fc2 = Conv2d(rd_channels, channels, 1, bias=mlp_bias, **kw)
        self.gate = create_act_layer(gate_layer)

    def _mlp(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_avg = self._mlp(stable_mean(x, (1, 2), keepdims=True))
        x_max = self._mlp(x.max((1, 2), keepdims=True))
        return x * self.gate(x_avg + x_max)


@register
class LightChannelAttn(ChannelAttn):
    """The light channel gate; the twin of ``attn_torch.timm.LightChannelAttn`` (always a sigmoid)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_pool = 0.5 * stable_mean(x, (1, 2), keepdims=True) + 0.5 * x.max((1, 2), keepdims=True)
        return x * jax.nn.sigmoid(self._mlp(x_pool))


@register
class SpatialAttn(DtypeModule):
    """CBAM's spatial gate; the twin of ``attn_torch.timm.SpatialAttn``."""

    def __init__(self, kernel_size: int = 7, gate_layer: Any = "sigmoid", *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.conv = ConvNormAct(2, 1, kernel_size, apply_act=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_attn = jnp.concatenate([stable_mean(x, -1, keepdims=True), x.max(-1, keepdims=True)], axis=-1)
        return x * self.gate(self.conv(x_attn))


@register
class LightSpatialAttn(DtypeModule):
    """The light spatial gate; the twin of ``attn_torch.timm.LightSpatialAttn``."""

    def __init__(self, kernel_size: int = 7, gate_layer: Any = "sigmoid", *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.conv = ConvNormAct(1, 1, kernel_size, apply_act=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_attn = 0.5 * stable_mean(x, -1, keepdims=True) + 0.5 * x.max(-1, keepdims=True)
        return x * self.gate(self.conv(x_attn))


@register
class CbamModule(nnx.Module):
    """CBAM; the twin of ``attn_torch.timm.CbamModule`` (``channel`` then ``spatial``).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer: Any = "relu",
                 gate_layer: Any = "sigmoid", mlp_bias: bool = False, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channel = ChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                                   act_layer=act_layer, gate_layer=gate_layer, mlp_bias=mlp_bias, **kw)
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer=gate_layer, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.spatial(self.channel(x))


@register
class LightCbamModule(nnx.Module):
    """Light CBAM; the twin of ``attn_torch.timm.LightCbamModule``.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer: Any = "relu",
                 gate_layer: Any = "sigmoid", mlp_bias: bool = False, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channel = LightChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                                        act_layer=act_layer, gate_layer=gate_layer, mlp_bias=mlp_bias, **kw)
        self.spatial = LightSpatialAttn(spatial_kernel_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.spatial(self.channel(x))
