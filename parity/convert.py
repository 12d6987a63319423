"""PyTorch state dict <-> Flax NNX state, driven by a small table of per-leaf rules.

The Flax modules mirror the torch module tree attribute for attribute, so a
torch name is the Flax path joined with dots (``nnx.Sequential``'s ``layers``
level dropped). Each Flax variable is matched by its owner's type, its attribute
name and its variable type to a :class:`Rule` that renames it and changes its
layout. Nothing here knows about any particular attention module.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_flax.layers import BatchNorm, ChannelParam

Array = np.ndarray


class ConversionError(ValueError):
    """Raised when a state dict and a module do not match (names or shapes)."""


def _identity(a: Array) -> Array:
    return a


def _kernel_to_torch(a: Array) -> Array:
    """Flax ``(*spatial, I, O)`` -> torch ``(O, I, *spatial)`` for any number of spatial dims."""
    n = a.ndim
    return a.transpose(n - 1, n - 2, *range(n - 2))


def _kernel_to_flax(a: Array) -> Array:
    n = a.ndim
    return a.transpose(*range(2, n), 1, 0)


def _channels_first(a: Array) -> Array:
    return np.moveaxis(a, -1, 1)


def _channels_last(a: Array) -> Array:
    return np.moveaxis(a, 1, -1)


def _to_int64(a: Array) -> Array:
    return a.astype(np.int64)


def _to_int32(a: Array) -> Array:
    if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
        raise ConversionError(f"num_batches_tracked={a} does not fit the int32 Flax counter")
    return a.astype(np.int32)


@dataclass(frozen=True)
class Rule:
    """How one Flax leaf maps to one torch tensor.

    ``owner``: the Flax module type holding the variable; ``flax_name``: its
    attribute (``None``: any); ``torch_name``: the torch suffix (``None``: the same
    name); ``variable``: the nnx variable type it applies to.
    """

    owner: type | tuple[type, ...]
    flax_name: str | None
    torch_name: str | None = None
    to_torch: Callable[[Array], Array] = _identity
    to_flax: Callable[[Array], Array] = _identity
    variable: type = nnx.Variable

    def matches(self, owner: nnx.Module, name: str, variable: nnx.Variable) -> bool:
        return (
            isinstance(owner, self.owner)
            and self.flax_name in (None, name)
            and isinstance(variable, self.variable)
        )


_NORMS = (nnx.GroupNorm, nnx.LayerNorm, BatchNorm)

# First match wins, so specific rules come before the catch-all ones.
RULES: tuple[Rule, ...] = (
    Rule(nnx.Conv, "kernel", "weight", _kernel_to_torch, _kernel_to_flax),
    Rule(nnx.Linear, "kernel", "weight", np.transpose, np.transpose),
    Rule((nnx.Conv, nnx.Linear), "bias"),
    Rule(_NORMS, "scale", "weight"),
    Rule(_NORMS, "bias"),
    Rule(BatchNorm, "mean", "running_mean"),
    Rule(BatchNorm, "var", "running_var"),
    Rule(BatchNorm, "num_batches_tracked", None, _to_int64, _to_int32),
    Rule(nnx.Module, None, None, _channels_first, _channels_last, variable=ChannelParam),
    Rule(nnx.Module, None, None, variable=nnx.Param),  # raw parameters with the same layout
)


@dataclass(frozen=True)
class Leaf:
    """One Flax variable with its torch name and the rule that converts it."""

    torch_name: str
    variable: nnx.Variable
    rule: Rule

    def torch_shape(self) -> tuple[int, ...]:
        placeholder = np.broadcast_to(np.zeros((), np.float32), self.variable.shape)
        return tuple(self.rule.to_torch(placeholder).shape)


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, nnx.Module):
        yield from vars(node).items()
    elif isinstance(node, (list, tuple, nnx.List)):
        yield from ((str(i), v) for i, v in enumerate(node))


def iter_leaves(module: nnx.Module) -> Iterator[Leaf]:
    """Every variable of ``module`` with its torch name, in definition order."""
    seen: set[int] = set()

    def walk(node: Any, prefix: tuple[str, ...]) -> Iterator[Leaf]:
        if id(node) in seen:
            return
        seen.add(id(node))
        for name, child in _children(node):
            if isinstance(child, nnx.Variable):
                rule = next((r for r in RULES if r.matches(node, name, child)), None)
                if rule is None:
                    path = ".".join(prefix + (name,))
                    raise ConversionError(
                        f"no conversion rule for {type(node).__name__}.{name} "
                        f"({type(child).__name__}) at {path!r}"
                    )
                yield Leaf(".".join(prefix + (rule.torch_name or name,)), child, rule)
            elif isinstance(child, (nnx.Module, list, tuple, nnx.List)):
                skip = isinstance(node, nnx.Sequential) and name == "layers"
                yield from walk(child, prefix if skip else prefix + (name,))

    yield from walk(module, ())


def _to_numpy(value: Any) -> Array:
    """A torch tensor, jax array or array-like as a NumPy array (bf16 kept exact)."""
    if type(value).__module__.startswith("torch"):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def state_dict(module: nnx.Module) -> dict[str, Array]:
    """The torch-named, torch-layout state of a Flax module, as fresh NumPy copies."""
    return {
        leaf.torch_name: np.array(leaf.rule.to_torch(np.asarray(leaf.variable[...])), copy=True)
        for leaf in iter_leaves(module)
    }


@dataclass(frozen=True)
class LoadResult:
    missing_keys: list[str]
    unexpected_keys: list[str]


def _mismatch_message(
    module: nnx.Module, missing: list[str], unexpected: list[str], shapes: list[str]
) -> str:
    lines = [f"state dict does not match {type(module).__name__}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    return "\n".join(lines)


def load_state_dict(
    module: nnx.Module, state: Mapping[str, Any], *, strict: bool = True
) -> LoadResult:
    """Load a torch-named state dict into a Flax module, in place.

    Values may be torch tensors, NumPy or JAX arrays; each is copied into a new
    JAX array, so later writes to the source never reach the module. Nothing is
    written unless every shape matches and, with ``strict``, every key matches;
    otherwise :class:`ConversionError` lists all missing keys, unexpected keys
    and shape mismatches (torch layout, expected vs given).
    """
    leaves = {leaf.torch_name: leaf for leaf in iter_leaves(module)}
    missing = [k for k in leaves if k not in state]
    unexpected = [k for k in state if k not in leaves]
    converted: dict[str, Array] = {}
    shapes: list[str] = []
    for name, leaf in leaves.items():
        if name not in state:
            continue
        value = _to_numpy(state[name])
        expected = leaf.torch_shape()
        if tuple(value.shape) != expected:
            shapes.append(f"{name}: expected {expected}, got {tuple(value.shape)}")
            continue
        converted[name] = leaf.rule.to_flax(value)
    if shapes or (strict and (missing or unexpected)):
        raise ConversionError(_mismatch_message(module, missing, unexpected, shapes))
    for name, value in converted.items():
        variable = leaves[name].variable
        variable.set_value(jnp.array(value, dtype=variable.dtype, copy=True))
    return LoadResult(missing, unexpected)


def registered_name(module: Any) -> str:
    """The registry name of a module built from ``attn_torch`` or ``attn_flax``."""
    if not hasattr(module, "init_kwargs"):
        raise ConversionError(
            f"{type(module).__name__} is not a registered attn_torch/attn_flax module "
            "(no recorded constructor arguments)"
        )
    return getattr(type(module), "registry_name", type(module).__name__)


def is_training(module: nnx.Module) -> bool:
    """Whether a Flax module's BatchNorms use batch statistics (True without BatchNorm)."""
    modes = [not m.use_running_average for _, m in nnx.iter_modules(module) if isinstance(m, BatchNorm)]
    return modes[0] if modes else True


def to_flax(torch_module: Any, *, seed: int = 0, **flax_kwargs: Any) -> nnx.Module:
    """Build the ``attn_flax`` twin of an ``attn_torch`` module with the same weights and mode.

    ``flax_kwargs`` (e.g. ``dtype``, ``param_dtype``) go to the Flax constructor.
    """
    import attn_flax

    name = registered_name(torch_module)
    build = functools.partial(attn_flax.MODULES[name], **torch_module.init_kwargs, **flax_kwargs)
    # Shapes only: every variable is then overwritten, so no initialiser runs.
    flax_module = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(seed)))
    load_state_dict(flax_module, torch_module.state_dict())
    if not torch_module.training:
        flax_module.eval()
    return flax_module


def to_torch(flax_module: nnx.Module, **torch_kwargs: Any) -> Any:
    """Build the ``attn_torch`` twin of an ``attn_flax`` module with the same weights and mode."""
    import torch

    import attn_torch

    name = registered_name(flax_module)
    torch_module = attn_torch.MODULES[name](**flax_module.init_kwargs, **torch_kwargs)
    tensors = {k: torch.from_numpy(v) for k, v in state_dict(flax_module).items()}
    try:
        torch_module.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise ConversionError(str(error)) from None
    return torch_module.train(is_training(flax_module))


if __name__ == "__main__":  # `python -m parity.convert` is the attn-convert CLI
    from parity.convert_cli import main

    raise SystemExit(main())
