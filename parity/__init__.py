"""Weight conversion between ``attn_torch`` and ``attn_flax``, and the parity harness.

    >>> import parity
    >>> flax_module = parity.to_flax(torch_module)           # same weights, NHWC
    >>> parity.load_state_dict(flax_module, torch_state_dict)  # torch names -> Flax, in place
    >>> parity.state_dict(flax_module)                        # Flax -> torch names and layouts
    >>> torch_module = parity.to_torch(flax_module)
"""

from parity.convert import (
    RULES,
    ConversionError,
    LoadResult,
    Rule,
    load_state_dict,
    state_dict,
    to_flax,
    to_torch,
)

__all__ = [
    "RULES",
    "ConversionError",
    "LoadResult",
    "Rule",
    "load_state_dict",
    "state_dict",
    "to_flax",
    "to_torch",
]
