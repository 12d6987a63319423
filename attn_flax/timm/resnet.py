"""timm's ResNet family (ResNet, ResNeXt, Wide ResNet, SE/ECA-ResNet(X)t, ResNet-RS, anti-aliased), NHWC.

He et al., "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385;
He et al., "Bag of Tricks for Image Classification with CNNs" (the c/d/s/t stems and
average-pool shortcuts), https://arxiv.org/abs/1812.01187; Xie et al., ResNeXt,
https://arxiv.org/abs/1611.05431; Bello et al., ResNet-RS, https://arxiv.org/abs/2103.07579;
Zhang, "Making Convolutional Networks Shift-Invariant Again", https://arxiv.org/abs/1904.11486.

The Flax NNX twin of ``attn_torch.timm.resnet`` (timm 1.0.31's ``timm/models/resnet.py``):
the same classes, arguments and module tree, so ``parity`` converts timm's state
dicts with its per-leaf rules. Input ``(N, H, W, C)``. Parameter-free torch layers
(activations, pools) are plain functions here; ``nn.Identity`` is ``None`` or the
identity. Dropout and drop-path draw from the ``dropout`` stream of the ``rngs``
given at construction. Departures as in the torch twin: no DropBlock, output stride 32 only.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_common import check_input
from attn_common.timm_models import RESNET_ACTIVATIONS, check_resnet_args, layer_spec
from attn_flax._registry import register
from attn_flax.timm import create_act
from attn_flax.timm.blur_pool import create_aa
from attn_flax.timm.create_attn import get_attn
from attn_flax.timm.helpers import get_padding
from attn_flax.layers import BatchNorm, Conv2d, Dtype, DtypeModule, GroupNorm, Linear, stable_mean

Factory = dict[str, Any]


def identity(x: jax.Array) -> jax.Array:
    return x


def _pool_sizes(size: int, k: int, s: int, pad: int, ceil_mode: bool) -> tuple[int, int]:
    """torch's pooled length and the right padding that covers its last window."""
    span = size + 2 * pad - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad:  # the last window must start inside the input or left pad
        out -= 1
    return out, max(pad, (out - 1) * s + k - size - pad)


def max_pool(x: jax.Array, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> jax.Array:
    """torch's ``max_pool2d`` on NHWC (padding is -inf, never a maximum)."""
    (_, rh), (_, rw) = (_pool_sizes(n, kernel_size, stride, padding, ceil_mode) for n in x.shape[1:3])
    pads = ((0, 0), (padding, rh), (padding, rw), (0, 0))
    init = np.array(-np.inf, x.dtype)  # a constant: JAX then knows the max monoid and differentiates it
    return jax.lax.reduce_window(x, init, jax.lax.max, (1, kernel_size, kernel_size, 1), (1, stride, stride, 1), pads)


def avg_pool(x: jax.Array, kernel_size: int, stride: int, ceil_mode: bool = False) -> jax.Array:
    """torch's ``avg_pool2d`` without padding on NHWC; a window past the edge averages what it covers."""
    sizes = [_pool_sizes(n, kernel_size, stride, 0, ceil_mode) for n in x.shape[1:3]]
    pads = ((0, 0), (0, sizes[0][1]), (0, sizes[1][1]), (0, 0))
    window, strides = (1, kernel_size, kernel_size, 1), (1, stride, stride, 1)
    sums = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, window, strides, pads)
    counts = [np.minimum(np.arange(out) * stride + kernel_size, n) - np.arange(out) * stride
              for (out, _), n in zip(sizes, x.shape[1:3])]
    return sums / jnp.asarray(np.outer(*counts)[None, :, :, None], x.dtype)


def get_act_layer(act_layer: Any) -> Callable[[jax.Array], jax.Array]:
    name, _ = layer_spec("act_layer", act_layer, RESNET_ACTIVATIONS)
    return create_act.get_act_layer(name)


def get_norm_layer(norm_layer: Any) -> Callable[..., nnx.Module]:
    """``"batchnorm"`` (torch's ``BatchNorm2d`` rules) or ``"groupnorm"`` (32 groups), by name."""
    name, kwargs = layer_spec("norm_layer", norm_layer, ("batchnorm", "groupnorm"))
    if name == "groupnorm":
        groups = kwargs.pop("num_groups", 32)
        return lambda c, **factory: GroupNorm(groups, c, **kwargs, **factory)
    return functools.partial(BatchNorm, **kwargs)


def get_aa_layer(aa_layer: Any) -> tuple[str, dict[str, Any]] | None:
    if not aa_layer:
        return None
    return layer_spec("aa_layer", aa_layer, ("avgpool", "blurpool"))


def attn_layer_of(attn_layer: Any) -> Callable[..., nnx.Module] | None:
    """``get_attn`` that also takes the portable ``[kind, kwargs]`` pair (``partial(get_attn(kind), **kwargs)``)."""
    if isinstance(attn_layer, (list, tuple)):
        kind, kwargs = attn_layer
        return functools.partial(get_attn(kind), **kwargs)
    return get_attn(attn_layer)


def _create_aa(aa: tuple[str, dict[str, Any]] | None, channels: int, stride: int = 2, enable: bool = True,
               **factory: Any) -> Callable[[jax.Array], jax.Array]:
    """The anti-aliasing downsampler (average pool of ``stride`` or ``BlurPool2d``), or the identity."""
    layer = create_aa("avg" if aa is not None and aa[0] == "avgpool" else "blur", channels, stride,
                      enable=aa is not None and enable, **factory)
    return identity if layer is None else layer


def drop_path(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """Stochastic depth per sample: dropout with one draw per image (timm's ``DropPath``), or None."""
    return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs) if rate > 0 else None


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34), optional anti-aliasing and attention, shortcut, activation."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nnx.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, reduce_first: int = 1, dilation: int = 1,
                 first_dilation: int | None = None, act_layer: Any = "relu", norm_layer: Any = "batchnorm",
                 attn_layer: Any = None, aa_layer: Any = None, drop_block: Any = None,
                 drop_path: nnx.Module | None = None, widths: Sequence[int] | None = None,
                 *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if cardinality != 1 or base_width != 64:
            raise ValueError(f"BasicBlock supports only `cardinality`=1 and `base_width`=64, got "
                             f"{cardinality!r} and {base_width!r}")
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        act, norm, attn, aa = get_act_layer(act_layer), get_norm_layer(norm_layer), attn_layer_of(attn_layer), get_aa_layer(aa_layer)
        first_planes = planes // reduce_first
        attn_channels = outplanes = planes * self.expansion
        if widths is not None:  # a pruned network: (conv1, conv2) output widths
            first_planes, outplanes = widths[0], widths[-1]
        first_dilation = first_dilation or dilation
        use_aa = aa is not None and (stride == 2 or first_dilation != dilation)
        self.conv1 = Conv2d(inplanes, first_planes, 3, stride=1 if use_aa else stride, padding=first_dilation,
                            dilation=first_dilation, bias=False, **factory)
        self.bn1 = norm(first_planes, **factory)
        self.act1 = act
        self.aa = _create_aa(aa, first_planes, stride, enable=use_aa, **factory)
        self.conv2 = Conv2d(first_planes, outplanes, 3, padding=dilation, dilation=dilation, bias=False, **factory)
        self.bn2 = norm(outplanes, **factory)
        self.se = attn(attn_channels, **factory) if attn is not None else None
        self.act2 = act
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.aa(self.act1(self.bn1(self.conv1(x))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 grouped (strided), 1x1 expand by 4, optional anti-aliasing and attention, shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nnx.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, reduce_first: int = 1, dilation: int = 1,
                 first_dilation: int | None = None, act_layer: Any = "relu", norm_layer: Any = "batchnorm",
                 attn_layer: Any = None, aa_layer: Any = None, drop_block: Any = None,
                 drop_path: nnx.Module | None = None, widths: Sequence[int] | None = None,
                 *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        act, norm, attn, aa = get_act_layer(act_layer), get_norm_layer(norm_layer), attn_layer_of(attn_layer), get_aa_layer(aa_layer)
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        first_planes = width // reduce_first
        attn_channels = outplanes = planes * self.expansion
        if widths is not None:  # a pruned network: (conv1, conv2, conv3) output widths
            first_planes, width, outplanes = widths
        first_dilation = first_dilation or dilation
        use_aa = aa is not None and (stride == 2 or first_dilation != dilation)
        self.conv1 = Conv2d(inplanes, first_planes, 1, bias=False, **factory)
        self.bn1 = norm(first_planes, **factory)
        self.act1 = act
        self.conv2 = Conv2d(first_planes, width, 3, stride=1 if use_aa else stride, padding=first_dilation,
                            dilation=first_dilation, groups=cardinality, bias=False, **factory)
        self.bn2 = norm(width, **factory)
        self.act2 = act
        self.aa = _create_aa(aa, width, stride, enable=use_aa, **factory)
        self.conv3 = Conv2d(width, outplanes, 1, bias=False, **factory)
        self.bn3 = norm(outplanes, **factory)
        self.se = attn(attn_channels, **factory) if attn is not None else None
        self.act3 = act
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.bn2(self.conv2(x))))
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
                    first_dilation: int | None = None, norm_layer: Any = None, **factory: Any) -> nnx.Sequential:
    norm = get_norm_layer(norm_layer or "batchnorm")
    kernel_size = 1 if stride == 1 and dilation == 1 else kernel_size
    first_dilation = (first_dilation or dilation) if kernel_size > 1 else 1
    p = get_padding(kernel_size, stride, first_dilation)
    return nnx.Sequential(
        Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=p, dilation=first_dilation,
               bias=False, **factory),
        norm(out_channels, **factory))


def downsample_avg(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                   first_dilation: int | None = None, norm_layer: Any = None, **factory: Any) -> nnx.Sequential:
    norm = get_norm_layer(norm_layer or "batchnorm")
    if stride == 1 and dilation == 1:
        pool: Callable[[jax.Array], jax.Array] = identity
    else:
        pool = functools.partial(avg_pool, kernel_size=2, stride=stride if dilation == 1 else 1, ceil_mode=True)
    return nnx.Sequential(pool, Conv2d(in_channels, out_channels, 1, bias=False, **factory),
                          norm(out_channels, **factory))


class SelectAdaptivePool2d(nnx.Module):
    """Global pooling by name: ``"avg"``, ``"max"``, ``"avgmax"`` (their mean), ``"catavgmax"``, ``""`` (none)."""

    def __init__(self, pool_type: str = "avg", flatten: bool = False):
        pool_type = (pool_type or "").lower()
        if pool_type not in ("", "avg", "max", "avgmax", "catavgmax", "fast"):
            raise ValueError(f"`global_pool`={pool_type!r} is not one of: '', avg, max, avgmax, catavgmax")
        self.pool_type = pool_type
        self.flatten = flatten and bool(pool_type)

    def feat_mult(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.pool_type:
            return x
        keep = not self.flatten
        if self.pool_type in ("avg", "fast"):
            return stable_mean(x, (1, 2), keepdims=keep)
        if self.pool_type == "max":
            return x.max((1, 2), keepdims=keep)
        avg, mx = stable_mean(x, (1, 2), keepdims=keep), x.max((1, 2), keepdims=keep)
        return 0.5 * (avg + mx) if self.pool_type == "avgmax" else jnp.concatenate((avg, mx), -1)


def create_classifier(num_features: int, num_classes: int, pool_type: str = "avg",
                      **factory: Any) -> tuple[SelectAdaptivePool2d, nnx.Linear | None]:
    pool = SelectAdaptivePool2d(pool_type, flatten=True)
    fc = Linear(num_features * pool.feat_mult(), num_classes, **factory) if num_classes > 0 else None
    return pool, fc


def _block_class(block: Any) -> type[nnx.Module]:
    name, _ = layer_spec("block", block, ("basicblock", "bottleneck"))
    return _BLOCKS[name]


class TimmClassifier(DtypeModule):
    """timm's fine-tuning API shared by ``ResNet`` and ``SENet``: ``forward_head``, ``reset_classifier``."""

    _classifier = "fc"

    def get_classifier(self) -> nnx.Linear | None:
        return getattr(self, self._classifier)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, *, rngs: nnx.Rngs) -> None:
        """A new classifier with ``num_classes`` outputs (0: none), keeping or replacing the pooling."""
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        pool, fc = create_classifier(self.num_features, num_classes, pool_type, dtype=self.dtype,
                                     param_dtype=self.param_dtype, rngs=rngs)
        self._set_head(pool, fc)

    def _set_head(self, pool: SelectAdaptivePool2d, fc: nnx.Linear | None) -> None:
        self.global_pool = pool
        setattr(self, self._classifier, nnx.data(fc))  # data even when None: a later reset puts a Linear there
        self.head_hidden_size = self.num_features * pool.feat_mult()

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = self.global_pool(x)
        if self.head_drop is not None:
            x = self.head_drop(x)
        fc = self.get_classifier()
        return x if pre_logits or fc is None else fc(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_head(self.forward_features(x))


@register(name="timm.ResNet")
class ResNet(TimmClassifier):
    """timm's ResNet / ResNeXt / SE-ResNeXt / SENet-154 (``timm.models.resnet.ResNet``), NHWC.

    Args: as ``attn_torch.timm.ResNet`` (timm's arguments and defaults), then
    ``dtype``, ``param_dtype`` and ``rngs`` as in ``flax.nnx`` layers.

    Input ``(N, H, W, in_chans)``; output ``(N, num_classes)``. ``forward_features``
    gives ``(N, H/32, W/32, num_features)``, ``forward_head(x, pre_logits=False)`` the rest.
    ``model.eval()`` / ``model.train()`` switch BatchNorm statistics and dropout.
    Convolutions start from PyTorch's default initialisation, not timm's kaiming-normal
    re-draw; ``zero_init_last`` zeroes the last norm of each block as timm does.
    """

    def __init__(self, block: Any, layers: Sequence[int], num_classes: int = 1000, in_chans: int = 3,
                 output_stride: int = 32, global_pool: str = "avg", cardinality: int = 1, base_width: int = 64,
                 stem_width: int = 64, stem_type: str = "", replace_stem_pool: bool = False,
                 block_reduce_first: int = 1, down_kernel_size: int = 1, avg_down: bool = False,
                 channels: Sequence[int] = (64, 128, 256, 512), act_layer: Any = "relu",
                 norm_layer: Any = "batchnorm", aa_layer: Any = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, drop_block_rate: float = 0.0, zero_init_last: bool = True,
                 block_args: dict[str, Any] | None = None, block_widths: Sequence[Sequence[Sequence[int]]] | None = None,
                 *, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        check_resnet_args(output_stride, stem_type, drop_block_rate, layers, channels)
        factory = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        block_args = dict(block_args or {})
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.dtype = dtype
        self.param_dtype = param_dtype
        act, norm, aa = get_act_layer(act_layer), get_norm_layer(norm_layer), get_aa_layer(aa_layer)

        deep_stem = "deep" in stem_type
        inplanes = stem_width * 2 if deep_stem else 64
        if deep_stem:
            stem_chs = (3 * (stem_width // 4), stem_width) if "tiered" in stem_type else (stem_width, stem_width)
            self.conv1: Any = nnx.Sequential(
                Conv2d(in_chans, stem_chs[0], 3, stride=2, padding=1, bias=False, **factory),
                norm(stem_chs[0], **factory), act,
                Conv2d(stem_chs[0], stem_chs[1], 3, stride=1, padding=1, bias=False, **factory),
                norm(stem_chs[1], **factory), act,
                Conv2d(stem_chs[1], inplanes, 3, stride=1, padding=1, bias=False, **factory))
        else:
            self.conv1 = Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False, **factory)
        self.bn1 = norm(inplanes, **factory)
        self.act1 = act

        # The name 'maxpool' is kept for weight compatibility, whatever the stem pooling is.
        if replace_stem_pool:
            self.maxpool: Any = nnx.Sequential(*filter(None, [
                Conv2d(inplanes, inplanes, 3, stride=1 if aa else 2, padding=1, bias=False, **factory),
                _create_aa(aa, inplanes, 2, **factory) if aa else None,
                norm(inplanes, **factory), act]))
        elif aa is not None and aa[0] == "avgpool":
            self.maxpool = functools.partial(avg_pool, kernel_size=2, stride=2)
        elif aa is not None:
            self.maxpool = nnx.Sequential(functools.partial(max_pool, kernel_size=3, stride=1, padding=1),
                                          _create_aa(aa, inplanes, 2, **factory))
        else:
            self.maxpool = functools.partial(max_pool, kernel_size=3, stride=2, padding=1)

        blocks = list(block) if isinstance(block, (list, tuple)) else [block] * len(channels)
        block_fns = [_block_class(b) for b in blocks]
        net_num_blocks = sum(layers)
        net_block_idx = 0
        for stage_idx, (block_fn, planes, num_blocks) in enumerate(zip(block_fns, channels, layers)):
            stride = 1 if stage_idx == 0 else 2
            widths = block_widths[stage_idx] if block_widths else [None] * num_blocks
            outplanes = widths[0][-1] if block_widths else planes * block_fn.expansion
            downsample = None
            if stride != 1 or inplanes != outplanes:
                down = downsample_avg if avg_down else downsample_conv
                downsample = down(inplanes, outplanes, down_kernel_size, stride,
                                  norm_layer=norm_layer, **factory)
            stage = []
            for block_idx in range(num_blocks):
                dpr = drop_path_rate * net_block_idx / max(net_num_blocks - 1, 1)
                stage.append(block_fn(
                    inplanes, planes, stride if block_idx == 0 else 1, downsample if block_idx == 0 else None,
                    cardinality=cardinality, base_width=base_width, reduce_first=block_reduce_first,
                    act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer,
                    drop_path=drop_path(dpr, rngs), widths=widths[block_idx], **block_args, **factory))
                inplanes = outplanes
                net_block_idx += 1
            setattr(self, f"layer{stage_idx + 1}", nnx.Sequential(*stage))

        self.num_features = inplanes
        self._set_head(*create_classifier(self.num_features, num_classes, global_pool, **factory))
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate else None
        if zero_init_last:
            for m in (*self.layer1.layers, *self.layer2.layers, *self.layer3.layers, *self.layer4.layers):
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                # A new variable, not an indexed write: under nnx.eval_shape each such write costs O(model).
                last.scale = nnx.Param(jnp.zeros_like(last.scale[...]))

    def forward_features(self, x: jax.Array) -> jax.Array:
        check_input(x.shape, self.in_chans, "NHWC", "ResNet")
        x = self.promote(x)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
