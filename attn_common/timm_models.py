"""The named architectures of timm's ``resnet.py`` and ``senet.py``, as framework-free arguments.

Each entry is ``name -> (class name, constructor arguments)`` with timm 1.0.31's
values. Layers are given by name (``"Bottleneck"``, ``"se"``, ``"avgpool"``,
``"blurpool"``, ``"groupnorm"``) so that the arguments a model records carry over
between ``attn_torch`` and ``attn_flax`` and can be stored as JSON; an attention
with options is a ``[name, kwargs]`` pair, the portable form of timm's
``partial(get_attn(name), **kwargs)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any

_B, _N = "BasicBlock", "Bottleneck"
_D = dict(stem_width=32, stem_type="deep", avg_down=True)  # the 'd' variants
_T = dict(stem_width=32, stem_type="deep_tiered", avg_down=True)  # the 't' variants
_C = dict(stem_width=32, stem_type="deep")
_S = dict(stem_width=64, stem_type="deep")
_SE = dict(block_args=dict(attn_layer="se"))
_ECA = dict(block_args=dict(attn_layer="eca"))
_RS = dict(stem_width=32, stem_type="deep", replace_stem_pool=True, avg_down=True,
           block_args=dict(attn_layer=["se", dict(rd_ratio=0.25)]))
_X32x4 = dict(cardinality=32, base_width=4)
_X32x8 = dict(cardinality=32, base_width=8)
_X64x4 = dict(cardinality=64, base_width=4)
_AVG = dict(aa_layer="avgpool")
_BLUR = dict(aa_layer="blurpool")

_L10, _L14, _L18, _L26 = (1, 1, 1, 1), (1, 1, 1, 1), (2, 2, 2, 2), (2, 2, 2, 2)
_L34 = _L50 = (3, 4, 6, 3)
_L101, _L152, _L200, _L269 = (3, 4, 23, 3), (3, 8, 36, 3), (3, 24, 36, 3), (3, 30, 48, 8)


def _r(block: str, layers: tuple[int, ...], *parts: dict[str, Any], **kwargs: Any) -> tuple[str, dict[str, Any]]:
    args: dict[str, Any] = {"block": block, "layers": list(layers)}
    for part in parts:
        args.update(part)
    args.update(kwargs)
    return "ResNet", args


RESNET: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet10t": _r(_B, _L10, _T),
    "resnet14t": _r(_N, _L14, _T),
    "resnet18": _r(_B, _L18),
    "resnet18d": _r(_B, _L18, _D),
    "resnet34": _r(_B, _L34),
    "resnet34d": _r(_B, _L34, _D),
    "resnet26": _r(_N, _L26),
    "resnet26t": _r(_N, _L26, _T),
    "resnet26d": _r(_N, _L26, _D),
    "resnet50": _r(_N, _L50),
    "resnet50c": _r(_N, _L50, _C),
    "resnet50d": _r(_N, _L50, _D),
    "resnet50s": _r(_N, _L50, _S),
    "resnet50t": _r(_N, _L50, _T),
    "resnet101": _r(_N, _L101),
    "resnet101c": _r(_N, _L101, _C),
    "resnet101d": _r(_N, _L101, _D),
    "resnet101s": _r(_N, _L101, _S),
    "resnet152": _r(_N, _L152),
    "resnet152c": _r(_N, _L152, _C),
    "resnet152d": _r(_N, _L152, _D),
    "resnet152s": _r(_N, _L152, _S),
    "resnet200": _r(_N, _L200),
    "resnet200d": _r(_N, _L200, _D),
    "wide_resnet50_2": _r(_N, _L50, base_width=128),
    "wide_resnet101_2": _r(_N, _L101, base_width=128),
    "resnet50_gn": _r(_N, _L50, norm_layer="groupnorm"),
    "resnext50_32x4d": _r(_N, _L50, _X32x4),
    "resnext50d_32x4d": _r(_N, _L50, _X32x4, _D),
    "resnext101_32x4d": _r(_N, _L101, _X32x4),
    "resnext101_32x8d": _r(_N, _L101, _X32x8),
    "resnext101_32x16d": _r(_N, _L101, cardinality=32, base_width=16),
    "resnext101_32x32d": _r(_N, _L101, cardinality=32, base_width=32),
    "resnext101_64x4d": _r(_N, _L101, _X64x4),
    "ecaresnet26t": _r(_N, _L26, _T, _ECA),
    "ecaresnet50d": _r(_N, _L50, _D, _ECA),
    "ecaresnet50d_pruned": _r(_N, _L50, _D, _ECA),
    "ecaresnet50t": _r(_N, _L50, _T, _ECA),
    "ecaresnetlight": _r(_N, (1, 1, 11, 3), _ECA, stem_width=32, avg_down=True),
    "ecaresnet101d": _r(_N, _L101, _D, _ECA),
    "ecaresnet101d_pruned": _r(_N, _L101, _D, _ECA),
    "ecaresnet200d": _r(_N, _L200, _D, _ECA),
    "ecaresnet269d": _r(_N, _L269, _D, _ECA),
    "ecaresnext26t_32x4d": _r(_N, _L26, _X32x4, _T, _ECA),
    "ecaresnext50t_32x4d": _r(_N, _L50, _X32x4, _T, _ECA),
    "seresnet18": _r(_B, _L18, _SE),
    "seresnet34": _r(_B, _L34, _SE),
    "seresnet50": _r(_N, _L50, _SE),
    "seresnet50t": _r(_N, _L50, _T, _SE),
    "seresnet101": _r(_N, _L101, _SE),
    "seresnet152": _r(_N, _L152, _SE),
    "seresnet152d": _r(_N, _L152, _D, _SE),
    "seresnet200d": _r(_N, _L200, _D, _SE),
    "seresnet269d": _r(_N, _L269, _D, _SE),
    "seresnext26d_32x4d": _r(_N, _L26, _X32x4, _D, _SE),
    "seresnext26t_32x4d": _r(_N, _L26, _X32x4, _T, _SE),
    "seresnext50_32x4d": _r(_N, _L50, _X32x4, _SE),
    "seresnext101_32x4d": _r(_N, _L101, _X32x4, _SE),
    "seresnext101_32x8d": _r(_N, _L101, _X32x8, _SE),
    "seresnext101d_32x8d": _r(_N, _L101, _X32x8, _D, _SE),
    "seresnext101_64x4d": _r(_N, _L101, _X64x4, _SE),
    "senet154": _r(_N, _L152, _X64x4, _SE, stem_type="deep", down_kernel_size=3, block_reduce_first=2),
    "resnetblur18": _r(_B, _L18, _BLUR),
    "resnetblur50": _r(_N, _L50, _BLUR),
    "resnetblur50d": _r(_N, _L50, _BLUR, _D),
    "resnetblur101d": _r(_N, _L101, _BLUR, _D),
    "resnetaa34d": _r(_B, _L34, _AVG, _D),
    "resnetaa50": _r(_N, _L50, _AVG),
    "resnetaa50d": _r(_N, _L50, _AVG, _D),
    "resnetaa101d": _r(_N, _L101, _AVG, _D),
    "seresnetaa50d": _r(_N, _L50, _AVG, _D, _SE),
    "seresnextaa101d_32x8d": _r(_N, _L101, _X32x8, _D, _AVG, _SE),
    "seresnextaa201d_32x8d": _r(_N, (3, 24, 36, 4), _X32x8, _AVG, _SE, stem_width=64, stem_type="deep", avg_down=True),
    "resnetrs50": _r(_N, _L50, _RS),
    "resnetrs101": _r(_N, _L101, _RS),
    "resnetrs152": _r(_N, _L152, _RS),
    "resnetrs200": _r(_N, _L200, _RS),
    "resnetrs270": _r(_N, (4, 29, 53, 4), _RS),
    "resnetrs350": _r(_N, (4, 36, 72, 4), _RS),
    "resnetrs420": _r(_N, (4, 44, 87, 4), _RS),
}


# Per stage, per block: the widths (conv1, conv2, conv3) of timm's two pruned ECA-ResNets
# (Aflalo et al., "Knapsack Pruning with Inner Distillation", https://arxiv.org/abs/2002.08258),
# the layer shapes of their published weights (timm/models/_pruned/*.txt).
PRUNED_WIDTHS: dict[str, list[list[list[int]]]] = {
    "ecaresnet50d_pruned": [[[47, 18, 19], [52, 22, 19], [64, 35, 19]], [[85, 37, 171], [107, 80, 171], [120, 85, 171], [125, 87, 171]], [[198, 126, 818], [255, 232, 818], [256, 233, 818], [253, 235, 818], [256, 225, 818], [256, 239, 818]], [[492, 237, 2022], [512, 500, 2022], [512, 490, 2022]]],
    "ecaresnet101d_pruned": [[[45, 25, 26], [53, 20, 26], [60, 27, 26]], [[81, 24, 142], [93, 49, 142], [102, 54, 142], [122, 78, 142]], [[101, 25, 278], [239, 160, 278], [234, 156, 278], [250, 176, 278], [253, 191, 278], [251, 175, 278], [230, 128, 278], [244, 154, 278], [244, 159, 278], [238, 97, 278], [244, 149, 278], [253, 181, 278], [245, 119, 278], [255, 216, 278], [256, 201, 278], [253, 149, 278], [254, 141, 278], [256, 190, 278], [256, 217, 278], [255, 156, 278], [256, 155, 278], [256, 232, 278], [256, 214, 278]], [[499, 289, 2042], [512, 512, 2042], [512, 502, 2042]]],
}
for _name, _widths in PRUNED_WIDTHS.items():
    RESNET[_name][1]["block_widths"] = _widths


def _s(block: str, layers: tuple[int, ...], groups: int, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    return "SENet", {"block": block, "layers": list(layers), "groups": groups, "reduction": 16, **kwargs}


SENET: dict[str, tuple[str, dict[str, Any]]] = {
    "legacy_seresnet18": _s("SEResNetBlock", _L18, 1),
    "legacy_seresnet34": _s("SEResNetBlock", _L34, 1),
    "legacy_seresnet50": _s("SEResNetBottleneck", _L50, 1),
    "legacy_seresnet101": _s("SEResNetBottleneck", _L101, 1),
    "legacy_seresnet152": _s("SEResNetBottleneck", _L152, 1),
    "legacy_senet154": _s("SEBottleneck", _L152, 64, downsample_kernel_size=3, downsample_padding=1,
                          inplanes=128, input_3x3=True),
    "legacy_seresnext26_32x4d": _s("SEResNeXtBottleneck", _L26, 32),
    "legacy_seresnext50_32x4d": _s("SEResNeXtBottleneck", _L50, 32),
    "legacy_seresnext101_32x4d": _s("SEResNeXtBottleneck", _L101, 32),
}

MODELS: dict[str, tuple[str, dict[str, Any]]] = {**RESNET, **SENET}


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the timm architectures (``fnmatch`` ``pattern``, e.g. ``"*eca*"``), naturally sorted."""
    names = list(MODELS)
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    return sorted(names, key=_natural_key)


def model_entry(name: str) -> tuple[str, dict[str, Any]]:
    """``(class name, arguments)`` of the architecture ``name``; a ValueError names it and close matches."""
    if not isinstance(name, str) or name not in MODELS:
        close = difflib.get_close_matches(str(name), list(MODELS), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see list_models()"
        raise ValueError(f"unknown model name {name!r}{hint}")
    cls, args = MODELS[name]
    return cls, {k: (dict(v) if isinstance(v, dict) else v) for k, v in args.items()}


# Class names and timm's shorthands -> the canonical layer names used above.
_ALIASES = {
    "batchnorm2d": "batchnorm", "groupnorm": "groupnorm", "relu": "relu", "silu": "silu", "swish": "silu",
    "gelu": "gelu", "avg": "avgpool", "avgpool2d": "avgpool", "blur": "blurpool", "blurpool2d": "blurpool",
    "semodule": "se", "squeezeexcite": "se", "ecamodule": "eca", "efficientchannelattn": "eca",
}


# The activations timm's ResNet and SENet take by name (each framework's create_act builds them).
RESNET_ACTIVATIONS = ("relu", "silu", "swish", "gelu", "tanh", "sigmoid")


def layer_spec(arg: str, layer: Any, choices: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of a layer given as a name, a class, a ``functools.partial`` or a ``[name, kwargs]`` pair.

    Classes from either framework are matched by name (``nn.ReLU`` -> ``"relu"``,
    ``BlurPool2d`` -> ``"blurpool"``), so one framework's arguments build the other's twin.
    """
    kwargs: dict[str, Any] = {}
    value = layer
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], dict):
        value, kwargs = value[0], dict(value[1])
    if hasattr(value, "func") and hasattr(value, "keywords"):  # functools.partial
        kwargs = {**value.keywords, **kwargs}
        value = value.func
    name = value if isinstance(value, str) else getattr(value, "__name__", None)
    if isinstance(name, str):
        key = name.lower().replace("_", "").replace("-", "")
        key = _ALIASES.get(key, key)
        if key in choices:
            return key, kwargs
    raise ValueError(f"`{arg}`={layer!r} is not one of: {', '.join(choices)} (or its class)")


def check_resnet_args(output_stride: int, stem_type: str, drop_block_rate: float, layers: Any,
                      channels: Any) -> None:
    if output_stride != 32:
        raise ValueError(f"`output_stride`={output_stride!r}: only 32 is implemented (no dilated stages)")
    if stem_type not in ("", "deep", "deep_tiered"):
        raise ValueError(f"`stem_type`={stem_type!r} is not one of: '', deep, deep_tiered")
    if drop_block_rate:
        raise ValueError(f"`drop_block_rate`={drop_block_rate!r}: DropBlock is not implemented, use 0")
    if len(layers) != len(channels):
        raise ValueError(f"`layers`={list(layers)!r} and `channels`={list(channels)!r} differ in length")
