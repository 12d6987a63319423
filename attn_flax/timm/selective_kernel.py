"""Selective Kernel convolution as timm builds it (``timm/layers/selective_kernel.py``), NHWC.

Li et al., "Selective Kernel Networks", CVPR 2019. https://arxiv.org/abs/1903.06586
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_divisible
from attn_flax._registry import register
from attn_flax.layers import Dtype, DtypeModule, stable_mean, stable_softmax
from attn_flax.timm.conv_bn_act import ConvNormAct
from attn_flax.timm.create_act import create_act_layer
from attn_flax.timm.helpers import Conv2d, make_divisible
from attn_flax.timm.norm import get_norm_layer


def _check_kernels(kernel_size: Any) -> None:
    for k in kernel_size if isinstance(kernel_size, (list, tuple)) else [kernel_size]:
        if k < 3 or k % 2 == 0:
            raise ValueError(f"`kernel_size`={kernel_size!r}: every kernel must be odd and at least 3")


@register
class SelectiveKernelAttn(nnx.Module):
    """The path selector; the twin of ``attn_torch.timm.SelectiveKernelAttn``. Input ``(N, P, H, W, C)``,
    output the ``(N, P, 1, 1, C)`` softmax weights over the paths."""

    def __init__(self, channels: int, num_paths: int = 2, attn_channels: int = 32, act_layer: Any = "relu",
                 norm_layer: Any = "batchnorm2d", *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.num_paths = num_paths
        self.fc_reduce = Conv2d(channels, attn_channels, 1, bias=False, **kw)
        self.bn = get_norm_layer(norm_layer)(attn_channels, **kw)
        self.act = create_act_layer(act_layer)
        self.fc_select = Conv2d(attn_channels, channels * num_paths, 1, bias=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.fc_select(self.act(self.bn(self.fc_reduce(stable_mean(x.sum(1), (1, 2), keepdims=True)))))
        n, h, w, c = x.shape
        x = x.reshape(n, h, w, self.num_paths, c // self.num_paths).transpose(0, 3, 1, 2, 4)
        return stable_softmax(x, axis=1)


@register
class SelectiveKernel(DtypeModule):
    """Selective Kernel convolution; the twin of ``attn_torch.timm.SelectiveKernel`` (same arguments
    and keys, ``paths.0.conv.weight``, ``attn.fc_reduce.weight``, ...). ``drop_layer`` is torch only.

    Input ``(N, H, W, C)``; output ``(N, H / stride, W / stride, out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: Any = None,
                 stride: int = 1, dilation: int = 1, groups: int = 1, rd_ratio: float = 1.0 / 16,
                 rd_channels: int | None = None, rd_divisor: int = 8, keep_3x3: bool = True, split_input: bool = True,
                 act_layer: Any = "relu", norm_layer: Any = "batchnorm2d", aa_layer: Any = None,
                 drop_layer: Any = None, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        if drop_layer is not None:
            raise ValueError(f"`drop_layer`={drop_layer!r}: not supported by the Flax SelectiveKernel")
        self.dtype = dtype
        self.param_dtype = param_dtype
        out_channels = out_channels or in_channels
        kernel_size = kernel_size or [3, 5]
        _check_kernels(kernel_size)
        if not isinstance(kernel_size, (list, tuple)):
            kernel_size = [kernel_size] * 2
        if keep_3x3:
            dilations = [dilation * (k - 1) // 2 for k in kernel_size]
            kernel_size = [3] * len(kernel_size)
        else:
            dilations = [dilation] * len(kernel_size)
        self.num_paths = len(kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.split_input = split_input
        if split_input:
            check_divisible("in_channels", in_channels, "the number of paths", self.num_paths)
            in_channels = in_channels // self.num_paths
        groups = min(out_channels, groups)
        self.paths = nnx.List([
            ConvNormAct(in_channels, out_channels, kernel_size=k, stride=stride, dilation=d, groups=groups,
                        act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer, **kw)
            for k, d in zip(kernel_size, dilations)
        ])
        attn_channels = rd_channels or make_divisible(out_channels * rd_ratio, divisor=rd_divisor)
        self.attn = SelectiveKernelAttn(out_channels, self.num_paths, attn_channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.promote(x)
        if self.split_input:
            split = self.in_channels // self.num_paths
            x_paths = [op(x[..., i * split:(i + 1) * split]) for i, op in enumerate(self.paths)]
        else:
            x_paths = [op(x) for op in self.paths]
        x = jnp.stack(x_paths, axis=1)  # (N, P, H, W, C)
        return jnp.sum(x * self.attn(x), axis=1)
