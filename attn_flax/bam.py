"""Bottleneck Attention Module.

Park et al., "BAM: Bottleneck Attention Module", BMVC 2018.
https://arxiv.org/abs/1807.06514
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_batch_statistics, check_input, check_positive, check_reduction
from attn_flax._registry import register
from attn_flax.layers import BatchNorm, Conv2d, Dtype, DtypeModule, Linear, stable_mean

NUM_LAYERS = 3  # hidden layers of each branch, fixed as in the reference's BAMBlock


class NamedChain(nnx.Module):
    """Layers held as attributes of the given names and applied in that order.

    The Flax twin of an ``nn.Sequential`` built with ``add_module`` names, so the
    torch names (``fc0``, ``bn0``, ...) are the attribute names.
    """

    def __init__(self, layers: dict[str, Callable[[jax.Array], jax.Array]]):
        self.order = tuple(layers)
        for name, layer in layers.items():
            setattr(self, name, layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        for name in self.order:
            x = getattr(self, name)(x)
        return x


class BAMChannelGate(nnx.Module):
    """MLP with BatchNorm over the average-pooled descriptor: ``(N, 1, 1, C)`` logits."""

    def __init__(self, channels: int, hidden: int, **kw: Any):
        layers: dict[str, Callable[[jax.Array], jax.Array]] = {}
        width = channels
        for i in range(NUM_LAYERS):
            layers[f"fc{i}"] = Linear(width, hidden, **kw)
            layers[f"bn{i}"] = BatchNorm(hidden, **kw)
            layers[f"relu{i}"] = jax.nn.relu
            width = hidden
        layers["last_fc"] = Linear(hidden, channels, **kw)
        self.ca = NamedChain(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.ca(stable_mean(x, (1, 2)))[:, None, None, :]


class BAMSpatialGate(nnx.Module):
    """1x1 reduce, dilated 3x3 convs with BatchNorm, 1x1 to one map: ``(N, H, W, 1)`` logits."""

    def __init__(self, channels: int, hidden: int, dilation: int, **kw: Any):
        layers: dict[str, Callable[[jax.Array], jax.Array]] = {
            "conv_reduce1": Conv2d(channels, hidden, 1, **kw),
            "bn_reduce1": BatchNorm(hidden, **kw),
            "relu_reduce1": jax.nn.relu,
        }
        for i in range(NUM_LAYERS):
            layers[f"conv_{i}"] = Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, **kw)
            layers[f"bn_{i}"] = BatchNorm(hidden, **kw)
            layers[f"relu_{i}"] = jax.nn.relu
        layers["last_conv"] = Conv2d(hidden, 1, 1, **kw)
        self.sa = NamedChain(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.sa(x)


@register
class BAM(DtypeModule):
    """BAM: ``(1 + sigmoid(channel_logits + spatial_logits)) * x``, as in the paper.

    The twin of ``attn_torch.BAM`` (torch names ``ca.ca.fc{0,1,2}``,
    ``ca.ca.bn{0,1,2}``, ``ca.ca.last_fc``, ``sa.sa.conv_reduce1``,
    ``sa.sa.bn_reduce1``, ``sa.sa.conv_{0,1,2}``, ``sa.sa.bn_{0,1,2}``,
    ``sa.sa.last_conv``). Unlike the reference ``BAMBlock``, the dilated convs are
    padded by the dilation (official BAM code), so any input size works. Training
    (BatchNorm not using running averages) with batch size 1 raises a
    ``ValueError``: the channel branch's BatchNorm has one value per channel.

    Args:
        channels: number of input channels C.
        reduction: hidden width of both branches is ``channels // reduction`` (default 16).
        dilation: dilation (and padding) of the spatial branch's 3x3 convs (default 2).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        dilation: int = 2,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_reduction(channels, reduction)
        check_positive("dilation", dilation)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.channels = channels
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.ca = BAMChannelGate(channels, hidden, **kw)
        self.sa = BAMSpatialGate(channels, hidden, dilation, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "BAM")
        if not self.ca.ca.bn0.use_running_average:
            check_batch_statistics(x.shape, x.shape[0], "BAM")
        x = self.promote(x)
        return (1 + jax.nn.sigmoid(self.ca(x) + self.sa(x))) * x
