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
    from the reference code, none of which changes the function:

    * the three 1x1 convolutions run as one matrix product that reads the NCHW
      input transposed and writes channels last (``gamma`` folded into the value
      weights); the row branch multiplies in that layout, the column branch in
      ``(N, W, H, C)`` order, and the sum goes back to NCHW once, which saves the
      reference's transposed copies (timings in docs/benchmarks.md);
    * the centre is masked by writing ``-inf`` on the diagonal of the column
      energies, on the input's device and in its dtype (no ``0 * inf``; bfloat16
      and ``torch.autocast`` work), and the softmax runs in float32;
    * ``recurrence`` is added.

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

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key ``(N, H, W, C // 8)`` and ``gamma``-scaled value ``(N, H, W, C)``, from one product."""
        n, _, height, width = x.shape
        convs = (self.query_conv, self.key_conv, self.value_conv)
        weight = torch.cat([self.query_conv.weight, self.key_conv.weight, self.gamma * self.value_conv.weight])
        bias = torch.cat([self.query_conv.bias, self.key_conv.bias, self.gamma * self.value_conv.bias])
        pixels = x.flatten(2).transpose(1, 2)  # (N, HW, C), a view: the product reads it transposed
        projected = torch.baddbmm(bias, pixels, weight.flatten(1).t().expand(n, -1, -1))
        return projected.view(n, height, width, -1).split([conv.out_channels for conv in convs], dim=-1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        query, key, value = self._project(x)
        # Column energies in (N, W, H, G) and row energies in (N, H, W, G): each a batch of matrix products.
        energy_col = query.transpose(1, 2) @ key.permute(0, 2, 3, 1)
        energy_col.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))  # g == h: the centre counts in the row only
        energy_row = query @ key.transpose(-1, -2)
        energy = torch.cat([energy_col.transpose(1, 2), energy_row], dim=-1)  # (N, H, W, H + W)
        attention = torch.softmax(energy, dim=-1, dtype=torch.promote_types(energy.dtype, torch.float32))
        attention = attention.to(value.dtype)
        att_col, att_row = attention.split([height, width], dim=-1)
        out_row = att_row @ value  # (N, H, W, C)
        # The column branch in (N, W, H, .) order: these copies keep the last axis contiguous, so they are cheap.
        out_col = att_col.transpose(1, 2).contiguous() @ value.transpose(1, 2).contiguous()
        out = out_row.add_(out_col.transpose(1, 2))  # in place: the product's backward does not need its output
        return x + out.permute(0, 3, 1, 2)
