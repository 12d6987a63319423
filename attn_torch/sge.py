"""Spatial Group-wise Enhance.

Li et al., "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", 2019. https://arxiv.org/abs/1905.09646
"""

from __future__ import annotations

import torch
from torch import nn

from attn_common import check_divisible, check_input, check_positive
from attn_common.validation import check_at_least
from attn_torch._registry import register


@register
class SGE(nn.Module):
    """SGE: each channel group is gated by the similarity of its features to the group mean.

    Per group, the map ``t = sum_c x * avgpool(x)`` is normalised over the H*W
    positions (mean 0, divided by the unbiased std plus 1e-5), scaled and shifted
    by the per-group ``weight`` and ``bias``, and gates the group through a sigmoid.

    Parameter names match the reference ``SpatialGroupEnhance(groups)``: ``weight``
    and ``bias`` of shape ``(1, G, 1, 1)``, both initialised to 0 as there, so the
    module starts as ``0.5 * x``. The official SGE code starts ``bias`` at 1
    instead; load or set it for that behaviour. Departure from the reference: a
    map with a single position (H*W = 1), where the reference returns NaN, raises
    ``ValueError``; so does a channel count not divisible by ``groups``.

    Args:
        channels: number of input channels C (default ``None``: any multiple of
            ``groups``); only used to check the input.
        groups: number of channel groups G, by keyword (default 8).

    Input ``(N, C, H, W)`` with H*W >= 2; output has the same shape.
    """

    def __init__(self, channels: int | None = None, *, groups: int = 8, device=None, dtype=None):
        super().__init__()
        groups = check_positive("groups", groups)
        if channels is not None:
            channels = check_positive("channels", channels)
            check_divisible("channels", channels, "`groups`", groups)
        self.groups = groups
        self.channels = channels
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1, **factory))
        self.bias = nn.Parameter(torch.zeros(1, groups, 1, 1, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "SGE")
        b, c, h, w = x.shape
        check_divisible("channels", c, "`groups`", self.groups)
        why = f"SGE divides by the unbiased std over the H*W positions, NaN for one; input shape {tuple(x.shape)}"
        check_at_least("H*W", h * w, 2, why)
        t = self._similarity_to_group_mean(x)  # (N, G, H, W)
        t = t - t.mean((2, 3), keepdim=True)
        t = t / (t.std((2, 3), keepdim=True) + 1e-5)
        gate = torch.sigmoid(t * self.weight + self.bias)
        return (x.reshape(b, self.groups, c // self.groups, h, w) * gate[:, :, None]).reshape(b, c, h, w)

    def _similarity_to_group_mean(self, x: torch.Tensor) -> torch.Tensor:
        """``t[n, g] = sum_k x[n, g, k] * mean_hw(x)[n, g, k]`` as one batched matrix product.

        A block-diagonal ``(G, C)`` matrix per sample times ``x`` viewed as ``(C, H*W)``:
        no full-size ``x * mean`` temporary.
        """
        b, c, h, w = x.shape
        group_of_channel = torch.eye(self.groups, dtype=x.dtype, device=x.device).repeat_interleave(
            c // self.groups, dim=1)
        block_diagonal = x.mean((2, 3))[:, None, :] * group_of_channel  # (N, G, C)
        return torch.bmm(block_diagonal, x.reshape(b, c, h * w)).reshape(b, self.groups, h, w)
