"""Gather-Excite as timm builds it (``timm/layers/gather_excite.py``), NCHW.

Hu et al., "Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks",
NeurIPS 2018. https://arxiv.org/abs/1810.12348
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer, get_act_layer
from attn_torch.timm.helpers import get_padding, make_divisible, to_2tuple
from attn_torch.timm.mlp import ConvMlp
from attn_torch.timm.norm import get_norm_layer


@register
class GatherExcite(nn.Module):
    """Gather (global or strided local pooling, optionally learned depthwise convs), then
    excite (``ConvMlp``), upsample (nearest) and gate.

    timm 1.0.31 cannot build ``extra_params=True`` (``*dd`` for ``**dd``); this is the
    intended behaviour, which the goldens record.

    Args:
        channels: input channels C. feat_size: (H, W), needed for ``extent=0`` with params.
        extra_params: learned gather (depthwise convs + BatchNorm). extent: 0 (global) or
            an even pooling extent. use_mlp: excite with ``ConvMlp`` (default True).
        rd_ratio: default 1/16 (``rd_divisor`` 1). add_maxpool: average mean and max.
        act_layer: default ReLU. norm_layer: default BatchNorm2d. gate_layer: ``"sigmoid"``.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, feat_size: Sequence[int] | None = None, extra_params: bool = False,
                 extent: int = 0, use_mlp: bool = True, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, add_maxpool: bool = False, act_layer: Any = nn.ReLU,
                 norm_layer: Any = nn.BatchNorm2d, gate_layer: Any = "sigmoid", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.add_maxpool = add_maxpool
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        self.extent = extent
        if extent and extent % 2:
            raise ValueError(f"`extent`={extent} must be 0 (global) or even")
        if extra_params:
            self.gather = nn.Sequential()
            if extent == 0:
                if feat_size is None:
                    raise ValueError("`feat_size`=None: GatherExcite with extent=0 and extra_params needs it")
                k = to_2tuple(feat_size)
                self.gather.add_module("conv1", nn.Conv2d(channels, channels, k, padding=get_padding(k),
                                                          groups=channels, bias=False, **dd))
                if norm_layer:
                    self.gather.add_module("norm1", nn.BatchNorm2d(channels, **dd))
            else:
                num_conv = int(math.log2(extent))
                for i in range(num_conv):
                    self.gather.add_module(f"conv{i + 1}", nn.Conv2d(
                        channels, channels, 3, stride=2, padding=get_padding(3, 2), groups=channels, bias=False, **dd))
                    if norm_layer:
                        self.gather.add_module(f"norm{i + 1}", nn.BatchNorm2d(channels, **dd))
                    if i != num_conv - 1:
                        self.gather.add_module(f"act{i + 1}", act_layer(inplace=True))
        else:
            self.gather = None
            self.gk = self.extent * 2 - 1 if extent else 0
            self.gs = self.extent
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.mlp = ConvMlp(channels, rd_channels, act_layer=act_layer, **dd) if use_mlp else nn.Identity()
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.gather is not None:
            x_ge = self.gather(x)
        elif self.extent == 0:
            x_ge = x.mean(dim=(2, 3), keepdim=True)
            if self.add_maxpool:
                x_ge = 0.5 * x_ge + 0.5 * x.amax((2, 3), keepdim=True)
        else:
            x_ge = F.avg_pool2d(x, kernel_size=self.gk, stride=self.gs, padding=self.gk // 2, count_include_pad=False)
            if self.add_maxpool:
                x_ge = 0.5 * x_ge + 0.5 * F.max_pool2d(x, kernel_size=self.gk, stride=self.gs, padding=self.gk // 2)
        x_ge = self.mlp(x_ge)
        if x_ge.shape[-1] != 1 or x_ge.shape[-2] != 1:
            x_ge = F.interpolate(x_ge, size=size)
        return x * self.gate(x_ge)
