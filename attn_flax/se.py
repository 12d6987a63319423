"""Squeeze-and-Excitation.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018.
https://arxiv.org/abs/1709.01507
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_reduction
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, Linear, stable_mean


@register
class SE(DtypeModule):
    """Squeeze-and-Excitation channel gate: ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    The twin of ``attn_torch.SE`` (torch names ``fc.0.weight``, ``fc.2.weight``).
    A ``reduction`` that would leave zero hidden units raises.

    Args:
        channels: number of input channels C.
        reduction: hidden width is ``channels // reduction`` (default 16).
        dtype: computation dtype (default: inferred from input and parameters; see
            ``attn_flax.layers`` for the mixed-precision convention).
        param_dtype: parameter dtype (default float32).
        rngs: random number generators for the initialisation.

    Input ``(N, H, W, C)``; output has the same shape.

    Example::

        >>> se = SE(64, rngs=nnx.Rngs(0))
        >>> se(jnp.ones((2, 8, 8, 64))).shape
        (2, 8, 8, 64)
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_reduction(channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.dtype = dtype
        self.param_dtype = param_dtype
        kw = {"bias": False, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.fc = nnx.Sequential(
            Linear(channels, hidden, **kw), jax.nn.relu, Linear(hidden, channels, **kw), jax.nn.sigmoid
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "SE")
        x = self.promote(x)
        gate = self.fc(stable_mean(x, (1, 2)))
        return x * gate[:, None, None, :]
