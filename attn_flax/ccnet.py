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
from attn_flax.layers import Conv2d, Dtype


@register
class CrissCrossAttention(nnx.Module):
    """Criss-cross attention: every pixel attends to the pixels of its row and column.

    The twin of ``attn_torch.CrissCrossAttention`` (torch names ``query_conv``,
    ``key_conv``, ``value_conv``, ``gamma``). One softmax runs jointly over the
    ``H + W`` energies of a pixel's column and row, the centre pixel counted once;
    ``out = gamma * (column-weighted V + row-weighted V) + x``, applied
    ``recurrence`` times with shared weights. ``gamma`` starts at 0.

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).
        recurrence: how many times the module is applied (default 1; the paper's RCCA uses 2).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

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
        self.query_conv = Conv2d(channels, hidden, 1, **kw)
        self.key_conv = Conv2d(channels, hidden, 1, **kw)
        self.value_conv = Conv2d(channels, channels, 1, **kw)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "CrissCrossAttention")
        for _ in range(self.recurrence):
            x = self._attend(x)
        return x

    def _attend(self, x: jax.Array) -> jax.Array:
        height = x.shape[1]
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        # energy[n, h, w, g]: pixel (h, w) against (g, w) in its column, then (h, g) in its row.
        energy_col = jnp.einsum("nhwc,ngwc->nhwg", query, key)
        centre = jnp.eye(height, dtype=bool)[:, None, :]  # g == h
        energy_col = jnp.where(centre, -jnp.inf, energy_col)
        energy_row = jnp.einsum("nhwc,nhgc->nhwg", query, key)
        attention = jax.nn.softmax(jnp.concatenate([energy_col, energy_row], axis=-1), axis=-1)
        att_col, att_row = attention[..., :height], attention[..., height:]
        out = jnp.einsum("nhwg,ngwc->nhwc", att_col, value) + jnp.einsum("nhwg,nhgc->nhwc", att_row, value)
        return self.gamma[...].astype(out.dtype) * out + x
