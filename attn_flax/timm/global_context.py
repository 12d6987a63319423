"""Global Context block as timm builds it (``timm/layers/global_context.py``), NHWC.

Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCVW 2019. https://arxiv.org/abs/1904.11492
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_mean, stable_softmax
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv2d, make_divisible
from attn_flax.timm.mlp import ConvMlp


@register
class GlobalContext(DtypeModule):
    """Global Context; the twin of ``attn_torch.timm.GlobalContext`` (same arguments and keys).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, use_attn: bool = True, fuse_add: bool = False, fuse_scale: bool = True,
                 init_last_zero: bool = False, rd_ratio: float = 1.0 / 8, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: Any = "relu", gate_layer: Any = "sigmoid", *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.conv_attn = Conv2d(channels, 1, 1, bias=True, **kw) if use_attn else None
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        mlp = dict(act_layer=act_layer, norm_layer="layernorm2d", **kw)
        self.mlp_add = ConvMlp(channels, rd_channels, **mlp) if fuse_add else None
        self.mlp_scale = ConvMlp(channels, rd_channels, **mlp) if fuse_scale else None
        self.gate = create_act_layer(gate_layer)
        self.init_last_zero = init_last_zero
        if self.mlp_add is not None:
            self.mlp_add.fc2.kernel = nnx.Param(jnp.zeros_like(self.mlp_add.fc2.kernel[...]))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        n, h, w, c = x.shape
        if self.conv_attn is not None:
            attn = stable_softmax(self.conv_attn(x).reshape(n, h * w), axis=-1)
            context = jnp.einsum("nlc,nl->nc", x.reshape(n, h * w, c), attn)[:, None, None, :]
        else:
            context = stable_mean(x, (1, 2), keepdims=True)
        if self.mlp_scale is not None:
            x = x * self.gate(self.mlp_scale(context))
        if self.mlp_add is not None:
            x = x + self.mlp_add(context)
        return x
