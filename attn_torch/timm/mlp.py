"""timm's ``ConvMlp`` (``timm/layers/mlp.py``): an MLP of 1x1 convolutions on an NCHW map."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.create_act import create_act_layer
from attn_torch.timm.helpers import to_2tuple
from attn_torch.timm.norm import get_norm_layer


@register
class ConvMlp(nn.Module):
    """``fc1`` (1x1 conv) -> ``norm`` -> ``act`` -> ``drop`` -> ``fc2`` (1x1 conv), keys as timm's.

    Args:
        in_features: input channels. hidden_features, out_features: default ``in_features``.
        act_layer: activation (default ReLU). norm_layer: optional norm after ``fc1``.
        bias: one bool or a pair for ``fc1``/``fc2``. drop: dropout probability.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Any = nn.ReLU, norm_layer: Any = None, bias: Any = True, drop: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = to_2tuple(bias)
        norm_layer = get_norm_layer(norm_layer)
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=1, bias=bias[0], **dd)
        self.norm = norm_layer(hidden_features, **dd) if norm_layer else nn.Identity()
        self.act = create_act_layer(act_layer)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_features, out_features, kernel_size=1, bias=bias[1], **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.norm(self.fc1(x)))))
