"""Split attention (ResNeSt) as timm builds it (``timm/layers/split_attn.py``), NHWC.

Zhang et al., "ResNeSt: Split-Attention Networks", 2020. https://arxiv.org/abs/2004.08955
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
from attn_flax.timm.norm import get_norm_layer


class RadixSoftmax(nnx.Module):
    """Softmax over the radix splits of each cardinal group (a sigmoid for ``radix=1``); ``(N, R*C)`` in
    torch's channel order (cardinal group, then radix) in, radix-major out."""

    def __init__(self, radix: int, cardinality: int):
        self.radix = radix
        self.cardinality = cardinality

    def __call__(self, x: jax.Array) -> jax.Array:
        n = x.shape[0]
        if self.radix > 1:
            x = x.reshape(n, self.cardinality, self.radix, -1).transpose(0, 2, 1, 3)
            return stable_softmax(x, axis=1).reshape(n, -1)
        return jax.nn.sigmoid(x)


@register
class SplitAttn(DtypeModule):
    """Split attention; the twin of ``attn_torch.timm.SplitAttn`` (same arguments and keys;
    ``drop_layer`` is torch only).

    Input ``(N, H, W, C)``; output ``(N, H', W', out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, bias: bool = False, radix: int = 2,
                 rd_ratio: float = 0.25, rd_channels: int | None = None, rd_divisor: int = 8,
                 act_layer: Any = "relu", norm_layer: Any = None, drop_layer: Any = None, *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        if drop_layer is not None:
            raise ValueError(f"`drop_layer`={drop_layer!r}: not supported by the Flax SplitAttn")
        self.dtype = dtype
        self.param_dtype = param_dtype
        out_channels = out_channels or in_channels
        self.radix = radix
        mid_chs = out_channels * radix
        if rd_channels is None:
            attn_chs = make_divisible(in_channels * radix * rd_ratio, min_value=32, divisor=rd_divisor)
        else:
            attn_chs = rd_channels * radix
        padding = kernel_size // 2 if padding is None else padding
        norm_layer = get_norm_layer(norm_layer)
        self.conv = Conv2d(in_channels, mid_chs, kernel_size, stride, padding, dilation, groups=groups * radix,
                           bias=bias, **kw)
        self.bn0 = norm_layer(mid_chs, **kw) if norm_layer else None
        self.act0 = create_act_layer(act_layer)
        self.fc1 = Conv2d(out_channels, attn_chs, 1, groups=groups, **kw)
        self.bn1 = norm_layer(attn_chs, **kw) if norm_layer else None
        self.act1 = create_act_layer(act_layer)
        self.fc2 = Conv2d(attn_chs, mid_chs, 1, groups=groups, **kw)
        self.rsoftmax = RadixSoftmax(radix, groups)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.promote(x))
        if self.bn0 is not None:
            x = self.bn0(x)
        x = self.act0(x)
        n, h, w, rc = x.shape
        if self.radix > 1:
            x = x.reshape(n, h, w, self.radix, rc // self.radix)
            x_gap = x.sum(3)
        else:
            x_gap = x
        x_gap = self.fc1(stable_mean(x_gap, (1, 2), keepdims=True))
        if self.bn1 is not None:
            x_gap = self.bn1(x_gap)
        x_attn = self.rsoftmax(self.fc2(self.act1(x_gap)).reshape(n, -1))
        if self.radix > 1:
            return (x * x_attn.reshape(n, 1, 1, self.radix, rc // self.radix)).sum(3)
        return x * x_attn.reshape(n, 1, 1, rc)
