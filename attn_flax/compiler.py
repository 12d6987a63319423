"""XLA compiler options under which attn_flax's convolution-heavy modules run faster.

On CPU, jax 0.10's XLA hands every large enough convolution to the YNNPACK library
(its default ``xla_cpu_experimental_ynn_fusion_type`` is individual dots, reductions
and individual convolutions). On the 2-core x86 machine of the README's benchmark,
XLA's own (Eigen) convolution was 2-2.5x faster at the shapes of BAM and GAM:

* a 7x7 convolution 256 -> 64 at 32x28x28: 455 ms with YNNPACK, 180 ms without;
* BAM's dilated 3x3 convolution 64 -> 64 at 32x28x28: 18 ms -> 9 ms, its training step
  (input and kernel gradients) 92-106 -> 42 ms.

The options keep YNNPACK for dots and reductions, where it is the faster kernel, and only
drop convolutions. They apply to a whole compiled program (so also to a backbone's
convolutions), which is why the library cannot switch them on inside a module: pass them
to the ``jax.jit`` that compiles your step::

    step = jax.jit(train_step, compiler_options=attn_flax.compiler_options())

``nnx.jit`` has no such argument; there, set the same option for the whole process before
JAX starts: ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

# XLA:CPU's default library fusions without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """Options for ``jax.jit(..., compiler_options=...)`` that run convolutions on XLA's own CPU kernels.

    Args:
        backend: the platform the program is compiled for (``"cpu"``, ``"gpu"``, ``"tpu"``);
            default ``jax.default_backend()``.

    Returns:
        ``CPU_OPTIONS`` (a new dict) on CPU; ``{}`` on other backends, and ``{}`` with a
        warning where this jaxlib's XLA does not know the option (checked once by compiling
        a one-element program).
    """
    platform = jax.default_backend() if backend is None else backend
    if platform != "cpu":
        return {}
    return dict(CPU_OPTIONS) if _cpu_accepts_options() else {}


@functools.cache
def _cpu_accepts_options() -> bool:
    try:
        probe = jax.device_put(jnp.zeros(1), jax.local_devices(backend="cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(probe).compile()
    except Exception as error:  # an unknown option or enum value: XLA raises at compile time
        warnings.warn(f"attn_flax.compiler_options: this jaxlib ({jax.__version__}) rejects {CPU_OPTIONS}; "
                      f"returning no options ({type(error).__name__}: {str(error).splitlines()[0]})",
                      RuntimeWarning, stacklevel=3)
        return False
    return True
