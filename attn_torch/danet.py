"""Dual attention: DANet's position and channel attention modules.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019.
https://arxiv.org/abs/1809.02983

The seed's ``DAModule`` hard-codes 512 channels and a 7x7 map and ignores its
arguments; these modules follow the official ``PAM_Module`` / ``CAM_Module``
(github.com/junfu1115/DANet, ``encoding/nn/da_att.py``) instead, which work at
any size. No checkpoint of the seed's ``DAModule`` loads into them.

Position attention builds an ``(N, HW, HW)`` attention matrix: 5 GB in float32
for a batch of 8 at 112x112. Above ``MEMORY_EFFICIENT_MIN_PIXELS`` pixels (or
with ``memory_efficient=True``) it runs through
``torch.nn.functional.scaled_dot_product_attention`` instead, whose fused CPU
kernel works block by block and never holds that matrix, in the forward pass or
the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attn_common import check_input, check_positive
from attn_common.tables import MEMORY_EFFICIENT_MIN_PIXELS
from attn_common.validation import check_at_least, check_memory_efficient
from attn_torch._registry import register


def softmax_in_float32(energy: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis computed in at least float32, cast to ``like``'s dtype."""
    return torch.softmax(energy, dim=-1, dtype=torch.promote_types(energy.dtype, torch.float32)).to(like.dtype)


def attend_exact(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``softmax(query key^T) value`` (no scaling) through the full ``(L, L)`` matrix of each image.

    ``query``, ``key``: ``(N, L, D)``; ``value``: ``(N, L, C)``; returns ``(N, L, C)``.
    On CPU one image after the other: one image's matrix stays in cache where the whole
    batch's does not. On other devices the whole batch at once.
    """
    if query.device.type != "cpu":
        return softmax_in_float32(query @ key.transpose(1, 2), value) @ value
    return torch.stack([softmax_in_float32(q @ k.T, v) @ v for q, k, v in zip(query, key, value)])


def attend_blockwise(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """:func:`attend_exact` through torch's fused attention kernel, which never holds the matrix.

    The fused CPU kernel needs one width for queries, keys and values (otherwise torch
    falls back to the exact computation): ``query`` and ``key`` are padded with zero
    columns, which add nothing to ``query key^T``. It accumulates the softmax in
    float32 for bfloat16 inputs. Measured on CPU; on a GPU torch picks among its own
    fused kernels, which this padding also suits (not measured here).
    """
    pad = value.shape[-1] - query.shape[-1]
    query, key = F.pad(query, (0, pad)), F.pad(key, (0, pad))
    heads = (query.unsqueeze(1), key.unsqueeze(1), value.contiguous().unsqueeze(1))  # one head
    return F.scaled_dot_product_attention(*heads, scale=1.0).squeeze(1)


@register
class PositionAttention(nn.Module):
    """DANet's position attention (PAM): every pixel attends to every pixel.

    ``out = gamma * (V softmax(Q^T K)^T) + x`` with ``Q, K`` 1x1 projections to
    ``channels // 8`` and ``V`` a 1x1 projection to ``channels``; the softmax runs
    over the keys of the ``(N, HW, HW)`` energy. ``gamma`` starts at 0, so the
    module is the identity at initialisation. Parameter names follow the official
    ``PAM_Module``: ``query_conv``, ``key_conv``, ``value_conv`` (all with bias),
    ``gamma`` of shape ``(1,)``. The energy is not scaled by ``1/sqrt(C // 8)``.

    Two paths compute the same function. The exact path builds the matrix (on CPU one
    image's at a time, see :func:`attend_exact`) and keeps it for the backward pass:
    memory grows as ``N (HW)^2``. The memory-efficient path (:func:`attend_blockwise`,
    ``F.scaled_dot_product_attention``) never holds it (measured peaks: docs/memory.md,
    ``python -m parity memory``). The two agree within the float32 parity tolerance. The softmax runs in float32, also under
    ``torch.autocast``.

    Args:
        channels: number of input channels C; at least 8 (query/key width C // 8).
        memory_efficient: ``True`` for the blockwise path, ``False`` for the exact one,
            ``None`` (default) for the blockwise path from ``H * W >=
            MEMORY_EFFICIENT_MIN_PIXELS`` (2048, e.g. 46x46) on.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, memory_efficient: bool | None = None, *, device=None, dtype=None):
        super().__init__()
        hidden = check_at_least("channels", channels, 8, "the query/key width is channels // 8") // 8
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.memory_efficient = check_memory_efficient(memory_efficient)
        self.query_conv = nn.Conv2d(channels, hidden, 1, **factory)
        self.key_conv = nn.Conv2d(channels, hidden, 1, **factory)
        self.value_conv = nn.Conv2d(channels, channels, 1, **factory)
        self.gamma = nn.Parameter(torch.zeros(1, **factory))

    def uses_blockwise(self, height: int, width: int) -> bool:
        """Whether an ``H x W`` map takes the memory-efficient path."""
        if self.memory_efficient is None:
            return height * width >= MEMORY_EFFICIENT_MIN_PIXELS
        return self.memory_efficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "PositionAttention")
        convs = (self.query_conv, self.key_conv, self.value_conv)
        query, key, value = (conv(x).flatten(2).transpose(1, 2) for conv in convs)  # (N, HW, .)
        attend = attend_blockwise if self.uses_blockwise(x.shape[2], x.shape[3]) else attend_exact
        out = attend(query, key, value)  # (N, HW, C)
        return self.gamma * out.transpose(1, 2).reshape(x.shape) + x


@register
class ChannelAttention(nn.Module):
    """DANet's channel attention (CAM): every channel attends to every channel.

    ``energy = X X^T`` over the flattened map, shape ``(N, C, C)``;
    ``out = gamma * softmax(rowmax(energy) - energy) X + x``. Subtracting the
    energy from its row maximum is the official code's formulation (a channel
    attends most to the channels it is *least* similar to). No projections:
    ``gamma`` of shape ``(1,)``, starting at 0, is the only parameter.

    Args:
        channels: number of input channels C.

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, *, device=None, dtype=None):
        super().__init__()
        self.channels = check_positive("channels", channels)
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "ChannelAttention")
        flat = x.flatten(2)  # (N, C, HW)
        energy = flat @ flat.transpose(1, 2)  # (N, C, C)
        attention = softmax_in_float32(energy.amax(-1, keepdim=True) - energy, flat)
        return self.gamma * (attention @ flat).view_as(x) + x


@register
class DualAttention(nn.Module):
    """DANet's dual attention: position and channel attention in parallel, summed.

    ``out = PositionAttention(x) + ChannelAttention(x)``, the sum that fuses the
    two branches in DANet's head. The official head puts a conv-BN-ReLU before
    and after each branch; this module is the bare pair, so the output holds the
    input twice (each branch adds its own residual), ``2x`` at initialisation.
    Parameter names: ``position.{query_conv,key_conv,value_conv,gamma}`` and
    ``channel.gamma``.

    Args:
        channels: number of input channels C; at least 8.
        memory_efficient: the position branch's path, as in :class:`PositionAttention`
            (the channel branch's ``(N, C, C)`` matrix is small).

    Input ``(N, C, H, W)``; output has the same shape.
    """

    def __init__(self, channels: int, memory_efficient: bool | None = None, *, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.position = PositionAttention(channels, memory_efficient, device=device, dtype=dtype)
        self.channel = ChannelAttention(channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.channels, "NCHW", "DualAttention")
        return self.position(x) + self.channel(x)
