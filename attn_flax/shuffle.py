"""Shuffle Attention.

Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural
Networks", ICASSP 2021. https://arxiv.org/abs/2102.00240
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible, check_input, check_positive
from attn_flax._registry import register
from attn_flax.layers import ChannelParam, Dtype, GroupNorm, at_least_float32, compute_dtype, materialized


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
        dtype = compute_dtype(self.dtype, x, self.param_dtype)
        wide = at_least_float32(x.astype(dtype))
        params = [p[...].reshape(-1).astype(wide.dtype)
                  for p in (self.cweight, self.cbias, self.sweight, self.sbias, self.gn.scale, self.gn.bias)]
        return _shuffle_attention(wide, _Params(*params), self.groups, self.gn.epsilon).astype(dtype)


class _Params(NamedTuple):
    """The six per-half-group parameters, each flattened to ``(C/2G,)``."""

    cweight: jax.Array
    cbias: jax.Array
    sweight: jax.Array
    sbias: jax.Array
    gn_scale: jax.Array
    gn_bias: jax.Array


# Shuffle Attention is one pass of per-channel gating once the per-(N, C) statistics are known:
# a channel-branch channel is gated by sigmoid(cweight * mean + cbias), a spatial-branch channel
# by sigmoid(sweight * (gn_scale * (x - mean) * rstd + gn_bias) + sbias); both are
# sigmoid(slope * (x - centre) + offset) with per-(N, C) coefficients. Written that way, with the
# channel shuffle as an interleave of the two channel halves and a hand-written backward (two
# reductions and one elementwise pass), XLA:CPU ran it at 32x256x28x28 in 7.6-8.3 ms eval and
# 17-18 ms per training step, against 38-42 ms and 60-72 ms for the module written branch by
# branch (torch eager: 10-11 ms and 40-42 ms). Parity: the same function; the backward uses the
# uncentred sum of g * x like torch's GroupNorm backward.


def _layout(channels: int, groups: int):
    """Which channels are channel-branch ones (C,), and a map of a (C/2G,) parameter onto (C,)."""
    channel_branch = jnp.arange(channels) % (channels // groups) < channels // (2 * groups)
    return channel_branch, lambda v: jnp.tile(v, 2 * groups)  # the same value in every half-group


def _coefficients(x: jax.Array, params: _Params, groups: int, eps: float):
    """``slope, centre, offset`` (N, C) of the gate, and the statistics the backward needs."""
    b, h, w, c = x.shape
    mean = x.mean((1, 2))
    var = jnp.square(x - mean[:, None, None, :]).mean((1, 2))  # every channel: no copy of the spatial halves
    rstd = jax.lax.rsqrt(var + eps)
    channel_branch, per_channel = _layout(c, groups)
    slope = jnp.where(channel_branch, 0.0, per_channel(params.sweight * params.gn_scale) * rstd)
    centre = jnp.where(channel_branch, 0.0, mean)
    offset = jnp.where(channel_branch, per_channel(params.cweight) * mean + per_channel(params.cbias),
                       per_channel(params.sweight * params.gn_bias + params.sbias))
    return materialized((slope.astype(x.dtype), centre, offset.astype(x.dtype), mean, rstd))


def _gate(x: jax.Array, slope: jax.Array, centre: jax.Array, offset: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(_hw(slope) * (x - _hw(centre)) + _hw(offset))


def _hw(v: jax.Array) -> jax.Array:
    """(N, C) -> (N, 1, 1, C)."""
    return v[:, None, None, :]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shuffle_attention(x: jax.Array, params: _Params, groups: int, eps: float) -> jax.Array:
    return _shuffle_attention_fwd(x, params, groups, eps)[0]


def _shuffle_attention_fwd(x: jax.Array, params: _Params, groups: int, eps: float):
    slope, centre, offset, mean, rstd = _coefficients(x, params, groups, eps)
    half = x.shape[-1] // 2

    def gated(channels: slice) -> jax.Array:
        part = x[..., channels]
        return part * _gate(part, slope[:, channels], centre[:, channels], offset[:, channels])

    # The channel shuffle (2 groups) interleaves the halves: out[..., 2i + j] = y[..., j * C/2 + i].
    # Stacked this way XLA:CPU fuses it into the gating loop at ~2x the cost of the gating alone;
    # as a transpose of the gated result it took ~4x.
    out = jnp.stack([gated(slice(0, half)), gated(slice(half, None))], axis=-1).reshape(x.shape)
    return out, (x, params, slope, centre, offset, mean, rstd)


def _shuffle_attention_bwd(groups: int, eps: float, residuals, d_out: jax.Array):
    x, params, slope, centre, offset, mean, rstd = residuals
    b, h, w, c = x.shape
    positions = h * w
    # Undo the shuffle once, into a buffer: read through the transposed index by both full-size loops
    # below, the step took 22-25 ms instead of 17-18 at 32x256x28x28.
    d_y = materialized(d_out.reshape(b, h, w, c // 2, 2).swapaxes(-1, -2).reshape(x.shape))
    s = _gate(x, slope, centre, offset)
    d_z = d_y * x * s * (1 - s)  # gradient at the sigmoid's input
    sum_dz = d_z.sum((1, 2))
    sum_dz_centred = (d_z * x).sum((1, 2)) - centre * sum_dz
    channel_branch, per_channel = _layout(c, groups)
    # Through the statistics: a channel-branch gate sees x through its mean; a spatial-branch
    # gate through the instance norm, whose backward is rstd * (g - mean(g) - xhat * mean(g * xhat)).
    d_mean_term = jnp.where(channel_branch, per_channel(params.cweight) * sum_dz, -slope * sum_dz) / positions
    d_centred_term = jnp.where(channel_branch, 0.0, -slope * rstd * rstd * sum_dz_centred) / positions
    slope, centre, offset, d_mean_term, d_centred_term = materialized(
        (slope, centre, offset, d_mean_term.astype(x.dtype), d_centred_term.astype(x.dtype)))
    shifted = x + _hw(-centre)
    # s again, written apart (tanh form) so that XLA recomputes it in this loop rather than storing it.
    s = 0.5 * jnp.tanh(0.5 * (_hw(slope) * shifted + _hw(offset))) + 0.5
    d_x = d_y * s * (1 + _hw(slope) * x * (1 - s)) + _hw(d_mean_term) + _hw(d_centred_term) * shifted

    def per_param(v: jax.Array) -> jax.Array:
        """(N, C) -> (C/2G,): summed over samples and half-groups."""
        return v.reshape(b, 2 * groups, c // (2 * groups)).sum((0, 1))

    normed_sum = jnp.where(channel_branch, 0.0, rstd * sum_dz_centred)  # sum of d_z * xhat
    spatial_dz = jnp.where(channel_branch, 0.0, sum_dz)
    channel_dz = jnp.where(channel_branch, sum_dz, 0.0)
    sweight, gn_scale, gn_bias = params.sweight, params.gn_scale, params.gn_bias
    d_params = _Params(
        cweight=per_param(channel_dz * mean),
        cbias=per_param(channel_dz),
        sweight=per_param(normed_sum * per_channel(gn_scale) + spatial_dz * per_channel(gn_bias)),
        sbias=per_param(spatial_dz),
        gn_scale=per_param(normed_sum) * sweight,
        gn_bias=per_param(spatial_dz) * sweight,
    )
    return d_x, d_params


_shuffle_attention.defvjp(_shuffle_attention_fwd, _shuffle_attention_bwd)
