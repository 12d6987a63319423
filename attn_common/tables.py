"""Framework-free tables and constants that ``attn_torch`` and ``attn_flax`` must agree on.

One copy here, imported by both packages, so the two can never drift apart.
"""

from __future__ import annotations

# ResNet depth -> (block kind, blocks per stage): torchvision's table.
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# Planes of the four ResNet stages (a bottleneck stage outputs 4x as many channels).
RESNET_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)

# H * W from which DANet's ``memory_efficient=None`` takes the blockwise path: from there on it
# is no slower than the exact path in either framework, and one image's matrix is 16 MiB.
MEMORY_EFFICIENT_MIN_PIXELS = 2048
