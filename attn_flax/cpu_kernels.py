"""CPU kernels: the few XLA:CPU rewrites that attn_flax keeps, in one switchable layer.

Every module of ``attn_flax`` states its mathematics with standard JAX operations. Where
XLA:CPU runs a formulation markedly slower than an equivalent one, the module calls a named
operation from this file instead of the plain operation; the operation carries both forms:

* the **plain** form: the standard operation (``jax.lax.conv_general_dilated``, ``jax.vmap``,
  or the module's own function, passed in as ``plain``);
* the **CPU** form: the rewrite, chosen with ``jax.lax.platform_dependent`` when the program
  is *lowered*, so a program lowered for GPU or TPU, on any machine (``jax.export`` from a
  CPU host included), holds only the plain form.

Both forms compute the same function; gradients and forward-mode derivatives exist for both
(no ``custom_vjp`` here: the derivative rules are ``custom_jvp`` ones). ``docs/benchmarks.md``
lists each kernel with its measured gain; ``tests/test_cpu_kernels.py`` checks each against
the plain form and, through the parity harness, against torch.

The switch, like timm's ``set_fused_attn``::

    attn_flax.set_cpu_kernels(False)          # process-wide
    with attn_flax.set_cpu_kernels(False):    # or for a block
        ...
    ATTN_FLAX_CPU_KERNELS=0 python train.py   # or from the environment

It is read when a function is traced: a function already compiled by ``jax.jit`` keeps the
choice it was traced with.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

ENV_VAR = "ATTN_FLAX_CPU_KERNELS"
_OFF = ("0", "false", "no", "off")
_enabled = os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF

# Names of the kernels, for the docs and for tests that plant an error in each.
KERNELS = ("conv_general_dilated", "map_images", "gate_and_channel_pool", "group_similarity", "shuffle_attention")


_disabled: frozenset[str] = frozenset()  # kernels turned off one by one


def cpu_kernels_enabled(kernel: str | None = None) -> bool:
    """Whether functions traced now take the CPU kernels (or the one named) when lowered for CPU."""
    return _enabled and (kernel is None or _check_kernel(kernel) not in _disabled)


def _check_kernel(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"unknown CPU kernel {name!r}; the kernels are: {', '.join(KERNELS)}")
    return name


class set_cpu_kernels:
    """Turn the CPU kernels on or off for the process; as a context manager, for a block.

    ``set_cpu_kernels(False)`` takes effect at once; ``with set_cpu_kernels(False): ...``
    restores the previous setting on exit. ``kernels=("map_images", ...)`` switches only
    those (names in ``KERNELS``), e.g. to measure what one of them gains.
    """

    def __init__(self, enabled: bool, *, kernels: tuple[str, ...] | None = None):
        global _enabled, _disabled
        if not isinstance(enabled, bool):
            raise ValueError(f"`enabled` must be True or False, got {enabled!r}")
        self._previous = (_enabled, _disabled)
        if kernels is None:
            _enabled = enabled
        else:
            names = {_check_kernel(k) for k in ((kernels,) if isinstance(kernels, str) else kernels)}
            _disabled = _disabled - names if enabled else _disabled | names

    def __enter__(self) -> "set_cpu_kernels":
        return self

    def __exit__(self, *exc: Any) -> None:
        global _enabled, _disabled
        _enabled, _disabled = self._previous


def _on_cpu(name: str, plain: Callable[..., Any], cpu: Callable[..., Any], *args: Any) -> Any:
    """``cpu(*args)`` in a program lowered for CPU, ``plain(*args)`` elsewhere or with the kernel off."""
    if not _enabled or name in _disabled:
        return plain(*args)
    return _platform_dependent(name, args, cpu, plain)


def _platform_dependent(name: str, args: tuple, cpu: Callable[..., Any], plain: Callable[..., Any]) -> Any:
    # A seam for tests, which plant an error in the CPU form of the kernel ``name``.
    return jax.lax.platform_dependent(*args, cpu=cpu, default=plain)


def kernels_used(function: Callable[..., Any], *args: Any) -> set[str]:
    """The names of the kernels that ``function(*args)`` calls, found by tracing it once."""
    global _platform_dependent
    used: set[str] = set()
    original = _platform_dependent

    def record(name: str, args: tuple, cpu: Callable[..., Any], plain: Callable[..., Any]) -> Any:
        used.add(name)
        return original(name, args, cpu, plain)

    _platform_dependent = record
    try:
        with set_cpu_kernels(True):
            jax.make_jaxpr(function)(*args)
    finally:
        _platform_dependent = original
    return used


def _evaluated_as(fast: Callable[..., Any], reference: Callable[..., Any], *, fast_primal: bool) -> Callable[..., Any]:
    """``fast`` when evaluated; differentiated (both modes) as ``reference``.

    ``fast_primal``: under differentiation the value still comes from ``fast`` (for functions
    whose tangents need none of ``reference``'s intermediates, e.g. a convolution); otherwise
    from ``reference``, whose tangents reuse its own intermediates.
    """
    wrapped = jax.custom_jvp(fast)

    @wrapped.defjvp
    def _jvp(primals: tuple, tangents: tuple) -> tuple:
        value, tangent = jax.jvp(reference, primals, tangents)
        return (fast(*primals) if fast_primal else value), tangent

    return wrapped


def materialized(arrays: Any) -> Any:
    """``arrays`` unchanged, computed into buffers of their own (a conditional's result is one).

    XLA:CPU fuses a small producer into every loop that reads it; ``optimization_barrier`` is
    removed before fusion there, a conditional's result is not.
    """
    first = jax.tree.leaves(arrays)[0]
    if first.size == 0:
        return arrays
    probe = first.ravel()[0]
    return jax.lax.cond(probe == probe, lambda t: t, lambda t: jax.tree.map(lambda a: a + 0, t), arrays)


# --- convolutions --------------------------------------------------------------------------------

# At most this many multiply-adds per output value and this many outputs: shifted sums.
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
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``jax.lax.conv_general_dilated``; on CPU, three forms of convolution rewritten.

    Channels-last, ungrouped, stride-1 convolutions with explicit non-negative padding:

    * one output channel and at most ``SHIFTED_SUM_MAX_TERMS`` multiply-adds per output
      (CBAM's 7x7 gate, ECA's 1-D convolution): a sum of shifted slices, one fused pass;
    * up to ``SHIFTED_SUM_MAX_OUTPUTS`` outputs (BAM's dilated 3x3 convolutions): the same
      when evaluated, each result materialised; XLA's convolution when differentiated;
    * 1x1 unpadded: a matrix product over the channel axis;
    * fewer input positions than kernel taps (a ResNet's last stage on small images): one
      product over the stacked taps (im2col).

    Every other convolution, and every convolution off CPU, is ``jax.lax.conv_general_dilated``.
    Gradients are always XLA's transposed convolutions.
    """
    plain = functools.partial(
        jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **kwargs)
    cpu = _cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, precision, preferred_element_type)
    if cpu is None:
        return plain(lhs, rhs)
    return _on_cpu("conv_general_dilated", plain, cpu, lhs, rhs)


def _cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, precision, preferred_element_type) -> Callable[..., jax.Array] | None:
    """The CPU form for these shapes, or ``None`` where XLA's convolution is kept."""
    *window, in_channels, out_channels = rhs.shape
    spatial = len(window)
    simple = (
        spatial in _CHANNELS_LAST
        and feature_group_count == 1
        and not isinstance(padding, str)
        and all(s == 1 for s in window_strides)
        and all(d == 1 for d in (lhs_dilation or ()))
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST[spatial])
    )
    if not simple:
        return None
    dilation = tuple(rhs_dilation or (1,) * spatial)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    sizes = _output_sizes(lhs.shape[1:-1], window, padding, dilation)
    if min(min(pair) for pair in padding) < 0 or min(sizes) < 1:
        return None
    pointwise = math.prod(window) == 1 and not any(map(any, padding))
    few_terms = not pointwise and math.prod(window) * in_channels <= SHIFTED_SUM_MAX_TERMS
    smaller_than_kernel = math.prod(lhs.shape[1:-1]) < math.prod(window)
    if few_terms and (out_channels == 1 or (out_channels <= SHIFTED_SUM_MAX_OUTPUTS and not smaller_than_kernel)):
        reference = functools.partial(_lax_conv, padding=padding, dilation=dilation)
        if out_channels == 1:
            fast = _evaluated_as(functools.partial(_shifted_conv, padding=padding, dilation=dilation),
                                 reference, fast_primal=True)
        else:  # several consumers of the sums recompute them when differentiated
            fast = _evaluated_as(lambda x, k: materialized(_shifted_conv(x, k, padding, dilation)),
                                 reference, fast_primal=False)

        def shifted(x: jax.Array, kernel: jax.Array) -> jax.Array:
            result_dtype = preferred_element_type or jnp.result_type(x, kernel)
            wide = jnp.promote_types(result_dtype, jnp.float32)
            return fast(x.astype(wide), kernel.astype(wide)).astype(result_dtype)

        return shifted
    if pointwise or smaller_than_kernel:
        def as_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
            patches = x if pointwise else jnp.concatenate(list(_taps(_pad(x, padding), window, dilation, sizes)), -1)
            return jax.lax.dot_general(patches, kernel.reshape(-1, out_channels), (((x.ndim - 1,), (0,)), ((), ())),
                                       precision=precision, preferred_element_type=preferred_element_type)

        return as_product
    return None


def _output_sizes(sizes: Sequence[int], window: Sequence[int], padding: Sequence[tuple[int, int]],
                  dilation: Sequence[int]) -> list[int]:
    return [n + lo + hi - d * (k - 1) for n, k, (lo, hi), d in zip(sizes, window, padding, dilation)]


def _pad(x: jax.Array, padding: Sequence[tuple[int, int]]) -> jax.Array:
    return jnp.pad(x, [(0, 0), *padding, (0, 0)])


def _taps(padded: jax.Array, window: Sequence[int], dilation: Sequence[int], out_sizes: Sequence[int]):
    """For each kernel tap, in the kernel's row-major order, the slice of ``padded`` it multiplies."""
    for offset in itertools.product(*map(range, window)):
        start = [o * d for o, d in zip(offset, dilation)]
        stop = [b + n for b, n in zip(start, out_sizes)]
        yield jax.lax.slice(padded, (0, *start, 0), (padded.shape[0], *stop, padded.shape[-1]))


def _shifted_conv(x: jax.Array, kernel: jax.Array, padding: tuple, dilation: tuple) -> jax.Array:
    """``sum over taps t and input channels c of patch_t[..., c] * kernel[t, c, :]``."""
    out_sizes = _output_sizes(x.shape[1:-1], kernel.shape[:-2], padding, dilation)
    total = None
    offsets = itertools.product(*map(range, kernel.shape[:-2]))
    for offset, patch in zip(offsets, _taps(_pad(x, padding), kernel.shape[:-2], dilation, out_sizes)):
        for channel in range(kernel.shape[-2]):
            term = patch[..., channel : channel + 1] * kernel[(*offset, channel)]
            total = term if total is None else total + term
    return total


def _lax_conv(x: jax.Array, kernel: jax.Array, padding: tuple, dilation: tuple) -> jax.Array:
    spatial = kernel.ndim - 2
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _CHANNELS_LAST[spatial])
    return jax.lax.conv_general_dilated(x, kernel, (1,) * spatial, padding, rhs_dilation=dilation,
                                        dimension_numbers=numbers)


# --- attention -----------------------------------------------------------------------------------

def map_images(function: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
    """``function`` applied to each image (leading axis) of ``arrays``, results stacked.

    Plain: ``jax.vmap`` (the whole batch at once). CPU: ``jax.lax.map``, one image after the
    other, so that one image's attention matrix and projections stay in cache.
    """
    return _on_cpu("map_images", jax.vmap(function), lambda *a: jax.lax.map(lambda image: function(*image), a), *arrays)


def gate_and_channel_pool(plain: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
                          x: jax.Array, gate: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``plain(x, gate)`` = ``(x * gate, [max_c, mean_c] of x * gate)`` for a ``(N, 1, 1, C)`` gate.

    CPU, when evaluated: the pooled maps without storing the product (the mean as a product of
    ``x`` with the gate, the maximum over flattened positions); ``plain`` when differentiated.
    """
    def fast(x: jax.Array, gate: jax.Array) -> tuple[jax.Array, jax.Array]:
        n, h, w, channels = x.shape
        wide = jnp.promote_types(x.dtype, jnp.float32)
        total = jnp.einsum("nhwc,nc->nhw", x, gate[:, 0, 0], preferred_element_type=wide)
        peak = (x.reshape(n, h * w, channels) * gate.reshape(n, 1, channels)).max(-1).reshape(n, h, w)
        return x * gate, jnp.stack([peak, (total / channels).astype(x.dtype)], axis=-1)

    return _on_cpu("gate_and_channel_pool", plain, _evaluated_as(fast, plain, fast_primal=False), x, gate)


def group_similarity(plain: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, mean: jax.Array,
                     groups: int) -> jax.Array:
    """``plain(x, mean)`` = ``t[n, p, g] = sum_k x[n, p, g, k] * mean[n, g, k]``, ``x`` (N, P, C), ``mean`` (N, C).

    CPU, when evaluated: one matrix product per sample with a block-diagonal ``(C, G)`` matrix,
    reading ``x`` once in its own layout; ``plain`` when differentiated.
    """
    def block_product(x: jax.Array, mean: jax.Array) -> jax.Array:
        group_of_channel = jnp.repeat(jnp.eye(groups, dtype=mean.dtype), mean.shape[1] // groups, axis=0)
        return jax.lax.dot_general(x, mean[:, :, None] * group_of_channel, (((2,), (1,)), ((0,), (0,))),
                                   preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))

    return _on_cpu("group_similarity", plain, _evaluated_as(block_product, plain, fast_primal=False), x, mean)


def shuffle_attention(plain: Callable[..., jax.Array], x: jax.Array, params: tuple[jax.Array, ...],
                      groups: int, eps: float) -> jax.Array:
    """``plain(x, params)``: Shuffle Attention on ``(N, H, W, C)``; ``params`` are ``cweight, cbias,
    sweight, sbias, gn_scale, gn_bias``, each ``(C/2G,)``.

    CPU, when evaluated: one gating pass with per-(N, C) coefficients; ``plain`` when differentiated. A channel-branch channel is gated by
    ``sigmoid(cweight * mean + cbias)``, a spatial-branch one by ``sigmoid(sweight * (gn_scale *
    (x - mean) * rstd + gn_bias) + sbias)``; both are ``sigmoid(slope * (x - centre) + offset)``.
    The channel shuffle is an interleave of the two gated halves.
    """
    def fused(x: jax.Array, params: tuple[jax.Array, ...]) -> jax.Array:
        cweight, cbias, sweight, sbias, gn_scale, gn_bias = params
        c = x.shape[-1]
        mean = x.mean((1, 2))
        rstd = jax.lax.rsqrt(jnp.square(x - mean[:, None, None, :]).mean((1, 2)) + eps)
        channel_branch = jnp.arange(c) % (c // groups) < c // (2 * groups)
        per_channel = lambda v: jnp.tile(v, 2 * groups)  # noqa: E731
        slope = jnp.where(channel_branch, 0.0, per_channel(sweight * gn_scale) * rstd)
        centre = jnp.where(channel_branch, 0.0, mean)
        offset = jnp.where(channel_branch, per_channel(cweight) * mean + per_channel(cbias),
                           per_channel(sweight * gn_bias + sbias))
        slope, centre, offset = materialized((slope, centre, offset))
        half = c // 2

        def gated(part: slice) -> jax.Array:
            v = x[..., part]
            return v * jax.nn.sigmoid(slope[:, None, None, part] * (v - centre[:, None, None, part])
                                      + offset[:, None, None, part])

        return jnp.stack([gated(slice(0, half)), gated(slice(half, None))], axis=-1).reshape(x.shape)

    return _on_cpu("shuffle_attention", plain, _evaluated_as(fused, plain, fast_primal=False), x, params)


# --- compiler options ----------------------------------------------------------------------------

# XLA:CPU's default library fusions without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """Options for ``jax.jit(..., compiler_options=...)`` that run convolutions on XLA's own CPU kernels.

    A whole-program setting, so the caller passes it to the ``jax.jit`` that compiles a step::

        step = jax.jit(train_step, compiler_options=attn_flax.compiler_options())

    Args:
        backend: the platform the program is compiled for (``"cpu"``, ``"gpu"``, ``"tpu"``);
            default ``jax.default_backend()``.

    Returns:
        ``CPU_OPTIONS`` (a new dict) for CPU with the CPU kernels on; ``{}`` otherwise, and
        ``{}`` with a warning where this jaxlib's XLA does not know the option.
    """
    platform = jax.default_backend() if backend is None else backend
    if platform != "cpu" or not _enabled:
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
