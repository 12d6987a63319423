"""Lambda layer as timm builds it (``timm/layers/lambda_layer.py``), NHWC.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021.
https://arxiv.org/abs/2102.08602 . timm's intra-depth ``u`` is 1.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_common import check_divisible
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_softmax
from attn_flax.timm.helpers import Conv2d, Conv3d, avg_pool2d, make_divisible, to_2tuple
from attn_flax.timm.norm import BatchNorm2d


def rel_pos_indices(size: Sequence[int]) -> np.ndarray:
    """``(2, H*W, H*W)`` relative (row, column) offsets between positions, shifted to be >= 0."""
    h, w = to_2tuple(size)
    pos = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = pos[:, None, :] - pos[:, :, None]
    return rel + np.array([h - 1, w - 1])[:, None, None]


@register
class LambdaLayer(DtypeModule):
    """Lambda layer; the twin of ``attn_torch.timm.LambdaLayer`` (same arguments and keys;
    ``conv_lambda`` is a 3-D convolution over (H, W, value) as in timm).

    Input ``(N, H, W, C)``; output ``(N, H / stride, W / stride, dim_out)``.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: Sequence[int] | None = None, stride: int = 1,
                 num_heads: int = 4, dim_head: int | None = 16, r: int | None = 9, qk_ratio: float = 1.0,
                 qkv_bias: bool = False, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        dim_out = dim_out or dim
        check_divisible("dim_out", dim_out, "num_heads", num_heads)
        self.dim_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.num_heads = num_heads
        self.dim_v = dim_out // num_heads
        self.qkv = Conv2d(dim, num_heads * self.dim_qk + self.dim_qk + self.dim_v, 1, bias=qkv_bias, **kw)
        self.norm_q = BatchNorm2d(num_heads * self.dim_qk, **kw)
        self.norm_v = BatchNorm2d(self.dim_v, **kw)
        if r is not None:
            self.conv_lambda = Conv3d(1, self.dim_qk, (r, r, 1), padding=(r // 2, r // 2, 0), **kw)
            self.pos_emb = None
            self.feat_size = None
        else:
            if feat_size is None:
                raise ValueError("`feat_size`=None: LambdaLayer with r=None needs the feature size")
            self.feat_size = to_2tuple(feat_size)
            rel_size = [2 * s - 1 for s in self.feat_size]
            self.conv_lambda = None
            init = nnx.initializers.truncated_normal(0.02)
            self.pos_emb = nnx.Param(init(rngs.params(), (rel_size[0], rel_size[1], self.dim_qk), param_dtype))
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        n, h, w, _ = x.shape
        m = h * w
        heads, dk, dv = self.num_heads, self.dim_qk, self.dim_v
        qkv = self.qkv(x)
        q = self.norm_q(qkv[..., : heads * dk]).reshape(n, m, heads, dk).transpose(0, 2, 1, 3)  # N, heads, M, K
        k = stable_softmax(qkv[..., heads * dk: heads * dk + dk].reshape(n, m, dk), axis=1)  # N, M, K
        v = self.norm_v(qkv[..., heads * dk + dk:])  # N, H, W, V
        v_flat = v.reshape(n, m, dv)
        content_out = jnp.einsum("nhmk,nkv->nhmv", q, jnp.einsum("nmk,nmv->nkv", k, v_flat))
        if self.pos_emb is None:
            position_lam = self.conv_lambda(v[..., None])  # N, H, W, V, K
            position_lam = position_lam.reshape(n, m, dv, dk).transpose(0, 1, 3, 2)  # N, M, K, V
            position_out = jnp.einsum("nhmk,nmkv->nhmv", q, position_lam)
        else:
            if (h, w) != self.feat_size:
                raise ValueError(f"input {h}x{w} differs from `feat_size`={self.feat_size}")
            idx = rel_pos_indices(self.feat_size)
            pos_emb = self.pos_emb[...].astype(q.dtype)[idx[0], idx[1]]  # M, M, K
            position_out = jnp.einsum("nhmk,mjk,njv->nhmv", q, pos_emb, v_flat)
        out = (content_out + position_out).transpose(0, 2, 1, 3).reshape(n, h, w, heads * dv)
        return avg_pool2d(out, 2, 2) if self.stride == 2 else out
