"""ECA and circular ECA as timm builds them (``timm/layers/eca.py``), NHWC.

Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_odd
from attn_common.timm import eca_kernel_size
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_mean
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv1d, make_divisible


@register
class EcaModule(DtypeModule):
    """ECA; the twin of ``attn_torch.timm.EcaModule`` (``conv.weight`` ``(1, 1, k)``, no bias;
    ``use_mlp``: ``conv``, ``conv2`` with biases). The pooled channels are an NLC sequence.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int | None = None, kernel_size: int = 3, gamma: float = 2, beta: float = 1,
                 act_layer: Any = None, gate_layer: Any = "sigmoid", rd_ratio: float = 1 / 8,
                 rd_channels: int | None = None, rd_divisor: int = 8, use_mlp: bool = False, *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        if channels is not None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_odd("kernel_size", kernel_size)
        padding = (kernel_size - 1) // 2
        if use_mlp:
            if channels is None:
                raise ValueError("`channels`=None: EcaModule with use_mlp=True needs the channel count")
            if rd_channels is None:
                rd_channels = make_divisible(channels * rd_ratio, divisor=rd_divisor)
            self.conv = Conv1d(1, rd_channels, 1, bias=True, **kw)
            self.act = create_act_layer(act_layer or "relu")
            self.conv2 = Conv1d(rd_channels, 1, kernel_size, padding=padding, bias=True, **kw)
        else:
            self.conv = Conv1d(1, 1, kernel_size, padding=padding, bias=False, **kw)
            self.act = None
            self.conv2 = None
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        y = self.conv(stable_mean(x, (1, 2))[:, :, None])  # (N, C, 1): channels as the sequence
        if self.conv2 is not None:
            y = self.conv2(self.act(y))
        return x * self.gate(y)[:, None, None, :, 0]


@register
class CecaModule(DtypeModule):
    """Circular ECA; the twin of ``attn_torch.timm.CecaModule`` (the channel convolution wraps around).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int | None = None, kernel_size: int = 3, gamma: float = 2, beta: float = 1,
                 act_layer: Any = None, gate_layer: Any = "sigmoid", *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.param_dtype = param_dtype
        if channels is not None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_odd("kernel_size", kernel_size)
        self.padding = (kernel_size - 1) // 2
        self.conv = Conv1d(1, 1, kernel_size, bias=act_layer is not None, dtype=dtype, param_dtype=param_dtype,
                           rngs=rngs)
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        y = stable_mean(x, (1, 2))[:, :, None]
        y = jnp.pad(y, ((0, 0), (self.padding, self.padding), (0, 0)), mode="wrap")
        return x * self.gate(self.conv(y))[:, None, None, :, 0]


EfficientChannelAttn = EcaModule
CircularEfficientChannelAttn = CecaModule
