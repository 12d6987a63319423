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
from attn_flax.layers import ChannelParam, Dtype, GroupNorm, at_least_float32, compute_dtype, stable_mean


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
        dtype = compute_dtype(self.dtype, x, self.param_dtype)
        # (N, H, W, G, 2, C/2G): torch's view(b * G, -1, h, w) split in halves without moving
        # data (a transpose to (N*G, H, W, C/G) and back cost a third of the time on CPU).
        halves = x.astype(dtype).reshape(b, h, w, self.groups, 2, c // (2 * self.groups))
        x_channel, x_spatial = halves[..., 0, :], halves[..., 1, :]
        channel_gate = self._affine(self.cweight, self.cbias, stable_mean(x_channel, (1, 2), keepdims=True))
        spatial_gate = self._affine(self.sweight, self.sbias, self._instance_norm(x_spatial))
        out = jnp.stack([x_channel * channel_gate, x_spatial * spatial_gate], axis=-2)
        return out.reshape(b, h, w, 2, c // 2).swapaxes(3, 4).reshape(b, h, w, c)  # shuffle, 2 groups

    def _affine(self, weight: ChannelParam, bias: ChannelParam, t: jax.Array) -> jax.Array:
        """``sigmoid(weight * t + bias)`` with the ``(1, 1, 1, C/2G)`` parameters on the last axis."""
        return jax.nn.sigmoid(weight[...].reshape(-1).astype(t.dtype) * t + bias[...].reshape(-1).astype(t.dtype))

    def _instance_norm(self, x: jax.Array) -> jax.Array:
        """``self.gn`` (one channel per group: torch's GroupNorm(C/2G, C/2G)) over H and W,
        two-pass, in at least float32."""
        wide = at_least_float32(x)
        centred = wide - wide.mean((1, 2), keepdims=True)
        normed = centred * jax.lax.rsqrt((centred * centred).mean((1, 2), keepdims=True) + self.gn.epsilon)
        return (normed * self.gn.scale[...] + self.gn.bias[...]).astype(x.dtype)
