"""Halo self-attention (HaloNet) as timm builds it (``timm/layers/halo_attn.py``), NHWC.

Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
CVPR 2021. https://arxiv.org/abs/2103.12731
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_common import check_divisible
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_softmax
from attn_flax.timm.helpers import Conv2d, avg_pool2d, make_divisible


def rel_logits_1d(q: jax.Array, rel_k: jax.Array, permute_mask: Sequence[int]) -> jax.Array:
    """Relative logits along one axis of a block: ``q`` ``(B, H, W, dim)``, ``rel_k`` ``(2 win - 1, dim)``;
    the same pad-and-reshape shift as timm's."""
    b, h, w, _ = q.shape
    rel_size = rel_k.shape[0]
    win_size = (rel_size + 1) // 2
    x = (q @ rel_k.T).reshape(-1, w, rel_size)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1))).reshape(x.shape[0], -1)
    x = jnp.pad(x, ((0, 0), (0, rel_size - w))).reshape(-1, w + 1, rel_size)
    x = x[:, :w, win_size - 1:]
    return jnp.broadcast_to(x.reshape(b, h, 1, w, win_size), (b, h, win_size, w, win_size)).transpose(permute_mask)


class PosEmbedRel(nnx.Module):
    """Relative position embedding of a block against its window: ``height_rel``, ``width_rel``
    ``(2 win - 1, dim)``."""

    def __init__(self, block_size: int, win_size: int, dim_head: int, scale: float, *,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.block_size = block_size
        self.dim_head = dim_head
        self.scale = scale
        init = nnx.initializers.truncated_normal(scale)
        self.height_rel = nnx.Param(init(rngs.params(), (win_size * 2 - 1, dim_head), param_dtype))
        self.width_rel = nnx.Param(init(rngs.params(), (win_size * 2 - 1, dim_head), param_dtype))

    def __call__(self, q: jax.Array) -> jax.Array:
        b, bb, hw, _ = q.shape
        q = q.reshape(-1, self.block_size, self.block_size, self.dim_head)
        width_rel, height_rel = (p[...].astype(q.dtype) for p in (self.width_rel, self.height_rel))
        rel_logits_w = rel_logits_1d(q, width_rel, permute_mask=(0, 1, 3, 2, 4))
        rel_logits_h = rel_logits_1d(q.transpose(0, 2, 1, 3), height_rel, permute_mask=(0, 3, 1, 4, 2))
        return (rel_logits_h + rel_logits_w).reshape(b, bb, hw, -1)


@register
class HaloAttn(DtypeModule):
    """Halo attention; the twin of ``attn_torch.timm.HaloAttn`` (same arguments and keys).

    Input ``(N, H, W, C)`` with H, W multiples of ``block_size``; output
    ``(N, H / stride, W / stride, dim_out)``.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: Sequence[int] | None = None, stride: int = 1,
                 num_heads: int = 8, dim_head: int | None = None, block_size: int = 8, halo_size: int = 3,
                 qk_ratio: float = 1.0, qkv_bias: bool = False, avg_down: bool = False, scale_pos_embed: bool = False,
                 *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        dim_out = dim_out or dim
        check_divisible("dim_out", dim_out, "num_heads", num_heads)
        if stride not in (1, 2):
            raise ValueError(f"`stride`={stride} must be 1 or 2")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // self.num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size = self.block_size_ds = block_size
        self.halo_size = halo_size
        self.win_size = block_size + halo_size * 2
        self.block_stride = 1
        self.use_avg_pool = False
        if stride > 1:
            self.use_avg_pool = avg_down or block_size % stride != 0
            self.block_stride = 1 if self.use_avg_pool else stride
            self.block_size_ds = self.block_size // self.block_stride
        self.q = Conv2d(dim, self.dim_out_qk, 1, stride=self.block_stride, bias=qkv_bias, **kw)
        self.kv = Conv2d(dim, self.dim_out_qk + self.dim_out_v, 1, bias=qkv_bias, **kw)
        self.pos_embed = PosEmbedRel(self.block_size_ds, self.win_size, self.dim_head_qk, self.scale,
                                     param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        n, h, w, _ = x.shape
        if h % self.block_size or w % self.block_size:
            raise ValueError(f"input {h}x{w} must be divisible by `block_size`={self.block_size}")
        nh, nw = h // self.block_size, w // self.block_size
        heads, dqk, dv, bs, win = self.num_heads, self.dim_head_qk, self.dim_head_v, self.block_size_ds, self.win_size
        q = self.q(x).reshape(n, nh, bs, nw, bs, heads, dqk).transpose(0, 5, 1, 3, 2, 4, 6)
        q = q.reshape(n * heads, nh * nw, bs * bs, dqk)
        kv = self.kv(x)
        hs = self.halo_size
        kv = jnp.pad(kv, ((0, 0), (hs, hs), (hs, hs), (0, 0)))
        rows = np.arange(nh)[:, None] * self.block_size + np.arange(win)  # (nh, win)
        cols = np.arange(nw)[:, None] * self.block_size + np.arange(win)  # (nw, win)
        kv = kv[:, rows[:, :, None, None], cols[None, None, :, :], :]  # (N, nh, win, nw, win, Ckv)
        kv = kv.transpose(0, 1, 3, 2, 4, 5).reshape(n, nh * nw, win * win, heads, dqk + dv)
        kv = kv.transpose(0, 3, 1, 2, 4).reshape(n * heads, nh * nw, win * win, dqk + dv)
        k, v = kv[..., :dqk], kv[..., dqk:]
        logits = jnp.einsum("bnid,bnjd->bnij", q, k)
        if self.scale_pos_embed:
            attn = (logits + self.pos_embed(q)) * self.scale
        else:
            attn = logits * self.scale + self.pos_embed(q)
        out = stable_softmax(attn, axis=-1) @ v  # (N*heads, blocks, bs*bs, dv)
        out = out.reshape(n, heads, nh, nw, bs, bs, dv).transpose(0, 2, 4, 3, 5, 1, 6)
        out = out.reshape(n, nh * bs, nw * bs, self.dim_out_v)
        return avg_pool2d(out, 2, 2) if self.use_avg_pool else out
