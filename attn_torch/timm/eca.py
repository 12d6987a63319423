"""ECA and circular ECA as timm builds them (``timm/layers/eca.py``), NCHW.

Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_odd
from attn_common.timm import eca_kernel_size
from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import make_divisible


@register
class EcaModule(nn.Module):
    """ECA: a 1-D convolution across the pooled channels (no bias), then a gate.

    Args:
        channels: input channels; when given, the kernel is timm's adaptive size
            ``max(odd(int(|log2 C + beta| / gamma)), 3)`` and ``kernel_size`` is ignored.
        kernel_size: odd kernel when ``channels`` is None (default 3). gamma, beta: default 2, 1.
        act_layer, rd_ratio, rd_channels, rd_divisor, use_mlp: timm's ``ecam`` variant
            (``conv`` 1 -> rd, ``act``, ``conv2`` rd -> 1, both with bias).
        gate_layer: default ``"sigmoid"``.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int | None = None, kernel_size: int = 3, gamma: float = 2, beta: float = 1,
                 act_layer: Any = None, gate_layer: Any = "sigmoid", rd_ratio: float = 1 / 8,
                 rd_channels: int | None = None, rd_divisor: int = 8, use_mlp: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if channels is not None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_odd("kernel_size", kernel_size)
        padding = (kernel_size - 1) // 2
        if use_mlp:
            if channels is None:
                raise ValueError("`channels`=None: EcaModule with use_mlp=True needs the channel count")
            if rd_channels is None:
                rd_channels = make_divisible(channels * rd_ratio, divisor=rd_divisor)
            self.conv = nn.Conv1d(1, rd_channels, kernel_size=1, padding=0, bias=True, **dd)
            self.act = create_act_layer(act_layer or nn.ReLU)
            self.conv2 = nn.Conv1d(rd_channels, 1, kernel_size=kernel_size, padding=padding, bias=True, **dd)
        else:
            self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=padding, bias=False, **dd)
            self.act = None
            self.conv2 = None
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        if self.conv2 is not None:
            y = self.conv2(self.act(y))
        return x * self.gate(y).view(x.shape[0], -1, 1, 1)


@register
class CecaModule(nn.Module):
    """Circular ECA: the channel convolution wraps around (circular padding).

    Args: as :class:`EcaModule`; ``act_layer`` given only enables the conv bias (as in timm).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int | None = None, kernel_size: int = 3, gamma: float = 2, beta: float = 1,
                 act_layer: Any = None, gate_layer: Any = "sigmoid", device=None, dtype=None):
        super().__init__()
        if channels is not None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_odd("kernel_size", kernel_size)
        self.padding = (kernel_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=0, bias=act_layer is not None,
                              device=device, dtype=dtype)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(F.pad(y, (self.padding, self.padding), mode="circular"))
        return x * self.gate(y).view(x.shape[0], -1, 1, 1)


EfficientChannelAttn = EcaModule
CircularEfficientChannelAttn = CecaModule
