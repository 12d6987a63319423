"""Shuffle Attention.

Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural
Networks", ICASSP 2021. https://arxiv.org/abs/2102.00240
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_divisible, check_input, check_positive
from attn_torch._registry import register


@register
class ShuffleAttention(nn.Module):
    """Shuffle Attention: per-group channel and spatial gates, then a channel shuffle.

    The channels are split into ``groups`` groups of consecutive channels; each
    group is halved. The first half is gated by ``sigmoid(cweight * avgpool + cbias)``
    (channel attention), the second by ``sigmoid(sweight * GroupNorm + sbias)``
    (spatial attention, one norm group per channel). The halves are concatenated,
    the groups put back, and the channels shuffled with 2 groups.

    Parameter names match the reference ``ShuffleAttention(channel, reduction, G)``:
    ``cweight``, ``cbias``, ``sweight``, ``sbias`` of shape ``(1, C/2G, 1, 1)``
    (initialised to 0, 1, 0, 1 as there) and ``gn`` (``GroupNorm(C/2G, C/2G)``).
    The reference's ``reduction`` argument is never used and is left out;
    ``channels`` not divisible by ``2 * groups`` raises instead of failing in a reshape.

    Args:
        channels: number of input channels C, a multiple of ``2 * groups``.
        groups: number of channel groups G (default 8).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, groups: int = 8, *, device=None, dtype=None):
        super().__init__()
        check_positive("channels", channels)
        check_positive("groups", groups)
        check_divisible("channels", channels, "2 * `groups`", 2 * groups)
        self.channels = channels
        self.groups = groups
        width = channels // (2 * groups)
        factory = {"device": device, "dtype": dtype}
        self.gn = nn.GroupNorm(width, width, **factory)
        self.cweight = nn.Parameter(torch.zeros(1, width, 1, 1, **factory))
        self.cbias = nn.Parameter(torch.ones(1, width, 1, 1, **factory))
        self.sweight = nn.Parameter(torch.zeros(1, width, 1, 1, **factory))
        self.sbias = nn.Parameter(torch.ones(1, width, 1, 1, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "ShuffleAttention")
        b, c, h, w = x.shape
        x_channel, x_spatial = x.reshape(b * self.groups, c // self.groups, h, w).chunk(2, dim=1)
        x_channel = x_channel * torch.sigmoid(self.cweight * x_channel.mean((2, 3), keepdim=True) + self.cbias)
        x_spatial = x_spatial * torch.sigmoid(self.sweight * self.gn(x_spatial) + self.sbias)
        out = torch.cat([x_channel, x_spatial], dim=1).reshape(b, 2, c // 2, h, w)
        return out.transpose(1, 2).reshape(b, c, h, w)  # channel shuffle with 2 groups
