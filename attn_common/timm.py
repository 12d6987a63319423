"""Framework-free pieces of timm's layer conventions (timm 1.0.31, ``timm/layers``).

Both ``attn_torch.timm`` and ``attn_flax.timm`` compute channel counts, kernel sizes
and layer names with these, so the two families build the same shapes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# create_attn's kinds, in timm's order (timm/layers/create_attn.py) -> (class name, fixed kwargs).
ATTN_KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "se": ("SEModule", {}),
    "ese": ("EffectiveSEModule", {}),
    "eca": ("EcaModule", {}),
    "ecam": ("EcaModule", {"use_mlp": True}),
    "ceca": ("CecaModule", {}),
    "ge": ("GatherExcite", {}),
    "gc": ("GlobalContext", {}),
    "gca": ("GlobalContext", {"fuse_add": True, "fuse_scale": False}),
    "cbam": ("CbamModule", {}),
    "lcbam": ("LightCbamModule", {}),
    "coord": ("CoordAttn", {}),
    "scoord": ("SimpleCoordAttn", {}),
    "ela": ("EfficientLocalAttn", {}),
    "strip": ("StripAttn", {}),
    "sk": ("SelectiveKernel", {}),
    "splat": ("SplitAttn", {}),
    "lambda": ("LambdaLayer", {}),
    "bottleneck": ("BottleneckAttn", {}),
    "halo": ("HaloAttn", {}),
    "nl": ("NonLocalAttn", {}),
    "bat": ("BatNonLocalAttn", {}),
}


def attn_kind(kind: str) -> tuple[str, dict[str, Any]]:
    """The class name and fixed keyword arguments of a ``create_attn`` kind (case-insensitive)."""
    key = kind.lower() if isinstance(kind, str) else kind
    if key not in ATTN_KINDS:
        raise ValueError(f"`attn_type`={kind!r} is not a timm attention kind; choose one of {sorted(ATTN_KINDS)}")
    return ATTN_KINDS[key]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding: the nearest multiple of ``divisor`` (at least ``min_value``,
    default ``divisor``), one ``divisor`` more when that fell below ``round_limit * v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """timm's ECA kernel: ``t = int(|log2(C) + beta| / gamma)``, the next odd, at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


def to_2tuple(x: Any) -> tuple[Any, Any]:
    if isinstance(x, (tuple, list)):
        return tuple(x)  # type: ignore[return-value]
    return (x, x)


def get_padding(kernel_size: int | Sequence[int], stride: int = 1, dilation: int | Sequence[int] = 1) -> Any:
    """timm's symmetric 'same-ish' padding ``((stride - 1) + dilation * (k - 1)) // 2``."""
    if any(isinstance(v, (tuple, list)) for v in (kernel_size, stride, dilation)):
        return [get_padding(*a) for a in zip(to_2tuple(kernel_size), to_2tuple(stride), to_2tuple(dilation))]
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


# Layer names as timm's create_act / norm factories spell them, and torch class names.
_ALIASES = {
    "hardswish": "hard_swish",
    "hardsigmoid": "hard_sigmoid",
    "swish": "silu",
    "gelutanh": "gelu_tanh",
    "leakyrelu": "leaky_relu",
    "batchnorm2d": "batchnorm2d",
    "batchnormact2d": "batchnorm2d",
}


def layer_name(layer: Any) -> str | None:
    """A normalised name for an activation/norm given as a string or a class of either
    framework (``nn.ReLU`` -> ``"relu"``, ``nn.Hardswish`` -> ``"hard_swish"``); ``None`` for
    ``None``/``""``. Lets recorded constructor arguments cross frameworks."""
    if layer is None or layer is False or layer == "":
        return None
    name = layer if isinstance(layer, str) else getattr(layer, "__name__", type(layer).__name__)
    name = name.lower()
    return _ALIASES.get(name, _ALIASES.get(name.replace("_", ""), name))
