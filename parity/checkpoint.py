"""Checkpoint files: torch state dicts in, Flax checkpoints out, and back.

Flax checkpoints hold the nnx state of a module under its state paths
(``layer1.layers.0.conv1.kernel``), in one of two containers:

* a ``.safetensors`` file whose metadata records ``format=attn-parity-flax``,
  ``format_version``, ``model`` (the registered name) and ``args`` (its
  constructor arguments as JSON);
* an Orbax directory: ``DIR/state`` is a ``StandardCheckpointer`` checkpoint of
  the module's ``nnx.State`` (Flax's standard recipe restores it:
  ``StandardCheckpointer().restore(DIR / "state", nnx.state(abstract_model))``),
  and ``DIR/attn_parity.json`` holds the same metadata.

Torch checkpoints are ``.pt`` / ``.pth`` / ``.bin`` files, always read with
``torch.load(..., weights_only=True)`` so that a pickle cannot run code (and
refused before reading if a zip record is compressed), or ``.safetensors``
files. Every write goes to a temporary directory ``.attn-convert-DST-XXXX.tmp``
beside the destination and is renamed into place at the end; any failure or
interruption removes it, leaving the destination's directory as it was. The
policies are spelled out in docs/conversion.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import secrets
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from parity.convert import ConversionError, Expected, check_state, name_list, quote, to_numpy, to_tensor

FORMAT = "attn-parity-flax"
FORMAT_VERSION = "1"
METADATA_FILE = "attn_parity.json"
ORBAX_ITEM = "state"
ORBAX_LAYOUT = "nnx-state"  # metadata "orbax_layout": the item is an nnx.State (leaves end in ".value")
TORCH_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
TIMM_TRAINING_SUFFIX = ".pth.tar"  # timm's train.py: checkpoint-N.pth.tar, model_best.pth.tar (torch.save)
SAFETENSORS = ".safetensors"
TEMP_PREFIX = ".attn-convert-"
FLAX_FORMATS = {"safetensors": "a .safetensors file", "orbax": "an Orbax checkpoint directory (no suffix or .orbax)"}
TORCH_FORMATS = {"pt": "torch.save zip (.pt, .pth, .bin)", "safetensors": "a .safetensors file"}
# Where a training script nests the weights, tried in this order (timm: state_dict, state_dict_ema).
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "state_dict_ema")
PARALLEL_PREFIX = "module."

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A file that cannot be read or written as the checkpoint it claims to be (or is unsafe)."""


# -- interruptions -------------------------------------------------------------------------------

CAUGHT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived (with :func:`signals_interrupt` active): one cleanup path for all."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_deferring = 0  # > 0 while a write that cannot be abandoned halfway runs
_pending: list[int] = []  # every signal received, also those whose exception a gc callback swallowed


def _on_signal(signum: int, frame: Any) -> None:
    _pending.append(signum)
    if not _deferring:
        raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived (its exception may have been lost in a finalizer)."""
    if _pending and not _deferring:
        raise Interrupted(_pending[0])


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread while this is active.

    Handlers are restored afterwards; outside the main thread this does nothing.
    """
    try:
        previous = {s: signal.signal(s, _on_signal) for s in CAUGHT_SIGNALS}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending.clear()


@contextlib.contextmanager
def _deferred() -> Iterator[None]:
    """Signals handled by :func:`signals_interrupt` wait until :func:`raise_if_interrupted` (KeyboardInterrupt does not)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1




# -- atomic writes -------------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` would set it, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # A child inherits the umask, so it can read it by setting its own.
    done = subprocess.run([sys.executable, "-c", "import os; print(os.umask(0o22))"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return array if array.flags.c_contiguous else np.array(array, order="C")


def _write_failure(dst: Path, error: BaseException) -> Exception:
    """One line for a failed write: an ``OSError`` naming ``dst`` and the OS error found anywhere in the chain."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return OSError(seen.errno, f"cannot write {dst}: {os.strerror(seen.errno)}")
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    code = re.search(r"os_error_code='(\d+)'", text)  # TensorStore (under Orbax) reports errno as text
    if code:
        return OSError(int(code.group(1)), f"cannot write {dst}: {os.strerror(int(code.group(1)))}")
    if "No space left on device" in text:
        return OSError(errno.ENOSPC, f"cannot write {dst}: {os.strerror(errno.ENOSPC)}")
    if isinstance(error, OSError):
        return error
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return CheckpointError(f"cannot write {dst}: {type(error).__name__}: {first}")


def _destination(dst: Path, *, directory: bool, overwrite: bool) -> Path:
    """The path to replace (a symlink's target) after checking the overwrite policy."""
    target = Path(os.path.realpath(dst)) if dst.is_symlink() else dst
    if not target.parent.is_dir():
        raise CheckpointError(f"cannot write {dst}: directory {target.parent} does not exist")
    if not os.path.lexists(target):
        return target
    if not overwrite:
        raise CheckpointError(f"{dst} exists; give --overwrite (overwrite=True) to replace it")
    if directory:
        if not target.is_dir():
            raise CheckpointError(f"cannot replace {dst} with an Orbax directory: it is not a directory")
        if any(target.iterdir()) and not (target / METADATA_FILE).is_file():
            raise CheckpointError(f"refused to replace {dst}: it is neither empty nor an attn-parity Orbax checkpoint")
    elif target.is_dir() or not target.is_file():
        raise CheckpointError(f"cannot replace {dst}: it is not a regular file")
    return target


def _commit(out: Path, target: Path, work: Path, directory: bool) -> None:
    if os.path.lexists(target):
        mode = target.stat().st_mode & 0o7777  # a replaced file keeps its permissions
    else:
        mode = (0o777 if directory else 0o666) & ~current_umask()
    out.chmod(mode)
    if not directory:
        os.replace(out, target)
        return
    old = work / "replaced"
    if os.path.lexists(target):
        os.rename(target, old)
    try:
        os.rename(out, target)
    except BaseException:
        if os.path.lexists(old):
            os.rename(old, target)
        raise


@contextlib.contextmanager
def atomic_output(dst: PathLike, *, directory: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Yield a path to write ``dst`` (a file, or with ``directory`` a directory) at; commit it on success.

    The path lies in ``.attn-convert-NAME-XXXXXXXX.tmp`` beside ``dst``, created here
    and removed on any exit, so library temporaries written there go too. An
    existing ``dst`` is refused unless ``overwrite``; a symlink's target is
    replaced (the link stays) and keeps its permissions.
    """
    dst = Path(dst)
    target = _destination(dst, directory=directory, overwrite=overwrite)
    work = target.parent / f"{TEMP_PREFIX}{target.name[:100]}-{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.mkdir(work, 0o700)
        except OSError as error:  # e.g. a read-only directory: say so about DST, not about our temporary
            raise _write_failure(dst, error) from None
        out = work / target.name
        try:
            yield out
        except (KeyboardInterrupt, CheckpointError, ConversionError):
            raise
        except Exception as error:
            raise_if_interrupted()  # a library may have turned the signal's exception into its own error
            raise _write_failure(dst, error) from None
        with _deferred():  # the rename either happens or not; a signal now waits until after it
            if _pending:
                raise Interrupted(_pending[0])
            try:
                _commit(out, target, work, directory)
            except OSError as error:
                raise _write_failure(dst, error) from None
    finally:
        with _deferred():
            shutil.rmtree(work, ignore_errors=True)


class _RecordingFile:
    """A binary file whose write errors (and interruptions) are kept: torch.save may turn them into a RuntimeError."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except (OSError, KeyboardInterrupt) as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


# -- safetensors (NumPy side, bfloat16 included, no torch) ----------------------------------------

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
                       "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype named ``name``, ``bfloat16`` (ml_dtypes) included."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def read_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of a ``.safetensors`` file (bfloat16 as ``ml_dtypes.bfloat16``).

    The arrays are read-only views of one read of the file: no second copy.
    """
    from safetensors import safe_open

    src = Path(path)
    try:
        with safe_open(str(src), framework="np") as f:  # validates the header: offsets, sizes, no overlap
            meta = f.metadata() or {}
        data = src.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {src} as safetensors: {error}") from None
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{src}: tensor {quote(name)} has dtype {info['dtype']}, which is not read")
        dtype = numpy_dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        flat = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=8 + size + begin)
        arrays[name] = flat.reshape(info["shape"])
    return arrays, meta


def _write_safetensors(arrays: Mapping[str, np.ndarray], out: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: _contiguous(np.asarray(v)) for k, v in arrays.items()}, str(out), metadata=dict(metadata))


# -- formats -------------------------------------------------------------------------------------


def flax_format(path: PathLike, format: str | None = None) -> str:
    """``"safetensors"`` or ``"orbax"``: ``format`` if given, else from the suffix (any case)."""
    dst = Path(path)
    if format is not None:
        if format not in FLAX_FORMATS:
            raise CheckpointError(f"unknown Flax format {format!r}; one of: {', '.join(FLAX_FORMATS)}")
        return format
    suffix = dst.suffix.lower()
    if suffix == SAFETENSORS:
        return "safetensors"
    if suffix in ("", ".orbax") and dst.name not in ("", "-", ".", ".."):
        return "orbax"
    known = "; ".join(f"{k}: {v}" for k, v in FLAX_FORMATS.items())
    raise CheckpointError(f"cannot tell the Flax format of {dst} from its name ({known}); give --format")


def torch_format(path: PathLike, format: str | None = None) -> str:
    """``"pt"`` or ``"safetensors"``: ``format`` if given, else from the suffix (any case)."""
    dst = Path(path)
    if format is not None:
        if format not in TORCH_FORMATS:
            raise CheckpointError(f"unknown torch format {format!r}; one of: {', '.join(TORCH_FORMATS)}")
        return format
    suffix = dst.suffix.lower()
    if suffix == SAFETENSORS:
        return "safetensors"
    if suffix in TORCH_PICKLE_SUFFIXES:
        return "pt"
    raise CheckpointError(f"{dst}: a torch checkpoint is {', '.join(TORCH_PICKLE_SUFFIXES)} or {SAFETENSORS} (any case); "
                          f"give --format ({', '.join(TORCH_FORMATS)}) for another name")


# -- Flax checkpoints ----------------------------------------------------------------------------


def _state(module: Any) -> Any:
    from flax import nnx

    return nnx.state(module, nnx.Not(nnx.RngState))


def flax_variables(module: Any) -> dict[str, Any]:
    """The module's variables keyed by their nnx state path joined with dots."""
    from flax import nnx

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


def flax_metadata(module: Any, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The metadata recorded with a module's state: format, version, model name and arguments."""
    args = getattr(module, "init_kwargs", {})
    try:
        encoded = json.dumps(args, default=_layer_by_name)
    except TypeError as error:
        raise CheckpointError(f"the arguments of {type(module).__name__} cannot be stored as JSON: {error}") from None
    model = getattr(type(module), "registry_name", type(module).__name__)  # the registry key
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "args": encoded, **(extra or {})}


def check_flax_destination(path: PathLike, format: str | None = None) -> str:
    """The Flax format ``path`` would be written in; a ``.pt`` & co name is refused."""
    dst = Path(path)
    if format is None and dst.suffix.lower() in TORCH_PICKLE_SUFFIXES:
        raise CheckpointError(f"a Flax checkpoint is a {SAFETENSORS} file or an Orbax directory, not {dst.suffix} ({dst})")
    return flax_format(dst, format)


def _save_orbax(path: Path, state: Any) -> None:
    """Orbax writes from its own threads: wait for them (signals deferred) before anything is cleaned up."""
    import orbax.checkpoint as ocp

    with _deferred():
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(path.absolute(), state)
            checkpointer.wait_until_finished()
        finally:
            with contextlib.suppress(Exception):  # the first error is the one to report
                checkpointer.wait_until_finished()
            checkpointer.close()
    raise_if_interrupted()


def save_flax(module: Any, path: PathLike, *, metadata: Mapping[str, str] | None = None,
              format: str | None = None, overwrite: bool = False) -> Path:
    """Write the nnx state of ``module`` to ``path``: ``.safetensors`` or an Orbax directory.

    The format comes from ``format`` (``"safetensors"``, ``"orbax"``) or the name
    (``.safetensors`` in any case; no suffix or ``.orbax``: Orbax). An existing
    ``path`` is refused unless ``overwrite``. ``metadata`` adds string entries to
    the recorded metadata. Returns the path written.
    """
    from flax import nnx

    dst = Path(path)
    kind = check_flax_destination(dst, format)
    meta = flax_metadata(module, metadata)
    if kind == "safetensors":
        arrays = {k: np.asarray(v.get_value()) for k, v in flax_variables(module).items()}
        with atomic_output(dst, overwrite=overwrite) as out:
            _write_safetensors(arrays, out, meta)
        return dst
    meta["orbax_layout"] = ORBAX_LAYOUT
    with atomic_output(dst, directory=True, overwrite=overwrite) as out:
        out.mkdir()
        _save_orbax(out / ORBAX_ITEM, nnx.state(module, nnx.Not(nnx.RngState)))
        (out / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return dst


def read_flax_metadata(path: PathLike) -> dict[str, str]:
    """The metadata of a Flax checkpoint written by :func:`save_flax`; checks format and version."""
    src = Path(path)
    if src.is_dir():
        try:
            meta = json.loads((src / METADATA_FILE).read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{src} is not a Flax checkpoint directory of attn-parity ({error})") from None
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{src / METADATA_FILE} does not hold a JSON object of strings")
    elif src.suffix.lower() == SAFETENSORS and src.is_file():
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


def metadata_json(meta: Mapping[str, str], key: str, path: PathLike, default: Any) -> dict[str, Any]:
    """The JSON object recorded under ``key`` in a checkpoint's metadata, or a one-line error naming the file."""
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except ValueError as error:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata {key!r} is not a JSON object but {type(value).__name__}")
    return value


def read_flax(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays (keyed by nnx state path) and metadata of a Flax checkpoint."""
    src = Path(path)
    meta = read_flax_metadata(src)
    if not src.is_dir():
        return read_safetensors(src)[0], meta
    import orbax.checkpoint as ocp

    try:
        with _deferred(), ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore((src / ORBAX_ITEM).absolute())
        flat = {k: np.asarray(v) for k, v in _flatten(tree).items()}
    except Exception as error:  # a damaged directory: Orbax's own error types
        first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "")
        first = first.split(" See full TensorStore details")[0][:300]
        raise CheckpointError(f"cannot read the Orbax checkpoint {src} (damaged or incomplete): "
                              f"{type(error).__name__}: {first}") from None
    raise_if_interrupted()
    if meta.get("orbax_layout") == ORBAX_LAYOUT:
        flat = {k.removesuffix(".value"): v for k, v in flat.items()}
    return flat, meta


def load_flax(module: Any, path: PathLike) -> dict[str, str]:
    """Load a Flax checkpoint into ``module`` in place, strictly; return its metadata.

    Every key, shape and dtype must match the module's nnx state (a dtype may only
    widen), otherwise :class:`~parity.ConversionError` lists the missing keys,
    unexpected keys, shape and dtype mismatches, and the module is left
    untouched. Values are copied into new JAX arrays of each variable's dtype.
    """
    import jax.numpy as jnp

    arrays, meta = read_flax(path)
    variables = flax_variables(module)
    expected = {k: Expected(tuple(v.shape), np.dtype(v.get_value().dtype)) for k, v in variables.items()}
    check_state(str(path), expected, arrays)
    values = {k: jnp.array(arrays[k], dtype=v.get_value().dtype, copy=True) for k, v in variables.items()}
    for key, variable in variables.items():
        variable.set_value(values[key])
    return meta


def build_flax(name: str, args: Mapping[str, Any], *, abstract: bool = True) -> Any:
    """The registered ``attn_flax`` module ``name`` (any case) built with ``args``.

    With ``abstract`` no random initialisation runs: the variables hold zeros, to
    be overwritten by a checkpoint (much faster for a ResNet).
    """
    import jax
    from flax import nnx

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


def check_zip_records(path: PathLike) -> None:
    """Refuse a torch zip whose records could inflate beyond the file: torch.save stores them uncompressed.

    Compressed records, records whose size differs from their stored size and
    records that together claim more bytes than the file holds (overlapping
    records) are refused before anything is read.
    """
    src = Path(path)
    if not zipfile.is_zipfile(src):
        return  # the legacy format: a pickle followed by the raw storages
    try:
        with zipfile.ZipFile(src) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {src} as a torch zip checkpoint: {error}") from None
    total = 0
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.file_size != record.compress_size:
            raise CheckpointError(
                f"refused to load {src}: record {quote(record.filename)} is compressed "
                f"({record.compress_size} bytes inflating to {record.file_size}); torch.save stores records "
                "uncompressed, so this is not a torch checkpoint (a decompression bomb?)"
            )
        total += record.file_size
    if total > src.stat().st_size:
        raise CheckpointError(f"refused to load {src}: its records claim {total} bytes, more than the file's "
                              f"{src.stat().st_size} (overlapping records)")


def _is_state(value: Any) -> bool:
    import torch

    return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())


def _top_level(obj: Mapping[Any, Any]) -> str:
    return name_list([quote(k) for k in obj])


def _state_dict_in(obj: Any, path: Path, key: str | None, notes: list[str]) -> Mapping[Any, Any]:
    """The tensor mapping inside a loaded torch checkpoint: bare, under ``key``, or under a known name."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = _top_level(obj) if isinstance(obj, Mapping) else f"it holds a {type(obj).__name__}"
            raise CheckpointError(f"{path} has no top-level key {quote(key)} (top-level keys: {keys})")
        if not _is_state(obj[key]):
            raise CheckpointError(f"{path}: {quote(key)} holds a {type(obj[key]).__name__}, not a dict of tensors")
        return obj[key]
    if _is_state(obj):
        return obj
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    candidates = [k for k, v in obj.items() if v and _is_state(v)]
    chosen = next((k for k in NESTED_KEYS if k in candidates), None)
    if chosen is None and len(candidates) == 1:
        chosen = candidates[0]
    if chosen is None:
        raise CheckpointError(f"{path} holds no state dict of tensors at the top level or under a known name "
                              f"(top-level keys: {_top_level(obj)}); pick one with --key NAME")
    others = [quote(k) for k in candidates if k != chosen]
    also = f" (also there: {name_list(others)}; pick another with --key NAME)" if others else ""
    notes.append(f"read the tensors under {quote(chosen)}{also}")
    return obj[chosen]


def _strip_parallel_prefix(state: dict[Any, Any], notes: list[str]) -> dict[Any, Any]:
    if state and all(isinstance(k, str) and k.startswith(PARALLEL_PREFIX) for k in state):
        notes.append(f"stripped the {PARALLEL_PREFIX!r} prefix (DataParallel) from every key")
        return {k[len(PARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def read_torch_checkpoint(path: PathLike, *, key: str | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """A torch state dict from a file, and notes on what was done to find it.

    ``.pt``/``.pth``/``.bin``/``.pth.tar`` (any case) are read with ``torch.load(weights_only=True)``
    after :func:`check_zip_records`; ``.safetensors`` without torch. A checkpoint as
    a training script writes it is unwrapped: the dict under ``key``, or under a
    known name (:data:`NESTED_KEYS`); a ``module.`` prefix on every key is stripped.
    Arrays share the memory read; keys must be strings.
    """
    src = Path(path)
    if not src.is_file():
        raise CheckpointError(f"{src} does not exist or is not a file")
    notes: list[str] = []
    suffix = src.suffix.lower()
    if suffix == SAFETENSORS:
        arrays, _ = read_safetensors(src)
        if key is not None:
            raise CheckpointError(f"{src}: --key picks a nested dict in a .pt/.pth/.bin file; a .safetensors file is flat")
        return _strip_parallel_prefix(arrays, notes), notes
    if suffix not in TORCH_PICKLE_SUFFIXES and not src.name.lower().endswith(TIMM_TRAINING_SUFFIX):
        raise CheckpointError(f"{src}: a torch checkpoint is {', '.join(TORCH_PICKLE_SUFFIXES)}, "
                              f"{TIMM_TRAINING_SUFFIX} or {SAFETENSORS} (any case)")
    check_zip_records(src)
    import argparse

    import torch

    try:
        # timm's train.py stores its argparse.Namespace: attributes only, no code runs to rebuild it.
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(src, error) from None
    except Exception as error:  # a damaged or foreign file: say so in one line
        first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "")
        raise CheckpointError(f"cannot read {src} as a torch checkpoint: {type(error).__name__}: {first}") from None
    state = dict(_state_dict_in(obj, src, key, notes))
    bad = [f"{quote(k)} ({type(k).__name__})" for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{src}: state dict keys must be strings; not strings ({len(bad)}): {name_list(bad)}")
    state = _strip_parallel_prefix(state, notes)
    return {k: to_numpy(v) for k, v in state.items()}, notes


def read_torch(path: PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
    """A torch state dict from ``.pt``/``.pth``/``.bin`` (weights only) or ``.safetensors``, as NumPy arrays."""
    return read_torch_checkpoint(path, key=key)[0]


def check_torch_destination(path: PathLike, format: str | None = None) -> str:
    """The torch format ``path`` would be written in (``"pt"`` or ``"safetensors"``)."""
    return torch_format(path, format)


def write_torch(state: Mapping[str, np.ndarray], path: PathLike, *, format: str | None = None,
                overwrite: bool = False) -> Path:
    """Write a torch-layout state dict with ``torch.save`` (``.pt``/``.pth``/``.bin``) or as ``.safetensors``.

    The format comes from ``format`` (``"pt"``, ``"safetensors"``) or the name (any
    case). An existing ``path`` is refused unless ``overwrite``.
    """
    dst = Path(path)
    if check_torch_destination(dst, format) == "safetensors":
        with atomic_output(dst, overwrite=overwrite) as out:
            _write_safetensors(state, out, {"format": "pt"})
        return dst
    import collections

    import torch

    tensors = collections.OrderedDict((k, to_tensor(v)) for k, v in state.items())
    with atomic_output(dst, overwrite=overwrite) as out, open(out, "wb") as raw:
        file = _RecordingFile(raw)
        try:
            torch.save(tensors, file)
        except RuntimeError:
            if file.error is not None:
                raise file.error from None
            raise
    return dst
