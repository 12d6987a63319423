"""Activations and gates by name, as timm's ``timm/layers/create_act.py`` resolves them.

A name (``"relu"``, ``"hard_sigmoid"``, ...), a ``torch.nn`` class, or a Flax twin's
activation (resolved by its name, so recorded constructor arguments cross frameworks).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from attn_common.timm import layer_name

_ACT_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hard_sigmoid": nn.Hardsigmoid,
    "hard_swish": nn.Hardswish,
    "identity": nn.Identity,
}


def get_act_layer(name: Any = "relu") -> type[nn.Module] | None:
    """The activation class for ``name`` (a string, a ``torch.nn`` class, or a Flax activation)."""
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name
    key = layer_name(name)
    if key is None:
        return None
    if key not in _ACT_LAYERS:
        raise ValueError(f"activation `{name!r}` is not known; choose one of {sorted(_ACT_LAYERS)}")
    return _ACT_LAYERS[key]


def create_act_layer(name: Any, inplace: bool | None = None, **kwargs: Any) -> nn.Module | None:
    """An activation module (``inplace`` is passed only to the classes that take it)."""
    act_layer = get_act_layer(name)
    if act_layer is None:
        return None
    if inplace is None:
        return act_layer(**kwargs)
    try:
        return act_layer(inplace=inplace, **kwargs)
    except TypeError:
        return act_layer(**kwargs)
