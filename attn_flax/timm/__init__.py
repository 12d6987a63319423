"""timm's attention layers (timm 1.0.31, ``timm/layers``) in Flax NNX, NHWC.

Class names, constructor arguments, defaults and state-dict keys are timm's, so timm
checkpoints load with ``strict=True``; every class has an NCHW twin in
``attn_torch.timm``. ``create_attn(kind, channels, **kwargs)`` builds a layer by timm's
kind names (``"se"``, ``"eca"``, ``"cbam"``, ...).
"""

from attn_flax.timm.blur_pool import BlurPool2d, create_aa
from attn_flax.timm.cbam import CbamModule, ChannelAttn, LightCbamModule, LightChannelAttn, LightSpatialAttn, SpatialAttn
from attn_flax.timm.conv_bn_act import ConvBnAct, ConvNormAct
from attn_flax.timm.coord_attn import CoordAttn, EfficientLocalAttn, SimpleCoordAttn, StripAttn
from attn_flax.timm.create_act import create_act_layer, get_act_layer
from attn_flax.timm.eca import CecaModule, EcaModule
from attn_flax.timm.gather_excite import GatherExcite
from attn_flax.timm.global_context import GlobalContext
from attn_flax.timm.helpers import get_padding, make_divisible, to_2tuple
from attn_flax.timm.mlp import ConvMlp
from attn_flax.timm.norm import GroupNorm, GroupNorm1, LayerNorm2d, get_norm_layer
from attn_flax.timm.norm_act import BatchNormAct2d
from attn_flax.timm.squeeze_excite import EffectiveSEModule, SEModule
from attn_flax.timm.non_local_attn import BatNonLocalAttn, BilinearAttnTransform, NonLocalAttn
from attn_flax.timm.selective_kernel import SelectiveKernel, SelectiveKernelAttn
from attn_flax.timm.split_attn import RadixSoftmax, SplitAttn
from attn_flax.timm.lambda_layer import LambdaLayer
from attn_flax.timm.bottleneck_attn import BottleneckAttn
from attn_flax.timm.halo_attn import HaloAttn
from attn_flax.timm.create_attn import create_attn, get_attn

__all__ = [
    "BatNonLocalAttn", "BilinearAttnTransform", "BottleneckAttn", "HaloAttn", "LambdaLayer", "NonLocalAttn",
    "RadixSoftmax", "SelectiveKernel", "SelectiveKernelAttn", "SplitAttn",
    "BatchNormAct2d", "BlurPool2d", "CbamModule", "CecaModule", "ChannelAttn", "ConvBnAct", "ConvMlp", "ConvNormAct",
    "CoordAttn", "EcaModule", "EffectiveSEModule", "EfficientLocalAttn", "GatherExcite", "GlobalContext",
    "GroupNorm", "GroupNorm1", "LayerNorm2d", "LightCbamModule", "LightChannelAttn", "LightSpatialAttn", "SEModule",
    "SimpleCoordAttn", "SpatialAttn", "StripAttn", "create_aa", "create_act_layer", "create_attn", "get_act_layer",
    "get_attn", "get_norm_layer", "get_padding", "make_divisible", "to_2tuple",
]

from attn_flax.timm._registry import create_model, list_models  # noqa: E402  (models use the layers above)
from attn_flax.timm.resnet import ResNet  # noqa: E402
from attn_flax.timm.senet import SENet  # noqa: E402
