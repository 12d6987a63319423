"""Dual attention: DANet's position and channel attention modules.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019.
https://arxiv.org/abs/1809.02983

The seed's ``DAModule`` hard-codes 512 channels and a 7x7 map and ignores its
arguments; these modules follow the official ``PAM_Module`` / ``CAM_Module``
(github.com/junfu1115/DANet, ``encoding/nn/da_att.py``) instead, which work at
any size. No checkpoint of the seed's ``DAModule`` loads into them.
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_input, check_positive
from attn_common.validation import check_at_least
from attn_torch._registry import register


@register
class PositionAttention(nn.Module):
    """DANet's position attention (PAM): every pixel attends to every pixel.

    ``out = gamma * (V softmax(Q^T K)^T) + x`` with ``Q, K`` 1x1 projections to
    ``channels // 8`` and ``V`` a 1x1 projection to ``channels``; the softmax runs
    over the keys of the ``(N, HW, HW)`` energy. ``gamma`` starts at 0, so the
    module is the identity at initialisation. Parameter names follow the official
    ``PAM_Module``: ``query_conv``, ``key_conv``, ``value_conv`` (all with bias),
    ``gamma`` of shape ``(1,)``.

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, *, device=None, dtype=None):
        super().__init__()
        hidden = check_at_least("channels", channels, 8, "the query/key width is channels // 8") // 8
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.query_conv = nn.Conv2d(channels, hidden, 1, **factory)
        self.key_conv = nn.Conv2d(channels, hidden, 1, **factory)
        self.value_conv = nn.Conv2d(channels, channels, 1, **factory)
        self.gamma = nn.Parameter(torch.zeros(1, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "PositionAttention")
        query = self.query_conv(x).flatten(2)  # (N, C/8, HW)
        key = self.key_conv(x).flatten(2)
        value = self.value_conv(x).flatten(2)  # (N, C, HW)
        attention = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # (N, HW query, HW key)
        out = value @ attention.transpose(1, 2)
        return self.gamma * out.view_as(x) + x


@register
class ChannelAttention(nn.Module):
    """DANet's channel attention (CAM): every channel attends to every channel.

    ``energy = X X^T`` over the flattened map, shape ``(N, C, C)``;
    ``out = gamma * softmax(rowmax(energy) - energy) X + x``. Subtracting the
    energy from its row maximum is the official code's formulation (a channel
    attends most to the channels it is *least* similar to). No projections:
    ``gamma`` of shape ``(1,)``, starting at 0, is the only parameter.

    Args:
        channels: number of input channels C.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, *, device=None, dtype=None):
        super().__init__()
        self.channels = check_positive("channels", channels)
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "ChannelAttention")
        flat = x.flatten(2)  # (N, C, HW)
        energy = flat @ flat.transpose(1, 2)  # (N, C, C)
        attention = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        return self.gamma * (attention @ flat).view_as(x) + x


@register
class DualAttention(nn.Module):
    """DANet's dual attention: position and channel attention in parallel, summed.

    ``out = PositionAttention(x) + ChannelAttention(x)``, the sum that fuses the
    two branches in DANet's head. The official head puts a conv-BN-ReLU before
    and after each branch; this module is the bare pair, so the output holds the
    input twice (each branch adds its own residual), ``2x`` at initialisation.
    Parameter names: ``position.{query_conv,key_conv,value_conv,gamma}`` and
    ``channel.gamma``.

    Args:
        channels: number of input channels C; at least 8.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, *, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.position = PositionAttention(channels, device=device, dtype=dtype)
        self.channel = ChannelAttention(channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "DualAttention")
        return self.position(x) + self.channel(x)
