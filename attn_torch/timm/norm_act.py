"""BatchNorm followed by an activation, with BatchNorm's own keys (``timm/layers/norm_act.py``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_torch.timm.create_act import create_act_layer


class BatchNormAct2d(nn.BatchNorm2d):
    """``BatchNorm2d`` then ``act`` (timm subclasses BatchNorm so the keys stay ``weight``, ``bias``, ...)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        apply_act: bool = True,
        act_layer: Any = nn.ReLU,
        inplace: bool = True,
        drop_layer: Any = None,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        act = create_act_layer(act_layer, inplace=inplace) if apply_act else None
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))
