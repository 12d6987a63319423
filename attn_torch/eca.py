"""Efficient Channel Attention.

Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_input, check_odd, check_positive, eca_kernel_size
from attn_torch._registry import register


@register
class ECA(nn.Module):
    """ECA: a 1-D convolution across the pooled channel descriptor, then a sigmoid gate.

    Parameter names match the reference ``ECAAttention`` (``conv.weight`` of shape
    ``(1, 1, k)`` and ``conv.bias``; the official ECA code has no bias, the
    reference does, and we keep it so reference checkpoints load).

    Args:
        channels: number of input channels C (default ``None``: any). With
            ``kernel_size=None`` it selects the paper's adaptive
            ``k = |log2(C)/2 + 1/2|`` rounded up to odd; in any case it enables the
            input channel check.
        kernel_size: odd size k of the 1-D convolution, by keyword. ``None``
            (default): adaptive from ``channels``, 3 without ``channels``.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int | None = None,
        *,
        kernel_size: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if channels is not None:
            channels = check_positive("channels", channels)
        if kernel_size is None:
            kernel_size = 3 if channels is None else eca_kernel_size(channels)
        kernel_size = check_odd("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.channels = channels
        self.conv = nn.Conv1d(
            1, 1, kernel_size, padding=(kernel_size - 1) // 2, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "ECA")
        descriptor = x.mean((2, 3))[:, None, :]
        gate = torch.sigmoid(self.conv(descriptor))
        return x * gate[:, 0, :, None, None]
