"""Framework-free helpers shared by ``attn_torch`` and ``attn_flax``.

Nothing here imports torch or jax: both packages validate hyper-parameters and
input shapes with the same functions, so a bad argument raises the same
``ValueError`` with the same words in either framework.
"""

from attn_common._version import __version__
from attn_common.validation import (
    check_batch_statistics,
    check_divisible,
    check_input,
    check_odd,
    check_positive,
    check_reduction,
    eca_kernel_size,
)

__all__ = [
    "check_batch_statistics",
    "check_divisible",
    "check_input",
    "check_odd",
    "check_positive",
    "check_reduction",
    "eca_kernel_size",
]
