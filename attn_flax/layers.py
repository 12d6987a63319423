"""Flax NNX building blocks that behave like their torch.nn namesakes.

``Conv2d``, ``Conv1d`` and ``Linear`` return plain ``nnx.Conv`` / ``nnx.Linear``
with explicit symmetric padding and PyTorch's default initialisation
(kaiming-uniform with ``a=sqrt(5)``, bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``),
so a model trained from scratch starts from the same distribution in both
frameworks; the convolutions compute through :func:`conv_general_dilated`, which
runs tiny one-output gate convolutions (CBAM, BAM, ECA) as fused shifted sums,
1x1 convolutions as matrix products, and convolutions on fewer positions than the kernel
has taps as one product over the stacked taps. ``BatchNorm`` follows torch's update rule exactly (see its docstring);
``GroupNorm`` and ``LayerNorm`` use torch's epsilon and two-pass variance.
``ChannelParam`` marks a raw parameter broadcast over the channel axis, stored
channel-last; the converter moves that axis to position 1 for torch.

Dtype convention (every ``attn_flax`` module follows it):

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
``python -m parity report`` (tolerances in ``parity/tolerances.py``, ``BF16``).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attn_common.validation import check_batch_statistics

Dtype = Any


def compute_dtype(dtype: Dtype | None, *operands: Any) -> Dtype:
    """The computation dtype: ``dtype`` if given, else the promotion of ``operands`` (arrays or dtypes)."""
    return dtype if dtype is not None else jnp.result_type(*operands)


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` promoted to float32 (bfloat16, float16), or unchanged (float32, float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def stable_mean(x: jax.Array, axis: int | tuple[int, ...], keepdims: bool = False) -> jax.Array:
    """``x.mean(axis)`` accumulated in at least float32, returned in ``x``'s dtype."""
    return at_least_float32(x).mean(axis, keepdims=keepdims).astype(x.dtype)


def materialized(arrays: Any) -> Any:
    """``arrays`` unchanged, computed once into buffers of their own under ``jax.jit``.

    XLA fuses small producers into every loop that consumes them; when the producer is a
    per-channel coefficient assembled with ``where``/``concatenate``, the per-element index
    logic keeps that loop from vectorising (ShuffleAttention's backward: 20-30 ms against
    5.5-6 ms of thread time with the coefficients materialised). ``optimization_barrier`` does
    not help on XLA:CPU (it is removed before fusion); a conditional's result is a buffer.
    """
    first = jax.tree.leaves(arrays)[0]
    if first.size == 0:  # nothing to compute, and no element to probe
        return arrays
    probe = first.ravel()[0]
    return jax.lax.cond(probe == probe, lambda t: t, lambda t: jax.tree.map(lambda a: a + 0, t), arrays)


def differentiated_as(reference: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function runs as written and is differentiated as ``reference``.

    For a formulation that XLA evaluates faster but differentiates slower than an
    equivalent one (the same function up to rounding): ``jax.jit`` of the plain call runs
    the decorated body; ``jax.grad``, ``jax.vjp`` and ``jax.jvp`` see ``reference``, whose
    primal output also replaces the body's under differentiation (a ``jax.custom_jvp``, so
    forward mode keeps working).
    """
    def decorate(fast: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = jax.custom_jvp(fast)
        wrapped.defjvp(lambda primals, tangents: jax.jvp(reference, primals, tangents))
        return wrapped
    return decorate


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


# A convolution with at most this many multiply-adds per output value and at most this many
# output channels runs as a sum of shifted slices (see conv_general_dilated).
SHIFTED_SUM_MAX_TERMS = 128
SHIFTED_SUM_MAX_OUTPUTS = 4
_CHANNELS_LAST = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Dtype | None = None,
    **kwargs: Any,
) -> jax.Array:
    """``jax.lax.conv_general_dilated``, with tiny gate and 1x1 convolutions computed faster.

    A channels-last, ungrouped, stride-1 convolution to one output channel, with
    non-negative explicit padding, not an unpadded 1x1 (below), and at most
    ``SHIFTED_SUM_MAX_TERMS`` multiply-adds per output value (kernel taps times input channels: CBAM's 2 -> 1
    channel 7x7 gate has 98, ECA's 1-D conv k) is computed as a sum of shifted
    slices of the padded input, accumulated in at least float32, which XLA fuses into
    one pass; its gradients are XLA's transposed convolutions, as before (see
    ``_tiny_conv``). XLA:CPU's convolution kernel is slow for so few channels: the
    CBAM gate at 8x56x56 took 2.7-4.4 ms as a convolution and 0.33 ms as shifted sums
    (torch: 0.36 ms). Up to ``SHIFTED_SUM_MAX_OUTPUTS`` output channels, the same
    holds when the convolution is evaluated, not differentiated (BAM's 4 -> 4 dilated
    3x3 convolutions at 8x56x56: 0.3-0.6 ms against 1.5-2.3 ms; torch 0.8-1.1 ms), but
    differentiated, the sums feed several consumers and XLA recomputes them in each
    (BAM's training step 39 -> 57 ms at 8x64x56x56), so there the forward pass stays
    XLA's convolution (``_few_output_conv``).

    A pointwise (1x1, stride 1, unpadded, ungrouped) convolution is a matrix product
    over the channel axis and runs as one (``jax.lax.dot_general``): XLA:CPU took
    28-38 ms for a 256 -> 128 1x1 convolution at 32x28x28 and 5.6-8.4 ms for the same
    product as a dot (torch: 14 ms). That includes one-output 1x1 convolutions: as
    shifted sums XLA stored one slice per input channel before summing them
    (SequentialPolarizedSelfAttention eval at 8x64x56x56: 6.2-7.0 -> 3.5-4.1 ms as a dot).

    A stride-1 convolution whose input has fewer spatial positions than its kernel has taps
    (a 3x3 convolution on a 2x2 or 1x8 map, as in a ResNet's last stage on small images)
    runs as one matrix product over the stacked taps (im2col; the patches are tiny there).
    XLA:CPU swaps the operands of such a convolution, and the swapped form ran a 3x3
    512 -> 512 convolution at 16x2x2 in 92 ms, against 2.1 ms as a product (training step
    177 -> 7.5 ms). Every other convolution goes to ``jax.lax.conv_general_dilated`` unchanged.
    """
    *window, in_channels, out_channels = rhs.shape
    spatial = len(window)
    # Channels-last, ungrouped, stride 1, explicit non-negative padding: the forms rewritten here.
    simple = (
        spatial in _CHANNELS_LAST
        and feature_group_count == 1
        and not isinstance(padding, str)
        and all(s == 1 for s in window_strides)
        and all(d == 1 for d in (lhs_dilation or ()))
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST[spatial])
    )
    dilation = tuple(rhs_dilation or (1,) * spatial)
    if simple:
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        sizes = _output_sizes(lhs.shape[1:-1], window, padding, dilation)
        simple = min(min(pair) for pair in padding) >= 0 and min(sizes) >= 1  # else lax crops or raises
    pointwise = simple and math.prod(window) == 1 and not any(map(any, padding))
    few_terms = simple and not pointwise and math.prod(window) * in_channels <= SHIFTED_SUM_MAX_TERMS
    smaller_than_kernel = simple and math.prod(lhs.shape[1:-1]) < math.prod(window)
    tiny = few_terms and out_channels == 1
    few_outputs = few_terms and out_channels <= SHIFTED_SUM_MAX_OUTPUTS and not smaller_than_kernel
    if tiny or few_outputs:
        result_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
        wide = jnp.promote_types(result_dtype, jnp.float32)
        conv = _tiny_conv if tiny else _few_output_conv
        return conv(lhs.astype(wide), rhs.astype(wide), padding, dilation).astype(result_dtype)
    if pointwise or smaller_than_kernel:
        patches = lhs if pointwise else jnp.concatenate(list(_taps(_pad(lhs, padding), window, dilation, sizes)), -1)
        return jax.lax.dot_general(patches, rhs.reshape(-1, out_channels), (((lhs.ndim - 1,), (0,)), ((), ())),
                                   precision=precision, preferred_element_type=preferred_element_type)
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, precision=precision, preferred_element_type=preferred_element_type, **kwargs,
    )


def _output_sizes(sizes: Sequence[int], window: Sequence[int], padding: Sequence[tuple[int, int]],
                  dilation: Sequence[int]) -> list[int]:
    return [n + lo + hi - d * (k - 1) for n, k, (lo, hi), d in zip(sizes, window, padding, dilation)]


def _pad(x: jax.Array, padding: Sequence[tuple[int, int]]) -> jax.Array:
    return jnp.pad(x, [(0, 0), *padding, (0, 0)])


def _taps(padded: jax.Array, window: Sequence[int], dilation: Sequence[int], out_sizes: Sequence[int]
          ) -> Iterator[jax.Array]:
    """For each kernel tap, in the kernel's row-major order, the slice of ``padded`` it multiplies."""
    for offset in itertools.product(*map(range, window)):
        start = [o * d for o, d in zip(offset, dilation)]
        stop = [b + n for b, n in zip(start, out_sizes)]
        yield jax.lax.slice(padded, (0, *start, 0), (padded.shape[0], *stop, padded.shape[-1]))


def _shifted_sum(padded: jax.Array, kernel: jax.Array, dilation: Sequence[int], out_sizes: Sequence[int]) -> jax.Array:
    """``sum over taps t and input channels c of patch_t[..., c] * kernel[t, c, :]``, where
    ``patch_t`` is the slice of ``padded`` that tap ``t`` multiplies."""
    total = None
    taps = _taps(padded, kernel.shape[:-2], dilation, out_sizes)
    for offset, patch in zip(itertools.product(*map(range, kernel.shape[:-2])), taps):
        for channel in range(kernel.shape[-2]):
            term = patch[..., channel : channel + 1] * kernel[(*offset, channel)]
            total = term if total is None else total + term
    return total


def _lax_conv(x: jax.Array, kernel: jax.Array, padding: tuple, dilation: tuple) -> jax.Array:
    spatial = kernel.ndim - 2
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _CHANNELS_LAST[spatial])
    return jax.lax.conv_general_dilated(x, kernel, (1,) * spatial, padding, rhs_dilation=dilation,
                                        dimension_numbers=numbers)


def _shifted_conv(x: jax.Array, kernel: jax.Array, padding: tuple, dilation: tuple) -> jax.Array:
    out_sizes = _output_sizes(x.shape[1:-1], kernel.shape[:-2], padding, dilation)
    return _shifted_sum(_pad(x, padding), kernel, dilation, out_sizes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _tiny_conv(x: jax.Array, kernel: jax.Array, padding: tuple, dilation: tuple) -> jax.Array:
    return _shifted_conv(x, kernel, padding, dilation)


def _tiny_conv_fwd(x, kernel, padding, dilation):
    return _tiny_conv(x, kernel, padding, dilation), (x, kernel)


def _tiny_conv_bwd(padding, dilation, residuals, grad):
    # XLA's own transposed convolutions. Autodiff of the slices pads and adds one full-size
    # array per tap, and the gradients written as shifted sums were slower too (CBAM training
    # step at 32x256x28x28: 36 ms this way, 60 ms as shifted sums).
    return jax.vjp(functools.partial(_lax_conv, padding=padding, dilation=dilation), *residuals)[1](grad)


_tiny_conv.defvjp(_tiny_conv_fwd, _tiny_conv_bwd)


def _few_output_conv(x: jax.Array, kernel: jax.Array, padding: tuple, dilation: tuple) -> jax.Array:
    """Shifted sums when evaluated; XLA's convolution, forward and backward, when differentiated."""
    reference = functools.partial(_lax_conv, padding=padding, dilation=dilation)
    # Materialised: read by the next layer's shifted slices, the sums were recomputed in each
    # (three 4 -> 4 convolutions in a row at 8x56x56: 1.9-2.8 ms, materialised 0.9-1.2 ms).
    shifted = lambda v, k: materialized(_shifted_conv(v, k, padding, dilation))  # noqa: E731
    return differentiated_as(reference)(shifted)(x, kernel)


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
        conv_general_dilated=conv_general_dilated,
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


class BatchNorm(nnx.Module):
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
        return y.astype(compute_dtype(self.dtype, x, self.scale[...]))


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``relu6(x + 3) / 6``, as torch's ``Hardsigmoid`` and Coordinate Attention's ``h_sigmoid``."""
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
    return x * hard_sigmoid(x)


Activation = Callable[[jax.Array], jax.Array]
