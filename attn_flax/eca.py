"""Efficient Channel Attention.

Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_odd, check_positive, eca_kernel_size
from attn_flax._registry import register
from attn_flax.layers import Conv1d, Dtype, DtypeModule, stable_mean


@register
class ECA(DtypeModule):
    """ECA: a 1-D convolution across the pooled channel descriptor, then a sigmoid gate.

    The twin of ``attn_torch.ECA`` (torch names ``conv.weight`` ``(1, 1, k)`` and
    ``conv.bias``; the reference has the bias, the official code does not).

    Args:
        channels: number of input channels C (default ``None``: any). With
            ``kernel_size=None`` it selects the paper's adaptive
            ``k = |log2(C)/2 + 1/2|`` rounded up to odd; in any case it enables the
            input channel check.
        kernel_size: odd size k of the 1-D convolution, by keyword. ``None``
            (default): adaptive from ``channels``, 3 without ``channels``.
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int | None = None,
        *,
        kernel_size: int | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if channels is not None:
            channels = check_positive("channels", channels)
        if kernel_size is None:
            kernel_size = 3 if channels is None else eca_kernel_size(channels)
        kernel_size = check_odd("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.channels = channels
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.conv = Conv1d(
            1, 1, kernel_size, padding=(kernel_size - 1) // 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "ECA")
        x = self.promote(x)
        descriptor = stable_mean(x, (1, 2))[:, :, None]  # (N, C, 1): channels as the sequence
        gate = jax.nn.sigmoid(self.conv(descriptor))
        return x * gate[:, None, None, :, 0]
