"""timm's legacy SENet (Cadene's port of the original SE-ResNet/SE-ResNeXt/SENet-154 weights), NCHW.

Hu et al., "Squeeze-and-Excitation Networks", https://arxiv.org/abs/1709.01507.
A re-implementation of ``timm/models/senet.py`` (timm 1.0.31): class names,
arguments, defaults and state-dict keys (``layer0.conv1``, ``layerI.J.se_module.fc1``,
``last_linear``) as timm's, so the ``legacy_*`` checkpoints load strictly. Unlike
``resnet.py``, the SE-ResNet bottleneck strides its first 1x1 conv (Caffe's
layout). Its twin is ``attn_flax.timm.senet`` (NHWC).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attn_common.timm_models import layer_spec
from attn_torch._registry import register
from attn_torch.timm.resnet import create_classifier


class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convs ``fc1``/``fc2`` and ``channels // reduction`` hidden channels."""

    def __init__(self, channels: int, reduction: int, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, **dd)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class Bottleneck(nn.Module):
    """The forward pass shared by the three bottlenecks: SE on the residual branch before the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.se_module(out) + shortcut)


class SEBottleneck(Bottleneck):
    """SENet-154's bottleneck (widths 2p, 4p, 4p; grouped strided 3x3)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nn.Module | None = None, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(inplanes, planes * 2, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes * 2, **dd)
        self.conv2 = nn.Conv2d(planes * 2, planes * 4, 3, stride=stride, padding=1, groups=groups, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(planes * 4, **dd)
        self.conv3 = nn.Conv2d(planes * 4, planes * 4, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(planes * 4, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction, **dd)
        self.downsample = downsample
        self.stride = stride


class SEResNetBottleneck(Bottleneck):
    """SE-ResNet bottleneck, stride on the first 1x1 conv (Caffe)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nn.Module | None = None, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, groups=groups, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(planes * 4, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction, **dd)
        self.downsample = downsample
        self.stride = stride


class SEResNeXtBottleneck(Bottleneck):
    """SE-ResNeXt bottleneck (type C), width ``floor(planes * base_width / 64) * groups``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nn.Module | None = None, base_width: int = 4, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(width, **dd)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(width, **dd)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(planes * 4, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction, **dd)
        self.downsample = downsample
        self.stride = stride


class SEResNetBlock(nn.Module):
    """SE-ResNet basic block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nn.Module | None = None, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, stride=stride, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, groups=groups, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes, reduction=reduction, **dd)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.se_module(out) + shortcut)


_BLOCKS = {c.__name__.lower(): c for c in (SEBottleneck, SEResNetBottleneck, SEResNeXtBottleneck, SEResNetBlock)}


@register(name="timm.SENet")
class SENet(nn.Module):
    """timm's legacy ``SENet`` (``timm.models.senet.SENet``), NCHW.

    Args:
        block: ``"SEResNetBlock"``, ``"SEResNetBottleneck"``, ``"SEResNeXtBottleneck"`` or
            ``"SEBottleneck"`` (or the class).
        layers: blocks per stage (4 stages).
        groups: groups of the 3x3 convs; reduction: SE reduction.
        drop_rate: dropout before ``last_linear`` (default 0.2, as timm).
        in_chans: input channels (default 3); inplanes: stem width (default 64).
        input_3x3: three 3x3 stem convs instead of one 7x7 (default False).
        downsample_kernel_size, downsample_padding: shortcut conv of stages 2-4 (default 1, 0).
        num_classes: classifier outputs (default 1000, 0: pooled features); global_pool: as ``ResNet``.

    Input ``(N, in_chans, H, W)``; output ``(N, num_classes)``.
    """

    def __init__(self, block: Any, layers: Sequence[int], groups: int, reduction: int, drop_rate: float = 0.2,
                 in_chans: int = 3, inplanes: int = 64, input_3x3: bool = False, downsample_kernel_size: int = 1,
                 downsample_padding: int = 0, num_classes: int = 1000, global_pool: str = "avg",
                 device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        name, _ = layer_spec("block", block, tuple(_BLOCKS))
        block_cls = _BLOCKS[name]
        if len(layers) != 4:
            raise ValueError(f"`layers`={list(layers)!r} must give 4 stages")
        self.inplanes = inplanes
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        if input_3x3:
            stem = [
                ("conv1", nn.Conv2d(in_chans, 64, 3, stride=2, padding=1, bias=False, **dd)),
                ("bn1", nn.BatchNorm2d(64, **dd)), ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False, **dd)),
                ("bn2", nn.BatchNorm2d(64, **dd)), ("relu2", nn.ReLU(inplace=True)),
                ("conv3", nn.Conv2d(64, inplanes, 3, stride=1, padding=1, bias=False, **dd)),
                ("bn3", nn.BatchNorm2d(inplanes, **dd)), ("relu3", nn.ReLU(inplace=True)),
            ]
        else:
            stem = [
                ("conv1", nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False, **dd)),
                ("bn1", nn.BatchNorm2d(inplanes, **dd)), ("relu1", nn.ReLU(inplace=True)),
            ]
        self.layer0 = nn.Sequential(OrderedDict(stem))
        self.pool0 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for i, planes in enumerate((64, 128, 256, 512)):
            kernel, padding = (1, 0) if i == 0 else (downsample_kernel_size, downsample_padding)
            stage = self._make_layer(block_cls, planes, layers[i], groups, reduction, 1 if i == 0 else 2,
                                     kernel, padding, **dd)
            self.add_module(f"layer{i + 1}", stage)
        self.num_features = 512 * block_cls.expansion
        self.global_pool, self.last_linear = create_classifier(self.num_features, num_classes, global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, groups: int, reduction: int,
                    stride: int, downsample_kernel_size: int, downsample_padding: int, **dd: Any) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, downsample_kernel_size, stride=stride,
                          padding=downsample_padding, bias=False, **dd),
                nn.BatchNorm2d(planes * block.expansion, **dd))
        layers = [block(self.inplanes, planes, groups, reduction, stride, downsample, **dd)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups, reduction, **dd) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.last_linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier with ``num_classes`` outputs (0: none), keeping or replacing the pooling."""
        p = next(self.parameters())
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.last_linear = create_classifier(self.num_features, num_classes, pool_type,
                                                               device=p.device, dtype=p.dtype)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.last_linear.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.layer0(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.last_linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
