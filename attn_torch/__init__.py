"""PyTorch attention modules for vision (NCHW).

Every class here has a twin of the same name and arguments in ``attn_flax``
(NHWC); ``parity`` converts weights between them losslessly.
"""

from attn_torch._registry import MODULES
from attn_torch.cbam import CBAM
from attn_torch.coord import CoordAttention
from attn_torch.eca import ECA
from attn_torch.se import SE

__all__ = ["MODULES", "CBAM", "CoordAttention", "ECA", "SE"]
