"""Criss-cross attention.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
https://arxiv.org/abs/1811.11721
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_positive
from attn_common.validation import check_at_least
from attn_flax._registry import register
from attn_flax.layers import Conv2d, Dtype, DtypeModule, at_least_float32


@register
class CrissCrossAttention(DtypeModule):
    """Criss-cross attention: every pixel attends to the pixels of its row and column.

    The twin of ``attn_torch.CrissCrossAttention`` (torch names ``query_conv``,
    ``key_conv``, ``value_conv``, ``gamma``). One softmax runs jointly over the
    ``H + W`` energies of a pixel's column and row, the centre pixel counted once;
    ``out = gamma * (column-weighted V + row-weighted V) + x``, applied
    ``recurrence`` times with shared weights. ``gamma`` starts at 0.

    The joint softmax is taken without concatenating the row and column energies
    (slices of a concatenation get fused into the products that read them). The
    centre is masked with ``jnp.where`` (no ``0 * inf``); energies and softmax are
    computed in float32 whatever ``dtype`` is.

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).
        recurrence: how many times the module is applied (default 1; the paper's RCCA uses 2).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers (convention in ``attn_flax.layers``).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        recurrence: int = 1,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_at_least("channels", channels, 8, "the query/key width is channels // 8") // 8
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.recurrence = check_positive("recurrence", recurrence)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.query_conv = Conv2d(channels, hidden, 1, **kw)
        self.key_conv = Conv2d(channels, hidden, 1, **kw)
        self.value_conv = Conv2d(channels, channels, 1, **kw)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "CrissCrossAttention")
        x = self.promote(x)
        for _ in range(self.recurrence):
            x = self._attend(x)
        return x

    def _attend(self, x: jax.Array) -> jax.Array:
        out = _criss_cross_attention(self.value_conv(x), self.query_conv(x), self.key_conv(x))
        return self.gamma[...].astype(x.dtype) * out + x


def _criss_cross_attention(value: jax.Array, query: jax.Array, key: jax.Array) -> jax.Array:
    """Each pixel's softmax-weighted sum of ``value`` over its row and column, the centre counted once.

    ``query``, ``key``: ``(N, H, W, C // 8)``; ``value``: ``(N, H, W, C)``. The row energies are in
    ``(N, H, W, .)`` order and the column ones in ``(N, W, H, .)`` order, so every product has leading
    batch axes; the joint softmax over the ``H + W`` energies shares one maximum and one sum, and
    the weighted values are normalised at the end.
    """
    f32 = at_least_float32(query).dtype
    # energy_row[n, h, w, g]: pixel (h, w) against (h, g); energy_col[n, w, h, g]: against (g, w).
    energy_row = jnp.einsum("nhwc,nhgc->nhwg", query, key, preferred_element_type=f32)
    energy_col = jnp.einsum("nwhc,nwgc->nwhg", query.swapaxes(1, 2), key.swapaxes(1, 2), preferred_element_type=f32)
    energy_col = jnp.where(jnp.eye(query.shape[1], dtype=bool), -jnp.inf, energy_col)  # g == h: counted in the row
    peak = jax.lax.stop_gradient(jnp.maximum(energy_row.max(-1), energy_col.max(-1).swapaxes(1, 2)))
    weight_row = jnp.exp(energy_row - peak[..., None])
    weight_col = jnp.exp(energy_col - peak.swapaxes(1, 2)[..., None])
    total = weight_row.sum(-1) + weight_col.sum(-1).swapaxes(1, 2)  # (N, H, W)
    out_row = jnp.einsum("nhwg,nhgc->nhwc", weight_row.astype(value.dtype), value)
    out_col = jnp.einsum("nwhg,nwgc->nwhc", weight_col.astype(value.dtype), value.swapaxes(1, 2))
    return (out_row + out_col.swapaxes(1, 2)) / total[..., None].astype(value.dtype)
