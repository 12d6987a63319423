"""Non-local attention and Bilinear Attention Transform as timm builds them
(``timm/layers/non_local_attn.py``), NHWC.

Wang et al., "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971
Chi et al., "Non-Local Neural Networks With Grouped Bilinear Attentional Transforms",
CVPR 2020. https://openaccess.thecvf.com/content_CVPR_2020/html/Chi_Non-Local_Neural_Networks_With_Grouped_Bilinear_Attentional_Transforms_CVPR_2020_paper.html
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_softmax
from attn_flax.timm.conv_bn_act import ConvNormAct
from attn_flax.timm.helpers import Conv2d, make_divisible
from attn_flax.timm.norm import BatchNorm2d


@register
class NonLocalAttn(DtypeModule):
    """Spatial non-local block; the twin of ``attn_torch.timm.NonLocalAttn`` (same arguments and keys).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, in_channels: int, use_scale: bool = True, rd_ratio: float = 1 / 8,
                 rd_channels: int | None = None, rd_divisor: int = 8, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs, **_: Any):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        if rd_channels is None:
            rd_channels = make_divisible(in_channels * rd_ratio, divisor=rd_divisor)
        self.scale = in_channels ** -0.5 if use_scale else 1.0
        self.t = Conv2d(in_channels, rd_channels, 1, **kw)
        self.p = Conv2d(in_channels, rd_channels, 1, **kw)
        self.g = Conv2d(in_channels, rd_channels, 1, **kw)
        self.z = Conv2d(rd_channels, in_channels, 1, **kw)
        self.norm = BatchNorm2d(in_channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        n, h, w, _ = x.shape
        t, p, g = (layer(x).reshape(n, h * w, -1) for layer in (self.t, self.p, self.g))
        att = stable_softmax(jnp.einsum("nic,njc->nij", t, p) * self.scale, axis=-1)
        y = jnp.einsum("nij,njc->nic", att, g).reshape(n, h, w, -1)
        return self.norm(self.z(y)) + x


def _block_max(x: jax.Array, blocks: int, axis: int) -> jax.Array:
    """``adaptive_max_pool2d`` to ``blocks`` bins along ``axis`` (1 or 2) and 1 along the other."""
    n, h, w, c = x.shape
    if axis == 1:
        return x.reshape(n, blocks, h // blocks, w, c).max((2, 3))[:, :, None, :]
    return x.reshape(n, h, blocks, w // blocks, c).max((1, 3))[:, None, :, :]


def _kron_eye(x: jax.Array, t: int) -> jax.Array:
    """``(N, C, b, b)`` -> ``(N, C, b t, b t)``: each entry becomes a ``t x t`` diagonal block."""
    if t <= 1:
        return x
    n, c, b, _ = x.shape
    return jnp.einsum("ncij,kl->ncikjl", x, jnp.eye(t, dtype=x.dtype)).reshape(n, c, b * t, b * t)


@register
class BilinearAttnTransform(DtypeModule):
    """BAT's grouped bilinear transform; the twin of ``attn_torch.timm.BilinearAttnTransform``."""

    def __init__(self, in_channels: int, block_size: int, groups: int, act_layer: Any = "relu",
                 norm_layer: Any = "batchnorm2d", *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.conv1 = ConvNormAct(in_channels, groups, 1, act_layer=act_layer, norm_layer=norm_layer, **kw)
        self.conv_p = Conv2d(groups, block_size * block_size * groups, (block_size, 1), **kw)
        self.conv_q = Conv2d(groups, block_size * block_size * groups, (1, block_size), **kw)
        self.conv2 = ConvNormAct(in_channels, in_channels, 1, act_layer=act_layer, norm_layer=norm_layer, **kw)
        self.block_size = block_size
        self.groups = groups
        self.in_channels = in_channels

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        n, h, w, c = x.shape
        bs, g = self.block_size, self.groups
        if h % bs or w % bs:
            raise ValueError(f"input {h}x{w} must be divisible by `block_size`={bs}")
        out = self.conv1(x)
        p = jax.nn.sigmoid(self.conv_p(_block_max(out, bs, 1)).reshape(n, g, bs, bs))
        q = jax.nn.sigmoid(self.conv_q(_block_max(out, bs, 2)).reshape(n, g, bs, bs))
        p = p / p.sum(3, keepdims=True)
        q = q / q.sum(2, keepdims=True)
        p = jnp.broadcast_to(p[:, :, None], (n, g, c // g, bs, bs)).reshape(n, c, bs, bs)
        q = jnp.broadcast_to(q[:, :, None], (n, g, c // g, bs, bs)).reshape(n, c, bs, bs)
        p = _kron_eye(p, h // bs)
        q = _kron_eye(q, w // bs)
        y = jnp.einsum("nchk,nkwc->nhwc", p, x)
        y = jnp.einsum("nhkc,nckw->nhwc", y, q)
        return self.conv2(y)


@register
class BatNonLocalAttn(nnx.Module):
    """BAT non-local block; the twin of ``attn_torch.timm.BatNonLocalAttn`` (same arguments and keys).

    ``Dropout2d`` with ``drop_rate > 0`` in training mode needs ``rngs`` at call time.

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, in_channels: int, block_size: int = 7, groups: int = 2, rd_ratio: float = 0.25,
                 rd_channels: int | None = None, rd_divisor: int = 8, drop_rate: float = 0.2, act_layer: Any = "relu",
                 norm_layer: Any = "batchnorm2d", *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs, **_: Any):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        if rd_channels is None:
            rd_channels = make_divisible(in_channels * rd_ratio, divisor=rd_divisor)
        check_divisible("rd_channels", rd_channels, "groups", groups)
        self.conv1 = ConvNormAct(in_channels, rd_channels, 1, act_layer=act_layer, norm_layer=norm_layer, **kw)
        self.ba = BilinearAttnTransform(rd_channels, block_size, groups, act_layer=act_layer, norm_layer=norm_layer,
                                        **kw)
        self.conv2 = ConvNormAct(rd_channels, in_channels, 1, act_layer=act_layer, norm_layer=norm_layer, **kw)
        # Channel dropout (Dropout2d); no RNG state is kept, so the module converts as is.
        self.dropout = nnx.Dropout(drop_rate, broadcast_dims=(1, 2))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.conv2(self.ba(self.conv1(x)))
        if self.dropout.rate > 0:
            y = self.dropout(y, rngs=rngs)
        return y + x.astype(y.dtype)
