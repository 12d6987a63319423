"""Global Context block as timm builds it (``timm/layers/global_context.py``), NCHW.

Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCVW 2019. https://arxiv.org/abs/1904.11492
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer, get_act_layer
from attn_torch.timm.helpers import make_divisible
from attn_torch.timm.mlp import ConvMlp
from attn_torch.timm.norm import LayerNorm2d


@register
class GlobalContext(nn.Module):
    """Softmax attention pooling (``conv_attn``) to one context vector, then a scaling
    gate (``mlp_scale``) and/or an additive transform (``mlp_add``), each a ``ConvMlp``
    with ``LayerNorm2d``.

    Args:
        channels: input channels C. use_attn: attention pooling (else mean).
        fuse_add, fuse_scale: which fusions (default scale only; ``gca``: add only).
        init_last_zero: kept for timm compatibility. rd_ratio: default 1/8 (``rd_divisor`` 1).
        act_layer: default ReLU. gate_layer: default ``"sigmoid"``.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, use_attn: bool = True, fuse_add: bool = False, fuse_scale: bool = True,
                 init_last_zero: bool = False, rd_ratio: float = 1.0 / 8, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: Any = nn.ReLU, gate_layer: Any = "sigmoid", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        act_layer = get_act_layer(act_layer)
        self.conv_attn = nn.Conv2d(channels, 1, kernel_size=1, bias=True, **dd) if use_attn else None
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        mlp = dict(act_layer=act_layer, norm_layer=LayerNorm2d, **dd)
        self.mlp_add = ConvMlp(channels, rd_channels, **mlp) if fuse_add else None
        self.mlp_scale = ConvMlp(channels, rd_channels, **mlp) if fuse_scale else None
        self.gate = create_act_layer(gate_layer)
        self.init_last_zero = init_last_zero
        if self.conv_attn is not None:
            nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        if self.mlp_add is not None:
            nn.init.zeros_(self.mlp_add.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.conv_attn is not None:
            attn = F.softmax(self.conv_attn(x).reshape(B, 1, H * W), dim=-1).unsqueeze(3)
            context = (x.reshape(B, C, H * W).unsqueeze(1) @ attn).view(B, C, 1, 1)
        else:
            context = x.mean(dim=(2, 3), keepdim=True)
        if self.mlp_scale is not None:
            x = x * self.gate(self.mlp_scale(context))
        if self.mlp_add is not None:
            x = x + self.mlp_add(context)
        return x
