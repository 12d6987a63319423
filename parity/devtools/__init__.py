"""Developer tools: ``python -m parity bench``, ``profile``, ``memory`` and ``train`` (torch.optim
against optax). Nothing in the conversion API or in verification imports them."""

from __future__ import annotations

import argparse


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"NxCxHxW"`` -> ``(N, C, H, W)``, for argparse (``type=parse_shape``)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"shape must be NxCxHxW with positive sizes, got {text!r}")
    return parts  # type: ignore[return-value]
