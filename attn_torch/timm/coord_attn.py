"""Coordinate attention and its variants as timm builds them (``timm/layers/coord_attn.py``), NCHW.

Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907 . Efficient Local Attention: Xu and Wan, "ELA: Efficient
Local Attention for Deep Convolutional Neural Networks", 2024. https://arxiv.org/abs/2403.01123
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import make_divisible
from attn_torch.timm.norm import GroupNorm1, get_norm_layer


@register
class CoordAttn(nn.Module):
    """Coordinate attention: strip pools along H and W, a shared 1x1 conv + norm + act,
    then per-axis 1x1 convs (``conv_h``, ``conv_w``) and gates multiplied into the input.

    Args:
        channels: input channels C. rd_ratio (1/16) * se_factor (2/3), rd_divisor (8):
            hidden width, unless ``rd_channels``. bias: conv biases (default False).
        act_layer: default Hardswish. norm_layer: default BatchNorm2d. gate_layer: ``"sigmoid"``.
        has_skip: add the input to the output.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 8, se_factor: float = 2 / 3, bias: bool = False, act_layer: Any = nn.Hardswish,
                 norm_layer: Any = nn.BatchNorm2d, gate_layer: Any = "sigmoid", has_skip: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.has_skip = has_skip
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio * se_factor, rd_divisor, round_limit=0.0)
        norm_layer = get_norm_layer(norm_layer)
        self.conv1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias, **dd)
        self.bn1 = norm_layer(rd_channels, **dd) if norm_layer is not None else nn.Identity()
        self.act = create_act_layer(act_layer)
        self.conv_h = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, **dd)
        self.conv_w = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, **dd)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        y = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(-1, -2)], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [H, W], dim=2)
        a_h = self.gate(self.conv_h(x_h))
        a_w = self.gate(self.conv_w(x_w.transpose(-1, -2)))
        out = x * a_w * a_h
        return out + x if self.has_skip else out


@register
class SimpleCoordAttn(nn.Module):
    """Simplified coordinate attention: linear layers (``fc1`` shared, ``fc_h``, ``fc_w``), no
    norm, one gate on the sum of the two axes' logits.

    Args:
        channels: input channels C. rd_ratio (1/4) * se_factor (2/3), rd_divisor (8).
        bias: default True. act_layer: default SiLU. gate_layer: ``"sigmoid"``. has_skip.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, rd_channels: int | None = None, rd_divisor: int = 8,
                 se_factor: float = 2 / 3, bias: bool = True, act_layer: Any = nn.SiLU, gate_layer: Any = "sigmoid",
                 has_skip: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.has_skip = has_skip
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio * se_factor, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Linear(channels, rd_channels, bias=bias, **dd)
        self.act = create_act_layer(act_layer)
        self.fc_h = nn.Linear(rd_channels, channels, bias=bias, **dd)
        self.fc_w = nn.Linear(rd_channels, channels, bias=bias, **dd)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h = self.act(self.fc1(x.mean(dim=3).transpose(1, 2)))  # (N, H, rd)
        x_w = self.act(self.fc1(x.mean(dim=2).transpose(1, 2)))  # (N, W, rd)
        a_h = self.fc_h(x_h).transpose(1, 2).unsqueeze(-1)
        a_w = self.fc_w(x_w).transpose(1, 2).unsqueeze(-2)
        out = x * self.gate(a_h + a_w)
        return out + x if self.has_skip else out


@register
class EfficientLocalAttn(nn.Module):
    """Efficient local attention: strip pools, depthwise 1-D convs (``conv_h``, ``conv_w``),
    ``GroupNorm1`` and act per axis, the product of the two gates.

    Args:
        channels: input channels C. kernel_size: default 7. bias: default False.
        act_layer: default SiLU. gate_layer: ``"sigmoid"``. norm_layer: default GroupNorm1.
        has_skip: add the input to the output.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, kernel_size: int = 7, bias: bool = False, act_layer: Any = nn.SiLU,
                 gate_layer: Any = "sigmoid", norm_layer: Any = GroupNorm1, has_skip: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.has_skip = has_skip
        self.conv_h = nn.Conv2d(channels, channels, kernel_size=(kernel_size, 1), padding=(kernel_size // 2, 0),
                                groups=channels, bias=bias, **dd)
        self.conv_w = nn.Conv2d(channels, channels, kernel_size=(1, kernel_size), padding=(0, kernel_size // 2),
                                groups=channels, bias=bias, **dd)
        norm_layer = get_norm_layer(norm_layer)
        self.norm_h = norm_layer(channels, **dd) if norm_layer is not None else nn.Identity()
        self.norm_w = norm_layer(channels, **dd) if norm_layer is not None else nn.Identity()
        self.act = create_act_layer(act_layer)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h = self.act(self.norm_h(self.conv_h(x.mean(dim=3, keepdim=True))))
        x_w = self.act(self.norm_w(self.conv_w(x.mean(dim=2, keepdim=True))))
        out = x * self.gate(x_h) * self.gate(x_w)
        return out + x if self.has_skip else out


@register
class StripAttn(nn.Module):
    """Strip attention: strip pools, optional depthwise 1-D convs, one gate on their sum.

    Args:
        channels: input channels C. use_conv: learned refinement (default True).
        kernel_size: default 3. bias: default False. gate_layer: ``"sigmoid"``. has_skip.
        Other keywords are ignored (as in timm).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, use_conv: bool = True, kernel_size: int = 3, bias: bool = False,
                 gate_layer: Any = "sigmoid", has_skip: bool = False, device=None, dtype=None, **_: Any):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.has_skip = has_skip
        self.use_conv = use_conv
        if use_conv:
            self.conv_h = nn.Conv2d(channels, channels, kernel_size=(kernel_size, 1), padding=(kernel_size // 2, 0),
                                    groups=channels, bias=bias, **dd)
            self.conv_w = nn.Conv2d(channels, channels, kernel_size=(1, kernel_size), padding=(0, kernel_size // 2),
                                    groups=channels, bias=bias, **dd)
        else:
            self.conv_h = nn.Identity()
            self.conv_w = nn.Identity()
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_hw = self.gate(self.conv_h(x.mean(dim=3, keepdim=True)) + self.conv_w(x.mean(dim=2, keepdim=True)))
        out = x * a_hw
        return out + x if self.has_skip else out
