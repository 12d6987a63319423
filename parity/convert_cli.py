"""``attn-convert``: convert checkpoint files between attn_torch (PyTorch) and attn_flax (Flax NNX).

    attn-convert to-flax SRC DST --model NAME [--arg key=value ...]
    attn-convert to-torch SRC DST --model NAME [--arg key=value ...]

``NAME`` is a registered module (``SE``, ``CBAM``, ..., ``ResNet``; any case) and
each ``--arg`` one constructor argument, parsed as a Python literal (``64``,
``0.5``, ``True``, ``'cbam'``; a bare word is a string).

to-flax reads a torch state dict (``.pt``/``.pth``/``.bin`` with
``torch.load(weights_only=True)``, or ``.safetensors``), loads it strictly into
the Flax module and writes its nnx state: ``DST.safetensors``, or an Orbax
checkpoint directory for any other DST. to-torch reads such a Flax checkpoint
(its recorded arguments are the defaults for ``--arg``) and writes ``.pt``,
``.pth``, ``.bin`` or ``.safetensors`` in torch names and layouts; torch ->
Flax -> torch gives back the same tensors bit for bit, dtypes included
(float16/bfloat16 are widened exactly and their dtypes recorded; tensors the
float32 Flax module cannot hold exactly, e.g. float64, are refused).

On failure: exit status 2, one line on stderr, no DST left behind. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

PROGRESS_MIN_TENSORS = 100  # report each stage on stderr for checkpoints at least this large
PROG = "attn-convert"


class UsageError(Exception):
    """A bad command line: reported in one line like every other failure."""


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
    except (ValueError, SyntaxError):
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


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return " ".join(f"{line};" if i < len(lines) - 1 and not line.endswith(":") else line for i, line in enumerate(lines))


def _call(name: str, args: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB"


class _Progress:
    """Stage lines on stderr, only for checkpoints with many tensors."""

    def __init__(self) -> None:
        self.enabled = False
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"{PROG}: {message} ({time.perf_counter() - self.start:.1f} s)", file=sys.stderr, flush=True)


def _build(model: str, args: dict[str, Any]):
    from parity.checkpoint import build_flax

    try:
        return build_flax(model, args)
    except TypeError as error:  # missing or unknown constructor arguments
        raise UsageError(f"cannot build {_call(model, args)}: {error} (give constructor arguments with --arg key=value)") from None


def _check_torch_layout(model: str, args: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The key order of the torch module's state dict, after checking keys and shapes against it.

    Skipped (state order kept) where torch is not installed.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return list(state)
    import attn_torch
    from parity.convert import ConversionError, _mismatch_message

    torch_module = attn_torch.MODULES[model](**args, device="meta")
    expected = {k: tuple(v.shape) for k, v in torch_module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: expected {expected[k]}, got {state[k].shape}" for k in expected if k in state and expected[k] != state[k].shape]
    if missing or unexpected or shapes:
        raise ConversionError(_mismatch_message(torch_module, missing, unexpected, shapes))
    return list(expected)


def to_flax(src: Path, dst: Path, model: str, args: dict[str, Any], progress: _Progress) -> None:
    """torch state dict file -> Flax checkpoint (``.safetensors`` or Orbax directory)."""
    import numpy as np

    from parity.checkpoint import check_flax_destination, read_torch, save_flax
    from parity.convert import ConversionError, load_state_dict, state_dict

    check_flax_destination(dst)
    state = read_torch(src)
    progress.enabled = len(state) >= PROGRESS_MIN_TENSORS
    progress(f"read {len(state)} tensors from {src}")
    module = _build(model, args)
    load_state_dict(module, state, strict=True)
    progress(f"loaded them strictly into {_call(type(module).__name__, args)}")
    back = state_dict(module)
    lossy = [f"{k} ({v.dtype.name} -> {back[k].dtype.name})" for k, v in state.items()
             if not np.can_cast(v.dtype, back[k].dtype, casting="safe")]
    if lossy:
        raise ConversionError(f"{src}: the Flax module stores {len(lossy)} tensors with less precision: {', '.join(lossy)}")
    torch_dtypes = {k: v.dtype.name for k, v in state.items() if v.dtype != back[k].dtype}
    extra = {"torch_dtypes": json.dumps(torch_dtypes)} if torch_dtypes else None
    save_flax(module, dst, metadata=extra)
    progress(f"wrote {dst} ({_size(dst)})")


def to_torch(src: Path, dst: Path, model: str, args: dict[str, Any], progress: _Progress) -> None:
    """Flax checkpoint (``.safetensors`` or Orbax directory) -> torch state dict file."""
    import jax.numpy as jnp

    import attn_flax
    from attn_common.validation import check_choice
    from parity.checkpoint import check_torch_destination, load_flax, read_flax_metadata, write_torch
    from parity.convert import state_dict

    check_torch_destination(dst)
    meta = read_flax_metadata(src)
    name = check_choice("model", model, list(attn_flax.MODULES))
    if meta.get("model") and meta["model"] != name:
        raise UsageError(f"{src} holds a {meta['model']} checkpoint, but --model is {name}")
    args = {**json.loads(meta.get("args", "{}")), **args}
    module = _build(name, args)
    load_flax(module, src)
    state = state_dict(module)
    progress.enabled = len(state) >= PROGRESS_MIN_TENSORS
    progress(f"loaded {len(state)} tensors strictly into {_call(name, args)} from {src}")
    for key, dtype in json.loads(meta.get("torch_dtypes", "{}")).items():
        if key in state:
            state[key] = state[key].astype(jnp.dtype(dtype))
    order = _check_torch_layout(name, args, state)
    write_torch({k: state[k] for k in order}, dst)
    progress(f"wrote {dst} ({_size(dst)})")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Convert checkpoints between attn_torch (PyTorch) and attn_flax (Flax NNX).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{to-flax,to-torch}", parser_class=_Parser)
    helps = {"to-flax": "torch .pt/.pth/.bin/.safetensors -> Flax .safetensors or Orbax directory",
             "to-torch": "Flax .safetensors or Orbax directory -> torch .pt/.pth/.bin/.safetensors"}
    for command, text in helps.items():
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("src", type=Path, metavar="SRC")
        sub.add_argument("dst", type=Path, metavar="DST")
        sub.add_argument("--model", required=True, metavar="NAME", help="registered module name (SE, CBAM, ..., ResNet)")
        sub.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                         help="a constructor argument, parsed as a Python literal (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0, or 2 on any failure)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a file conversion needs no accelerator
    commands: dict[str, Callable[..., None]] = {"to-flax": to_flax, "to-torch": to_torch}
    try:
        options = _parser().parse_args(argv)
        args = parse_args(options.arg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            commands[options.command](options.src, options.dst, options.model, args, _Progress())
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 2
    except Exception as error:  # every failure is one line: what is wrong, no traceback
        kind = "" if isinstance(error, (UsageError, ValueError)) else f"{type(error).__name__}: "
        print(f"{PROG}: error: {kind}{_one_line(str(error))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
