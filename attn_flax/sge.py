"""Spatial Group-wise Enhance.

Li et al., "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", 2019. https://arxiv.org/abs/1905.09646
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible, check_input, check_positive
from attn_common.validation import check_at_least
from attn_flax._registry import register
from attn_flax import cpu_kernels
from attn_flax.layers import ChannelParam, Dtype, DtypeModule, at_least_float32, stable_mean


@register
class SGE(DtypeModule):
    """SGE: each channel group is gated by the similarity of its features to the group mean.

    The twin of ``attn_torch.SGE`` (torch names ``weight`` and ``bias`` of shape
    ``(1, G, 1, 1)``, stored here as ``(1, 1, 1, G)``, both initialised to 0 as in
    the reference; the official SGE code starts ``bias`` at 1). Groups are runs of
    consecutive channels; the std is the unbiased one (``ddof=1``) plus 1e-5, as
    torch's. A map with H*W = 1 (NaN in the reference) raises ``ValueError``; so
    does a channel count not divisible by ``groups``.

    Args:
        channels: number of input channels C (default ``None``: any multiple of
            ``groups``); only used to check the input.
        groups: number of channel groups G, by keyword (default 8).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.

    Input ``(N, H, W, C)`` with H*W >= 2; output has the same shape.
    """

    def __init__(
        self,
        channels: int | None = None,
        *,
        groups: int = 8,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        groups = check_positive("groups", groups)
        if channels is not None:
            channels = check_positive("channels", channels)
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
        dtype = self.computation_dtype(x)
        x = x.astype(dtype)
        t = self._standardize(self._similarity_to_group_mean(x)).astype(dtype)  # (N, H, W, G)
        gate = jax.nn.sigmoid(t * self.weight[...].astype(dtype) + self.bias[...].astype(dtype))
        return (x.reshape(b, h, w, self.groups, c // self.groups) * gate[..., None]).reshape(b, h, w, c)

    def _similarity_to_group_mean(self, x: jax.Array) -> jax.Array:
        """``t[n, h, w, g] = sum_k x[n, h, w, g, k] * mean_hw(x)[n, g, k]``."""
        b, h, w, c = x.shape
        flat = x.reshape(b, h * w, c)
        t = cpu_kernels.group_similarity(self._grouped_product, flat, stable_mean(flat, 1), self.groups)
        return t.reshape(b, h, w, self.groups)

    def _grouped_product(self, x: jax.Array, mean: jax.Array) -> jax.Array:
        """``(N, P, C)``, ``(N, C)`` -> ``(N, P, G)``: per group, the dot product of features and mean."""
        b, p, c = x.shape
        per_group = (b, p, self.groups, c // self.groups)
        wide = jnp.promote_types(x.dtype, jnp.float32)
        return jnp.einsum("npgk,ngk->npg", x.reshape(per_group), mean.reshape(per_group[:1] + per_group[2:]),
                          preferred_element_type=wide)

    @staticmethod
    def _standardize(t: jax.Array) -> jax.Array:
        """``(t - mean) / (std + 1e-5)`` over the H*W positions, in at least float32."""
        t = at_least_float32(t)
        t = t - t.mean((1, 2), keepdims=True)
        return t / (t.std((1, 2), ddof=1, keepdims=True) + 1e-5)
