"""timm-compatible modules and models (timm's names, arguments and state-dict keys), NHWC."""

from attn_flax.timm._registry import create_model, list_models
from attn_flax.timm.resnet import ResNet
from attn_flax.timm.senet import SENet
