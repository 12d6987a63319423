"""Coordinate Attention.

Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_input, check_positive
from attn_torch._registry import register


def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """``x * relu6(x + 3) / 6``, the reference's ``h_swish``."""
    return x * (F.relu6(x + 3.0) / 6.0)


@register
class CoordAttention(nn.Module):
    """Coordinate Attention: direction-aware gates from pooling along H and along W.

    Parameter names match the reference ``CoordAtt(inp, oup)`` with
    ``inp == oup == channels`` (``conv1``, ``bn1``, ``conv_h``, ``conv_w``; all convs
    with bias); the hidden width is ``max(8, channels // reduction)``.

    Args:
        channels: number of input (and output) channels C.
        reduction: hidden width divisor (default 32).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, reduction: int = 32, *, device=None, dtype=None):
        super().__init__()
        check_positive("channels", channels)
        check_positive("reduction", reduction)
        hidden = max(8, channels // reduction)
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, hidden, 1, **factory)
        self.bn1 = nn.BatchNorm2d(hidden, **factory)
        self.conv_h = nn.Conv2d(hidden, channels, 1, **factory)
        self.conv_w = nn.Conv2d(hidden, channels, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "CoordAttention")
        height, width = x.shape[2], x.shape[3]
        pooled = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], dim=2)
        y = hard_swish(self.bn1(self.conv1(pooled)))
        y_h, y_w = torch.split(y, [height, width], dim=2)
        gate_h = torch.sigmoid(self.conv_h(y_h))
        gate_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))
        return x * gate_w * gate_h
