"""Convolution, norm and activation as one block (``timm/layers/conv_bn_act.py``), NHWC."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common.timm import layer_name
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule
from attn_flax.timm.blur_pool import create_aa
from attn_flax.timm.helpers import Conv2d, get_padding
from attn_flax.timm.norm_act import BatchNormAct2d


@register
class ConvNormAct(DtypeModule):
    """``conv`` -> ``bn`` (BatchNorm + activation) -> optional anti-aliasing ``aa``; the twin of
    ``attn_torch.timm.ConvNormAct`` (keys ``conv.weight``, ``bn.weight``, ``bn.running_mean``, ...).

    Input ``(N, H, W, C)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: Any = "", dilation: int = 1, groups: int = 1, bias: bool = False, apply_norm: bool = True,
                 apply_act: bool = True, norm_layer: Any = "batchnorm2d", act_layer: Any = "relu",
                 aa_layer: Any = None, drop_layer: Any = None, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        if drop_layer is not None:
            raise ValueError(f"`drop_layer`={drop_layer!r}: not supported by the Flax ConvNormAct")
        self.dtype = dtype
        self.param_dtype = param_dtype
        use_aa = aa_layer is not None and stride > 1
        if padding in ("", None):
            padding = get_padding(kernel_size, 1 if use_aa else stride, dilation)
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=1 if use_aa else stride, padding=padding,
                           dilation=dilation, groups=groups, bias=bias, **kw)
        if apply_norm:
            if layer_name(norm_layer) != "batchnorm2d":
                raise ValueError(f"`norm_layer`={norm_layer!r}: ConvNormAct supports BatchNorm2d only")
            self.bn = BatchNormAct2d(out_channels, apply_act=apply_act, act_layer=act_layer, **kw)
        else:
            self.bn = None
        self.aa = create_aa(aa_layer, out_channels, stride=stride, enable=use_aa, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.promote(x))
        if self.bn is not None:
            x = self.bn(x)
        if self.aa is not None:
            x = self.aa(x)
        return x


ConvBnAct = ConvNormAct
