"""CBAM as timm builds it (``timm/layers/cbam.py``), NCHW.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521 . timm's spatial gate concatenates ``[mean, max]``
(the official code ``[max, mean]``) and convolves with BatchNorm (``ConvNormAct``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.conv_bn_act import ConvNormAct
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import make_divisible


@register
class ChannelAttn(nn.Module):
    """CBAM's channel gate: a shared 1x1-conv MLP (``fc1``, ``fc2``) on mean and max pools."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: Any = nn.ReLU, gate_layer: Any = "sigmoid", mlp_bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias, **dd)
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias, **dd)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * self.gate(x_avg + x_max)


@register
class LightChannelAttn(ChannelAttn):
    """The light channel gate: one MLP pass on ``(mean + max) / 2``, always a sigmoid (as timm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pool = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x_pool))))


@register
class SpatialAttn(nn.Module):
    """CBAM's spatial gate: ``[mean, max]`` over channels -> k x k conv + BatchNorm -> gate."""

    def __init__(self, kernel_size: int = 7, gate_layer: Any = "sigmoid", device=None, dtype=None):
        super().__init__()
        self.conv = ConvNormAct(2, 1, kernel_size, apply_act=False, device=device, dtype=dtype)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(x_attn))


@register
class LightSpatialAttn(nn.Module):
    """The light spatial gate: ``(mean + max) / 2`` over channels -> k x k conv + BatchNorm -> gate."""

    def __init__(self, kernel_size: int = 7, gate_layer: Any = "sigmoid", device=None, dtype=None):
        super().__init__()
        self.conv = ConvNormAct(1, 1, kernel_size, apply_act=False, device=device, dtype=dtype)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = 0.5 * x.mean(dim=1, keepdim=True) + 0.5 * x.amax(dim=1, keepdim=True)
        return x * self.gate(self.conv(x_attn))


@register
class CbamModule(nn.Module):
    """CBAM: ``channel`` gate, then ``spatial`` gate.

    Args:
        channels: input channels C. rd_ratio: default 1/16 (``rd_divisor`` 1).
        spatial_kernel_size: default 7. act_layer: default ReLU. gate_layer: ``"sigmoid"``.
        mlp_bias: biases in the channel MLP (default False).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer: Any = nn.ReLU,
                 gate_layer: Any = "sigmoid", mlp_bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channel = ChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                                   act_layer=act_layer, gate_layer=gate_layer, mlp_bias=mlp_bias, **dd)
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer=gate_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


@register
class LightCbamModule(nn.Module):
    """Light CBAM: :class:`LightChannelAttn`, then :class:`LightSpatialAttn` (its gate always sigmoid).

    Args: as :class:`CbamModule`. Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer: Any = nn.ReLU,
                 gate_layer: Any = "sigmoid", mlp_bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channel = LightChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                                        act_layer=act_layer, gate_layer=gate_layer, mlp_bias=mlp_bias, **dd)
        self.spatial = LightSpatialAttn(spatial_kernel_size, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
