"""Every registered ``attn_flax`` module as a ``flax.linen`` module, through ``flax.nnx.bridge``.

For code bases still on Linen::

    >>> from attn_flax import linen as attn_linen
    >>> model = attn_linen.CBAM(64, reduction=16)                 # same arguments as attn_flax.CBAM
    >>> variables = model.init(jax.random.key(0), x)               # {"params": ...} (+ "batch_stats")
    >>> y = model.apply(variables, x)                              # eval: running statistics
    >>> y, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])

Each wrapper builds its nnx twin inside ``init``/``apply`` (``nnx.bridge.ToLinen``)
and keeps the state in Linen collections laid out by the nnx state path:
parameters (``ChannelParam`` included) in ``"params"``, running statistics and
``num_batches_tracked`` in ``"batch_stats"``. ``__call__(x, train=False)``
switches every BatchNorm between running and batch statistics; training a
module with BatchNorm needs ``mutable=["batch_stats"]``.

Converted weights go in and out through the nnx module:
``to_variables(nnx_module)`` (e.g. of ``parity.to_flax(torch_module)`` or after
``parity.load_flax``) gives the variables, ``to_nnx(model, variables)`` the nnx
module back (for ``parity.to_torch`` or ``parity.save_flax``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge, traversals, variablelib
from flax.nnx.bridge import variables as bridge_variables

from attn_flax._registry import MODULES

__all__ = ["Bridged", "to_nnx", "to_variables", *sorted(MODULES)]


def _collection(variable_type: type) -> str:
    """Linen collection of an nnx variable type; subclasses of ``Param`` stay in ``"params"``."""
    if issubclass(variable_type, nnx.Param):
        return "params"
    return variablelib.variable_name_from_type(variable_type, allow_register=True)


def _collections(module: nnx.Module, convert: Callable[[nnx.Variable], Any]) -> dict[str, dict[Any, Any]]:
    flat: dict[str, dict[tuple[Any, ...], Any]] = {}
    for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState))):
        flat.setdefault(_collection(type(variable)), {})[path] = convert(variable)
    return {name: traversals.unflatten_mapping(leaves) for name, leaves in flat.items()}


def _forward(module: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
    module.train() if train else module.eval()
    return module(x)


class Bridged(bridge.ToLinen):
    """``nnx.bridge.ToLinen`` with a ``train`` switch, and ``ChannelParam`` kept among the params."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # type: ignore[override]
        if (train and not self.is_initializing() and "batch_stats" in self.variables
                and not self.is_mutable_collection("batch_stats")):
            raise ValueError(
                f"{type(self).__name__} in training mode updates its BatchNorm statistics: "
                "call apply(..., train=True, mutable=['batch_stats'])"
            )
        return super().__call__(x, train, nnx_method=_forward)

    def _update_variables(self, module: nnx.Module) -> None:
        """Store the nnx state in Linen collections (the bridge would give ``ChannelParam`` its own)."""
        convert = self.metadata_fn or (lambda variable: variable.get_value())
        for collection, tree in _collections(module, convert).items():
            if self.is_mutable_collection(collection):
                for key, value in tree.items():
                    self.put_variable(collection, key, value)


_UNSET = object()


def _linen_class(name: str, nnx_class: type) -> type[Bridged]:
    def __init__(self, *positional: Any, args: tuple | None = None, kwargs: Mapping[str, Any] | None = None,
                 nnx_class: Callable[..., nnx.Module] = nnx_class, skip_rng: bool = False,
                 metadata_fn: Callable | None = bridge_variables.to_linen_var,
                 name: str | None = None, parent: Any = _UNSET, **module_kwargs: Any) -> None:
        # Positional and keyword arguments are the nnx module's; args=/kwargs= are the dataclass
        # fields that Linen passes back when it clones the module.
        if args is not None and positional or kwargs is not None and module_kwargs:
            raise TypeError(f"{type(self).__name__}: give the module's arguments directly, not also as args=/kwargs=")
        if kwargs is None:  # name the positional arguments, so that `model.channels` works
            kwargs = inspect.signature(nnx_class.__init__).bind_partial(None, *positional, **module_kwargs).arguments
            kwargs.pop(next(iter(kwargs)))
            positional = ()
        linen = {} if parent is _UNSET else {"parent": parent}
        Bridged.__init__(
            self, nnx_class=nnx_class, args=tuple(positional) if args is None else args,
            kwargs=FrozenDict(kwargs), skip_rng=skip_rng, metadata_fn=metadata_fn, name=name, **linen,
        )

    doc = (f"``attn_flax.{name}`` as a ``flax.linen`` module: same arguments (``rngs`` comes from Linen's "
           f"``init``); ``__call__(x, train=False)``.\n\n" + (nnx_class.__doc__ or ""))
    return type(name, (Bridged,), {"__init__": __init__, "__doc__": doc, "__module__": __name__, "__qualname__": name})


for _name, _cls in MODULES.items():
    globals()[_name] = _linen_class(_name, _cls)


def to_variables(module: nnx.Module) -> dict[str, Any]:
    """Linen variables holding an nnx module's state, laid out as the wrappers lay them out (copies)."""
    return _collections(module, lambda variable: jnp.array(variable.get_value(), copy=True))


def to_nnx(model: Bridged, variables: Mapping[str, Any]) -> nnx.Module:
    """The nnx module behind a wrapper, holding ``variables`` (strict: every variable, nothing else)."""
    module = nnx.eval_shape(lambda: model.nnx_class(*model.args, **model.kwargs, rngs=nnx.Rngs(0)))
    given = {".".join(map(str, path)): value
             for tree in variables.values() for path, value in traversals.flatten_mapping(dict(tree)).items()}
    expected = {".".join(map(str, path)): variable
                for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState)))}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k}: expected {expected[k].shape}, got {np.shape(given[k])}"
              for k in expected if k in given and tuple(expected[k].shape) != np.shape(given[k])]
    if missing or unexpected or shapes:
        raise ValueError(f"variables do not match {type(model).__name__}: missing {missing}, "
                         f"unexpected {unexpected}, shape mismatches {shapes}")
    for key, variable in expected.items():
        variable.set_value(jnp.array(given[key], dtype=variable.get_value().dtype, copy=True))
    return module
