"""timm's small helpers (``timm/layers/helpers.py``, ``padding.py``): channel rounding and padding."""

from attn_common.timm import get_padding, make_divisible, to_2tuple

__all__ = ["get_padding", "make_divisible", "to_2tuple"]
