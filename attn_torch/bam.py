"""Bottleneck Attention Module.

Park et al., "BAM: Bottleneck Attention Module", BMVC 2018.
https://arxiv.org/abs/1807.06514
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from attn_common import check_batch_statistics, check_input, check_positive, check_reduction
from attn_torch._registry import register

NUM_LAYERS = 3  # hidden layers of each branch, fixed as in the reference's BAMBlock


class BAMChannelGate(nn.Module):
    """MLP with BatchNorm1d over the average-pooled descriptor: ``(N, C, 1, 1)`` logits."""

    def __init__(self, channels: int, hidden: int, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = channels
        for i in range(NUM_LAYERS):
            layers[f"fc{i}"] = nn.Linear(width, hidden, **factory)
            layers[f"bn{i}"] = nn.BatchNorm1d(hidden, **factory)
            layers[f"relu{i}"] = nn.ReLU()
            width = hidden
        layers["last_fc"] = nn.Linear(hidden, channels, **factory)
        self.ca = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(x.mean((2, 3)))[:, :, None, None]


class BAMSpatialGate(nn.Module):
    """1x1 reduce, dilated 3x3 convs with BatchNorm, 1x1 to one map: ``(N, 1, H, W)`` logits."""

    def __init__(self, channels: int, hidden: int, dilation: int, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv_reduce1"] = nn.Conv2d(channels, hidden, 1, **factory)
        layers["bn_reduce1"] = nn.BatchNorm2d(hidden, **factory)
        layers["relu_reduce1"] = nn.ReLU()
        for i in range(NUM_LAYERS):
            layers[f"conv_{i}"] = nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, **factory)
            layers[f"bn_{i}"] = nn.BatchNorm2d(hidden, **factory)
            layers[f"relu_{i}"] = nn.ReLU()
        layers["last_conv"] = nn.Conv2d(hidden, 1, 1, **factory)
        self.sa = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(x)


@register
class BAM(nn.Module):
    """BAM: ``(1 + sigmoid(channel_logits + spatial_logits)) * x``, as in the paper.

    Parameter names match the reference ``BAMBlock(channel, reduction, dia_val)``
    (``ca.ca.fc{0,1,2}``, ``ca.ca.bn{0,1,2}`` (BatchNorm1d), ``ca.ca.last_fc``,
    ``sa.sa.conv_reduce1``, ``sa.sa.bn_reduce1``, ``sa.sa.conv_{0,1,2}``,
    ``sa.sa.bn_{0,1,2}``, ``sa.sa.last_conv``), so its checkpoints load strictly.

    Departures from the reference: the dilated 3x3 convs are padded by the
    dilation, as in the official BAM code, so the spatial map keeps its size and
    the module works at any input size (the reference pads by 1, shrinks the map
    by ``2 * (dilation - 1)`` per conv and only runs at 7x7, where the map
    collapses to 1x1 and is broadcast). A ``reduction`` leaving zero hidden
    channels and a non-positive ``dilation`` raise. Training with batch size 1
    raises a ``ValueError`` (the channel branch's BatchNorm1d has one value per
    channel). Each branch has three hidden layers, as in the reference.

    Args:
        channels: number of input channels C.
        reduction: hidden width of both branches is ``channels // reduction`` (default 16).
        dilation: dilation (and padding) of the spatial branch's 3x3 convs (default 2).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 2, *, device=None, dtype=None):
        super().__init__()
        hidden = check_reduction(channels, reduction)
        check_positive("dilation", dilation)
        self.channels = channels
        self.ca = BAMChannelGate(channels, hidden, device=device, dtype=dtype)
        self.sa = BAMSpatialGate(channels, hidden, dilation, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "BAM")
        if self.training:
            check_batch_statistics(x.shape, x.shape[0], "BAM")
        return (1 + torch.sigmoid(self.ca(x) + self.sa(x))) * x
