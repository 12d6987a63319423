"""Split attention (ResNeSt) as timm builds it (``timm/layers/split_attn.py``), NCHW.

Zhang et al., "ResNeSt: Split-Attention Networks", 2020. https://arxiv.org/abs/2004.08955
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import make_divisible
from attn_torch.timm.norm import get_norm_layer


class RadixSoftmax(nn.Module):
    """Softmax over the radix splits of each cardinal group (a sigmoid for ``radix=1``)."""

    def __init__(self, radix: int, cardinality: int):
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        if self.radix > 1:
            x = F.softmax(x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2), dim=1)
            return x.reshape(batch, -1)
        return torch.sigmoid(x)


@register
class SplitAttn(nn.Module):
    """Split attention: a grouped ``conv`` to ``radix`` splits, their pooled sum through
    ``fc1`` -> ``bn1`` -> ``act1`` -> ``fc2``, a radix softmax weighting the splits.

    Args:
        in_channels: input channels. out_channels: default ``in_channels``.
        kernel_size (3), stride, padding (default ``kernel_size // 2``), dilation, groups, bias:
            of ``conv``. radix: default 2. rd_ratio (1/4), rd_channels, rd_divisor (8):
            attention width (at least 32). act_layer: default ReLU. norm_layer: default none.
        drop_layer: a module class applied after ``bn0`` (torch only; default none).

    Input ``(N, C, H, W)``; output ``(N, out_channels, H', W')``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, bias: bool = False, radix: int = 2,
                 rd_ratio: float = 0.25, rd_channels: int | None = None, rd_divisor: int = 8,
                 act_layer: Any = nn.ReLU, norm_layer: Any = None, drop_layer: Any = None, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        out_channels = out_channels or in_channels
        self.radix = radix
        mid_chs = out_channels * radix
        if rd_channels is None:
            attn_chs = make_divisible(in_channels * radix * rd_ratio, min_value=32, divisor=rd_divisor)
        else:
            attn_chs = rd_channels * radix
        padding = kernel_size // 2 if padding is None else padding
        norm_layer = get_norm_layer(norm_layer)
        self.conv = nn.Conv2d(in_channels, mid_chs, kernel_size, stride, padding, dilation, groups=groups * radix,
                              bias=bias, **dd)
        self.bn0 = norm_layer(mid_chs, **dd) if norm_layer else nn.Identity()
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act0 = create_act_layer(act_layer, inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1, groups=groups, **dd)
        self.bn1 = norm_layer(attn_chs, **dd) if norm_layer else nn.Identity()
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1, groups=groups, **dd)
        self.rsoftmax = RadixSoftmax(radix, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.drop(self.bn0(self.conv(x))))
        B, RC, H, W = x.shape
        if self.radix > 1:
            x = x.reshape(B, self.radix, RC // self.radix, H, W)
            x_gap = x.sum(dim=1)
        else:
            x_gap = x
        x_gap = self.act1(self.bn1(self.fc1(x_gap.mean((2, 3), keepdim=True))))
        x_attn = self.rsoftmax(self.fc2(x_gap)).view(B, -1, 1, 1)
        if self.radix > 1:
            return (x * x_attn.reshape(B, self.radix, RC // self.radix, 1, 1)).sum(dim=1)
        return x * x_attn
