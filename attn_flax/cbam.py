"""Convolutional Block Attention Module.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_odd, check_reduction
from attn_flax._registry import register
from attn_flax import cpu_kernels
from attn_flax.layers import Conv2d, Dtype, DtypeModule, stable_mean


class CBAMChannelGate(nnx.Module):
    """Shared MLP (1x1 convs) over max- and average-pooled descriptors, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        hidden = check_reduction(channels, reduction)
        kw = {"bias": False, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.se = nnx.Sequential(Conv2d(channels, hidden, 1, **kw), jax.nn.relu, Conv2d(hidden, channels, 1, **kw))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.se(x.max((1, 2), keepdims=True)) + self.se(stable_mean(x, (1, 2), keepdims=True)))


class CBAMSpatialGate(nnx.Module):
    """A k x k conv over the channel-wise max and mean maps, sigmoid."""

    def __init__(self, kernel_size: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.conv = Conv2d(2, 1, kernel_size, padding=kernel_size // 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.from_pooled(_channel_pool(x))

    def from_pooled(self, pooled: jax.Array) -> jax.Array:
        """The gate from the channel-wise max and mean maps ``(N, H, W, 2)``."""
        return jax.nn.sigmoid(self.conv(pooled))


def _channel_pool(x: jax.Array) -> jax.Array:
    """Max and mean over channels, ``(N, H, W, 2)``."""
    return jnp.concatenate([x.max(-1, keepdims=True), stable_mean(x, -1, keepdims=True)], axis=-1)


def _gate_and_pool(x: jax.Array, gate: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x * gate`` and its channel-wise max and mean maps."""
    gated = x * gate
    return gated, _channel_pool(gated)


@register
class CBAM(DtypeModule):
    """CBAM: channel gate, then spatial gate, applied in sequence.

    The twin of ``attn_torch.CBAM`` (torch names ``ca.se.0.weight``,
    ``ca.se.2.weight``, ``sa.conv.weight``, ``sa.conv.bias``). Default
    ``kernel_size`` is the paper's 7, not the reference's 49.

    Args:
        channels: number of input channels C.
        reduction: hidden width of the channel MLP is ``channels // reduction``.
        kernel_size: odd size of the spatial conv (default 7).
        residual: add the input to the result, as the reference does (default True).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        residual: bool = True,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_odd("kernel_size", kernel_size)
        self.channels = channels
        self.residual = residual
        self.dtype = dtype
        self.param_dtype = param_dtype
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.ca = CBAMChannelGate(channels, reduction, **kw)
        self.sa = CBAMSpatialGate(kernel_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "CBAM")
        x = self.promote(x)
        out, pooled = cpu_kernels.gate_and_channel_pool(_gate_and_pool, x, self.ca(x))
        out = out * self.sa.from_pooled(pooled)
        return out + x if self.residual else out
