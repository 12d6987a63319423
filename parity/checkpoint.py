"""Checkpoint files: torch state dicts in, Flax checkpoints out, and back.

Flax checkpoints hold the nnx state of a module under its state paths
(``layer1.layers.0.conv1.kernel``), in one of two containers:

* a ``.safetensors`` file whose metadata records ``format=attn-parity-flax``,
  ``format_version``, ``model`` (the registered name) and ``args`` (its
  constructor arguments as JSON);
* an Orbax directory: ``DIR/state`` is a ``StandardCheckpointer`` checkpoint of
  the state as a pure dict (restore it with ``nnx.replace_by_pure_dict``), and
  ``DIR/attn_parity.json`` holds the same metadata.

Torch checkpoints are ``.pt`` / ``.pth`` / ``.bin`` files, always read with
``torch.load(..., weights_only=True)`` so that a pickle cannot run code, or
``.safetensors`` files. Every write goes to a temporary file (or directory)
beside the destination and is renamed into place at the end, so a failure
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from parity.convert import ConversionError, _mismatch_message, _to_numpy

FORMAT = "attn-parity-flax"
FORMAT_VERSION = "1"
METADATA_FILE = "attn_parity.json"
ORBAX_ITEM = "state"
TORCH_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS = ".safetensors"

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A file that cannot be read or written as the checkpoint it claims to be (or is unsafe)."""


# -- atomic writes -------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return array if array.flags.c_contiguous else np.array(array, order="C")


@contextlib.contextmanager
def _atomic_file(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it to ``dst`` on success, remove it on failure."""
    if not dst.parent.is_dir():
        raise CheckpointError(f"cannot write {dst}: directory {dst.parent} does not exist")
    if dst.is_dir():
        raise CheckpointError(f"cannot write {dst}: it is a directory")
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; give it a new file's usual mode
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _atomic_dir(dst: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``dst``; it becomes ``dst`` on success (``dst`` must be absent or empty)."""
    if not dst.parent.is_dir():
        raise CheckpointError(f"cannot write {dst}: directory {dst.parent} does not exist")
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise CheckpointError(f"cannot write the Orbax checkpoint {dst}: it exists and is not an empty directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        if dst.exists():
            dst.rmdir()
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- Flax checkpoints ----------------------------------------------------------------------------


def _state(module: nnx.Module) -> nnx.State:
    return nnx.state(module, nnx.Not(nnx.RngState))


def flax_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    """The module's variables keyed by their nnx state path joined with dots."""
    return {".".join(map(str, path)): variable for path, variable in nnx.to_flat_state(_state(module))}


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _layer_by_name(value: Any) -> str:
    """A layer class or function argument (``act_layer=nn.ReLU``) stored by name; both packages
    resolve these names (activations, norms, registered modules) in either framework."""
    name = getattr(value, "registry_name", None) or getattr(value, "__name__", None)
    if not callable(value) or not isinstance(name, str):
        raise TypeError(f"{value!r} is not JSON serializable")
    return name


def flax_metadata(module: nnx.Module, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The metadata recorded with a module's state: format, version, model name and arguments."""
    args = getattr(module, "init_kwargs", {})
    try:
        encoded = json.dumps(args, default=_layer_by_name)
    except TypeError as error:
        raise CheckpointError(f"the arguments of {type(module).__name__} cannot be stored as JSON: {error}") from None
    model = getattr(type(module), "registry_name", type(module).__name__)  # the registry key
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "args": encoded, **(extra or {})}


def check_flax_destination(path: PathLike) -> Path:
    """``path`` as a Flax checkpoint destination: ``.safetensors``, or a directory name (not ``.pt`` & co)."""
    dst = Path(path)
    if dst.suffix in TORCH_PICKLE_SUFFIXES:
        raise CheckpointError(f"a Flax checkpoint is a {SAFETENSORS} file or an Orbax directory, not {dst.suffix} ({dst})")
    return dst


def save_flax(module: nnx.Module, path: PathLike, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the nnx state of ``module`` to ``path``: a ``.safetensors`` file, or else an Orbax directory.

    ``metadata`` adds string entries to the recorded metadata. Returns the path written.
    """
    dst = check_flax_destination(path)
    meta = flax_metadata(module, metadata)
    if dst.suffix == SAFETENSORS:
        from safetensors.numpy import save_file

        arrays = {k: _contiguous(np.asarray(v.get_value())) for k, v in flax_variables(module).items()}
        with _atomic_file(dst) as tmp:
            save_file(arrays, str(tmp), metadata=meta)
        return dst
    import orbax.checkpoint as ocp

    with _atomic_dir(dst) as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save((tmp / ORBAX_ITEM).absolute(), nnx.to_pure_dict(_state(module)))
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return dst


def read_flax_metadata(path: PathLike) -> dict[str, str]:
    """The metadata of a Flax checkpoint written by :func:`save_flax`; checks format and version."""
    src = Path(path)
    if src.is_dir():
        try:
            meta = json.loads((src / METADATA_FILE).read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{src} is not a Flax checkpoint directory of attn-parity ({error})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{src / METADATA_FILE} does not hold a JSON object")
    elif src.suffix == SAFETENSORS:
        from safetensors import safe_open

        try:
            with safe_open(str(src), framework="np") as f:
                meta = f.metadata() or {}
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {src} as safetensors: {error}") from None
    elif not src.exists():
        raise CheckpointError(f"{src} does not exist")
    else:
        raise CheckpointError(f"{src}: a Flax checkpoint is a {SAFETENSORS} file or an Orbax directory")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{src} is not a Flax checkpoint of attn-parity (metadata format={meta.get('format')!r}, "
            f"expected {FORMAT!r}); torch checkpoints are converted with to-flax"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{src} has format_version {meta.get('format_version')!r}; this version reads {FORMAT_VERSION!r}"
        )
    return meta


def read_flax(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays (keyed by nnx state path) and metadata of a Flax checkpoint."""
    src = Path(path)
    meta = read_flax_metadata(src)
    if src.is_dir():
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore((src / ORBAX_ITEM).absolute())
        return {k: np.asarray(v) for k, v in _flatten(tree).items()}, meta
    from safetensors.numpy import load_file

    return load_file(str(src)), meta


def load_flax(module: nnx.Module, path: PathLike) -> dict[str, str]:
    """Load a Flax checkpoint into ``module`` in place, strictly; return its metadata.

    Every key and shape must match the module's nnx state, otherwise
    :class:`~parity.ConversionError` lists the missing keys, unexpected keys and
    shape mismatches, and the module is left untouched. Values are copied into
    new JAX arrays of each variable's dtype.
    """
    arrays, meta = read_flax(path)
    variables = flax_variables(module)
    missing = [k for k in variables if k not in arrays]
    unexpected = [k for k in arrays if k not in variables]
    shapes = [
        f"{k}: expected {tuple(v.shape)}, got {arrays[k].shape}"
        for k, v in variables.items()
        if k in arrays and tuple(v.shape) != arrays[k].shape
    ]
    if missing or unexpected or shapes:
        raise ConversionError(_mismatch_message(module, missing, unexpected, shapes).replace("state dict", str(path), 1))
    for key, variable in variables.items():
        variable.set_value(jnp.array(arrays[key], dtype=variable.get_value().dtype, copy=True))
    return meta


def build_flax(name: str, args: Mapping[str, Any], *, abstract: bool = True) -> nnx.Module:
    """The registered ``attn_flax`` module ``name`` (any case) built with ``args``.

    With ``abstract`` no random initialisation runs: the variables hold zeros, to
    be overwritten by a checkpoint (much faster for a ResNet).
    """
    import attn_flax
    from attn_common.validation import check_choice

    cls = attn_flax.MODULES[check_choice("model", name, list(attn_flax.MODULES))]
    if not abstract:
        return cls(**args, rngs=nnx.Rngs(0))
    module = nnx.eval_shape(lambda: cls(**args, rngs=nnx.Rngs(0)))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), _state(module))
    nnx.update(module, zeros)
    return module


# -- torch checkpoints ---------------------------------------------------------------------------


def _refusal(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    text = str(error)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        what = f"it would call {found.group(1)}"
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if not ln.startswith(("Weights only load failed", "Please file", "Check the"))), "")
        reason = f" ({detail.removeprefix('WeightsUnpickler error: ')})" if detail else ""
        what = f"the weights-only unpickler rejects it{reason}: not a plain torch state dict"
    return CheckpointError(
        f"refused to load {path}: {what}; only tensors and plain containers are read (torch.load weights_only=True)"
    )


def _state_dict_in(obj: Any, path: Path) -> Mapping[str, Any]:
    """The tensor mapping inside a loaded torch checkpoint (a bare state dict, or under 'state_dict'/'model')."""
    import torch

    def is_state(value: Any) -> bool:
        return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())

    if is_state(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state(obj.get(key)):
                return obj[key]
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path} holds no state dict of tensors (top-level keys: {keys})")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")


def read_torch(path: PathLike) -> dict[str, np.ndarray]:
    """A torch state dict from ``.pt``/``.pth``/``.bin`` (weights only) or ``.safetensors``, as NumPy arrays."""
    src = Path(path)
    if not src.is_file():
        raise CheckpointError(f"{src} does not exist or is not a file")
    if src.suffix == SAFETENSORS:
        from safetensors.numpy import load_file

        try:
            return load_file(str(src))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {src} as safetensors: {error}") from None
    if src.suffix not in TORCH_PICKLE_SUFFIXES:
        raise CheckpointError(f"{src}: a torch checkpoint is {', '.join(TORCH_PICKLE_SUFFIXES)} or {SAFETENSORS}")
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(src, error) from None
    except Exception as error:  # a damaged or foreign file: say so in one line
        raise CheckpointError(f"cannot read {src} as a torch checkpoint: {type(error).__name__}: {error}") from None
    return {k: np.array(_to_numpy(v), copy=True) for k, v in _state_dict_in(obj, src).items()}


def _to_tensor(array: np.ndarray) -> Any:
    import torch

    if array.dtype.name == "bfloat16":  # NumPy has no bfloat16: go through the bits
        return torch.from_numpy(_contiguous(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(_contiguous(array))


def check_torch_destination(path: PathLike) -> Path:
    """``path`` as a torch checkpoint destination: ``.pt``, ``.pth``, ``.bin`` or ``.safetensors``."""
    dst = Path(path)
    if dst.suffix not in (*TORCH_PICKLE_SUFFIXES, SAFETENSORS):
        raise CheckpointError(f"{dst}: a torch checkpoint is {', '.join(TORCH_PICKLE_SUFFIXES)} or {SAFETENSORS}")
    return dst


def write_torch(state: Mapping[str, np.ndarray], path: PathLike) -> Path:
    """Write a torch-layout state dict to ``.pt``/``.pth``/``.bin`` (``torch.save``) or ``.safetensors``."""
    dst = check_torch_destination(path)
    if dst.suffix == SAFETENSORS:
        from safetensors.numpy import save_file

        with _atomic_file(dst) as tmp:
            save_file({k: _contiguous(v) for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
        return dst
    import collections

    import torch

    tensors = collections.OrderedDict((k, _to_tensor(v)) for k, v in state.items())
    with _atomic_file(dst) as tmp, open(tmp, "wb") as file:
        torch.save(tensors, file)
    return dst
