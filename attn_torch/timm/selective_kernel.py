"""Selective Kernel convolution as timm builds it (``timm/layers/selective_kernel.py``), NCHW.

Li et al., "Selective Kernel Networks", CVPR 2019. https://arxiv.org/abs/1903.06586
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_common import check_divisible
from attn_torch._registry import register
from attn_torch.timm.conv_bn_act import ConvNormAct
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import make_divisible
from attn_torch.timm.norm import get_norm_layer


def _check_kernels(kernel_size: Any) -> None:
    for k in kernel_size if isinstance(kernel_size, (list, tuple)) else [kernel_size]:
        if k < 3 or k % 2 == 0:
            raise ValueError(f"`kernel_size`={kernel_size!r}: every kernel must be odd and at least 3")


@register
class SelectiveKernelAttn(nn.Module):
    """The path selector: pooled sum of the paths -> ``fc_reduce`` -> ``bn`` -> ``act`` ->
    ``fc_select``, a softmax over the paths."""

    def __init__(self, channels: int, num_paths: int = 2, attn_channels: int = 32, act_layer: Any = nn.ReLU,
                 norm_layer: Any = nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, kernel_size=1, bias=False, **dd)
        self.bn = get_norm_layer(norm_layer)(attn_channels, **dd)
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, kernel_size=1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc_select(self.act(self.bn(self.fc_reduce(x.sum(1).mean((2, 3), keepdim=True)))))
        B, C, H, W = x.shape
        return torch.softmax(x.view(B, self.num_paths, C // self.num_paths, H, W), dim=1)


@register
class SelectiveKernel(nn.Module):
    """Selective Kernel convolution: ``paths`` of ``ConvNormAct`` (3x3 with growing dilation
    by default), mixed by a softmax over paths from :class:`SelectiveKernelAttn` (``attn``).

    Args:
        in_channels: input channels. out_channels: default ``in_channels``.
        kernel_size: per-path kernels (default ``[3, 5]``); with ``keep_3x3`` a k x k path is
            a 3x3 with dilation ``(k - 1) // 2``. stride, dilation, groups: of every path.
        rd_ratio, rd_channels, rd_divisor: selector width (1/16, divisor 8).
        split_input: each path sees its share of the input channels (default True).
        act_layer: default ReLU. norm_layer: default BatchNorm2d. aa_layer: anti-aliasing.
        drop_layer: a module class after each path's norm (torch only; default none).

    Input ``(N, C, H, W)``; output ``(N, out_channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: Any = None,
                 stride: int = 1, dilation: int = 1, groups: int = 1, rd_ratio: float = 1.0 / 16,
                 rd_channels: int | None = None, rd_divisor: int = 8, keep_3x3: bool = True, split_input: bool = True,
                 act_layer: Any = nn.ReLU, norm_layer: Any = nn.BatchNorm2d, aa_layer: Any = None,
                 drop_layer: Any = None, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        out_channels = out_channels or in_channels
        kernel_size = kernel_size or [3, 5]
        _check_kernels(kernel_size)
        if not isinstance(kernel_size, (list, tuple)):
            kernel_size = [kernel_size] * 2
        if keep_3x3:
            dilations = [dilation * (k - 1) // 2 for k in kernel_size]
            kernel_size = [3] * len(kernel_size)
        else:
            dilations = [dilation] * len(kernel_size)
        self.num_paths = len(kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.split_input = split_input
        if split_input:
            check_divisible("in_channels", in_channels, "the number of paths", self.num_paths)
            in_channels = in_channels // self.num_paths
        groups = min(out_channels, groups)
        self.paths = nn.ModuleList([
            ConvNormAct(in_channels, out_channels, kernel_size=k, stride=stride, dilation=d, groups=groups,
                        act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer, drop_layer=drop_layer, **dd)
            for k, d in zip(kernel_size, dilations)
        ])
        attn_channels = rd_channels or make_divisible(out_channels * rd_ratio, divisor=rd_divisor)
        self.attn = SelectiveKernelAttn(out_channels, self.num_paths, attn_channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_input:
            x_split = torch.split(x, self.in_channels // self.num_paths, 1)
            x_paths = [op(x_split[i]) for i, op in enumerate(self.paths)]
        else:
            x_paths = [op(x) for op in self.paths]
        x = torch.stack(x_paths, dim=1)
        return torch.sum(x * self.attn(x), dim=1)
