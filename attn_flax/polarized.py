"""Polarized Self-Attention, parallel and sequential layouts.

Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", 2021. https://arxiv.org/abs/2107.00782
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input
from attn_common.validation import check_at_least
from attn_flax._registry import register
from attn_flax.layers import Conv2d, Dtype, LayerNorm, compute_dtype, stable_mean, stable_softmax


class _PolarizedSelfAttention(nnx.Module):
    """The channel-only and spatial-only branches shared by both layouts."""

    def __init__(
        self,
        channels: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_at_least("channels", channels, 2, "the value and query convs have channels // 2 outputs")
        self.channels = channels
        self.dtype = dtype
        self.param_dtype = param_dtype
        half = channels // 2
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.ch_wv = Conv2d(channels, half, 1, **kw)
        self.ch_wq = Conv2d(channels, 1, 1, **kw)
        self.ch_wz = Conv2d(half, channels, 1, **kw)
        self.ln = LayerNorm(channels, **kw)
        self.sp_wv = Conv2d(channels, half, 1, **kw)
        self.sp_wq = Conv2d(channels, half, 1, **kw)

    def channel_gate(self, x: jax.Array) -> jax.Array:
        """``(N, 1, 1, C)``: values pooled with softmax weights over the H*W positions."""
        value = self.ch_wv(x)  # (N, H, W, C/2)
        query = stable_softmax(self.ch_wq(x), axis=(1, 2))  # (N, H, W, 1)
        pooled = jnp.einsum("nhwc,nhwo->noc", value, query)[:, :, None, :]  # (N, 1, 1, C/2)
        return jax.nn.sigmoid(self.ln(self.ch_wz(pooled)))

    def spatial_gate(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, 1)``: values mixed with softmax weights over the C/2 channels."""
        value = self.sp_wv(x)  # (N, H, W, C/2)
        query = stable_softmax(stable_mean(self.sp_wq(x), (1, 2)), axis=-1)  # (N, C/2)
        return jax.nn.sigmoid(jnp.einsum("nhwc,nc->nhw", value, query)[..., None])


@register
class ParallelPolarizedSelfAttention(_PolarizedSelfAttention):
    """PSA, parallel layout: ``x * channel_gate(x) + x * spatial_gate(x)``.

    The twin of ``attn_torch.ParallelPolarizedSelfAttention`` (torch names
    ``ch_wv``, ``ch_wq``, ``ch_wz``, ``sp_wv``, ``sp_wq``: 1x1 convs with bias;
    ``ln``: ``LayerNorm(C)``). The channel branch's softmax runs over the H*W
    positions (axes 1, 2 in NHWC), the spatial branch's over the C/2 channels.
    Odd C works (the half width is ``C // 2``); C < 2 raises.

    Args:
        channels: number of input channels C (at least 2).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "ParallelPolarizedSelfAttention")
        x = x.astype(compute_dtype(self.dtype, x, self.param_dtype))
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


@register
class SequentialPolarizedSelfAttention(_PolarizedSelfAttention):
    """PSA, sequential layout: ``y = x * channel_gate(x)``, then ``y * spatial_gate(y)``.

    The twin of ``attn_torch.SequentialPolarizedSelfAttention`` (torch names
    ``ch_wv``, ``ch_wq``, ``ch_wz``, ``sp_wv``, ``sp_wq``: 1x1 convs with bias;
    ``ln``: ``LayerNorm(C)``). The channel branch's softmax runs over the H*W
    positions (axes 1, 2 in NHWC), the spatial branch's over the C/2 channels.
    Odd C works (the half width is ``C // 2``); C < 2 raises.

    Args:
        channels: number of input channels C (at least 2).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "SequentialPolarizedSelfAttention")
        x = x.astype(compute_dtype(self.dtype, x, self.param_dtype))
        y = x * self.channel_gate(x)
        return y * self.spatial_gate(y)
