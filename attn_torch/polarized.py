"""Polarized Self-Attention, parallel and sequential layouts.

Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", 2021. https://arxiv.org/abs/2107.00782
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_input
from attn_common.validation import check_at_least
from attn_torch._registry import register


def _softmax_float32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim computed in at least float32 (CPU autocast leaves it in bf16), in ``logits``' dtype."""
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(logits.dtype)


class _PolarizedSelfAttention(nn.Module):
    """The channel-only and spatial-only branches shared by both layouts.

    The value and query convolutions are 1x1, hence affine per position, and softmax
    weights sum to one, so each branch reduces the input before projecting it: the
    channel branch pools ``x`` with its softmax weights and then applies ``ch_wv``; the
    spatial branch's query is ``sp_wq`` of the mean of ``x``, and its value product is
    ``x`` against ``sp_wv``'s weight mixed by the query, plus the mixed bias. Equal to
    the reference's order up to rounding (``tests/test_reference.py``), with three fewer
    full-size C -> C/2 products; the parameters and their names are the reference's.
    """

    def __init__(self, channels: int, *, device=None, dtype=None):
        super().__init__()
        check_at_least("channels", channels, 2, "the value and query convs have channels // 2 outputs")
        self.channels = channels
        half = channels // 2
        factory = {"device": device, "dtype": dtype}
        self.ch_wv = nn.Conv2d(channels, half, 1, **factory)
        self.ch_wq = nn.Conv2d(channels, 1, 1, **factory)
        self.ch_wz = nn.Conv2d(half, channels, 1, **factory)
        self.ln = nn.LayerNorm(channels, **factory)
        self.sp_wv = nn.Conv2d(channels, half, 1, **factory)
        self.sp_wq = nn.Conv2d(channels, half, 1, **factory)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, 1, 1)``: values pooled with softmax weights over the H*W positions."""
        query = _softmax_float32(self.ch_wq(x).flatten(2))  # (N, 1, HW)
        pooled = self.ch_wv(torch.matmul(x.flatten(2), query.transpose(1, 2))[..., None])  # (N, C/2, 1, 1)
        return torch.sigmoid(self.ln(self.ch_wz(pooled).flatten(1)))[:, :, None, None]

    def spatial_gate(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 1, H, W)``: values mixed with softmax weights over the C/2 channels.

        With ``scale`` (``(N, C, 1, 1)``), the gate of ``x * scale``, without forming that product.
        """
        mean = x.mean((2, 3), keepdim=True) * (1 if scale is None else scale)
        query = _softmax_float32(self.sp_wq(mean).flatten(1))  # (N, C/2)
        mixing = torch.matmul(query, self.sp_wv.weight.flatten(1).to(query.dtype))  # (N, C)
        mixing = mixing if scale is None else mixing * scale.flatten(1)
        offset = torch.matmul(query, self.sp_wv.bias.to(query.dtype))  # (N,)
        logits = torch.matmul(mixing[:, None, :], x.flatten(2)) + offset[:, None, None]  # (N, 1, HW)
        return torch.sigmoid(logits.reshape(x.shape[0], 1, *x.shape[2:]))


@register
class ParallelPolarizedSelfAttention(_PolarizedSelfAttention):
    """PSA, parallel layout: ``x * channel_gate(x) + x * spatial_gate(x)``.

    Parameter names match the reference ``ParallelPolarizedSelfAttention(channel)``:
    1x1 convs with bias ``ch_wv`` (C -> C/2), ``ch_wq`` (C -> 1), ``ch_wz``
    (C/2 -> C), ``sp_wv`` and ``sp_wq`` (C -> C/2), and ``ln`` (``LayerNorm(C)``).
    As in the reference, the channel branch takes its softmax over the H*W
    positions and the spatial branch over the C/2 channels. Odd C works (the half
    width is ``C // 2``); C < 2 raises.

    Args:
        channels: number of input channels C (at least 2).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "ParallelPolarizedSelfAttention")
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


@register
class SequentialPolarizedSelfAttention(_PolarizedSelfAttention):
    """PSA, sequential layout: ``y = x * channel_gate(x)``, then ``y * spatial_gate(y)``.

    ``y`` is not formed before the end: the spatial gate folds the channel gate into its
    mean and its mixing vector (``spatial_gate(x, scale=...)``).

    Parameter names match the reference ``SequentialPolarizedSelfAttention(channel)``:
    1x1 convs with bias ``ch_wv`` (C -> C/2), ``ch_wq`` (C -> 1), ``ch_wz``
    (C/2 -> C), ``sp_wv`` and ``sp_wq`` (C -> C/2), and ``ln`` (``LayerNorm(C)``).
    As in the reference, the channel branch takes its softmax over the H*W
    positions and the spatial branch over the C/2 channels. Odd C works (the half
    width is ``C // 2``); C < 2 raises.

    Args:
        channels: number of input channels C (at least 2).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "SequentialPolarizedSelfAttention")
        channel = self.channel_gate(x)
        return x * channel * self.spatial_gate(x, scale=channel)
