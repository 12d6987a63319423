"""Global Attention Mechanism.

Liu et al., "Global Attention Mechanism: Retain Information to Enhance
Channel-Spatial Interactions", arXiv 2021. https://arxiv.org/abs/2112.05561
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_batch_statistics, check_input, check_reduction
from attn_flax._registry import register
from attn_flax.layers import BatchNorm, Conv2d, Dtype, DtypeModule, Linear


@register
class GAM(DtypeModule):
    """GAM: a per-pixel channel MLP gate, then a 7x7-conv spatial gate, in sequence.

    ``y = x * sigmoid(MLP(x))`` with the MLP applied to each pixel's channel
    vector, then ``out = y * sigmoid(BN(conv7(ReLU(BN(conv7(y))))))``.

    The twin of ``attn_torch.GAM`` (torch names ``channel_attention.{0,2}``,
    ``spatial_attention.{0,1,3,4}``); hidden width ``int(channels / rate)``.
    Unlike the seed's snippet, the channel gate goes through a sigmoid, as in
    the paper; there is no separate ``out_channels``. Training on input with
    one value per channel (batch 1 with a 1x1 map) raises a ``ValueError``.

    Args:
        channels: number of input channels C.
        rate: reduction ratio of both branches' hidden width (default 4).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        rate: int = 4,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_reduction(channels, rate, name="rate")
        hidden = int(channels / rate)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.channel_attention = nnx.Sequential(
            Linear(channels, hidden, **kw),
            jax.nn.relu,
            Linear(hidden, channels, **kw),
        )
        self.spatial_attention = nnx.Sequential(
            Conv2d(channels, hidden, 7, padding=3, **kw),
            BatchNorm(hidden, **kw),
            jax.nn.relu,
            Conv2d(hidden, channels, 7, padding=3, **kw),
            BatchNorm(channels, **kw),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "GAM")
        if not self.spatial_attention.layers[1].use_running_average:
            check_batch_statistics(x.shape, math.prod(x.shape[:-1]), "GAM")
        x = self.promote(x)
        x = x * jax.nn.sigmoid(self.channel_attention(x))
        return x * jax.nn.sigmoid(self.spatial_attention(x))
