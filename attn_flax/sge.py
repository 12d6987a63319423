"""Spatial Group-wise Enhance.

Li et al., "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", 2019. https://arxiv.org/abs/1905.09646
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible, check_input, check_positive
from attn_common.validation import check_at_least
from attn_flax._registry import register
from attn_flax.layers import ChannelParam, Dtype, at_least_float32, compute_dtype, materialized, stable_mean


@register
class SGE(nnx.Module):
    """SGE: each channel group is gated by the similarity of its features to the group mean.

    The twin of ``attn_torch.SGE`` (torch names ``weight`` and ``bias`` of shape
    ``(1, G, 1, 1)``, stored here as ``(1, 1, 1, G)``, both initialised to 0 as in
    the reference; the official SGE code starts ``bias`` at 1). Groups are runs of
    consecutive channels; the std is the unbiased one (``ddof=1``) plus 1e-5, as
    torch's. A map with H*W = 1 (NaN in the reference) raises ``ValueError``; so
    does a channel count not divisible by ``groups``.

    Args:
        groups: number of channel groups G.
        channels: number of input channels C (default ``None``: any multiple of
            ``groups``); only used to check the input.
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)`` with H*W >= 2; output has the same shape.
    """

    def __init__(
        self,
        groups: int,
        channels: int | None = None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive("groups", groups)
        if channels is not None:
            check_positive("channels", channels)
            check_divisible("channels", channels, "`groups`", groups)
        self.groups = groups
        self.channels = channels
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.weight = ChannelParam(jnp.zeros((1, 1, 1, groups), param_dtype))
        self.bias = ChannelParam(jnp.zeros((1, 1, 1, groups), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.channels, "NHWC", "SGE")
        b, h, w, c = x.shape
        check_divisible("channels", c, "`groups`", self.groups)
        why = f"SGE divides by the unbiased std over the H*W positions, NaN for one; input shape {tuple(x.shape)}"
        check_at_least("H*W", h * w, 2, why)
        dtype = compute_dtype(self.dtype, x, self.param_dtype)
        x = x.astype(dtype)
        t = self._standardize(self._similarity_to_group_mean(x)).astype(dtype)  # (N, H, W, G)
        gate = jax.nn.sigmoid(t * self.weight[...].astype(dtype) + self.bias[...].astype(dtype))
        return (x.reshape(b, h, w, self.groups, c // self.groups) * gate[..., None]).reshape(b, h, w, c)

    def _similarity_to_group_mean(self, x: jax.Array) -> jax.Array:
        """``t[n, h, w, g] = sum_k x[n, h, w, g, k] * mean_hw(x)[n, g, k]``."""
        b, h, w, c = x.shape
        t = _grouped_similarity(x.reshape(b, h * w, c), self.groups)
        return t.reshape(b, h, w, self.groups)

    @staticmethod
    def _standardize(t: jax.Array) -> jax.Array:
        """``(t - mean) / (std + 1e-5)`` over the H*W positions, in at least float32."""
        t = at_least_float32(t)
        t = t - t.mean((1, 2), keepdims=True)
        return t / (t.std((1, 2), ddof=1, keepdims=True) + 1e-5)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _grouped_similarity(x: jax.Array, groups: int) -> jax.Array:
    """``t[n, p, g] = sum_k x[n, p, g, k] * mean_p(x)[n, g, k]`` for ``x`` of shape (N, P, C).

    Forward: one matrix product with a block-diagonal ``(C, G)`` matrix per sample, which
    reads ``x`` once in its own layout; written with broadcasts, XLA:CPU stored the full-size
    ``x * mean`` (SGE eval at 32x256x28x28: 4.7-15.6 ms, as a product 4.0-4.4 ms). Backward,
    written by hand: the mean's gradient as the product ``dt^T x`` (autodiff's gradient
    contracted ``x`` over its positions, 8.4 ms alone), the input gradient elementwise with
    that small result materialised (fused into it, its reduction ran per element: SGE
    training step 40 -> 25 ms; as a second product stored full size, 11-14 ms; as written,
    9-14 ms).

    Without differentiation (eval) the mean is materialised first: fused into the product's
    YNNPACK fusion the pair took 1.87-1.93 ms at 32x256x28x28, apart 1.44-1.53 ms (the same at
    8x64x56x56). The training step's forward keeps the fused form: with the mean materialised
    there too, the step took 6.8-12.8 ms against 6.3-6.4 (fastest calls, alternating runs).
    """
    return _similarity(x, materialized(stable_mean(x, 1)), groups)


def _block_diagonal(mean: jax.Array, groups: int) -> jax.Array:
    """``(N, C)`` -> ``(N, C, G)``, column ``g`` holding ``mean`` on the channels of group ``g``."""
    group_of_channel = jnp.repeat(jnp.eye(groups, dtype=mean.dtype), mean.shape[1] // groups, axis=0)
    return mean[:, :, None] * group_of_channel


def _similarity(x: jax.Array, mean: jax.Array, groups: int) -> jax.Array:
    return jax.lax.dot_general(x, _block_diagonal(mean, groups), (((2,), (1,)), ((0,), (0,))),
                               preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))


def _grouped_similarity_fwd(x: jax.Array, groups: int):
    mean = stable_mean(x, 1)
    return _similarity(x, mean, groups), (x, mean)


def _grouped_similarity_bwd(groups: int, residuals, dt: jax.Array):
    x, mean = residuals
    n, p, c = x.shape
    # The mean's gradient dmean[n, c] = sum_p x[n, p, c] dt[n, p, group(c)]: the diagonal blocks of dt^T x.
    every_group = jax.lax.dot_general(dt.astype(x.dtype), x, (((1,), (1,)), ((0,), (0,))),
                                      preferred_element_type=dt.dtype).reshape(n, groups, groups, c // groups)
    dmean = (every_group * jnp.eye(groups, dtype=dt.dtype)[:, :, None]).sum(1).reshape(n, c)
    # dx = dt[group(c)] * mean[c] + dmean[c] / P, elementwise, so that XLA fuses it with the rest of
    # the input gradient; dmean materialised first, or XLA fuses its reduction into that loop.
    per_group = (n, 1, groups, c // groups)
    mean, dmean = materialized((mean.astype(dt.dtype), dmean / p))
    dx = dt[..., None] * mean.reshape(per_group) + dmean.reshape(per_group)
    return (dx.reshape(x.shape).astype(x.dtype),)


_grouped_similarity.defvjp(_grouped_similarity_fwd, _grouped_similarity_bwd)
