"""Activations and gates by name, as timm's ``timm/layers/create_act.py`` resolves them.

A name (``"relu"``, ``"hard_sigmoid"``, ...), a callable, or a torch twin's class
(resolved by its name, so recorded constructor arguments cross frameworks).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from attn_common.timm import layer_name
from attn_flax.layers import hard_sigmoid, hard_swish

Activation = Callable[[jax.Array], jax.Array]


def identity(x: jax.Array) -> jax.Array:
    return x


def relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 6.0)


_ACT_FNS: dict[str, Activation] = {
    "relu": jax.nn.relu,
    "relu6": relu6,
    "silu": jax.nn.silu,
    "mish": jax.nn.mish,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "elu": jax.nn.elu,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "hard_sigmoid": hard_sigmoid,
    "hard_swish": hard_swish,
    "identity": identity,
}


def get_act_layer(name: Any = "relu") -> Activation | None:
    """The activation function for ``name`` (a string, a torch class such as ``nn.ReLU``, or a callable)."""
    key = layer_name(name)
    if key is None:
        return None
    if key in _ACT_FNS:
        return _ACT_FNS[key]
    if callable(name) and not isinstance(name, type):
        return name
    raise ValueError(f"activation `{name!r}` is not known; choose one of {sorted(_ACT_FNS)}")


def create_act_layer(name: Any, inplace: bool | None = None, **kwargs: Any) -> Activation | None:
    """timm's ``create_act_layer``: the activation for ``name`` (``inplace`` means nothing here)."""
    del inplace
    act = get_act_layer(name)
    return functools.partial(act, **kwargs) if act is not None and kwargs else act
