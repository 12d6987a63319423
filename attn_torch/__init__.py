"""PyTorch attention modules for vision (NCHW).

Every class here has a twin of the same name and arguments in ``attn_flax``
(NHWC); ``parity`` converts weights between them losslessly.
"""

from attn_common._version import __version__
from attn_torch._registry import MODULES
from attn_torch.bam import BAM
from attn_torch.cbam import CBAM
from attn_torch.ccnet import CrissCrossAttention
from attn_torch.coord import CoordAttention
from attn_torch.danet import ChannelAttention, DualAttention, PositionAttention
from attn_torch.eca import ECA
from attn_torch.gam import GAM
from attn_torch.polarized import ParallelPolarizedSelfAttention, SequentialPolarizedSelfAttention
from attn_torch.se import SE
from attn_torch.sge import SGE
from attn_torch.shuffle import ShuffleAttention
from attn_torch.models import ResNet
from attn_torch import timm
from attn_torch.timm import create_attn, create_model, get_attn, list_models

__all__ = ["MODULES", "BAM", "CBAM", "ChannelAttention", "CoordAttention", "CrissCrossAttention", "DualAttention", "ECA", "GAM", "PositionAttention", "SE", "ParallelPolarizedSelfAttention", "SequentialPolarizedSelfAttention", "SGE", "ShuffleAttention", "ResNet", "create_attn", "create_model", "get_attn", "list_models", "timm"]
