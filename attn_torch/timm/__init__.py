"""timm's attention layers (timm 1.0.31, ``timm/layers``) in PyTorch, NCHW.

Class names, constructor arguments, defaults and state-dict keys are timm's, so timm
checkpoints load with ``strict=True``; every class has an NHWC twin in
``attn_flax.timm``. ``create_attn(kind, channels, **kwargs)`` builds a layer by timm's
kind names (``"se"``, ``"eca"``, ``"cbam"``, ...).
"""

from attn_torch.timm.blur_pool import BlurPool2d, create_aa
from attn_torch.timm.cbam import CbamModule, ChannelAttn, LightCbamModule, LightChannelAttn, LightSpatialAttn, SpatialAttn
from attn_torch.timm.conv_bn_act import ConvBnAct, ConvNormAct
from attn_torch.timm.coord_attn import CoordAttn, EfficientLocalAttn, SimpleCoordAttn, StripAttn
from attn_torch.timm.create_act import create_act_layer, get_act_layer
from attn_torch.timm.eca import CecaModule, EcaModule
from attn_torch.timm.gather_excite import GatherExcite
from attn_torch.timm.global_context import GlobalContext
from attn_torch.timm.helpers import get_padding, make_divisible, to_2tuple
from attn_torch.timm.mlp import ConvMlp
from attn_torch.timm.norm import GroupNorm, GroupNorm1, LayerNorm2d, get_norm_layer
from attn_torch.timm.norm_act import BatchNormAct2d
from attn_torch.timm.squeeze_excite import EffectiveSEModule, SEModule
from attn_torch.timm.non_local_attn import BatNonLocalAttn, BilinearAttnTransform, NonLocalAttn
from attn_torch.timm.selective_kernel import SelectiveKernel, SelectiveKernelAttn
from attn_torch.timm.split_attn import RadixSoftmax, SplitAttn
from attn_torch.timm.lambda_layer import LambdaLayer
from attn_torch.timm.bottleneck_attn import BottleneckAttn
from attn_torch.timm.halo_attn import HaloAttn
from attn_torch.timm.create_attn import create_attn, get_attn

__all__ = [
    "BatNonLocalAttn", "BilinearAttnTransform", "BottleneckAttn", "HaloAttn", "LambdaLayer", "NonLocalAttn",
    "RadixSoftmax", "SelectiveKernel", "SelectiveKernelAttn", "SplitAttn",
    "BatchNormAct2d", "BlurPool2d", "CbamModule", "CecaModule", "ChannelAttn", "ConvBnAct", "ConvMlp", "ConvNormAct",
    "CoordAttn", "EcaModule", "EffectiveSEModule", "EfficientLocalAttn", "GatherExcite", "GlobalContext",
    "GroupNorm", "GroupNorm1", "LayerNorm2d", "LightCbamModule", "LightChannelAttn", "LightSpatialAttn", "SEModule",
    "SimpleCoordAttn", "SpatialAttn", "StripAttn", "create_aa", "create_act_layer", "create_attn", "get_act_layer",
    "get_attn", "get_norm_layer", "get_padding", "make_divisible", "to_2tuple",
]

from attn_torch.timm._registry import create_model, list_models  # noqa: E402  (models use the layers above)
from attn_torch.timm.resnet import ResNet  # noqa: E402
from attn_torch.timm.senet import SENet  # noqa: E402
