"""BlurPool anti-aliasing (``timm/layers/blur_pool.py``), NHWC.

Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019.
https://arxiv.org/abs/1904.11486
"""

from __future__ import annotations

from math import comb
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule
from attn_flax.timm.helpers import avg_pool2d, get_padding

_PAD_MODES = {"reflect": "reflect", "constant": "constant", "replicate": "edge", "circular": "wrap"}


def blur_filter(filt_size: int) -> np.ndarray:
    """The normalised binomial filter ``c c^T`` with ``c_k = C(n-1, k) / 2^(n-1)``."""
    coeffs = np.array([comb(filt_size - 1, k) for k in range(filt_size)], np.float64) / 2 ** (filt_size - 1)
    return np.outer(coeffs, coeffs)


@register
class BlurPool2d(DtypeModule):
    """Blur with a binomial filter, then subsample by ``stride`` (depthwise, padded by ``pad_mode``).

    The filter is a constant, not a variable: no state key (as timm's non-persistent buffer).

    Args:
        channels: input channels (``None``: taken from the input).
        filt_size: filter size (default 3). stride: subsampling (default 2).
        pad_mode: ``"reflect"`` (default) or ``"constant"`` (torch ``F.pad`` modes).

    Input ``(N, H, W, C)``.
    """

    def __init__(self, channels: int | None = None, filt_size: int = 3, stride: int = 2, pad_mode: str = "reflect",
                 *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        if filt_size <= 1:
            raise ValueError(f"`filt_size`={filt_size} must be greater than 1")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"`pad_mode`={pad_mode!r} is not one of {sorted(_PAD_MODES)}")
        self.channels = channels
        self.filt_size = filt_size
        self.stride = stride
        self.pad_mode = pad_mode
        self.padding = get_padding(filt_size, stride, dilation=1)
        self.dtype = dtype
        self.param_dtype = param_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        p = self.padding
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=_PAD_MODES[self.pad_mode])
        c = x.shape[-1]
        kernel = jnp.broadcast_to(jnp.asarray(blur_filter(self.filt_size), x.dtype)[:, :, None, None],
                                  (self.filt_size, self.filt_size, 1, c))
        return jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


class AvgPool2d(nnx.Module):
    """``torch.nn.AvgPool2d(kernel_size, stride)`` on NHWC (no parameters)."""

    def __init__(self, kernel_size: int, stride: int | None = None):
        self.kernel_size = kernel_size
        self.stride = stride or kernel_size

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool2d(x, self.kernel_size, self.stride)


def create_aa(aa_layer: Any, channels: int | None = None, stride: int = 2, enable: bool = True, *,
              dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
              rngs: nnx.Rngs | None = None) -> nnx.Module | None:
    """timm's anti-aliasing factory: ``"avg"``, ``"blur"``/``"blurpool"``, ``"blurpc"`` or a torch/nnx class
    of those names; ``None`` when off."""
    if not aa_layer or not enable:
        return None
    key = (aa_layer if isinstance(aa_layer, str) else getattr(aa_layer, "__name__", "")).lower()
    key = key.replace("_", "").replace("-", "")
    if key in ("avg", "avgpool", "avgpool2d"):
        return AvgPool2d(stride)
    if key in ("blur", "blurpool", "blurpool2d", "blurpc"):
        pad_mode = "constant" if key == "blurpc" else "reflect"
        return BlurPool2d(channels, stride=stride, pad_mode=pad_mode, dtype=dtype, param_dtype=param_dtype)
    raise ValueError(f"`aa_layer`={aa_layer!r} is not known; choose 'avg', 'blur' or 'blurpc'")
