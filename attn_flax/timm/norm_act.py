"""BatchNorm followed by an activation, with BatchNorm's own keys (``timm/layers/norm_act.py``), NHWC."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax.layers import BatchNorm, Dtype
from attn_flax.timm.create_act import create_act_layer, identity


class BatchNormAct2d(BatchNorm):
    """``BatchNorm`` (torch's rules) then ``act``; converts with BatchNorm's keys."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, apply_act: bool = True,
                 act_layer: Any = "relu", inplace: bool = True, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        act = create_act_layer(act_layer) if apply_act else None
        self.act = act if act is not None else identity

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(super().__call__(x))
