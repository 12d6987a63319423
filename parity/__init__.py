"""Weight conversion between ``attn_torch`` and ``attn_flax``, and the parity harness.

    >>> import parity
    >>> flax_module = parity.to_flax(torch_module)           # same weights, NHWC
    >>> parity.load_state_dict(flax_module, torch_state_dict)  # torch names -> Flax, in place
    >>> parity.state_dict(flax_module)                        # Flax -> torch names and layouts
    >>> torch_module = parity.to_torch(flax_module)
    >>> parity.save_flax(flax_module, "model.safetensors")   # nnx state; a directory: Orbax
    >>> parity.load_flax(flax_module, "model.safetensors")   # strict keys, shapes and dtypes
"""

import importlib
from typing import Any

from attn_common._version import __version__

# name -> module; imported on first use, so that `import parity` stays light: the attn-convert
# process (parity.convert_cli) installs its signal handlers before JAX and torch are imported.
_EXPORTS = {
    **dict.fromkeys(
        ["RULES", "ConversionError", "LoadResult", "Rule", "load_state_dict", "state_dict", "to_flax", "to_torch"],
        "parity.convert",
    ),
    **dict.fromkeys(["save_flax", "load_flax"], "parity.checkpoint"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    try:  # a submodule, e.g. `parity.convert.iter_leaves` after a bare `import parity`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
