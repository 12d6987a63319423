"""Criss-cross attention.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
https://arxiv.org/abs/1811.11721
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_input, check_positive
from attn_common.validation import check_at_least
from attn_torch._registry import register


@register
class CrissCrossAttention(nn.Module):
    """Criss-cross attention: every pixel attends to the pixels of its row and column.

    For pixel ``(h, w)`` the energies against its column ``(g, w)`` and its row
    ``(h, g)`` are ``q . k`` with 1x1 projections to ``channels // 8``; the centre
    pixel lies on both and is counted once (masked out of the column). One softmax
    runs jointly over the ``H + W`` energies, and
    ``out = gamma * (column-weighted V + row-weighted V) + x``. ``recurrence=R``
    applies the module R times with shared weights (the paper's RCCA, R=2), so
    every pixel sees the whole map from R=2 on.

    Parameter names match the reference ``CrissCrossAttention(in_dim)``
    (``query_conv``, ``key_conv``, ``value_conv``, all with bias, and ``gamma`` of
    shape ``(1,)``, starting at 0: the identity at initialisation). Departures
    from the reference: einsum over the NCHW tensors instead of its permute/bmm
    chain; the centre mask is built on the input's device with ``masked_fill``,
    so the module runs off the CPU and in bfloat16; ``recurrence`` is added.

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).
        recurrence: how many times the module is applied (default 1).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, recurrence: int = 1, *, device=None, dtype=None):
        super().__init__()
        hidden = check_at_least("channels", channels, 8, "the query/key width is channels // 8") // 8
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.recurrence = check_positive("recurrence", recurrence)
        self.query_conv = nn.Conv2d(channels, hidden, 1, **factory)
        self.key_conv = nn.Conv2d(channels, hidden, 1, **factory)
        self.value_conv = nn.Conv2d(channels, channels, 1, **factory)
        self.gamma = nn.Parameter(torch.zeros(1, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "CrissCrossAttention")
        for _ in range(self.recurrence):
            x = self._attend(x)
        return x

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        # energy[n, h, w, g]: pixel (h, w) against (g, w) in its column, then (h, g) in its row.
        energy_col = torch.einsum("nchw,ncgw->nhwg", query, key)
        centre = torch.eye(height, dtype=torch.bool, device=x.device)[:, None, :]  # g == h
        energy_col = energy_col.masked_fill(centre, float("-inf"))
        energy_row = torch.einsum("nchw,nchg->nhwg", query, key)
        attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
        att_col, att_row = attention.split([height, width], dim=-1)
        out = torch.einsum("nhwg,ncgw->nchw", att_col, value) + torch.einsum("nhwg,nchg->nchw", att_row, value)
        return self.gamma * out + x
