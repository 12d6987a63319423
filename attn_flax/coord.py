"""Coordinate Attention.

Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_positive
from attn_flax._registry import register
from attn_flax.layers import BatchNorm, Conv2d, Dtype, DtypeModule, hard_swish, stable_mean


@register
class CoordAttention(DtypeModule):
    """Coordinate Attention: direction-aware gates from pooling along H and along W.

    The twin of ``attn_torch.CoordAttention`` (torch names ``conv1``, ``bn1``,
    ``conv_h``, ``conv_w``); hidden width ``max(8, channels // reduction)``.

    Args:
        channels: number of input (and output) channels C.
        reduction: hidden width divisor (default 32).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 32,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive("channels", channels)
        check_positive("reduction", reduction)
        hidden = max(8, channels // reduction)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.conv1 = Conv2d(channels, hidden, 1, **kw)
        self.bn1 = BatchNorm(hidden, **kw)
        self.conv_h = Conv2d(hidden, channels, 1, **kw)
        self.conv_w = Conv2d(hidden, channels, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "CoordAttention")
        x = self.promote(x)
        height = x.shape[1]
        # (N, H + W, 1, C): the H-profile followed by the W-profile, as torch's cat on dim 2.
        pooled = jnp.concatenate([stable_mean(x, 2), stable_mean(x, 1)], axis=1)[:, :, None, :]
        y = hard_swish(self.bn1(self.conv1(pooled)))
        gate_h = jax.nn.sigmoid(self.conv_h(y[:, :height]))  # (N, H, 1, C)
        gate_w = jax.nn.sigmoid(self.conv_w(y[:, height:]))  # (N, W, 1, C)
        return x * gate_w.transpose(0, 2, 1, 3) * gate_h
