"""timm-compatible modules and models (timm's names, arguments and state-dict keys), NCHW."""

from attn_torch.timm._registry import create_model, list_models
from attn_torch.timm.resnet import ResNet
from attn_torch.timm.senet import SENet
