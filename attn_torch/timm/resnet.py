"""timm's ResNet family (ResNet, ResNeXt, Wide ResNet, SE/ECA-ResNet(X)t, ResNet-RS, anti-aliased), NCHW.

He et al., "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385;
He et al., "Bag of Tricks for Image Classification with CNNs" (the c/d/s/t stems and
average-pool shortcuts), https://arxiv.org/abs/1812.01187; Xie et al., ResNeXt,
https://arxiv.org/abs/1611.05431; Bello et al., ResNet-RS, https://arxiv.org/abs/2103.07579;
Zhang, "Making Convolutional Networks Shift-Invariant Again", https://arxiv.org/abs/1904.11486.

A re-implementation of ``timm/models/resnet.py`` (timm 1.0.31) with its class
names, constructor arguments, defaults and state-dict keys, so timm checkpoints
load strictly. Its twin in ``attn_flax.timm.resnet`` (NHWC) has the same module
tree. Layers may be given by name (``block="Bottleneck"``, ``aa_layer="blurpool"``,
``norm_layer="groupnorm"``, ``block_args={"attn_layer": "se"}`` or
``["se", {"rd_ratio": 0.25}]``) so the recorded arguments carry over to Flax; the
torch classes timm passes are accepted too and are resolved by their names.
Departures: no ``drop_block_rate`` (DropBlock) and no ``output_stride`` other
than 32 (dilation), which no named architecture uses; no gradient checkpointing.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attn_common.timm_models import RESNET_ACTIVATIONS, check_resnet_args, layer_spec
from attn_torch._registry import register
from attn_torch.timm import create_act
from attn_torch.timm.blur_pool import create_aa
from attn_torch.timm.create_attn import get_attn
from attn_torch.timm.helpers import get_padding


def get_act_layer(act_layer: Any) -> Callable[..., nn.Module]:
    name, kwargs = layer_spec("act_layer", act_layer, RESNET_ACTIVATIONS)
    return functools.partial(create_act.get_act_layer(name), **kwargs)


def get_norm_layer(norm_layer: Any) -> Callable[..., nn.Module]:
    """``"batchnorm"`` (``nn.BatchNorm2d``) or ``"groupnorm"`` (32 groups, timm's ``GroupNorm``), by name."""
    name, kwargs = layer_spec("norm_layer", norm_layer, ("batchnorm", "groupnorm"))
    if name == "groupnorm":
        groups = kwargs.pop("num_groups", 32)
        return lambda c, **dd: nn.GroupNorm(groups, c, **kwargs, **dd)
    return functools.partial(nn.BatchNorm2d, **kwargs)


def get_aa_layer(aa_layer: Any) -> tuple[str, dict[str, Any]] | None:
    if not aa_layer:
        return None
    return layer_spec("aa_layer", aa_layer, ("avgpool", "blurpool"))


def attn_layer_of(attn_layer: Any) -> Callable[..., nn.Module] | None:
    """``get_attn`` that also takes the portable ``[kind, kwargs]`` pair (``partial(get_attn(kind), **kwargs)``)."""
    if isinstance(attn_layer, (list, tuple)):
        kind, kwargs = attn_layer
        return functools.partial(get_attn(kind), **kwargs)
    return get_attn(attn_layer)


def _create_aa(aa: tuple[str, dict[str, Any]] | None, channels: int, stride: int = 2, enable: bool = True,
               **dd: Any) -> nn.Module:
    """The anti-aliasing downsampler (``nn.AvgPool2d(stride)`` or ``BlurPool2d``), or ``nn.Identity``."""
    layer = create_aa("avg" if aa is not None and aa[0] == "avgpool" else "blur", channels, stride,
                      enable=aa is not None and enable, **dd)
    return nn.Identity() if layer is None else layer


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``, ``scale_by_keep=True``)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep) if keep > 0 else x * mask


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34), optional anti-aliasing and attention, shortcut, activation."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, reduce_first: int = 1, dilation: int = 1,
                 first_dilation: int | None = None, act_layer: Any = "relu", norm_layer: Any = "batchnorm",
                 attn_layer: Any = None, aa_layer: Any = None, drop_block: Any = None,
                 drop_path: nn.Module | None = None, widths: Sequence[int] | None = None,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise ValueError(f"BasicBlock supports only `cardinality`=1 and `base_width`=64, got "
                             f"{cardinality!r} and {base_width!r}")
        dd = {"device": device, "dtype": dtype}
        act, norm, attn, aa = get_act_layer(act_layer), get_norm_layer(norm_layer), attn_layer_of(attn_layer), get_aa_layer(aa_layer)
        first_planes = planes // reduce_first
        attn_channels = outplanes = planes * self.expansion
        if widths is not None:  # a pruned network: (conv1, conv2) output widths
            first_planes, outplanes = widths[0], widths[-1]
        first_dilation = first_dilation or dilation
        use_aa = aa is not None and (stride == 2 or first_dilation != dilation)
        self.conv1 = nn.Conv2d(inplanes, first_planes, 3, stride=1 if use_aa else stride, padding=first_dilation,
                               dilation=first_dilation, bias=False, **dd)
        self.bn1 = norm(first_planes, **dd)
        self.drop_block = nn.Identity()
        self.act1 = act(inplace=True)
        self.aa = _create_aa(aa, first_planes, stride, enable=use_aa, **dd)
        self.conv2 = nn.Conv2d(first_planes, outplanes, 3, padding=dilation, dilation=dilation, bias=False, **dd)
        self.bn2 = norm(outplanes, **dd)
        self.se = attn(attn_channels, **dd) if attn is not None else None
        self.act2 = act(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 grouped (strided), 1x1 expand by 4, optional anti-aliasing and attention, shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, reduce_first: int = 1, dilation: int = 1,
                 first_dilation: int | None = None, act_layer: Any = "relu", norm_layer: Any = "batchnorm",
                 attn_layer: Any = None, aa_layer: Any = None, drop_block: Any = None,
                 drop_path: nn.Module | None = None, widths: Sequence[int] | None = None,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        act, norm, attn, aa = get_act_layer(act_layer), get_norm_layer(norm_layer), attn_layer_of(attn_layer), get_aa_layer(aa_layer)
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        first_planes = width // reduce_first
        attn_channels = outplanes = planes * self.expansion
        if widths is not None:  # a pruned network: (conv1, conv2, conv3) output widths
            first_planes, width, outplanes = widths
        first_dilation = first_dilation or dilation
        use_aa = aa is not None and (stride == 2 or first_dilation != dilation)
        self.conv1 = nn.Conv2d(inplanes, first_planes, 1, bias=False, **dd)
        self.bn1 = norm(first_planes, **dd)
        self.act1 = act(inplace=True)
        self.conv2 = nn.Conv2d(first_planes, width, 3, stride=1 if use_aa else stride, padding=first_dilation,
                               dilation=first_dilation, groups=cardinality, bias=False, **dd)
        self.bn2 = norm(width, **dd)
        self.drop_block = nn.Identity()
        self.act2 = act(inplace=True)
        self.aa = _create_aa(aa, width, stride, enable=use_aa, **dd)
        self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False, **dd)
        self.bn3 = norm(outplanes, **dd)
        self.se = attn(attn_channels, **dd) if attn is not None else None
        self.act3 = act(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


_BLOCKS = {"basicblock": BasicBlock, "bottleneck": Bottleneck}


def downsample_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                    first_dilation: int | None = None, norm_layer: Any = None, **dd: Any) -> nn.Module:
    norm = get_norm_layer(norm_layer or "batchnorm")
    kernel_size = 1 if stride == 1 and dilation == 1 else kernel_size
    first_dilation = (first_dilation or dilation) if kernel_size > 1 else 1
    p = get_padding(kernel_size, stride, first_dilation)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=p, dilation=first_dilation,
                  bias=False, **dd),
        norm(out_channels, **dd))


def downsample_avg(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                   first_dilation: int | None = None, norm_layer: Any = None, **dd: Any) -> nn.Module:
    norm = get_norm_layer(norm_layer or "batchnorm")
    if stride == 1 and dilation == 1:
        pool: nn.Module = nn.Identity()
    else:
        pool = nn.AvgPool2d(2, stride if dilation == 1 else 1, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, nn.Conv2d(in_channels, out_channels, 1, bias=False, **dd), norm(out_channels, **dd))


class SelectAdaptivePool2d(nn.Module):
    """Global pooling by name: ``"avg"``, ``"max"``, ``"avgmax"`` (their mean), ``"catavgmax"``, ``""`` (none)."""

    def __init__(self, pool_type: str = "avg", flatten: bool = False):
        super().__init__()
        pool_type = (pool_type or "").lower()
        if pool_type not in ("", "avg", "max", "avgmax", "catavgmax", "fast"):
            raise ValueError(f"`global_pool`={pool_type!r} is not one of: '', avg, max, avgmax, catavgmax")
        self.pool_type = pool_type
        self.flatten = flatten and bool(pool_type)

    def feat_mult(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pool_type:
            return x
        if self.pool_type in ("avg", "fast"):
            y = x.mean((2, 3), keepdim=True)
        elif self.pool_type == "max":
            y = x.amax((2, 3), keepdim=True)
        elif self.pool_type == "avgmax":
            y = 0.5 * (x.mean((2, 3), keepdim=True) + x.amax((2, 3), keepdim=True))
        else:
            y = torch.cat((x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)), 1)
        return y.flatten(1) if self.flatten else y


def create_classifier(num_features: int, num_classes: int, pool_type: str = "avg",
                      **dd: Any) -> tuple[SelectAdaptivePool2d, nn.Module]:
    pool = SelectAdaptivePool2d(pool_type, flatten=True)
    fc = nn.Linear(num_features * pool.feat_mult(), num_classes, **dd) if num_classes > 0 else nn.Identity()
    return pool, fc


def _block_class(block: Any) -> type[nn.Module]:
    name, _ = layer_spec("block", block, ("basicblock", "bottleneck"))
    return _BLOCKS[name]


@register(name="timm.ResNet")
class ResNet(nn.Module):
    """timm's ResNet / ResNeXt / SE-ResNeXt / SENet-154 (``timm.models.resnet.ResNet``), NCHW.

    Args:
        block: ``"BasicBlock"`` or ``"Bottleneck"`` (or the class), or one per stage.
        layers: blocks per stage.
        num_classes: classifier outputs (default 1000); 0 gives the pooled features.
        in_chans: input channels (default 3).
        output_stride: 32 only (dilated variants are not implemented).
        global_pool: ``"avg"`` (default), ``"max"``, ``"avgmax"``, ``"catavgmax"`` or ``""``.
        cardinality, base_width: groups and width of the 3x3 convs (default 1, 64).
        stem_width: stem channels (default 64); stem_type: ``""`` (7x7 conv), ``"deep"``
            (3x3 convs of widths w, w, 2w) or ``"deep_tiered"`` (3w/4, w, 2w).
        replace_stem_pool: a strided 3x3 conv instead of the stem max-pool (default False).
        block_reduce_first: reduction of the first conv of each block (default 1).
        down_kernel_size: kernel of the shortcut conv (default 1).
        avg_down: average-pool shortcut (default False).
        channels: stage widths (default (64, 128, 256, 512)).
        act_layer: ``"relu"`` (default); norm_layer: ``"batchnorm"`` (default) or ``"groupnorm"``.
        aa_layer: ``None``, ``"avgpool"`` or ``"blurpool"`` anti-aliasing.
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth, linear in depth.
        drop_block_rate: must be 0; zero_init_last: zero the last norm of each block at init.
        block_args: extra block arguments, e.g. ``{"attn_layer": "se"}``.
        block_widths: per stage and block, the output widths of the block's convs, for the
            pruned networks (timm builds them full-size, then resizes the layers from a file).

    Input ``(N, in_chans, H, W)``; output ``(N, num_classes)``. ``forward_features``
    gives ``(N, num_features, H/32, W/32)``, ``forward_head(x, pre_logits=False)`` the rest.
    """

    def __init__(self, block: Any, layers: Sequence[int], num_classes: int = 1000, in_chans: int = 3,
                 output_stride: int = 32, global_pool: str = "avg", cardinality: int = 1, base_width: int = 64,
                 stem_width: int = 64, stem_type: str = "", replace_stem_pool: bool = False,
                 block_reduce_first: int = 1, down_kernel_size: int = 1, avg_down: bool = False,
                 channels: Sequence[int] = (64, 128, 256, 512), act_layer: Any = "relu",
                 norm_layer: Any = "batchnorm", aa_layer: Any = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, drop_block_rate: float = 0.0, zero_init_last: bool = True,
                 block_args: dict[str, Any] | None = None, block_widths: Sequence[Sequence[Sequence[int]]] | None = None,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        check_resnet_args(output_stride, stem_type, drop_block_rate, layers, channels)
        dd = {"device": device, "dtype": dtype}
        block_args = dict(block_args or {})
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act, norm, aa = get_act_layer(act_layer), get_norm_layer(norm_layer), get_aa_layer(aa_layer)

        deep_stem = "deep" in stem_type
        inplanes = stem_width * 2 if deep_stem else 64
        if deep_stem:
            stem_chs = (3 * (stem_width // 4), stem_width) if "tiered" in stem_type else (stem_width, stem_width)
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(in_chans, stem_chs[0], 3, stride=2, padding=1, bias=False, **dd),
                norm(stem_chs[0], **dd), act(inplace=True),
                nn.Conv2d(stem_chs[0], stem_chs[1], 3, stride=1, padding=1, bias=False, **dd),
                norm(stem_chs[1], **dd), act(inplace=True),
                nn.Conv2d(stem_chs[1], inplanes, 3, stride=1, padding=1, bias=False, **dd))
        else:
            self.conv1 = nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = norm(inplanes, **dd)
        self.act1 = act(inplace=True)
        self.feature_info = [dict(num_chs=inplanes, reduction=2, module="act1")]

        # The name 'maxpool' is kept for weight compatibility, whatever the stem pooling is.
        if replace_stem_pool:
            self.maxpool: nn.Module = nn.Sequential(*filter(None, [
                nn.Conv2d(inplanes, inplanes, 3, stride=1 if aa else 2, padding=1, bias=False, **dd),
                _create_aa(aa, inplanes, 2, **dd) if aa else None,
                norm(inplanes, **dd), act(inplace=True)]))
        elif aa is not None and aa[0] == "avgpool":
            self.maxpool = nn.AvgPool2d(2)
        elif aa is not None:
            self.maxpool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _create_aa(aa, inplanes, 2, **dd))
        else:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        blocks = list(block) if isinstance(block, (list, tuple)) else [block] * len(channels)
        block_fns = [_block_class(b) for b in blocks]
        net_num_blocks = sum(layers)
        net_block_idx = 0
        net_stride = 4
        for stage_idx, (block_fn, planes, num_blocks) in enumerate(zip(block_fns, channels, layers)):
            stride = 1 if stage_idx == 0 else 2
            net_stride *= stride
            widths = block_widths[stage_idx] if block_widths else [None] * num_blocks
            outplanes = widths[0][-1] if block_widths else planes * block_fn.expansion
            downsample = None
            if stride != 1 or inplanes != outplanes:
                down = downsample_avg if avg_down else downsample_conv
                downsample = down(inplanes, outplanes, down_kernel_size, stride,
                                  norm_layer=norm_layer, **dd)
            stage = []
            for block_idx in range(num_blocks):
                dpr = drop_path_rate * net_block_idx / max(net_num_blocks - 1, 1)
                stage.append(block_fn(
                    inplanes, planes, stride if block_idx == 0 else 1, downsample if block_idx == 0 else None,
                    cardinality=cardinality, base_width=base_width, reduce_first=block_reduce_first,
                    act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer,
                    drop_path=DropPath(dpr) if dpr > 0 else None, widths=widths[block_idx], **block_args, **dd))
                inplanes = outplanes
                net_block_idx += 1
            self.add_module(f"layer{stage_idx + 1}", nn.Sequential(*stage))
            self.feature_info.append(dict(num_chs=inplanes, reduction=net_stride, module=f"layer{stage_idx + 1}"))

        self.num_features = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights(zero_init_last=zero_init_last)

    @torch.no_grad()
    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's init: kaiming-normal (fan-out) convs; the last norm of each block zeroed."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else (
                    getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None)
                if getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier with ``num_classes`` outputs (0: none), keeping or replacing the pooling."""
        p = next(self.parameters())
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type,
                                                      device=p.device, dtype=p.dtype)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

