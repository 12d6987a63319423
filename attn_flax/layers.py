"""Flax NNX building blocks that behave like their torch.nn namesakes.

``Conv2d``, ``Conv1d`` and ``Linear`` return plain ``nnx.Conv`` / ``nnx.Linear``
with explicit symmetric padding and PyTorch's default initialisation
(kaiming-uniform with ``a=sqrt(5)``, bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``),
so a model trained from scratch starts from the same distribution in both
frameworks; the convolutions compute through
:func:`attn_flax.cpu_kernels.conv_general_dilated` (``jax.lax.conv_general_dilated``,
with a few convolution shapes rewritten in programs lowered for CPU). ``BatchNorm`` follows torch's update rule exactly (see its docstring);
``GroupNorm`` and ``LayerNorm`` use torch's epsilon and two-pass variance.
``ChannelParam`` marks a raw parameter broadcast over the channel axis, stored
channel-last; the converter moves that axis to position 1 for torch.

Dtype convention (every ``attn_flax`` module follows it; :class:`DtypeModule`, their
base, holds the rule):

* ``dtype=None`` (default): the computation dtype is
  ``jnp.result_type(input, param_dtype)``, Flax's usual promotion; float32 input
  and parameters compute in float32 exactly as the float32 parity report checks.
* ``dtype=jnp.bfloat16`` with ``param_dtype=jnp.float32`` (mixed precision):
  parameters are stored in float32 and cast to bfloat16 for the convolutions,
  matmuls and elementwise ops; the input is cast on entry, so the output is
  bfloat16 even for a float32 input. Mean and variance reductions (``BatchNorm``,
  ``GroupNorm``, ``LayerNorm``, spatial and channel mean pools, SGE's std) and
  every softmax are computed in float32 (:func:`stable_mean`,
  :func:`stable_softmax`) and their result is cast back to the computation dtype.
* ``BatchNorm`` running statistics are always stored in float32 and updated from
  float32 batch statistics, whatever ``dtype`` and ``param_dtype`` are.

The bfloat16 errors against the float32 torch modules are measured by
``python -m parity report`` (tolerances in ``parity/verify/tolerances.py``, ``BF16``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common.validation import check_batch_statistics
from attn_flax import cpu_kernels

Dtype = Any


class DtypeModule(nnx.Module):
    """The dtype convention above, in one place: the base of every ``attn_flax`` module that
    casts its input (modules built only of such modules need no cast of their own).

    A subclass stores its ``dtype`` and ``param_dtype`` constructor arguments and
    casts its input with :meth:`promote` on entry.
    """

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def computation_dtype(self, x: jax.Array) -> Dtype:
        """``dtype`` if given, else the promotion of ``x`` and ``param_dtype``."""
        return self.dtype if self.dtype is not None else jnp.result_type(x, self.param_dtype)

    def promote(self, x: jax.Array) -> jax.Array:
        """``x`` cast to :meth:`computation_dtype`."""
        return x.astype(self.computation_dtype(x))


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` promoted to float32 (bfloat16, float16), or unchanged (float32, float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def stable_mean(x: jax.Array, axis: int | tuple[int, ...], keepdims: bool = False) -> jax.Array:
    """``x.mean(axis)`` accumulated in at least float32, returned in ``x``'s dtype."""
    return at_least_float32(x).mean(axis, keepdims=keepdims).astype(x.dtype)


def stable_softmax(x: jax.Array, axis: int | tuple[int, ...] = -1) -> jax.Array:
    """``jax.nn.softmax`` computed in at least float32, returned in ``x``'s dtype."""
    return jax.nn.softmax(at_least_float32(x), axis=axis).astype(x.dtype)


class ChannelParam(nnx.Param):
    """A parameter shaped like ``(1, 1, 1, C)`` (NHWC) whose torch twin is ``(1, C, 1, 1)``."""


def torch_kernel_init(scale: float = 1.0 / 3.0) -> nnx.Initializer:
    """``kaiming_uniform_(a=sqrt(5))``: uniform with bound ``1/sqrt(fan_in)``."""
    return nnx.initializers.variance_scaling(scale, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nnx.Initializer:
    """torch's default bias init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _pair(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _conv(
    n: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    kernel = _pair(kernel_size, n)
    fan_in = in_channels // groups * math.prod(kernel)
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel,
        strides=_pair(stride, n),
        padding=[(p, p) for p in _pair(padding, n)],
        kernel_dilation=_pair(dilation, n),
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(fan_in),
        conv_general_dilated=cpu_kernels.conv_general_dilated,
        rngs=rngs,
    )


def Conv2d(in_channels: int, out_channels: int, kernel_size: int | Sequence[int], **kwargs: Any) -> nnx.Conv:
    """``torch.nn.Conv2d`` for NHWC input: explicit padding, torch init. Same keywords."""
    return _conv(2, in_channels, out_channels, kernel_size, **kwargs)


def Conv1d(in_channels: int, out_channels: int, kernel_size: int, **kwargs: Any) -> nnx.Conv:
    """``torch.nn.Conv1d`` for NLC input: explicit padding, torch init. Same keywords."""
    return _conv(1, in_channels, out_channels, kernel_size, **kwargs)


def Linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """``torch.nn.Linear`` with torch's initialisation."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )


def GroupNorm(
    num_groups: int,
    num_channels: int,
    *,
    eps: float = 1e-5,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.GroupNorm:
    """``torch.nn.GroupNorm(num_groups, num_channels)`` over the last (channel) axis."""
    return nnx.GroupNorm(
        num_channels,
        num_groups=num_groups,
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def LayerNorm(
    normalized_shape: int,
    *,
    eps: float = 1e-5,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.LayerNorm:
    """``torch.nn.LayerNorm(normalized_shape)`` over the last axis."""
    return nnx.LayerNorm(
        normalized_shape,
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class BatchNorm(DtypeModule):
    """Batch normalisation over the last axis with ``torch.nn.BatchNorm{1,2}d``'s rules.

    Differences from ``nnx.BatchNorm`` that matter for parity:

    * ``momentum=0.1`` weights the *new* batch (torch's convention; Flax's 0.99
      weights the old value);
    * the running variance is updated with the **unbiased** batch variance
      (``n / (n - 1)``), the output is normalised with the biased one;
    * ``eps=1e-5``, two-pass variance; batch statistics, normalisation and the
      running statistics in float32 whatever ``dtype`` is (the output is cast to
      the computation dtype, see the module docstring);
    * a ``num_batches_tracked`` counter, so checkpoints round-trip.

    Training is the default mode, as in torch; ``model.eval()`` switches to the
    running statistics. Works on ``(N, C)`` and ``(N, H, W, C)`` input.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        use_running_average: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(x.ndim - 1))
        x32 = at_least_float32(x)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            count = math.prod(x.shape[:-1])
            check_batch_statistics(x.shape, count, "BatchNorm")
            mean = x32.mean(axes)
            # XLA's float32 sum is less accurate than torch's cascade sum far from
            # zero; one corrective pass over the centred values recovers it.
            mean = mean + (x32 - mean).mean(axes)
            var = jnp.square(x32 - mean).mean(axes)
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean).astype(jnp.float32)
            unbiased = jax.lax.stop_gradient(var).astype(jnp.float32) * (count / (count - 1))
            self.var[...] = (1 - m) * self.var[...] + m * unbiased
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        # Normalised in float32 (as flax's own norms do), then cast to the computation dtype.
        inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        y = (x32 - mean) * inv + self.bias[...]
        return y.astype(self.computation_dtype(x))


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``relu6(x + 3) / 6``, as torch's ``Hardsigmoid`` and Coordinate Attention's ``h_sigmoid``."""
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
    return x * hard_sigmoid(x)


Activation = Callable[[jax.Array], jax.Array]
