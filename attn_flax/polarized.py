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
from attn_flax.layers import Conv2d, Dtype, DtypeModule, LayerNorm, stable_mean, stable_softmax


class _PolarizedSelfAttention(DtypeModule):
    """The channel-only and spatial-only branches shared by both layouts.

    The value and query convolutions are 1x1, hence affine per position, and softmax
    weights sum to one, so each branch reduces the input before projecting it: the
    channel branch pools ``x`` with its softmax weights and then applies ``ch_wv``; the
    spatial branch's query is ``sp_wq`` of the mean of ``x``, and its value product is
    ``x`` against ``sp_wv``'s kernel mixed by the query, plus the mixed bias. Equal to
    the reference's order up to rounding, with three fewer full-size C -> C/2 products
    (the same rewrite in the torch twin).
    """

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
        query = stable_softmax(self.ch_wq(x), axis=(1, 2))  # (N, H, W, 1)
        pooled = self.ch_wv(jnp.einsum("nhwc,nhwo->noc", x, query)[:, :, None, :])  # (N, 1, 1, C/2)
        return jax.nn.sigmoid(self.ln(self.ch_wz(pooled)))

    def spatial_gate(self, x: jax.Array, scale: jax.Array | None = None) -> jax.Array:
        """``(N, H, W, 1)``: values mixed with softmax weights over the C/2 channels.

        With ``scale`` (``(N, 1, 1, C)``), the gate of ``x * scale``, without forming that product.
        """
        mean = stable_mean(x, (1, 2), keepdims=True) * (1 if scale is None else scale)
        query = stable_softmax(self.sp_wq(mean), axis=-1)[:, 0, 0]  # (N, C/2)
        kernel = self.sp_wv.kernel[0, 0].astype(jnp.float32)  # (C, C/2)
        mixing = jnp.einsum("ck,nk->nc", kernel, query.astype(jnp.float32)).astype(x.dtype)  # (N, C)
        mixing = mixing if scale is None else mixing * scale[:, 0, 0]
        offset = query @ self.sp_wv.bias[...].astype(query.dtype)  # (N,)
        return jax.nn.sigmoid(jnp.einsum("nhwc,nc->nhw", x, mixing) + offset[:, None, None])[..., None]


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
        x = self.promote(x)
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


@register
class SequentialPolarizedSelfAttention(_PolarizedSelfAttention):
    """PSA, sequential layout: ``y = x * channel_gate(x)``, then ``y * spatial_gate(y)``.

    ``y`` is never formed: the spatial gate folds the channel gate into its mean and its
    mixing vector (``spatial_gate(x, scale=...)``), so the output is one pass over ``x``.

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
        x = self.promote(x)
        channel = self.channel_gate(x)
        return x * channel * self.spatial_gate(x, scale=channel)
