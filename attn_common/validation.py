"""Argument and input-shape checks that raise ``ValueError`` naming the culprit."""

from __future__ import annotations

import math
import operator
from typing import Literal, Sequence

Layout = Literal["NCHW", "NHWC"]


def as_int(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (NumPy integers included, bools not), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_positive(name: str, value: int) -> int:
    """Return ``value`` as a Python int if it is a positive integer, else raise naming ``name``."""
    number = as_int(value)
    if number is None or number < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return number


def check_odd(name: str, value: int) -> int:
    """Kernel sizes with symmetric 'same' padding must be odd."""
    value = check_positive(name, value)
    if value % 2 == 0:
        raise ValueError(
            f"`{name}` must be odd so that the padding keeps the size, got {value}"
        )
    return value


def check_reduction(channels: int, reduction: int, minimum: int = 1, *, name: str = "reduction") -> int:
    """Return the reduced width ``channels // reduction``; it must be >= ``minimum``.

    ``name`` is the argument's name in the caller (e.g. GAM's ``rate``).
    """
    channels = check_positive("channels", channels)
    reduction = check_positive(name, reduction)
    hidden = channels // reduction
    if hidden < minimum:
        raise ValueError(
            f"`{name}`={reduction} is too large for `channels`={channels}: "
            f"channels // {name} = {hidden}, which must be at least {minimum}"
        )
    return hidden


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise unless ``value % divisor == 0``; both names appear in the message."""
    if value % divisor:
        raise ValueError(
            f"`{name}`={value} must be divisible by {divisor_name}={divisor}"
        )


def check_at_least(name: str, value: int, minimum: int, why: str) -> int:
    """Return ``value`` as a Python int if it is an integer ``>= minimum``; ``why`` says what needs that much."""
    number = as_int(value)
    if number is None or number < minimum:
        raise ValueError(f"`{name}` must be at least {minimum} ({why}), got {value!r}")
    return number


def check_input(
    shape: Sequence[int], channels: int | None, layout: Layout, module: str
) -> None:
    """Check a 4-D image batch: rank 4, a non-empty map and, if given, the channel count.

    In NHWC a channel mismatch is usually an NCHW array passed by mistake, and
    the message says so.
    """
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"{module} expects a 4-D {layout} input, got shape {shape} (rank {len(shape)})"
        )
    spatial = shape[2:] if layout == "NCHW" else shape[1:3]
    if 0 in spatial:
        raise ValueError(
            f"{module} needs a non-empty spatial map, got {layout} input of shape {shape} (H x W = "
            f"{spatial[0]} x {spatial[1]})"
        )
    if channels is None:
        return
    got = shape[1] if layout == "NCHW" else shape[3]
    if got != channels:
        hint = ""
        if layout == "NHWC" and shape[1] == channels:
            hint = "; this looks like an NCHW array: transpose it to NHWC (x.transpose(0, 2, 3, 1))"
        raise ValueError(
            f"{module} was built with `channels`={channels} but the {layout} input "
            f"of shape {shape} has {got} channels{hint}"
        )


def check_batch_statistics(shape: Sequence[int], count: int, module: str) -> None:
    """Training-mode batch norm needs more than one value per channel."""
    if count < 2:
        raise ValueError(
            f"{module} in training mode needs more than one value per channel to "
            f"compute batch statistics, got input of shape {tuple(shape)}; use a "
            f"batch larger than 1 or switch to eval mode"
        )


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size: ``|log2(C)/gamma + b/gamma|`` rounded to odd.

    Follows the official code: ``t = int(abs((log2(C) + b) / gamma))``, then
    ``t`` if odd else ``t + 1``.
    """
    check_positive("channels", channels)
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return the entry of ``choices`` equal to ``value`` ignoring case, else raise listing them."""
    if isinstance(value, str):
        for choice in choices:
            if choice.lower() == value.lower():
                return choice
    raise ValueError(f"`{name}`={value!r} is not one of: {', '.join(sorted(choices))}")


def check_memory_efficient(value: "bool | None") -> "bool | None":
    """``memory_efficient`` of DANet's position attention: True, False or None (automatic)."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"`memory_efficient` must be True, False or None (automatic), got {value!r}")
    return value
