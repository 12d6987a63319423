"""Dual attention: DANet's position and channel attention modules.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019.
https://arxiv.org/abs/1809.02983

Follows the official ``PAM_Module`` / ``CAM_Module`` (github.com/junfu1115/DANet),
not the seed's ``DAModule``, which only works at 512 channels and 7x7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from attn_common import check_input, check_positive
from attn_common.validation import check_at_least
from attn_flax._registry import register
from attn_flax.layers import Conv2d, Dtype


@register
class PositionAttention(nnx.Module):
    """DANet's position attention (PAM): every pixel attends to every pixel.

    The twin of ``attn_torch.PositionAttention`` (torch names ``query_conv``,
    ``key_conv``, ``value_conv``, ``gamma``): ``out = gamma * attention(V) + x``
    with the softmax over the keys of the ``(N, HW, HW)`` energy ``Q K^T``.
    ``gamma`` starts at 0 (identity at initialisation).

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_at_least("channels", channels, 8, "the query/key width is channels // 8") // 8
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.query_conv = Conv2d(channels, hidden, 1, **kw)
        self.key_conv = Conv2d(channels, hidden, 1, **kw)
        self.value_conv = Conv2d(channels, channels, 1, **kw)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "PositionAttention")
        n, h, w, c = x.shape
        query = self.query_conv(x).reshape(n, h * w, -1)  # (N, HW, C/8)
        key = self.key_conv(x).reshape(n, h * w, -1)
        value = self.value_conv(x).reshape(n, h * w, c)
        attention = jax.nn.softmax(jnp.einsum("nic,njc->nij", query, key), axis=-1)  # (N, HW query, HW key)
        out = (attention @ value).reshape(x.shape)
        return self.gamma[...].astype(out.dtype) * out + x


@register
class ChannelAttention(nnx.Module):
    """DANet's channel attention (CAM): every channel attends to every channel.

    The twin of ``attn_torch.ChannelAttention`` (torch name ``gamma``):
    ``energy = X^T X`` over the flattened map, shape ``(N, C, C)``;
    ``out = gamma * (X softmax(rowmax(energy) - energy)^T) + x``, the official
    code's formulation. ``gamma`` starts at 0.

    Args:
        channels: number of input channels C.
        dtype: computation dtype (default: inferred from the input and ``gamma``).
        param_dtype, rngs: as in ``flax.nnx`` layers (``rngs`` is unused: no random init).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.channels = check_positive("channels", channels)
        self.dtype = dtype
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "ChannelAttention")
        n, h, w, c = x.shape
        flat, gamma = promote_dtype((x.reshape(n, h * w, c), self.gamma[...]), dtype=self.dtype)
        energy = jnp.einsum("nic,nid->ncd", flat, flat)  # (N, C, C)
        attention = jax.nn.softmax(energy.max(-1, keepdims=True) - energy, axis=-1)
        out = jnp.einsum("ncd,nid->nic", attention, flat).reshape(x.shape)
        return gamma * out + x


@register
class DualAttention(nnx.Module):
    """DANet's dual attention: position and channel attention in parallel, summed.

    The twin of ``attn_torch.DualAttention`` (torch names
    ``position.{query_conv,key_conv,value_conv,gamma}``, ``channel.gamma``). Each
    branch adds its own residual, so the output is ``2x`` at initialisation.

    Args:
        channels: number of input channels C; at least 8.
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.position = PositionAttention(channels, **kw)
        self.channel = ChannelAttention(channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "DualAttention")
        return self.position(x) + self.channel(x)
