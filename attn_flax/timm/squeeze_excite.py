"""Squeeze-and-Excitation as timm builds it (``timm/layers/squeeze_excite.py``), NHWC.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507
Effective SE: Lee and Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation",
CVPR 2020. https://arxiv.org/abs/1911.06667
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_mean
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv2d, make_divisible
from attn_flax.timm.norm import get_norm_layer


def _squeeze(x: jax.Array, add_maxpool: bool) -> jax.Array:
    x_se = stable_mean(x, (1, 2), keepdims=True)
    if add_maxpool:
        x_se = 0.5 * x_se + 0.5 * x.max((1, 2), keepdims=True)
    return x_se


@register
class SEModule(DtypeModule):
    """timm's SE; the twin of ``attn_torch.timm.SEModule`` (same arguments and keys).

    Args: as the torch twin (``rd_ratio`` 1/16, ``rd_divisor`` 8, ReLU, sigmoid gate);
    dtype, param_dtype, rngs as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 8, add_maxpool: bool = False, bias: bool = True, act_layer: Any = "relu",
                 norm_layer: Any = None, gate_layer: Any = "sigmoid", *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.add_maxpool = add_maxpool
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        norm_layer = get_norm_layer(norm_layer)
        self.fc1 = Conv2d(channels, rd_channels, 1, bias=bias, **kw)
        self.bn = norm_layer(rd_channels, **kw) if norm_layer else None
        self.act = create_act_layer(act_layer)
        self.fc2 = Conv2d(rd_channels, channels, 1, bias=bias, **kw)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        x_se = self.fc1(_squeeze(x, self.add_maxpool))
        if self.bn is not None:
            x_se = self.bn(x_se)
        x_se = self.fc2(self.act(x_se))
        return x * self.gate(x_se)


@register
class EffectiveSEModule(DtypeModule):
    """Effective SE; the twin of ``attn_torch.timm.EffectiveSEModule`` (hard-sigmoid gate).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, add_maxpool: bool = False, gate_layer: Any = "hard_sigmoid", *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs, **_: Any):
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.add_maxpool = add_maxpool
        self.fc = Conv2d(channels, channels, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        return x * self.gate(self.fc(_squeeze(x, self.add_maxpool)))


SqueezeExcite = SEModule
EffectiveSqueezeExcite = EffectiveSEModule
