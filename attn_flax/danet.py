"""Dual attention: DANet's position and channel attention modules.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019.
https://arxiv.org/abs/1809.02983

Follows the official ``PAM_Module`` / ``CAM_Module`` (github.com/junfu1115/DANet),
not the seed's ``DAModule``, which only works at 512 channels and 7x7.

Position attention builds an ``(N, HW, HW)`` attention matrix: 5 GB in float32
for a batch of 8 at 112x112. Above ``MEMORY_EFFICIENT_MIN_PIXELS`` pixels (or
with ``memory_efficient=True``) it attends one block of queries at a time
(:func:`attend_blockwise`) and never holds that matrix, in the forward pass or
the backward pass. ``jax.nn.dot_product_attention`` is no help on CPU: its XLA
implementation materialises the matrix, and it wants keys and values of one width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_positive
from attn_common.validation import check_at_least, check_memory_efficient
from attn_flax._registry import register
from attn_flax import cpu_kernels
from attn_flax.layers import Conv2d, Dtype, DtypeModule, at_least_float32, stable_softmax

from attn_common.tables import MEMORY_EFFICIENT_MIN_PIXELS
# Energies per block of one image's queries in the blockwise path: block * HW <= this (32 MiB in float32).
BLOCK_ENERGIES = 1 << 23


def attend_image(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """``softmax(query key^T) value`` (no scaling) for one image, through its full ``(Lq, Lk)`` matrix.

    ``query``: ``(Lq, D)``; ``key``: ``(Lk, D)``; ``value``: ``(Lk, C)``; returns ``(Lq, C)``.
    The rows are normalised after the product with ``value`` (``(Lq, C)`` divisions instead
    of a pass over the matrix). Energies, weights and their sums in at least float32.
    """
    wide = at_least_float32(query).dtype
    energy = jnp.einsum("ic,jc->ij", query, key, preferred_element_type=wide)
    weight = jnp.exp(energy - jax.lax.stop_gradient(energy.max(-1, keepdims=True)))
    out = jnp.einsum("ij,jc->ic", weight.astype(value.dtype), value, preferred_element_type=wide)
    return (out / weight.sum(-1, keepdims=True)).astype(value.dtype)


def attend_image_blockwise(query: jax.Array, key: jax.Array, value: jax.Array, block: int) -> jax.Array:
    """:func:`attend_image`, ``block`` queries at a time, without the full ``(Lq, Lk)`` matrix.

    ``jax.lax.map`` runs the blocks one after the other and ``jax.checkpoint`` makes the
    backward pass recompute each block's energies instead of storing them, so forward and
    backward hold ``block * Lk`` energies at a time. The last block is padded with zero
    queries, whose rows are dropped.
    """
    length = query.shape[0]
    blocks = -(-length // block)
    padded = jnp.pad(query, ((0, blocks * block - length), (0, 0))).reshape(blocks, block, -1)
    rows = jax.checkpoint(attend_image)
    return jax.lax.map(lambda chunk: rows(chunk, key, value), padded).reshape(blocks * block, -1)[:length]


def attend_exact(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """:func:`attend_image` over a batch: ``(N, Lq, D)``, ``(N, Lk, D)``, ``(N, Lk, C)`` -> ``(N, Lq, C)``."""
    return cpu_kernels.map_images(attend_image, query, key, value)


def attend_blockwise(query: jax.Array, key: jax.Array, value: jax.Array, block: int) -> jax.Array:
    """:func:`attend_image_blockwise` over a batch (shapes as :func:`attend_exact`)."""
    return cpu_kernels.map_images(functools.partial(attend_image_blockwise, block=block), query, key, value)


def query_block(pixels: int) -> int:
    """Queries per block: ``block * pixels`` energies within ``BLOCK_ENERGIES``, blocks of equal size."""
    blocks = -(-pixels // max(1, BLOCK_ENERGIES // pixels))
    return -(-pixels // blocks)


@register
class PositionAttention(DtypeModule):
    """DANet's position attention (PAM): every pixel attends to every pixel.

    The twin of ``attn_torch.PositionAttention`` (torch names ``query_conv``,
    ``key_conv``, ``value_conv``, ``gamma``): ``out = gamma * attention(V) + x``
    with the softmax over the keys of the ``(N, HW, HW)`` energy ``Q K^T`` (not
    scaled by ``1/sqrt(C // 8)``). ``gamma`` starts at 0 (identity at initialisation).

    The module is written per image (projections, attention, residual) and mapped over the
    batch (:func:`attn_flax.cpu_kernels.map_images`). Two paths compute
    the same function. The exact path builds each image's matrix and keeps it for the
    backward pass: memory grows as ``N (HW)^2``. The memory-efficient path
    (:func:`attend_image_blockwise`)
    never holds it (peak memory measured in ``docs/memory.md``); the two agree
    within the float32 parity tolerance. The softmax runs in float32 whatever ``dtype`` is.

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).
        memory_efficient: ``True`` for the blockwise path, ``False`` for the exact one,
            ``None`` (default) for the blockwise path from ``H * W >=
            MEMORY_EFFICIENT_MIN_PIXELS`` (2048, e.g. 46x46) on.
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers (convention in ``attn_flax.layers``).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        memory_efficient: bool | None = None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_at_least("channels", channels, 8, "the query/key width is channels // 8") // 8
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.memory_efficient = check_memory_efficient(memory_efficient)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.query_conv = Conv2d(channels, hidden, 1, **kw)
        self.key_conv = Conv2d(channels, hidden, 1, **kw)
        self.value_conv = Conv2d(channels, channels, 1, **kw)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def uses_blockwise(self, height: int, width: int) -> bool:
        """Whether an ``H x W`` map takes the memory-efficient path."""
        if self.memory_efficient is None:
            return height * width >= MEMORY_EFFICIENT_MIN_PIXELS
        return self.memory_efficient

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "PositionAttention")
        x = self.promote(x)
        blockwise = self.uses_blockwise(x.shape[1], x.shape[2])
        return cpu_kernels.map_images(lambda image: self._attend(image, blockwise), x)

    def _attend(self, image: jax.Array, blockwise: bool) -> jax.Array:
        """One ``(H, W, C)`` image: projections, attention, residual."""
        h, w, _ = image.shape
        convs = (self.query_conv, self.key_conv, self.value_conv)
        query, key, value = (conv(image[None]).reshape(h * w, -1) for conv in convs)  # (HW, .)
        if blockwise:
            out = attend_image_blockwise(query, key, value, query_block(h * w))
        else:
            out = attend_image(query, key, value)
        return self.gamma[...].astype(image.dtype) * out.reshape(image.shape) + image


@register
class ChannelAttention(DtypeModule):
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
        self.param_dtype = param_dtype
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "ChannelAttention")
        x = self.promote(x)
        n, h, w, c = x.shape
        flat = x.reshape(n, h * w, c)
        energy = jnp.einsum("nic,nid->ncd", flat, flat)  # (N, C, C)
        attention = stable_softmax(energy.max(-1, keepdims=True) - energy, axis=-1)
        out = jnp.einsum("ncd,nid->nic", attention, flat).reshape(x.shape)
        return self.gamma[...].astype(x.dtype) * out + x


@register
class DualAttention(nnx.Module):
    """DANet's dual attention: position and channel attention in parallel, summed.

    The twin of ``attn_torch.DualAttention`` (torch names
    ``position.{query_conv,key_conv,value_conv,gamma}``, ``channel.gamma``). Each
    branch adds its own residual, so the output is ``2x`` at initialisation.

    Args:
        channels: number of input channels C; at least 8.
        memory_efficient: the position branch's path, as in :class:`PositionAttention`
            (the channel branch's ``(N, C, C)`` matrix is small).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        memory_efficient: bool | None = None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.position = PositionAttention(channels, memory_efficient, **kw)
        self.channel = ChannelAttention(channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "DualAttention")
        return self.position(x) + self.channel(x)
