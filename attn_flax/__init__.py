"""Flax NNX attention modules for vision (NHWC), jit-friendly on CPU, GPU and TPU.

Every class here has a twin of the same name and arguments in ``attn_torch``
(NCHW); ``parity`` converts weights between them losslessly.
"""

from attn_flax._registry import MODULES
from attn_flax.cbam import CBAM
from attn_flax.coord import CoordAttention
from attn_flax.eca import ECA
from attn_flax.se import SE

__all__ = ["MODULES", "CBAM", "CoordAttention", "ECA", "SE"]
