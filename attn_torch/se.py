"""Squeeze-and-Excitation.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018.
https://arxiv.org/abs/1709.01507
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_input, check_reduction
from attn_torch._registry import register


@register
class SE(nn.Module):
    """Squeeze-and-Excitation channel gate: ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    Parameter names match the reference ``SEAttention`` (``fc.0.weight``,
    ``fc.2.weight``, no biases). Unlike the reference, a ``reduction`` that would
    leave zero hidden units raises instead of silently returning ``0.5 * x``.

    Args:
        channels: number of input channels C.
        reduction: hidden width is ``channels // reduction`` (default 16).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, reduction: int = 16, *, device=None, dtype=None):
        super().__init__()
        hidden = check_reduction(channels, reduction)
        self.channels = channels
        self.reduction = reduction
        factory = {"device": device, "dtype": dtype}
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False, **factory),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "SE")
        gate = self.fc(x.mean((2, 3)))
        return x * gate[:, :, None, None]
