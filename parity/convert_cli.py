"""``attn-convert``: convert checkpoint files between attn_torch (PyTorch) and attn_flax (Flax NNX).

    attn-convert to-flax SRC DST --model NAME [--arg key=value ...] [--key NAME] [--format F] [--overwrite] [--progress]
    attn-convert to-torch SRC DST --model NAME [--arg key=value ...] [--format F] [--overwrite] [--progress]

(also ``python -m parity convert ...``). ``NAME`` is a registered module (``SE``,
``CBAM``, ..., ``ResNet``; any case) and each ``--arg`` one constructor argument,
parsed as a Python literal (``64``, ``0.5``, ``True``, ``'cbam'``; a bare word is
a string).

to-flax reads a torch state dict (``.pt``/``.pth``/``.bin`` with
``torch.load(weights_only=True)``, or ``.safetensors``; a training script's
wrapper is unwrapped, ``--key`` picks the nested dict), loads it strictly
(names, shapes, dtypes) into the Flax module and writes its nnx state:
``.safetensors``, or an Orbax directory (no suffix, ``.orbax``). to-torch reads
such a Flax checkpoint (its recorded arguments are the defaults for ``--arg``) and
writes ``.pt``, ``.pth``, ``.bin`` or ``.safetensors`` in torch names and layouts;
torch -> Flax -> torch gives back the same tensors bit for bit, dtypes included.

An existing DST is refused unless ``--overwrite``; SRC == DST always. On failure
or interruption (SIGINT, SIGTERM, SIGHUP): one line on stderr, exit status 2
(128 + the signal number when interrupted), DST's directory as it was. Every
policy: docs/conversion.md.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

PROGRESS_MIN_TENSORS = 100  # on a terminal, report each stage for checkpoints at least this large
PROG = "attn-convert"


class UsageError(Exception):
    """A bad command line: reported in one line like every other failure."""


class _EarlySignal(KeyboardInterrupt):
    """A signal before the converter's own handlers are in place (while JAX, torch & co are imported)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_early_signals: list[int] = []


def _early(signum: int, frame: Any) -> None:
    _early_signals.append(signum)  # kept: the exception is lost if it fires in a gc callback during an import
    raise _EarlySignal(signum)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_value(text: str) -> Any:
    """A Python literal (``64``, ``0.5``, ``True``, ``None``, ``'x'``); ``true``/``false``/``none`` too; else the text."""
    lowered = {"true": True, "false": False, "none": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_args(pairs: list[str]) -> dict[str, Any]:
    """``["channels=64", "attention=cbam"]`` -> ``{"channels": 64, "attention": "cbam"}``."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--arg expects key=value with a Python name as key, got {pair!r}")
        if key in args:
            raise UsageError(f"--arg {key} is given twice")
        args[key] = parse_value(value.strip())
    return args


def _printable(text: str) -> str:
    """Control characters (terminal escapes) and other unprintables escaped as in ``repr``."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = " ".join(f"{line};" if i < len(lines) - 1 and not line.endswith(":") else line for i, line in enumerate(lines))
    return _printable(text)


def _call(name: str, args: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB"


class _Reporter:
    """Progress lines (with ``--progress``, or on a terminal for large checkpoints) and notes, on ``stream``."""

    def __init__(self, stream: TextIO, forced: bool) -> None:
        self.stream = stream
        self.forced = forced
        self.enabled = forced
        self.start = time.perf_counter()
        self.notes: list[str] = []

    def size(self, tensors: int) -> None:
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = self.forced or (tty and tensors >= PROGRESS_MIN_TENSORS)

    def __call__(self, message: str) -> None:
        if self.enabled:
            line = _printable(f"{message} ({time.perf_counter() - self.start:.1f} s)")
            print(f"{PROG}: {line}", file=self.stream, flush=True)


def resolve_model(model: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A timm architecture name (``ecaresnet50d``) as its registered class and arguments; any
    other name as given. ``--arg`` values override the architecture's."""
    from attn_common.timm_models import MODELS, model_entry

    if model not in MODELS:
        return model, args
    cls, base = model_entry(model)
    return f"timm.{cls}", {**base, **args}


def _build(model: str, args: dict[str, Any]) -> Any:
    from parity.checkpoint import build_flax

    try:
        return build_flax(model, args)
    except TypeError as error:  # missing or unknown constructor arguments
        raise UsageError(f"cannot build {_call(model, args)}: {error} (give constructor arguments with --arg key=value)") from None


def _check_jax() -> None:
    """JAX starts its platforms at the first array: fail here in words, not with a bare AssertionError later."""
    import jax
    import jax.numpy as jnp

    try:
        jnp.zeros(())
    except Exception as error:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"JAX cannot start the platforms JAX_PLATFORMS={platforms!r} ({detail}); the converter needs "
                         "only the CPU: unset JAX_PLATFORMS or set it to cpu") from None
    del jax


def _check_paths(src: Path, dst: Path) -> None:
    """SRC and DST must be different files, and neither inside the other (symlinks and hard links seen through)."""
    if str(dst) == "-":
        raise UsageError("DST '-' (standard output) is not supported: give a file or directory name")
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise UsageError(f"SRC and DST are the same file ({src}, {dst}); write to another path")
    real_src, real_dst = Path(os.path.realpath(src)), Path(os.path.realpath(dst))
    if real_src == real_dst:
        raise UsageError(f"SRC and DST are the same path ({src}, {dst}); write to another path")
    if real_src in real_dst.parents or real_dst in real_src.parents:
        raise UsageError(f"SRC and DST lie inside one another ({src}, {dst}); write to another path")


def to_flax(src: Path, dst: Path, model: str, args: dict[str, Any], options: argparse.Namespace,
            report: _Reporter) -> None:
    """torch state dict file -> Flax checkpoint (``.safetensors`` or Orbax directory)."""
    from parity.checkpoint import check_flax_destination, raise_if_interrupted, read_torch_checkpoint, save_flax
    from parity.convert import iter_leaves, load_state_dict

    check_flax_destination(dst, options.format)
    _check_jax()
    raise_if_interrupted()
    state, notes = read_torch_checkpoint(src, key=options.key)
    report.notes += notes
    report.size(len(state))
    report(f"read {len(state)} tensors from {src}")
    module = _build(model, args)
    try:
        load_state_dict(module, state, strict=True)
    except ValueError as error:
        raise type(error)(f"{src}: {error}" + (f" (after: {'; '.join(notes)})" if notes else "")) from None
    report(f"loaded them strictly into {_call(type(module).__name__, args)}")
    raise_if_interrupted()
    flax_dtypes = {leaf.torch_name: leaf.variable.dtype for leaf in iter_leaves(module)}
    torch_dtypes = {k: v.dtype.name for k, v in state.items() if v.dtype != flax_dtypes[k]}
    del state  # the module holds its own copy: keep the peak at about twice the tensors
    import json

    extra = {"torch_dtypes": json.dumps(torch_dtypes)} if torch_dtypes else None
    save_flax(module, dst, metadata=extra, format=options.format, overwrite=options.overwrite)
    report(f"wrote {dst} ({_size(dst)})")


def _torch_order(model: str, args: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The key order of the torch module's state dict, after checking the state against it.

    Skipped (state order kept) where torch is not installed.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return list(state)
    import numpy as np

    import attn_torch
    from parity.convert import Expected, check_state, to_numpy

    torch_module = attn_torch.MODULES[model](**args, device="meta")
    expected = {k: Expected(tuple(v.shape), to_numpy(torch.empty((), dtype=v.dtype)).dtype)
                for k, v in torch_module.state_dict().items()}
    check_state(f"state dict for torch {model}", expected, {k: np.asarray(v) for k, v in state.items()})
    return list(expected)


def to_torch(src: Path, dst: Path, model: str, args: dict[str, Any], options: argparse.Namespace,
             report: _Reporter) -> None:
    """Flax checkpoint (``.safetensors`` or Orbax directory) -> torch state dict file."""
    import attn_flax
    from attn_common.validation import check_choice
    from parity.checkpoint import (check_torch_destination, load_flax, metadata_json, raise_if_interrupted,
                                   read_flax_metadata, write_torch)
    from parity.convert import ConversionError, narrow_exact, quote, state_dict

    if options.key is not None:
        raise UsageError("--key picks a nested dict in a torch checkpoint: to-flax only")
    check_torch_destination(dst, options.format)
    _check_jax()
    raise_if_interrupted()
    meta = read_flax_metadata(src)
    name = check_choice("model", model, list(attn_flax.MODULES))
    if meta.get("model") and meta["model"] != name:
        raise UsageError(f"{src} holds a {meta['model']} checkpoint, but --model is {name}")
    args = {**metadata_json(meta, "args", src, {}), **args}
    torch_dtypes = metadata_json(meta, "torch_dtypes", src, {})
    module = _build(name, args)
    load_flax(module, src)
    state = state_dict(module)
    report.size(len(state))
    report(f"loaded {len(state)} tensors strictly into {_call(name, args)} from {src}")
    lossy = []
    for key, dtype in torch_dtypes.items():
        if key not in state:
            raise ConversionError(f"{src}: metadata torch_dtypes names {quote(key)}, which {name} does not have")
        try:
            state[key] = narrow_exact(state[key], _dtype(dtype, src))
        except ConversionError as error:
            lossy.append(f"{quote(key)} ({error})")
    if lossy:
        from parity.convert import name_list

        raise ConversionError(f"{src}: metadata torch_dtypes would change {len(lossy)} tensors: {name_list(lossy, '; ')}")
    order = _torch_order(name, args, state)
    raise_if_interrupted()
    write_torch({k: state[k] for k in order}, dst, format=options.format, overwrite=options.overwrite)
    report(f"wrote {dst} ({_size(dst)})")


def _dtype(name: Any, src: Path) -> Any:
    import numpy as np

    from parity.checkpoint import CheckpointError, numpy_dtype

    try:
        dtype = numpy_dtype(name)
    except TypeError:
        raise CheckpointError(f"{src}: metadata torch_dtypes holds {name!r}, which is not a dtype") from None
    return dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Convert checkpoints between attn_torch (PyTorch) and attn_flax (Flax NNX).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{to-flax,to-torch}", parser_class=_Parser)
    helps = {"to-flax": "torch .pt/.pth/.bin/.safetensors -> Flax .safetensors or Orbax directory",
             "to-torch": "Flax .safetensors or Orbax directory -> torch .pt/.pth/.bin/.safetensors"}
    formats = {"to-flax": ["safetensors", "orbax"], "to-torch": ["pt", "safetensors"]}
    for command, text in helps.items():
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("src", type=Path, metavar="SRC")
        sub.add_argument("dst", type=Path, metavar="DST")
        sub.add_argument("--model", required=True, metavar="NAME", help="registered module name (SE, CBAM, ..., ResNet) or timm architecture (ecaresnet50d, ...)")
        sub.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                         help="a constructor argument, parsed as a Python literal (repeatable)")
        sub.add_argument("--format", choices=formats[command], help="DST format when its name does not tell")
        sub.add_argument("--key", metavar="NAME", help="the top-level key holding the state dict (e.g. state_dict_ema)")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing DST")
        sub.add_argument("--progress", action="store_true", help="report each stage on stderr")
    return parser


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Library logging, warnings and exceptions of threads or finalizers do not reach stderr."""
    hooks = threading.excepthook, sys.unraisablehook
    disabled = logging.root.manager.disable
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda args: None
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        threading.excepthook, sys.unraisablehook = hooks
        logging.disable(disabled)


def main(argv: list[str] | None = None, *, stderr: TextIO | None = None) -> int:
    """Run the CLI in this process; return the exit status (0; 2 on failure; 128 + signal when interrupted)."""
    err = stderr or sys.stderr
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a file conversion needs no accelerator
    commands: dict[str, Callable[..., None]] = {"to-flax": to_flax, "to-torch": to_torch}
    try:
        from parity.checkpoint import signals_interrupt

        with signals_interrupt(), _quiet_libraries():
            if _early_signals:
                raise _EarlySignal(_early_signals[0])
            options = _parser().parse_args(argv)
            report = _Reporter(err, options.progress)
            model, args = resolve_model(options.model, parse_args(options.arg))
            _check_paths(options.src, options.dst)
            commands[options.command](options.src, options.dst, model, args, options, report)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt as interruption:  # SIGINT, SIGTERM, SIGHUP: DST was cleaned up on the way here
        signum = getattr(interruption, "signum", signal.SIGINT)
        print(f"{PROG}: interrupted by {signal.Signals(signum).name}; nothing written", file=err, flush=True)
        return 128 + signum
    except Exception as error:  # every failure is one line: what is wrong, no traceback
        if isinstance(error, OSError) and error.strerror and error.filename is None:
            text = error.strerror  # ours: "cannot write DST: No space left on device"
        else:
            kind = "" if isinstance(error, (UsageError, ValueError)) else f"{type(error).__name__}: "
            text = f"{kind}{error}"
        print(f"{PROG}: error: {_one_line(text)}", file=err, flush=True)
        return 2
    for note in report.notes:
        print(f"{PROG}: note: {_printable(note)}", file=err, flush=True)
    return 0


def entry(argv: list[str] | None = None) -> None:
    """The ``attn-convert`` process: signals during imports included, native libraries' stderr discarded.

    Our lines go to a copy of the original stderr; file descriptor 2 points to
    /dev/null for the rest of the process, which ends with ``os._exit`` once
    everything is flushed (library threads and finalizers print nothing).
    """
    code = 2
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _early)
        err = os.fdopen(os.dup(2), "w", buffering=1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        code = main(sys.argv[1:] if argv is None else argv, stderr=err)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # the run is over: nothing left to clean up
    except KeyboardInterrupt as interruption:
        code = 128 + getattr(interruption, "signum", signal.SIGINT)
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            err.flush()
        os._exit(code)


if __name__ == "__main__":  # one command line, one route to it
    sys.exit(f"{PROG}: run `attn-convert` or `python -m parity convert`")
