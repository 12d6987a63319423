"""Shuffle Attention.

Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural
Networks", ICASSP 2021. https://arxiv.org/abs/2102.00240
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible, check_input, check_positive
from attn_flax._registry import register
from attn_flax import cpu_kernels
from attn_flax.layers import ChannelParam, Dtype, DtypeModule, GroupNorm, at_least_float32


@register
class ShuffleAttention(DtypeModule):
    """Shuffle Attention: per-group channel and spatial gates, then a channel shuffle.

    The twin of ``attn_torch.ShuffleAttention`` (torch names ``cweight``,
    ``cbias``, ``sweight``, ``sbias`` of shape ``(1, C/2G, 1, 1)``, stored here as
    ``(1, 1, 1, C/2G)`` and initialised to 0, 1, 0, 1; ``gn`` is
    ``GroupNorm(C/2G, C/2G)``). Groups are runs of consecutive channels, as the
    torch ``view(b * G, -1, h, w)``; the reference's unused ``reduction`` is left out.

    Args:
        channels: number of input channels C, a multiple of ``2 * groups``.
        groups: number of channel groups G (default 8).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        groups: int = 8,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive("channels", channels)
        check_positive("groups", groups)
        check_divisible("channels", channels, "2 * `groups`", 2 * groups)
        self.channels = channels
        self.groups = groups
        self.dtype = dtype
        self.param_dtype = param_dtype
        width = channels // (2 * groups)
        self.gn = GroupNorm(width, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cweight = ChannelParam(jnp.zeros((1, 1, 1, width), param_dtype))
        self.cbias = ChannelParam(jnp.ones((1, 1, 1, width), param_dtype))
        self.sweight = ChannelParam(jnp.zeros((1, 1, 1, width), param_dtype))
        self.sbias = ChannelParam(jnp.ones((1, 1, 1, width), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "ShuffleAttention")
        dtype = self.computation_dtype(x)
        wide = at_least_float32(x.astype(dtype))
        params = tuple(p[...].reshape(-1).astype(wide.dtype)
                       for p in (self.cweight, self.cbias, self.sweight, self.sbias, self.gn.scale, self.gn.bias))
        plain = partial(_shuffle_attention, groups=self.groups, eps=self.gn.epsilon)
        return cpu_kernels.shuffle_attention(plain, wide, params, self.groups, self.gn.epsilon).astype(dtype)


def _shuffle_attention(x: jax.Array, params: tuple[jax.Array, ...], groups: int, eps: float) -> jax.Array:
    """The module on ``(N, H, W, C)`` with its six ``(C/2G,)`` parameters, as the torch twin computes it."""
    cweight, cbias, sweight, sbias, gn_scale, gn_bias = params
    b, h, w, c = x.shape
    grouped = x.reshape(b, h, w, groups, c // groups)  # runs of consecutive channels, as torch's view
    x_channel, x_spatial = jnp.split(grouped, 2, axis=-1)
    x_channel = x_channel * jax.nn.sigmoid(cweight * x_channel.mean((1, 2), keepdims=True) + cbias)
    mean = x_spatial.mean((1, 2), keepdims=True)  # GroupNorm(C/2G, C/2G): one channel per group
    normed = (x_spatial - mean) * jax.lax.rsqrt(jnp.square(x_spatial - mean).mean((1, 2), keepdims=True) + eps)
    x_spatial = x_spatial * jax.nn.sigmoid(sweight * (normed * gn_scale + gn_bias) + sbias)
    out = jnp.concatenate([x_channel, x_spatial], axis=-1).reshape(b, h, w, 2, c // 2)
    return out.swapaxes(-1, -2).reshape(b, h, w, c)  # channel shuffle with 2 groups
