"""Convolutional Block Attention Module.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_input, check_odd, check_reduction
from attn_torch._registry import register


class CBAMChannelGate(nn.Module):
    """Shared MLP (1x1 convs) over max- and average-pooled descriptors, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int, *, device=None, dtype=None):
        super().__init__()
        hidden = check_reduction(channels, reduction)
        factory = {"device": device, "dtype": dtype}
        self.se = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False, **factory),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False, **factory),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.se(x.amax((2, 3), keepdim=True)) + self.se(x.mean((2, 3), keepdim=True)))


class CBAMSpatialGate(nn.Module):
    """A k x k conv over the channel-wise max and mean maps, sigmoid."""

    def __init__(self, kernel_size: int, *, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


@register
class CBAM(nn.Module):
    """CBAM: channel gate, then spatial gate, applied in sequence.

    Parameter names match the reference ``CBAMBlock`` (``ca.se.0.weight``,
    ``ca.se.2.weight``, ``sa.conv.weight``, ``sa.conv.bias``). Departures from the
    reference: the default ``kernel_size`` is the paper's 7 (the reference's 49
    assumes a 7x7 map is padded to fit); a ``reduction`` leaving zero hidden
    channels raises.

    Args:
        channels: number of input channels C.
        reduction: hidden width of the channel MLP is ``channels // reduction``.
        kernel_size: odd size of the spatial conv (default 7).
        residual: add the input to the result, as the reference does (default True).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        residual: bool = True,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_odd("kernel_size", kernel_size)
        self.channels = channels
        self.residual = residual
        self.ca = CBAMChannelGate(channels, reduction, device=device, dtype=dtype)
        self.sa = CBAMSpatialGate(kernel_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "CBAM")
        out = x * self.ca(x)
        gate = self.sa(out)
        return torch.addcmul(x, out, gate) if self.residual else out * gate  # one pass for the gate and residual
