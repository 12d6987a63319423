"""ResNet backbones with a pluggable attention module in every residual block.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
https://arxiv.org/abs/1512.03385 (the v1.5 bottleneck, stride on the 3x3 conv,
as in torchvision). The attention sits where SE-ResNet (Hu et al.,
https://arxiv.org/abs/1709.01507) and CBAM-ResNet (Woo et al.,
https://arxiv.org/abs/1807.06521) put it: on the residual branch after the last
convolution and its BatchNorm, before the shortcut is added.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input, check_positive
from attn_common.tables import RESNET_LAYOUTS as LAYOUTS, RESNET_WIDTHS as WIDTHS
from attn_common.validation import check_choice
from attn_flax._registry import MODULES, register
from attn_flax.layers import BatchNorm, Conv2d, Dtype, DtypeModule, Linear, stable_mean

AttentionFactory = Callable[[int], nnx.Module]


def attention_factory(
    attention: str | None, kwargs: dict[str, Any], factory: dict[str, Any]
) -> tuple[str | None, AttentionFactory | None]:
    """The canonical registered name of ``attention`` (any case) and a ``channels -> module`` builder."""
    if attention is None:
        if kwargs:
            raise ValueError(f"attention arguments {sorted(kwargs)} were given but `attention` is None")
        return None, None
    name = check_choice("attention", attention, [n for n in MODULES if n != "ResNet"])
    if "channels" in kwargs:
        raise ValueError("`channels` of the attention is set by ResNet to each block's width; do not pass it")
    cls = MODULES[name]
    takes_channels = "channels" in inspect.signature(cls.__init__).parameters
    return name, lambda channels: cls(**({"channels": channels} if takes_channels else {}), **kwargs, **factory)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, factory: dict[str, Any]) -> nnx.Conv:
    """A bias-free conv padded by ``kernel_size // 2``, as torchvision's ``conv3x3``/``conv1x1``/stem."""
    return Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False, **factory)


def _shortcut(in_channels: int, out_channels: int, stride: int, factory: dict[str, Any]) -> nnx.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nnx.Sequential(_conv(in_channels, out_channels, 1, stride, factory), BatchNorm(out_channels, **factory))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch's ``max_pool2d(x, 3, 2, padding=1)`` on NHWC: the padding is -inf, never a maximum."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (torchvision's ``BasicBlock``), attention, shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, attention: AttentionFactory | None,
                 *, dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = _conv(in_channels, planes, 3, stride, factory)
        self.bn1 = BatchNorm(planes, **factory)
        self.conv2 = _conv(planes, planes, 3, 1, factory)
        self.bn2 = BatchNorm(planes, **factory)
        self.attn = attention(planes) if attention else None
        self.downsample = _shortcut(in_channels, planes, stride, factory)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))
        if self.attn is not None:
            out = self.attn(out)
        return jax.nn.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4 (torchvision's ``Bottleneck``), attention, shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, attention: AttentionFactory | None,
                 *, dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        out_channels = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 1, 1, factory)
        self.bn1 = BatchNorm(planes, **factory)
        self.conv2 = _conv(planes, planes, 3, stride, factory)
        self.bn2 = BatchNorm(planes, **factory)
        self.conv3 = _conv(planes, out_channels, 1, 1, factory)
        self.bn3 = BatchNorm(out_channels, **factory)
        self.attn = attention(out_channels) if attention else None
        self.downsample = _shortcut(in_channels, out_channels, stride, factory)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(jax.nn.relu(self.bn2(self.conv2(out)))))
        if self.attn is not None:
            out = self.attn(out)
        return jax.nn.relu(out + (x if self.downsample is None else self.downsample(x)))


@register
class ResNet(DtypeModule):
    """ResNet-18/34/50/101 with an optional registered attention module in every residual block.

    The twin of ``attn_torch.models.ResNet``; its torch names are torchvision's
    (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``) plus ``layerI.J.attn``.
    Each stage is an ``nnx.Sequential`` of blocks. Every layer starts from
    PyTorch's default initialisation (not torchvision's ``kaiming_normal_``
    re-draw of the convs). Max-pooling pads with -inf, as torch does.

    Args:
        depth: 18 or 34 (basic blocks), 50 or 101 (bottleneck blocks).
        attention: name of a registered attention module (case-insensitive, e.g.
            ``"SE"``, ``"cbam"``), or ``None`` (default) for a plain ResNet. It
            gets ``channels`` = the block's output width when it accepts it.
        num_classes: outputs of the final ``fc`` layer (default 1000).
        dtype, param_dtype, rngs: as in ``flax.nnx`` layers.
        **attention_kwargs: further arguments of the attention (e.g.
            ``reduction=16``); not ``channels``.

    Input ``(N, H, W, 3)`` of any size; output ``(N, num_classes)`` logits.
    ``features(x)`` returns the last stage's map ``(N, H/32, W/32, 512 * expansion)``
    (sizes rounded up).
    """

    def __init__(self, depth: int, attention: str | None = None, num_classes: int = 1000,
                 *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
                 **attention_kwargs: Any):
        if isinstance(depth, bool) or depth not in LAYOUTS:
            raise ValueError(f"`depth` must be one of {', '.join(map(str, LAYOUTS))}, got {depth!r}")
        kind, counts = LAYOUTS[depth]
        check_positive("num_classes", num_classes)
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.attention, make_attention = attention_factory(attention, attention_kwargs, factory)
        self.depth = depth
        self.num_classes = num_classes
        self.dtype = dtype
        self.param_dtype = param_dtype
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = _conv(3, 64, 7, 2, factory)
        self.bn1 = BatchNorm(64, **factory)
        channels = 64
        for stage, (planes, count) in enumerate(zip(WIDTHS, counts)):
            blocks = []
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block(channels, planes, stride, make_attention, **factory))
                channels = planes * block.expansion
            setattr(self, f"layer{stage + 1}", nnx.Sequential(*blocks))
        self.fc = Linear(channels, num_classes, **factory)

    def features(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, 3, "NHWC", "ResNet")
        x = self.promote(x)
        x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(stable_mean(self.features(x), (1, 2)))
