"""timm's attention factory (``timm/layers/create_attn.py``): a kind name to a layer."""

from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn

from attn_common.timm import attn_kind
from attn_torch._registry import MODULES


def get_attn(attn_type: Any) -> Callable[..., nn.Module] | None:
    """The constructor for ``attn_type``: a kind (``"se"``, ``"eca"``, ... case-insensitive),
    ``True`` (SE), a module class or instance (returned as is), or ``None``/``False``/``""``
    (no attention). A registered class name (``"EcaModule"``) also works, as checkpoint metadata
    stores class arguments by name. An unknown kind raises ``ValueError`` naming it."""
    if isinstance(attn_type, nn.Module):
        return attn_type
    if attn_type is None or attn_type is False or attn_type == "":
        return None
    if attn_type is True:
        return MODULES["SEModule"]
    if not isinstance(attn_type, str):
        return _same_framework(attn_type)
    if attn_type in MODULES:  # a registered class by name (how checkpoints store a class argument)
        return MODULES[attn_type]
    name, fixed = attn_kind(attn_type)
    return functools.partial(MODULES[name], **fixed) if fixed else MODULES[name]


def _same_framework(layer: Any) -> Any:
    """A registered class of the other framework (or a ``functools.partial`` of one, as recorded
    constructor arguments carry it) as this framework's class of the same registry name."""
    if isinstance(layer, functools.partial):
        return functools.partial(_same_framework(layer.func), *layer.args, **layer.keywords)
    if isinstance(layer, type) and not issubclass(layer, nn.Module):
        name = getattr(layer, "registry_name", layer.__name__)
        if name not in MODULES:
            raise ValueError(f"`attn_type`={layer!r} is not a module of this framework nor a registered twin")
        return MODULES[name]
    return layer


def create_attn(attn_type: Any, channels: int | None = None, **kwargs: Any) -> nn.Module | None:
    """``get_attn(attn_type)(channels, **kwargs)``, or ``None`` for no attention; the first
    positional argument of every timm attention layer is its input channel count
    (``channels=None``: it is left to ``kwargs``, e.g. ``in_channels=`` or ``dim=``)."""
    module_cls = get_attn(attn_type)
    if module_cls is None:
        return None
    return module_cls(**kwargs) if channels is None else module_cls(channels, **kwargs)
