"""Shuffle Attention.

Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural
Networks", ICASSP 2021. https://arxiv.org/abs/2102.00240
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible, check_input, check_positive
from attn_flax._registry import register
from attn_flax.layers import ChannelParam, Dtype, GroupNorm, compute_dtype, stable_mean


@register
class ShuffleAttention(nnx.Module):
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
        b, h, w, c = x.shape
        g = self.groups
        dtype = compute_dtype(self.dtype, x, self.param_dtype)
        params = (self.cweight, self.cbias, self.sweight, self.sbias)
        cweight, cbias, sweight, sbias = (p[...].astype(dtype) for p in params)
        # (N*G, H, W, C/G): torch's view(b * G, -1, h, w) with the channels last.
        grouped = x.astype(dtype).reshape(b, h, w, g, c // g).transpose(0, 3, 1, 2, 4).reshape(b * g, h, w, c // g)
        x_channel, x_spatial = jnp.split(grouped, 2, axis=-1)
        x_channel = x_channel * jax.nn.sigmoid(cweight * stable_mean(x_channel, (1, 2), keepdims=True) + cbias)
        x_spatial = x_spatial * jax.nn.sigmoid(sweight * self.gn(x_spatial) + sbias)
        out = jnp.concatenate([x_channel, x_spatial], axis=-1)
        out = out.reshape(b, g, h, w, c // g).transpose(0, 2, 3, 1, 4).reshape(b, h, w, 2, c // 2)
        return out.swapaxes(3, 4).reshape(b, h, w, c)  # channel shuffle with 2 groups
