"""PyTorch state dict <-> Flax NNX state, driven by a small table of per-leaf rules.

The Flax modules mirror the torch module tree attribute for attribute, so a
torch name is the Flax path joined with dots (``nnx.Sequential``'s ``layers``
level dropped). Each Flax variable is matched by its owner's type, its attribute
name and its variable type to a :class:`Rule` that renames it and changes its
layout. Nothing here knows about any particular attention module.
"""

from __future__ import annotations

import functools
import math

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_flax.layers import BatchNorm, ChannelParam

Array = np.ndarray


class ConversionError(ValueError):
    """Raised when a state dict and a module do not match (names, shapes or dtypes)."""


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


LIST_LIMIT = 20  # names shown in one message; the rest are counted
NAME_LIMIT = 200  # characters of one escaped name


def quote(name: Any) -> str:
    """A key as printed in messages: ``repr``-escaped (no raw control characters), long ones cut."""
    text = repr(name)
    return text if len(text) <= NAME_LIMIT else f"{text[:NAME_LIMIT]}...({len(text)} chars)"


def name_list(items: list[str], separator: str = ", ") -> str:
    """The first :data:`LIST_LIMIT` items joined, then how many more there are."""
    shown = separator.join(items[:LIST_LIMIT])
    rest = len(items) - LIST_LIMIT
    return f"{shown}{separator}... and {rest} more" if rest > 0 else shown


def to_numpy(value: Any) -> Array:
    """A torch tensor, jax array or array-like as a NumPy array, without copying where possible.

    bfloat16 tensors come back as ``ml_dtypes.bfloat16`` with the same bits.
    """
    if type(value).__module__.startswith("torch"):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def to_tensor(array: Array) -> Any:
    """A NumPy array as a torch tensor sharing its memory (``ml_dtypes.bfloat16`` as ``torch.bfloat16``)."""
    import torch

    array = array if array.flags.c_contiguous else np.array(array, order="C")
    if array.dtype.name == "bfloat16":  # NumPy has no bfloat16: go through the bits
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def is_numeric(dtype: np.dtype) -> bool:
    """Booleans, integers and floating point (bfloat16 & co included); not objects, strings or records."""
    return dtype.kind in "biuf" or _is_float(dtype)


def _is_float(dtype: np.dtype) -> bool:
    """NumPy floats and ml_dtypes' (bfloat16, float8_*), which NumPy sees as void."""
    return dtype.kind == "f" or (dtype.kind == "V" and dtype.fields is None and "float" in dtype.name)


def keeps_values(given: np.dtype, expected: np.dtype) -> bool:
    """Whether storing ``given`` values as ``expected`` keeps them: a widening (integers: checked value by value)."""
    if given == expected or np.can_cast(given, expected, casting="safe"):
        return True
    return given.kind in "iu" and expected.kind in "iu"


def narrow_exact(array: Array, dtype: Any) -> Array:
    """``array`` as ``dtype`` where every value is kept exactly, else :class:`ConversionError`.

    float32 -> bfloat16 keeps the upper 16 bits, so NaN payloads come back unchanged.
    """
    dtype = np.dtype(dtype)
    array = np.asarray(array)
    if array.dtype == dtype:
        return array
    if dtype.name == "bfloat16" and array.dtype == np.float32:
        bits = np.ascontiguousarray(array).view(np.uint32)
        if np.any(bits & 0xFFFF):
            raise ConversionError("float32 values are not all bfloat16 values (low 16 bits set)")
        return (bits >> 16).astype(np.uint16).view(dtype)
    if array.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ConversionError(f"{array.dtype.name} values do not fit {dtype.name}")
        return array.astype(dtype)
    out = array.astype(dtype)
    back = out.astype(array.dtype)
    same = back.tobytes() == np.ascontiguousarray(array).tobytes() if _is_float(array.dtype) else np.array_equal(back, array)
    if not same:
        raise ConversionError(f"{array.dtype.name} values are not all exact in {dtype.name}")
    return out


@dataclass(frozen=True)
class Expected:
    """The shape and dtype a key must have."""

    shape: tuple[int, ...]
    dtype: np.dtype


def check_state(
    target: str, expected: Mapping[str, Expected], given: Mapping[Any, Any], *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """The one check of a state against what it is loaded into: names, shapes and dtypes.

    ``given`` values need ``shape`` and ``dtype``. Raises :class:`ConversionError`
    naming ``target`` and listing (escaped, capped) every non-string key, missing
    key (with ``strict``), unexpected key (with ``strict``), shape and dtype
    mismatch. Returns the missing and unexpected keys.
    """
    bad_names = [k for k in given if not isinstance(k, str)]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if isinstance(k, str) and k not in expected]
    shapes, dtypes, not_numeric = [], [], []
    for key, spec in expected.items():
        if key not in given:
            continue
        value = given[key]
        dtype = getattr(value, "dtype", None)
        if not isinstance(dtype, np.dtype) or not is_numeric(dtype):
            not_numeric.append(f"{quote(key)} ({dtype if isinstance(dtype, np.dtype) else type(value).__name__})")
            continue
        if tuple(value.shape) != tuple(spec.shape):
            shapes.append(f"{quote(key)}: expected {tuple(spec.shape)}, got {tuple(value.shape)}")
        if not keeps_values(dtype, np.dtype(spec.dtype)):
            dtypes.append(f"{quote(key)}: {dtype.name} -> {np.dtype(spec.dtype).name}")
    parts = []
    if bad_names:
        kinds = [f"{quote(k)} ({type(k).__name__})" for k in bad_names]
        parts.append(f"keys that are not strings ({len(bad_names)}): {name_list(kinds)}")
    if strict and missing:
        parts.append(f"missing keys ({len(missing)}): {name_list([quote(k) for k in missing])}")
    if strict and unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {name_list([quote(k) for k in unexpected])}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {name_list(shapes, '; ')}")
    if not_numeric:
        parts.append(f"not numeric arrays ({len(not_numeric)}): {name_list(not_numeric)}")
    if dtypes:
        parts.append(f"dtypes that would lose precision ({len(dtypes)}): {name_list(dtypes, '; ')}")
    if parts:
        raise ConversionError("\n".join([f"{target} does not match:", *(f"  {p}" for p in parts)]))
    return missing, unexpected


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


def _as_array(value: Any) -> Any:
    try:
        return to_numpy(value)
    except Exception:  # not array-like: check_state names it
        return value


def load_state_dict(
    module: nnx.Module, state: Mapping[str, Any], *, strict: bool = True
) -> LoadResult:
    """Load a torch-named state dict into a Flax module, in place.

    Values may be torch tensors, NumPy or JAX arrays; each is copied into a new
    JAX array, so later writes to the source never reach the module. Every key,
    shape and dtype is checked and every value converted before any is written:
    on any problem :class:`ConversionError` lists all missing keys, unexpected
    keys (both with ``strict``), shape mismatches (torch layout, expected vs
    given) and dtypes that would lose precision or are not numeric, and the
    module is left untouched.
    """
    leaves = {leaf.torch_name: leaf for leaf in iter_leaves(module)}
    arrays = {k: _as_array(v) for k, v in state.items()}
    expected = {name: Expected(leaf.torch_shape(), np.dtype(leaf.variable.dtype)) for name, leaf in leaves.items()}
    missing, unexpected = check_state(f"state dict for {type(module).__name__}", expected, arrays, strict=strict)
    converted = {}
    for name, leaf in leaves.items():
        if name in arrays:
            flax_value = leaf.rule.to_flax(arrays[name])
            if flax_value.dtype.kind in "iu" and np.dtype(leaf.variable.dtype).kind in "iu":
                flax_value = narrow_exact(flax_value, leaf.variable.dtype)
            converted[name] = jnp.array(flax_value, dtype=leaf.variable.dtype, copy=True)
    for name, value in converted.items():
        leaves[name].variable.set_value(value)
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


def _concrete_rng_state(module: nnx.Module, seed: int) -> nnx.State:
    """The module's random-number streams (dropout, drop-path) with real keys and counts: built
    from shapes only, they hold placeholders that ``jit`` cannot take."""

    def concrete(leaf: Any) -> Any:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.split(jax.random.key(seed), math.prod(leaf.shape) or 1)[0] if not leaf.shape \
                else jax.random.split(jax.random.key(seed), leaf.shape)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(concrete, nnx.state(module, nnx.RngState))


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
    nnx.update(flax_module, _concrete_rng_state(flax_module, seed))
    if not torch_module.training:
        flax_module.eval()
    return flax_module


def to_torch(flax_module: nnx.Module, **torch_kwargs: Any) -> Any:
    """Build the ``attn_torch`` twin of an ``attn_flax`` module with the same weights and mode."""
    import torch

    import attn_torch

    name = registered_name(flax_module)
    torch_module = attn_torch.MODULES[name](**flax_module.init_kwargs, **torch_kwargs)
    state = state_dict(flax_module)
    # torch's load_state_dict would cast silently (float64 -> float32): check dtypes like keys and shapes
    expected = {k: Expected(tuple(v.shape), to_numpy(v).dtype) for k, v in torch_module.state_dict().items()}
    check_state(f"state dict for torch {name}", expected, state)
    tensors = {k: to_tensor(v) for k, v in state.items()}
    try:
        torch_module.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise ConversionError(str(error)) from None
    return torch_module.train(is_training(flax_module))


if __name__ == "__main__":  # the command line is not here
    raise SystemExit("attn-convert: run `attn-convert` or `python -m parity convert`")
