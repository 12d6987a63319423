"""Squeeze-and-Excitation as timm builds it (``timm/layers/squeeze_excite.py``), NCHW.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507
Effective SE: Lee and Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation",
CVPR 2020. https://arxiv.org/abs/1911.06667
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import make_divisible
from attn_torch.timm.norm import get_norm_layer


@register
class SEModule(nn.Module):
    """timm's SE: ``x * gate(fc2(act(bn(fc1(avgpool(x))))))`` with 1x1 convolutions.

    Args:
        channels: input channels C.
        rd_ratio: hidden width ``make_divisible(C * rd_ratio, rd_divisor, round_limit=0)``
            (default 1/16), unless ``rd_channels`` is given.
        rd_divisor: default 8. add_maxpool: average mean and max pooling.
        bias: biases in fc1/fc2 (default True). act_layer: default ReLU.
        norm_layer: optional norm after fc1. gate_layer: default ``"sigmoid"``.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 8, add_maxpool: bool = False, bias: bool = True, act_layer: Any = nn.ReLU,
                 norm_layer: Any = None, gate_layer: Any = "sigmoid", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.add_maxpool = add_maxpool
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        norm_layer = get_norm_layer(norm_layer)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias, **dd)
        self.bn = norm_layer(rd_channels, **dd) if norm_layer else nn.Identity()
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, **dd)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.bn(self.fc1(x_se))))
        return x * self.gate(x_se)


@register
class EffectiveSEModule(nn.Module):
    """Effective SE: one full-width 1x1 conv ``fc`` and a hard-sigmoid gate.

    Args:
        channels: input channels C. add_maxpool: average mean and max pooling.
        gate_layer: default ``"hard_sigmoid"``. Other keywords are ignored (as in timm).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, add_maxpool: bool = False, gate_layer: Any = "hard_sigmoid",
                 device=None, dtype=None, **_: Any):
        super().__init__()
        self.add_maxpool = add_maxpool
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0, device=device, dtype=dtype)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        return x * self.gate(self.fc(x_se))


SqueezeExcite = SEModule
EffectiveSqueezeExcite = EffectiveSEModule
