"""Bottleneck self-attention (BoTNet) as timm builds it (``timm/layers/bottleneck_attn.py``), NCHW.

Srinivas et al., "Bottleneck Transformers for Visual Recognition", CVPR 2021.
https://arxiv.org/abs/2101.11605
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_divisible
from attn_torch._registry import register
from attn_torch.timm.helpers import make_divisible, to_2tuple


def rel_logits_1d(q: torch.Tensor, rel_k: torch.Tensor, permute_mask: Sequence[int]) -> torch.Tensor:
    """Relative logits along one axis (Attention Augmented Convolutional Networks,
    https://arxiv.org/abs/1904.09925): ``q`` ``(B, H, W, dim)``, ``rel_k`` ``(2W - 1, dim)``."""
    B, H, W, _ = q.shape
    x = (q @ rel_k.transpose(-1, -2)).reshape(-1, W, 2 * W - 1)
    x_pad = F.pad(F.pad(x, [0, 1]).flatten(1), [0, W - 1]).reshape(-1, W + 1, 2 * W - 1)
    x = x_pad[:, :W, W - 1:]
    return x.reshape(B, H, 1, W, W).expand(-1, -1, H, -1, -1).permute(*permute_mask)


class PosEmbedRel(nn.Module):
    """Relative position embedding: ``height_rel`` ``(2H - 1, dim)``, ``width_rel`` ``(2W - 1, dim)``."""

    def __init__(self, feat_size: Sequence[int], dim_head: int, scale: float, device=None, dtype=None):
        super().__init__()
        self.height, self.width = to_2tuple(feat_size)
        self.dim_head = dim_head
        self.scale = scale
        self.height_rel = nn.Parameter(torch.randn(self.height * 2 - 1, dim_head, device=device, dtype=dtype) * scale)
        self.width_rel = nn.Parameter(torch.randn(self.width * 2 - 1, dim_head, device=device, dtype=dtype) * scale)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        B, HW, _ = q.shape
        q = q.reshape(B, self.height, self.width, -1)
        rel_logits_w = rel_logits_1d(q, self.width_rel, permute_mask=(0, 1, 3, 2, 4))
        rel_logits_h = rel_logits_1d(q.transpose(1, 2), self.height_rel, permute_mask=(0, 3, 1, 4, 2))
        return (rel_logits_h + rel_logits_w).reshape(B, HW, HW)


@register
class BottleneckAttn(nn.Module):
    """Multi-head self-attention over all positions of a fixed-size map, with relative
    position logits (``pos_embed``); ``qkv`` is one 1x1 conv.

    Args:
        dim: input channels. dim_out: output channels (default ``dim``; divisible by heads).
        feat_size: (H, W), required. stride: 2 average-pools the output. num_heads: default 4.
        dim_head: query/key width (default from ``qk_ratio``). qkv_bias: default False.
        scale_pos_embed: scale the position logits too.

    Input ``(N, C, H, W)``; output ``(N, dim_out, H / stride, W / stride)``.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: Sequence[int] | None = None, stride: int = 1,
                 num_heads: int = 4, dim_head: int | None = None, qk_ratio: float = 1.0, qkv_bias: bool = False,
                 scale_pos_embed: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if feat_size is None:
            raise ValueError("`feat_size`=None: BottleneckAttn needs the (H, W) of its input")
        dim_out = dim_out or dim
        check_divisible("dim_out", dim_out, "num_heads", num_heads)
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.qkv = nn.Conv2d(dim, self.dim_out_qk * 2 + self.dim_out_v, 1, bias=qkv_bias, **dd)
        self.pos_embed = PosEmbedRel(feat_size, dim_head=self.dim_head_qk, scale=self.scale, **dd)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.weight.shape[1] ** -0.5)
        nn.init.trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        nn.init.trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if (H, W) != (self.pos_embed.height, self.pos_embed.width):
            raise ValueError(f"input {H}x{W} differs from `feat_size`=({self.pos_embed.height}, {self.pos_embed.width})")
        q, k, v = torch.split(self.qkv(x), [self.dim_out_qk, self.dim_out_qk, self.dim_out_v], dim=1)
        q = q.reshape(B * self.num_heads, self.dim_head_qk, -1).transpose(-1, -2)
        k = k.reshape(B * self.num_heads, self.dim_head_qk, -1)
        v = v.reshape(B * self.num_heads, self.dim_head_v, -1).transpose(-1, -2)
        if self.scale_pos_embed:
            attn = (q @ k + self.pos_embed(q)) * self.scale
        else:
            attn = (q @ k) * self.scale + self.pos_embed(q)
        out = (attn.softmax(dim=-1) @ v).transpose(-1, -2).reshape(B, self.dim_out_v, H, W)
        return self.pool(out)
