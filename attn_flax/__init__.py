"""Flax NNX attention modules for vision (NHWC), jit-friendly on CPU, GPU and TPU.

Every class here has a twin of the same name and arguments in ``attn_torch``
(NCHW); ``parity`` converts weights between them losslessly. Programs lowered for CPU take a
few XLA:CPU rewrites (``attn_flax.cpu_kernels``; off with ``set_cpu_kernels(False)`` or
``ATTN_FLAX_CPU_KERNELS=0``); every other platform gets the plain formulation.
"""

from attn_common._version import __version__
from attn_flax._registry import MODULES
from attn_flax.bam import BAM
from attn_flax.cbam import CBAM
from attn_flax.ccnet import CrissCrossAttention
from attn_flax.cpu_kernels import compiler_options, cpu_kernels_enabled, set_cpu_kernels
from attn_flax.coord import CoordAttention
from attn_flax.danet import ChannelAttention, DualAttention, PositionAttention
from attn_flax.eca import ECA
from attn_flax.gam import GAM
from attn_flax.polarized import ParallelPolarizedSelfAttention, SequentialPolarizedSelfAttention
from attn_flax.se import SE
from attn_flax.sge import SGE
from attn_flax.shuffle import ShuffleAttention
from attn_flax.models import ResNet
from attn_flax import timm
from attn_flax.timm import create_attn, create_model, get_attn, list_models

__all__ = ["MODULES", "BAM", "CBAM", "ChannelAttention", "CoordAttention", "CrissCrossAttention", "DualAttention", "ECA", "GAM", "PositionAttention", "SE", "ParallelPolarizedSelfAttention", "SequentialPolarizedSelfAttention", "SGE", "ShuffleAttention", "ResNet", "compiler_options", "create_attn", "create_model", "get_attn", "list_models", "timm", "cpu_kernels_enabled", "set_cpu_kernels"]
