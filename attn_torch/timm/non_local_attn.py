"""Non-local attention and Bilinear Attention Transform as timm builds them
(``timm/layers/non_local_attn.py``), NCHW.

Wang et al., "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971
Chi et al., "Non-Local Neural Networks With Grouped Bilinear Attentional Transforms",
CVPR 2020. https://openaccess.thecvf.com/content_CVPR_2020/html/Chi_Non-Local_Neural_Networks_With_Grouped_Bilinear_Attentional_Transforms_CVPR_2020_paper.html
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_divisible
from attn_torch._registry import register
from attn_torch.timm.conv_bn_act import ConvNormAct
from attn_torch.timm.helpers import make_divisible


@register
class NonLocalAttn(nn.Module):
    """Spatial non-local block: embedded-Gaussian attention over all positions (``t``, ``p``,
    ``g`` 1x1 convs), projected back by ``z``, BatchNorm'd (``norm``) and added to the input.

    Args:
        in_channels: input channels C. use_scale: scale logits by ``C ** -0.5`` (default True).
        rd_ratio: hidden width ``make_divisible(C * rd_ratio, rd_divisor)`` (1/8, 8), unless
            ``rd_channels``. Other keywords are ignored (as in timm).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, in_channels: int, use_scale: bool = True, rd_ratio: float = 1 / 8,
                 rd_channels: int | None = None, rd_divisor: int = 8, device=None, dtype=None, **_: Any):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if rd_channels is None:
            rd_channels = make_divisible(in_channels * rd_ratio, divisor=rd_divisor)
        self.scale = in_channels ** -0.5 if use_scale else 1.0
        self.t = nn.Conv2d(in_channels, rd_channels, kernel_size=1, bias=True, **dd)
        self.p = nn.Conv2d(in_channels, rd_channels, kernel_size=1, bias=True, **dd)
        self.g = nn.Conv2d(in_channels, rd_channels, kernel_size=1, bias=True, **dd)
        self.z = nn.Conv2d(rd_channels, in_channels, kernel_size=1, bias=True, **dd)
        self.norm = nn.BatchNorm2d(in_channels, **dd)
        for m in (self.t, self.p, self.g, self.z):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, p, g = self.t(x), self.p(x), self.g(x)
        B, C, H, W = t.shape
        att = torch.bmm(t.view(B, C, -1).permute(0, 2, 1), p.view(B, C, -1)) * self.scale
        att = F.softmax(att, dim=2)
        y = torch.bmm(att, g.view(B, C, -1).permute(0, 2, 1))
        y = self.z(y.permute(0, 2, 1).reshape(B, C, H, W))
        return self.norm(y) + x


@register
class BilinearAttnTransform(nn.Module):
    """BAT's grouped bilinear transform: row and column block-attention matrices ``P``, ``Q``
    (from max-pooled ``conv1`` features) applied as ``P x Q``, then ``conv2``."""

    def __init__(self, in_channels: int, block_size: int, groups: int, act_layer: Any = nn.ReLU,
                 norm_layer: Any = nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = ConvNormAct(in_channels, groups, 1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.conv_p = nn.Conv2d(groups, block_size * block_size * groups, kernel_size=(block_size, 1), **dd)
        self.conv_q = nn.Conv2d(groups, block_size * block_size * groups, kernel_size=(1, block_size), **dd)
        self.conv2 = ConvNormAct(in_channels, in_channels, 1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.block_size = block_size
        self.groups = groups
        self.in_channels = in_channels

    @staticmethod
    def resize_mat(x: torch.Tensor, t: int) -> torch.Tensor:
        """Each entry of the ``(b, b)`` block matrix becomes a ``t x t`` diagonal block: ``kron(x, I_t)``."""
        if t <= 1:
            return x
        B, C, b, _ = x.shape
        eye = torch.eye(t, dtype=x.dtype, device=x.device)
        return torch.einsum("ncij,kl->ncikjl", x, eye).reshape(B, C, b * t, b * t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        bs, g = self.block_size, self.groups
        if H % bs or W % bs:
            raise ValueError(f"input {H}x{W} must be divisible by `block_size`={bs}")
        out = self.conv1(x)
        rp = F.adaptive_max_pool2d(out, (bs, 1))
        cp = F.adaptive_max_pool2d(out, (1, bs))
        p = self.conv_p(rp).view(B, g, bs, bs).sigmoid()
        q = self.conv_q(cp).view(B, g, bs, bs).sigmoid()
        p = p / p.sum(dim=3, keepdim=True)
        q = q / q.sum(dim=2, keepdim=True)
        p = p[:, :, None].expand(B, g, C // g, bs, bs).reshape(B, C, bs, bs)
        q = q[:, :, None].expand(B, g, C // g, bs, bs).reshape(B, C, bs, bs)
        p = self.resize_mat(p, H // bs)
        q = self.resize_mat(q, W // bs)
        return self.conv2(p.matmul(x).matmul(q))


@register
class BatNonLocalAttn(nn.Module):
    """BAT non-local block: ``conv1`` -> :class:`BilinearAttnTransform` (``ba``) -> ``conv2`` ->
    ``Dropout2d``, added to the input.

    Args:
        in_channels: input channels C. block_size: default 7 (H and W must be multiples).
        groups: default 2. rd_ratio: hidden width (1/4, divisor 8). drop_rate: default 0.2.
        act_layer: default ReLU. norm_layer: default BatchNorm2d. Other keywords are ignored.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, in_channels: int, block_size: int = 7, groups: int = 2, rd_ratio: float = 0.25,
                 rd_channels: int | None = None, rd_divisor: int = 8, drop_rate: float = 0.2,
                 act_layer: Any = nn.ReLU, norm_layer: Any = nn.BatchNorm2d, device=None, dtype=None, **_: Any):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if rd_channels is None:
            rd_channels = make_divisible(in_channels * rd_ratio, divisor=rd_divisor)
        check_divisible("rd_channels", rd_channels, "groups", groups)
        self.conv1 = ConvNormAct(in_channels, rd_channels, 1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.ba = BilinearAttnTransform(rd_channels, block_size, groups, act_layer=act_layer, norm_layer=norm_layer,
                                        **dd)
        self.conv2 = ConvNormAct(rd_channels, in_channels, 1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.dropout = nn.Dropout2d(p=drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv2(self.ba(self.conv1(x)))) + x
