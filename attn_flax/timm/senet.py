"""timm's legacy SENet (Cadene's port of the original SE-ResNet/SE-ResNeXt/SENet-154 weights), NHWC.

Hu et al., "Squeeze-and-Excitation Networks", https://arxiv.org/abs/1709.01507.
The Flax NNX twin of ``attn_torch.timm.senet`` (timm 1.0.31's ``timm/models/senet.py``):
same classes, arguments and module tree (``layer0.conv1``, ``layerI.J.se_module.fc1``,
``last_linear``). Input ``(N, H, W, C)``. The head's dropout (``drop_rate``, 0.2 by
default as in timm) draws from the ``rngs`` given at construction.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common import check_input
from attn_common.timm_models import layer_spec
from attn_flax._registry import register
from attn_flax.layers import BatchNorm, Conv2d, Dtype, DtypeModule, stable_mean
from attn_flax.timm.resnet import TimmClassifier, create_classifier, max_pool


class SEModule(nnx.Module):
    """Squeeze-and-excitation with 1x1 convs ``fc1``/``fc2`` and ``channels // reduction`` hidden channels."""

    def __init__(self, channels: int, reduction: int, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.fc1 = Conv2d(channels, channels // reduction, 1, **factory)
        self.relu = jax.nn.relu
        self.fc2 = Conv2d(channels // reduction, channels, 1, **factory)
        self.sigmoid = jax.nn.sigmoid

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(stable_mean(x, (1, 2), keepdims=True)))))


class Bottleneck(nnx.Module):
    """The forward pass shared by the three bottlenecks: SE on the residual branch before the sum."""

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.se_module(out) + shortcut)


def _bottleneck(self: Any, inplanes: int, widths: tuple[int, int, int], stride1: int, stride2: int, groups: int,
                reduction: int, downsample: nnx.Module | None, stride: int, factory: dict[str, Any]) -> None:
    w1, w2, w3 = widths
    self.conv1 = Conv2d(inplanes, w1, 1, stride=stride1, bias=False, **factory)
    self.bn1 = BatchNorm(w1, **factory)
    self.conv2 = Conv2d(w1, w2, 3, stride=stride2, padding=1, groups=groups, bias=False, **factory)
    self.bn2 = BatchNorm(w2, **factory)
    self.conv3 = Conv2d(w2, w3, 1, bias=False, **factory)
    self.bn3 = BatchNorm(w3, **factory)
    self.relu = jax.nn.relu
    self.se_module = SEModule(w3, reduction=reduction, **factory)
    self.downsample = downsample
    self.stride = stride


class SEBottleneck(Bottleneck):
    """SENet-154's bottleneck (widths 2p, 4p, 4p; grouped strided 3x3)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nnx.Module | None = None, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        _bottleneck(self, inplanes, (planes * 2, planes * 4, planes * 4), 1, stride, groups, reduction,
                    downsample, stride, factory)


class SEResNetBottleneck(Bottleneck):
    """SE-ResNet bottleneck, stride on the first 1x1 conv (Caffe)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nnx.Module | None = None, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        _bottleneck(self, inplanes, (planes, planes, planes * 4), stride, 1, groups, reduction,
                    downsample, stride, factory)


class SEResNeXtBottleneck(Bottleneck):
    """SE-ResNeXt bottleneck (type C), width ``floor(planes * base_width / 64) * groups``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nnx.Module | None = None, base_width: int = 4, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        width = math.floor(planes * (base_width / 64)) * groups
        _bottleneck(self, inplanes, (width, width, planes * 4), 1, stride, groups, reduction,
                    downsample, stride, factory)


class SEResNetBlock(nnx.Module):
    """SE-ResNet basic block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nnx.Module | None = None, *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = Conv2d(inplanes, planes, 3, padding=1, stride=stride, bias=False, **factory)
        self.bn1 = BatchNorm(planes, **factory)
        self.conv2 = Conv2d(planes, planes, 3, padding=1, groups=groups, bias=False, **factory)
        self.bn2 = BatchNorm(planes, **factory)
        self.relu = jax.nn.relu
        self.se_module = SEModule(planes, reduction=reduction, **factory)
        self.downsample = downsample
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.se_module(out) + shortcut)


_BLOCKS = {c.__name__.lower(): c for c in (SEBottleneck, SEResNetBottleneck, SEResNeXtBottleneck, SEResNetBlock)}


@register(name="timm.SENet")
class SENet(TimmClassifier):
    """timm's legacy ``SENet`` (``timm.models.senet.SENet``), NHWC.

    Args: as ``attn_torch.timm.SENet`` (timm's arguments and defaults), then
    ``dtype``, ``param_dtype`` and ``rngs`` as in ``flax.nnx`` layers.

    Input ``(N, H, W, in_chans)``; output ``(N, num_classes)``.
    """

    _classifier = "last_linear"

    def __init__(self, block: Any, layers: Sequence[int], groups: int, reduction: int, drop_rate: float = 0.2,
                 in_chans: int = 3, inplanes: int = 64, input_3x3: bool = False, downsample_kernel_size: int = 1,
                 downsample_padding: int = 0, num_classes: int = 1000, global_pool: str = "avg",
                 *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        name, _ = layer_spec("block", block, tuple(_BLOCKS))
        block_cls = _BLOCKS[name]
        if len(layers) != 4:
            raise ValueError(f"`layers`={list(layers)!r} must give 4 stages")
        self.inplanes = inplanes
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.dtype = dtype
        self.param_dtype = param_dtype
        relu = jax.nn.relu
        if input_3x3:
            stem = [Conv2d(in_chans, 64, 3, stride=2, padding=1, bias=False, **factory), BatchNorm(64, **factory), relu,
                    Conv2d(64, 64, 3, stride=1, padding=1, bias=False, **factory), BatchNorm(64, **factory), relu,
                    Conv2d(64, inplanes, 3, stride=1, padding=1, bias=False, **factory),
                    BatchNorm(inplanes, **factory), relu]
            names = ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3")
        else:
            stem = [Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False, **factory),
                    BatchNorm(inplanes, **factory), relu]
            names = ("conv1", "bn1", "relu1")
        self.layer0 = _Named(names, stem)
        self.pool0 = functools.partial(max_pool, kernel_size=3, stride=2, ceil_mode=True)
        for i, planes in enumerate((64, 128, 256, 512)):
            kernel, padding = (1, 0) if i == 0 else (downsample_kernel_size, downsample_padding)
            stage = self._make_layer(block_cls, planes, layers[i], groups, reduction, 1 if i == 0 else 2,
                                     kernel, padding, factory)
            setattr(self, f"layer{i + 1}", stage)
        self.num_features = 512 * block_cls.expansion
        self._set_head(*create_classifier(self.num_features, num_classes, global_pool, **factory))
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate > 0 else None

    def _make_layer(self, block: Any, planes: int, blocks: int, groups: int, reduction: int, stride: int,
                    downsample_kernel_size: int, downsample_padding: int, factory: dict[str, Any]) -> nnx.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nnx.Sequential(
                Conv2d(self.inplanes, planes * block.expansion, downsample_kernel_size, stride=stride,
                       padding=downsample_padding, bias=False, **factory),
                BatchNorm(planes * block.expansion, **factory))
        layers = [block(self.inplanes, planes, groups, reduction, stride, downsample, **factory)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups, reduction, **factory) for _ in range(1, blocks)]
        return nnx.Sequential(*layers)

    def forward_features(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.in_chans, "NHWC", "SENet")
        x = self.promote(x)
        x = self.pool0(self.layer0(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _Named(nnx.Module):
    """torch's ``nn.Sequential(OrderedDict(...))``: layers under their names, applied in order."""

    def __init__(self, names: Sequence[str], layers: Sequence[Any]):
        self._order = tuple(names)
        for name, layer in zip(names, layers):
            setattr(self, name, layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        for name in self._order:
            x = getattr(self, name)(x)
        return x
