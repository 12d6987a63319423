"""Gather-Excite as timm builds it (``timm/layers/gather_excite.py``), NHWC.

Hu et al., "Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks",
NeurIPS 2018. https://arxiv.org/abs/1810.12348
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_mean
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import (Conv2d, NamedSequential, avg_pool2d, get_padding, interpolate_nearest,
                                    make_divisible, max_pool2d, to_2tuple)
from attn_flax.timm.mlp import ConvMlp
from attn_flax.timm.norm import BatchNorm2d, get_norm_layer


@register
class GatherExcite(DtypeModule):
    """Gather-Excite; the twin of ``attn_torch.timm.GatherExcite`` (same arguments and keys,
    ``gather.conv1.weight``, ``gather.norm1.*``, ``mlp.fc1.*``, ...).

    Input ``(N, H, W, C)``; output has the same shape.
    """

    def __init__(self, channels: int, feat_size: Sequence[int] | None = None, extra_params: bool = False,
                 extent: int = 0, use_mlp: bool = True, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, add_maxpool: bool = False, act_layer: Any = "relu",
                 norm_layer: Any = "batchnorm2d", gate_layer: Any = "sigmoid", *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.add_maxpool = add_maxpool
        self.extent = extent
        if extent and extent % 2:
            raise ValueError(f"`extent`={extent} must be 0 (global) or even")
        act = create_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        if extra_params:
            layers: list[tuple[str, Any]] = []
            if extent == 0:
                if feat_size is None:
                    raise ValueError("`feat_size`=None: GatherExcite with extent=0 and extra_params needs it")
                k = to_2tuple(feat_size)
                layers.append(("conv1", Conv2d(channels, channels, k, padding=get_padding(k), groups=channels,
                                               bias=False, **kw)))
                if norm_layer:
                    layers.append(("norm1", BatchNorm2d(channels, **kw)))
            else:
                num_conv = int(math.log2(extent))
                for i in range(num_conv):
                    layers.append((f"conv{i + 1}", Conv2d(channels, channels, 3, stride=2, padding=get_padding(3, 2),
                                                          groups=channels, bias=False, **kw)))
                    if norm_layer:
                        layers.append((f"norm{i + 1}", BatchNorm2d(channels, **kw)))
                    if i != num_conv - 1:
                        layers.append((f"act{i + 1}", act))
            self.gather = NamedSequential(*layers)
        else:
            self.gather = None
            self.gk = self.extent * 2 - 1 if extent else 0
            self.gs = self.extent
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.mlp = ConvMlp(channels, rd_channels, act_layer=act_layer, **kw) if use_mlp else None
        self.gate = create_act_layer(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        size = x.shape[1:3]
        if self.gather is not None:
            x_ge = self.gather(x)
        elif self.extent == 0:
            x_ge = stable_mean(x, (1, 2), keepdims=True)
            if self.add_maxpool:
                x_ge = 0.5 * x_ge + 0.5 * x.max((1, 2), keepdims=True)
        else:
            x_ge = avg_pool2d(x, self.gk, self.gs, self.gk // 2, count_include_pad=False)
            if self.add_maxpool:
                x_ge = 0.5 * x_ge + 0.5 * max_pool2d(x, self.gk, self.gs, self.gk // 2)
        if self.mlp is not None:
            x_ge = self.mlp(x_ge)
        if x_ge.shape[1] != 1 or x_ge.shape[2] != 1:
            x_ge = interpolate_nearest(x_ge, size)
        return x * self.gate(x_ge)
