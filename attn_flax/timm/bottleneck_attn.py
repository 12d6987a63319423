"""Bottleneck self-attention (BoTNet) as timm builds it (``timm/layers/bottleneck_attn.py``), NHWC.

Srinivas et al., "Bottleneck Transformers for Visual Recognition", CVPR 2021.
https://arxiv.org/abs/2101.11605
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_softmax
from attn_flax.timm.helpers import Conv2d, avg_pool2d, make_divisible, to_2tuple


def rel_logits_1d(q: jax.Array, rel_k: jax.Array, permute_mask: Sequence[int]) -> jax.Array:
    """Relative logits along one axis (https://arxiv.org/abs/1904.09925): ``q`` ``(B, H, W, dim)``,
    ``rel_k`` ``(2W - 1, dim)``; the same pad-and-reshape shift as timm's."""
    b, h, w, _ = q.shape
    x = (q @ rel_k.T).reshape(-1, w, 2 * w - 1)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1))).reshape(x.shape[0], -1)
    x = jnp.pad(x, ((0, 0), (0, w - 1))).reshape(-1, w + 1, 2 * w - 1)
    x = x[:, :w, w - 1:]
    return jnp.broadcast_to(x.reshape(b, h, 1, w, w), (b, h, h, w, w)).transpose(permute_mask)


class PosEmbedRel(nnx.Module):
    """Relative position embedding: ``height_rel`` ``(2H - 1, dim)``, ``width_rel`` ``(2W - 1, dim)``."""

    def __init__(self, feat_size: Sequence[int], dim_head: int, scale: float, *, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.height, self.width = to_2tuple(feat_size)
        self.dim_head = dim_head
        self.scale = scale
        init = nnx.initializers.truncated_normal(scale)
        self.height_rel = nnx.Param(init(rngs.params(), (self.height * 2 - 1, dim_head), param_dtype))
        self.width_rel = nnx.Param(init(rngs.params(), (self.width * 2 - 1, dim_head), param_dtype))

    def __call__(self, q: jax.Array) -> jax.Array:
        b, hw, _ = q.shape
        q = q.reshape(b, self.height, self.width, -1)
        width_rel, height_rel = (p[...].astype(q.dtype) for p in (self.width_rel, self.height_rel))
        rel_logits_w = rel_logits_1d(q, width_rel, permute_mask=(0, 1, 3, 2, 4))
        rel_logits_h = rel_logits_1d(q.transpose(0, 2, 1, 3), height_rel, permute_mask=(0, 3, 1, 4, 2))
        return (rel_logits_h + rel_logits_w).reshape(b, hw, hw)


@register
class BottleneckAttn(DtypeModule):
    """Bottleneck attention; the twin of ``attn_torch.timm.BottleneckAttn`` (same arguments and keys).

    Input ``(N, H, W, C)`` with (H, W) = ``feat_size``; output ``(N, H / stride, W / stride, dim_out)``.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: Sequence[int] | None = None, stride: int = 1,
                 num_heads: int = 4, dim_head: int | None = None, qk_ratio: float = 1.0, qkv_bias: bool = False,
                 scale_pos_embed: bool = False, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        if feat_size is None:
            raise ValueError("`feat_size`=None: BottleneckAttn needs the (H, W) of its input")
        self.dtype = dtype
        self.param_dtype = param_dtype
        dim_out = dim_out or dim
        check_divisible("dim_out", dim_out, "num_heads", num_heads)
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.qkv = Conv2d(dim, self.dim_out_qk * 2 + self.dim_out_v, 1, bias=qkv_bias, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
        self.pos_embed = PosEmbedRel(feat_size, self.dim_head_qk, self.scale, param_dtype=param_dtype, rngs=rngs)
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        n, h, w, _ = x.shape
        if (h, w) != (self.pos_embed.height, self.pos_embed.width):
            raise ValueError(f"input {h}x{w} differs from `feat_size`=({self.pos_embed.height}, {self.pos_embed.width})")
        heads, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        qkv = self.qkv(x).reshape(n, h * w, -1)

        def per_head(t: jax.Array, d: int) -> jax.Array:  # (N, M, heads*d) -> (N*heads, M, d)
            return t.reshape(n, h * w, heads, d).transpose(0, 2, 1, 3).reshape(n * heads, h * w, d)

        q = per_head(qkv[..., :self.dim_out_qk], dqk)
        k = per_head(qkv[..., self.dim_out_qk:2 * self.dim_out_qk], dqk)
        v = per_head(qkv[..., 2 * self.dim_out_qk:], dv)
        logits = jnp.einsum("bid,bjd->bij", q, k)
        if self.scale_pos_embed:
            attn = (logits + self.pos_embed(q)) * self.scale
        else:
            attn = logits * self.scale + self.pos_embed(q)
        out = stable_softmax(attn, axis=-1) @ v  # (N*heads, M, dv)
        out = out.reshape(n, heads, h, w, dv).transpose(0, 2, 3, 1, 4).reshape(n, h, w, self.dim_out_v)
        return avg_pool2d(out, 2, 2) if self.stride == 2 else out
