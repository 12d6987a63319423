"""timm's ``ConvMlp`` (``timm/layers/mlp.py``): an MLP of 1x1 convolutions on an NHWC map."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv2d, to_2tuple
from attn_flax.timm.norm import get_norm_layer


@register
class ConvMlp(DtypeModule):
    """``fc1`` (1x1 conv) -> ``norm`` -> ``act`` -> ``drop`` -> ``fc2``; the twin of ``attn_torch.timm.ConvMlp``.

    Input ``(N, H, W, C)``.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Any = "relu", norm_layer: Any = None, bias: Any = True, drop: float = 0.0, *,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = to_2tuple(bias)
        norm_layer = get_norm_layer(norm_layer)
        self.fc1 = Conv2d(in_features, hidden_features, 1, bias=bias[0], **kw)
        self.norm = norm_layer(hidden_features, **kw) if norm_layer else None
        self.act = create_act_layer(act_layer)
        self.drop = nnx.Dropout(drop) if drop else None  # rngs at call time: no RNG state to convert
        self.fc2 = Conv2d(hidden_features, out_features, 1, bias=bias[1], **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.fc1(self.promote(x))
        if self.norm is not None:
            x = self.norm(x)
        x = self.act(x)
        return self.fc2(self.drop(x) if self.drop is not None else x)
