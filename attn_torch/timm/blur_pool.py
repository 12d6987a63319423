"""BlurPool anti-aliasing (``timm/layers/blur_pool.py``), NCHW.

Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019.
https://arxiv.org/abs/1904.11486
"""

from __future__ import annotations

from math import comb
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_torch._registry import register
from attn_torch.timm.helpers import get_padding


def blur_filter(filt_size: int) -> list[list[float]]:
    """The normalised binomial filter ``c c^T`` with ``c_k = C(n-1, k) / 2^(n-1)``."""
    coeffs = [comb(filt_size - 1, k) / 2 ** (filt_size - 1) for k in range(filt_size)]
    return [[a * b for b in coeffs] for a in coeffs]


@register
class BlurPool2d(nn.Module):
    """Blur with a binomial filter, then subsample by ``stride`` (depthwise, padded by ``pad_mode``).

    The filter is a non-persistent buffer: it is not in the state dict (as in timm).

    Args:
        channels: input channels (``None``: taken from the input).
        filt_size: filter size (default 3). stride: subsampling (default 2).
        pad_mode: ``F.pad`` mode, ``"reflect"`` (default) or ``"constant"``.
    """

    def __init__(self, channels: int | None = None, filt_size: int = 3, stride: int = 2, pad_mode: str = "reflect",
                 device=None, dtype=None):
        super().__init__()
        if filt_size <= 1:
            raise ValueError(f"`filt_size`={filt_size} must be greater than 1")
        self.channels = channels
        self.filt_size = filt_size
        self.stride = stride
        self.pad_mode = pad_mode
        self.padding = [get_padding(filt_size, stride, dilation=1)] * 4
        filt = torch.tensor(blur_filter(filt_size), device=device, dtype=dtype)[None, None]
        self.register_buffer("filt", filt.repeat(channels or 1, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding, mode=self.pad_mode)
        channels = x.shape[1]
        weight = self.filt.expand(channels, 1, self.filt_size, self.filt_size)
        return F.conv2d(x, weight.to(x.dtype), stride=self.stride, groups=channels)


def create_aa(aa_layer: Any, channels: int | None = None, stride: int = 2, enable: bool = True,
              device=None, dtype=None) -> nn.Module | None:
    """timm's anti-aliasing factory: ``"avg"``, ``"blur"``/``"blurpool"``, ``"blurpc"`` or a class; ``None`` when off."""
    if not aa_layer or not enable:
        return None
    if isinstance(aa_layer, str) or not isinstance(aa_layer, type):
        key = (aa_layer if isinstance(aa_layer, str) else getattr(aa_layer, "__name__", "")).lower()
        key = key.replace("_", "").replace("-", "")
        if key in ("avg", "avgpool", "avgpool2d"):
            return nn.AvgPool2d(stride)  # timm falls back to AvgPool2d(stride)
        if key in ("blur", "blurpool", "blurpool2d"):
            return BlurPool2d(channels, stride=stride, device=device, dtype=dtype)
        if key == "blurpc":
            return BlurPool2d(channels, stride=stride, pad_mode="constant", device=device, dtype=dtype)
        raise ValueError(f"`aa_layer`={aa_layer!r} is not known; choose 'avg', 'blur' or 'blurpc'")
    if issubclass(aa_layer, BlurPool2d):
        return aa_layer(channels, stride=stride, device=device, dtype=dtype)
    try:
        return aa_layer(channels=channels, stride=stride)
    except TypeError:
        return aa_layer(stride)
