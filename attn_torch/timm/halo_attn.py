"""Halo self-attention (HaloNet) as timm builds it (``timm/layers/halo_attn.py``), NCHW.

Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
CVPR 2021. https://arxiv.org/abs/2103.12731
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_divisible
from attn_torch._registry import register
from attn_torch.timm.helpers import make_divisible


def rel_logits_1d(q: torch.Tensor, rel_k: torch.Tensor, permute_mask: Sequence[int]) -> torch.Tensor:
    """Relative logits along one axis of a block: ``q`` ``(B, H, W, dim)``, ``rel_k`` ``(2 win - 1, dim)``."""
    B, H, W, _ = q.shape
    rel_size = rel_k.shape[0]
    win_size = (rel_size + 1) // 2
    x = (q @ rel_k.transpose(-1, -2)).reshape(-1, W, rel_size)
    x_pad = F.pad(F.pad(x, [0, 1]).flatten(1), [0, rel_size - W]).reshape(-1, W + 1, rel_size)
    x = x_pad[:, :W, win_size - 1:]
    return x.reshape(B, H, 1, W, win_size).expand(-1, -1, win_size, -1, -1).permute(*permute_mask)


class PosEmbedRel(nn.Module):
    """Relative position embedding of a block against its window: ``height_rel``, ``width_rel``
    ``(2 win - 1, dim)``."""

    def __init__(self, block_size: int, win_size: int, dim_head: int, scale: float, device=None, dtype=None):
        super().__init__()
        self.block_size = block_size
        self.dim_head = dim_head
        self.scale = scale
        self.height_rel = nn.Parameter(torch.randn(win_size * 2 - 1, dim_head, device=device, dtype=dtype) * scale)
        self.width_rel = nn.Parameter(torch.randn(win_size * 2 - 1, dim_head, device=device, dtype=dtype) * scale)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        B, BB, HW, _ = q.shape
        q = q.reshape(-1, self.block_size, self.block_size, self.dim_head)
        rel_logits_w = rel_logits_1d(q, self.width_rel, permute_mask=(0, 1, 3, 2, 4))
        rel_logits_h = rel_logits_1d(q.transpose(1, 2), self.height_rel, permute_mask=(0, 3, 1, 4, 2))
        return (rel_logits_h + rel_logits_w).reshape(B, BB, HW, -1)


@register
class HaloAttn(nn.Module):
    """Blocked local self-attention: each ``block_size`` block of queries attends to its block
    plus a ``halo_size`` border of keys/values, with relative position logits.

    Args:
        dim: input channels. dim_out: output channels (default ``dim``; divisible by heads).
        feat_size: unused (argument compatibility). stride: 1 or 2 (strided query blocks, or
            average pooling with ``avg_down`` or when the block does not divide).
        num_heads: default 8. dim_head: query/key width (default from ``qk_ratio``).
        block_size: default 8. halo_size: default 3. qkv_bias: default False.
        scale_pos_embed: scale the position logits too.

    Input ``(N, C, H, W)`` with H, W multiples of ``block_size``; output
    ``(N, dim_out, H / stride, W / stride)``.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: Sequence[int] | None = None, stride: int = 1,
                 num_heads: int = 8, dim_head: int | None = None, block_size: int = 8, halo_size: int = 3,
                 qk_ratio: float = 1.0, qkv_bias: bool = False, avg_down: bool = False, scale_pos_embed: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
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
        use_avg_pool = False
        if stride > 1:
            use_avg_pool = avg_down or block_size % stride != 0
            self.block_stride = 1 if use_avg_pool else stride
            self.block_size_ds = self.block_size // self.block_stride
        self.q = nn.Conv2d(dim, self.dim_out_qk, 1, stride=self.block_stride, bias=qkv_bias, **dd)
        self.kv = nn.Conv2d(dim, self.dim_out_qk + self.dim_out_v, 1, bias=qkv_bias, **dd)
        self.pos_embed = PosEmbedRel(self.block_size_ds, self.win_size, self.dim_head_qk, self.scale, **dd)
        self.pool = nn.AvgPool2d(2, 2) if use_avg_pool else nn.Identity()
        std = self.q.weight.shape[1] ** -0.5
        nn.init.trunc_normal_(self.q.weight, std=std)
        nn.init.trunc_normal_(self.kv.weight, std=std)
        nn.init.trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        nn.init.trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if H % self.block_size or W % self.block_size:
            raise ValueError(f"input {H}x{W} must be divisible by `block_size`={self.block_size}")
        nh, nw = H // self.block_size, W // self.block_size
        num_blocks = nh * nw
        bs = self.block_size_ds
        q = self.q(x).reshape(-1, self.dim_head_qk, nh, bs, nw, bs).permute(0, 1, 3, 5, 2, 4)
        q = q.reshape(B * self.num_heads, self.dim_head_qk, -1, num_blocks).transpose(1, 3)
        kv = F.pad(self.kv(x), [self.halo_size] * 4)
        kv = kv.unfold(2, self.win_size, self.block_size).unfold(3, self.win_size, self.block_size).reshape(
            B * self.num_heads, self.dim_head_qk + self.dim_head_v, num_blocks, -1).permute(0, 2, 3, 1)
        k, v = torch.split(kv, [self.dim_head_qk, self.dim_head_v], dim=-1)
        if self.scale_pos_embed:
            attn = (q @ k.transpose(-1, -2) + self.pos_embed(q)) * self.scale
        else:
            attn = (q @ k.transpose(-1, -2)) * self.scale + self.pos_embed(q)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 3)  # B * heads, dim_head_v, bs ** 2, num_blocks
        out = out.reshape(-1, bs, bs, nh, nw).permute(0, 3, 1, 4, 2).contiguous().view(
            B, self.dim_out_v, H // self.block_stride, W // self.block_stride)
        return self.pool(out)
