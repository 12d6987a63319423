"""Lambda layer as timm builds it (``timm/layers/lambda_layer.py``), NCHW.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021.
https://arxiv.org/abs/2102.08602 . timm's intra-depth ``u`` is 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_divisible
from attn_torch._registry import register
from attn_torch.timm.helpers import make_divisible, to_2tuple


def rel_pos_indices(size: Sequence[int], device=None) -> torch.Tensor:
    """``(2, H*W, H*W)`` relative (row, column) offsets between positions, shifted to be >= 0."""
    size = to_2tuple(size)
    pos = torch.stack(torch.meshgrid(torch.arange(size[0], device=device), torch.arange(size[1], device=device),
                                     indexing="ij")).flatten(1)
    rel_pos = pos[:, None, :] - pos[:, :, None]
    rel_pos[0] += size[0] - 1
    rel_pos[1] += size[1] - 1
    return rel_pos


@register
class LambdaLayer(nn.Module):
    """Lambda layer: content lambdas (softmax keys x values) plus position lambdas, from a local
    lambda convolution ``conv_lambda`` (``r`` set) or relative embeddings ``pos_emb`` (``r=None``,
    needs ``feat_size``), applied to per-head queries.

    Args:
        dim: input channels. dim_out: output channels (default ``dim``; divisible by heads).
        feat_size: (H, W) for ``r=None``. stride: 2 average-pools the output.
        num_heads: default 4. dim_head: query/key width (default 16; ``None``: from
            ``qk_ratio``). r: lambda conv radius (default 9). qkv_bias: default False.

    Input ``(N, C, H, W)``; output ``(N, dim_out, H / stride, W / stride)`` (timm 1.0.31 raises
    for ``dim_out != dim``: it reshapes the output to the input's channel count).
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: Sequence[int] | None = None, stride: int = 1,
                 num_heads: int = 4, dim_head: int | None = 16, r: int | None = 9, qk_ratio: float = 1.0,
                 qkv_bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        dim_out = dim_out or dim
        check_divisible("dim_out", dim_out, "num_heads", num_heads)
        self.dim_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.num_heads = num_heads
        self.dim_v = dim_out // num_heads
        self.qkv = nn.Conv2d(dim, num_heads * self.dim_qk + self.dim_qk + self.dim_v, kernel_size=1, bias=qkv_bias,
                             **dd)
        self.norm_q = nn.BatchNorm2d(num_heads * self.dim_qk, **dd)
        self.norm_v = nn.BatchNorm2d(self.dim_v, **dd)
        if r is not None:
            self.conv_lambda = nn.Conv3d(1, self.dim_qk, (r, r, 1), padding=(r // 2, r // 2, 0), **dd)
            self.pos_emb = None
            self.rel_pos_indices = None
            self.feat_size = None
        else:
            if feat_size is None:
                raise ValueError("`feat_size`=None: LambdaLayer with r=None needs the feature size")
            self.feat_size = to_2tuple(feat_size)
            rel_size = [2 * s - 1 for s in self.feat_size]
            self.conv_lambda = None
            self.pos_emb = nn.Parameter(torch.empty(rel_size[0], rel_size[1], self.dim_qk, **dd))
            self.register_buffer("rel_pos_indices", rel_pos_indices(self.feat_size, device), persistent=False)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.weight.shape[1] ** -0.5)
        if self.conv_lambda is not None:
            nn.init.trunc_normal_(self.conv_lambda.weight, std=self.dim_qk ** -0.5)
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        M = H * W
        q, k, v = torch.split(self.qkv(x), [self.num_heads * self.dim_qk, self.dim_qk, self.dim_v], dim=1)
        q = self.norm_q(q).reshape(B, self.num_heads, self.dim_qk, M).transpose(-1, -2)  # B, heads, M, K
        v = self.norm_v(v).reshape(B, self.dim_v, M).transpose(-1, -2)  # B, M, V
        k = F.softmax(k.reshape(B, self.dim_qk, M), dim=-1)  # B, K, M
        content_out = q @ (k @ v).unsqueeze(1)  # B, heads, M, V
        if self.pos_emb is None:
            position_lam = self.conv_lambda(v.reshape(B, 1, H, W, self.dim_v))  # B, K, H, W, V
            position_lam = position_lam.reshape(B, 1, self.dim_qk, H * W, self.dim_v).transpose(2, 3)
        else:
            pos_emb = self.pos_emb[self.rel_pos_indices[0], self.rel_pos_indices[1]].expand(B, -1, -1, -1)
            position_lam = (pos_emb.transpose(-1, -2) @ v.unsqueeze(1)).unsqueeze(1)  # B, 1, M, K, V
        position_out = (q.unsqueeze(-2) @ position_lam).squeeze(-2)  # B, heads, M, V
        # timm reshapes to the input's C, which fails for dim_out != dim; the output has dim_out channels.
        out = (content_out + position_out).transpose(-1, -2).reshape(B, self.num_heads * self.dim_v, H, W)
        return self.pool(out)
