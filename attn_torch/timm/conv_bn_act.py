"""Convolution, norm and activation as one block (``timm/layers/conv_bn_act.py``), NCHW."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.blur_pool import create_aa
from attn_torch.timm.helpers import get_padding
from attn_torch.timm.norm_act import BatchNormAct2d
from attn_common.timm import layer_name


@register
class ConvNormAct(nn.Module):
    """``conv`` -> ``bn`` (norm + activation) -> optional anti-aliasing ``aa``.

    Keys as timm's: ``conv.weight``, ``bn.weight``, ``bn.bias``, ``bn.running_mean``, ...
    Only BatchNorm is supported as ``norm_layer`` (the one timm's attention layers use).
    Padding ``""`` or ``None`` is timm's symmetric ``get_padding``. ``drop_layer`` (a module
    class, e.g. DropBlock) runs between the norm and the activation (torch only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: Any = "",
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        apply_norm: bool = True,
        apply_act: bool = True,
        norm_layer: Any = nn.BatchNorm2d,
        act_layer: Any = nn.ReLU,
        aa_layer: Any = None,
        drop_layer: Any = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        use_aa = aa_layer is not None and stride > 1
        if padding in ("", None):
            padding = get_padding(kernel_size, 1 if use_aa else stride, dilation)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1 if use_aa else stride,
                              padding=padding, dilation=dilation, groups=groups, bias=bias, **dd)
        if apply_norm:
            if layer_name(norm_layer) != "batchnorm2d":
                raise ValueError(f"`norm_layer`={norm_layer!r}: ConvNormAct supports BatchNorm2d only")
            self.bn = BatchNormAct2d(out_channels, apply_act=apply_act, act_layer=act_layer, drop_layer=drop_layer,
                                     **dd)
        else:
            self.bn = nn.Sequential()
            if drop_layer:
                self.bn.add_module("drop", drop_layer())
        self.aa = create_aa(aa_layer, out_channels, stride=stride, enable=use_aa, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.aa is not None:
            x = self.aa(x)
        return x


ConvBnAct = ConvNormAct
