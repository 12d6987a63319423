"""Global Attention Mechanism.

Liu et al., "Global Attention Mechanism: Retain Information to Enhance
Channel-Spatial Interactions", arXiv 2021. https://arxiv.org/abs/2112.05561
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attn_common import check_batch_statistics, check_input, check_reduction
from attn_torch._registry import register


@register
class GAM(nn.Module):
    """GAM: a per-pixel channel MLP gate, then a 7x7-conv spatial gate, in sequence.

    ``y = x * sigmoid(MLP(x))`` with the MLP applied to each pixel's channel
    vector, then ``out = y * sigmoid(BN(conv7(ReLU(BN(conv7(y))))))``.

    Parameter names match the ``GAM_Attention`` code of the seed document
    (``channel_attention.0`` and ``.2``: Linear C -> C/rate -> C;
    ``spatial_attention.0`` and ``.3``: 7x7 convs with bias, ``.1`` and ``.4``:
    BatchNorm2d). The hidden width is ``int(channels / rate)`` as in the seed.

    Departures from the seed: the seed's snippet omits the sigmoid on the
    channel gate (it multiplies by the raw MLP output); this module applies it,
    as the paper does. The seed's separate ``out_channels`` is dropped: the
    spatial gate multiplies the input, so it must equal ``channels``. A ``rate``
    leaving zero hidden channels raises, and so does training on input with one
    value per channel (batch 1 with a 1x1 map).

    Args:
        channels: number of input channels C.
        rate: reduction ratio of both branches' hidden width (default 4).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, rate: int = 4, *, device=None, dtype=None):
        super().__init__()
        check_reduction(channels, rate, name="rate")
        hidden = int(channels / rate)
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.channel_attention = nn.Sequential(
            nn.Linear(channels, hidden, **factory),
            nn.ReLU(),
            nn.Linear(hidden, channels, **factory),
        )
        self.spatial_attention = nn.Sequential(
            nn.Conv2d(channels, hidden, 7, padding=3, **factory),
            nn.BatchNorm2d(hidden, **factory),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 7, padding=3, **factory),
            nn.BatchNorm2d(channels, **factory),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "GAM")
        if self.training:
            check_batch_statistics(x.shape, math.prod(x.shape) // x.shape[1], "GAM")
        gate_c = self.channel_attention(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x * torch.sigmoid(gate_c)
        return x * torch.sigmoid(self.spatial_attention(x))
