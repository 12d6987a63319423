"""``create_model`` / ``list_models`` for timm's ResNet family and legacy SENets, by timm's names."""

from __future__ import annotations

from typing import Any

from torch import nn

from attn_common import timm_models


def list_models(pattern: str | None = None) -> list[str]:
    """timm architecture names matching the ``fnmatch`` ``pattern`` (all by default), sorted naturally."""
    return timm_models.list_models(pattern)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """The timm architecture ``name`` (e.g. ``"ecaresnet50d"``), randomly initialised as timm does.

    ``kwargs`` override the architecture's arguments (``num_classes``, ``in_chans``,
    ``global_pool``, ``drop_path_rate``, ``device``, ``dtype``, ...). An unknown name
    raises ``ValueError`` with the closest names.
    """
    from attn_torch.timm.resnet import ResNet
    from attn_torch.timm.senet import SENet

    cls_name, args = timm_models.model_entry(name)
    cls = {"ResNet": ResNet, "SENet": SENet}[cls_name]
    return cls(**{**args, **kwargs})
