"""The CPU forms of ``attn_flax.cpu_kernels.conv_general_dilated`` are the same convolution.

Compared in float64 against ``jax.lax.conv_general_dilated`` (forward, input and kernel
gradients), so any indexing mistake shows as an O(1) error, not rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attn_flax
from attn_flax.cpu_kernels import SHIFTED_SUM_MAX_OUTPUTS, SHIFTED_SUM_MAX_TERMS, _cpu_conv
from attn_flax.layers import Conv2d

CHANNELS_LAST = {4: ("NHWC", "HWIO", "NHWC"), 3: ("NWC", "WIO", "NWC")}

CASES = [  # input shape, kernel shape, padding, dilation
    ((2, 9, 11, 2), (7, 7, 2, 1), ((3, 3), (3, 3)), (1, 1)),  # CBAM's spatial gate
    ((2, 9, 11, 3), (3, 3, 3, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated
    ((2, 8, 8, 2), (3, 3, 2, 1), ((0, 1), (2, 0)), (1, 1)),  # asymmetric padding
    ((2, 8, 8, 1), (1, 1, 1, 1), ((1, 1), (1, 1)), (1, 1)),  # padding wider than the kernel
    ((3, 10, 1), (5, 1, 1), ((2, 2),), (1,)),  # ECA's Conv1d
]


def _conv_pair(shape, kernel_shape, padding, dilation, strides=None):
    strides = strides or (1,) * (len(shape) - 2)
    numbers = jax.lax.conv_dimension_numbers(shape, kernel_shape, CHANNELS_LAST[len(shape)])

    def reference(x, k):
        return jax.lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers)

    def ours(x, k):  # the CPU form, or XLA's convolution where the kernel keeps it
        cpu = _cpu_conv(x, k, strides, padding, None, dilation, numbers, 1, None, None)
        return reference(x, k) if cpu is None else cpu(x, k)

    return reference, ours


def _assert_float64_equal(reference, ours, shape, kernel_shape, seed, path=None):
    """``ours`` equals ``reference`` in float64 (forward, input and kernel gradients) and
    runs without a convolution (through ``path``, a jaxpr primitive, when given)."""
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal(shape))
        k = jnp.asarray(rng.standard_normal(kernel_shape))
        jaxpr = str(jax.make_jaxpr(ours)(x, k))
        assert "conv_general_dilated" not in jaxpr and (path is None or path in jaxpr)
        expected, expected_vjp = jax.vjp(reference, x, k)
        got, got_vjp = jax.vjp(ours, x, k)
        assert got.dtype == jnp.float64 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        cotangent = jnp.asarray(rng.standard_normal(expected.shape))
        for g, e in zip(got_vjp(cotangent), expected_vjp(cotangent)):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, kernel_shape, padding, dilation", CASES)
def test_shifted_sums_equal_the_convolution_and_its_gradients(shape, kernel_shape, padding, dilation):
    assert np.prod(kernel_shape[:-1]) <= SHIFTED_SUM_MAX_TERMS  # every case takes the shifted-sum path
    reference, ours = _conv_pair(shape, kernel_shape, padding, dilation)
    _assert_float64_equal(reference, ours, shape, kernel_shape, seed=0)


@pytest.mark.parametrize("strides, padding, outputs", [
    ((2, 2), ((1, 1), (1, 1)), 1),  # strided
    ((1, 1), ((-1, 1), (0, 0)), 1),  # cropping
    ((1, 1), ((1, 1), (1, 1)), SHIFTED_SUM_MAX_OUTPUTS + 1),  # more output channels than shifted sums take
])
def test_strided_cropping_and_multi_output_convolutions_go_to_lax(strides, padding, outputs):
    shape, kernel_shape = (1, 6, 6, 2), (3, 3, 2, outputs)
    reference, ours = _conv_pair(shape, kernel_shape, padding, (1, 1), strides)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    k = jnp.asarray(np.random.default_rng(2).standard_normal(kernel_shape), jnp.float32)
    assert "conv_general_dilated" in str(jax.make_jaxpr(ours)(x, k))
    np.testing.assert_array_equal(ours(x, k), reference(x, k))


FEW_OUTPUT_CASES = [  # input shape, kernel shape, padding, dilation
    ((2, 9, 11, 4), (3, 3, 4, 4), ((4, 4), (4, 4)), (4, 4)),  # BAM's dilated 4 -> 4 convolutions
    ((2, 8, 7, 3), (3, 3, 3, 2), ((0, 1), (2, 0)), (1, 1)),  # asymmetric padding
    ((3, 10, 2), (5, 2, 3), ((2, 2),), (1,)),  # 1-D
]


@pytest.mark.parametrize("shape, kernel_shape, padding, dilation", FEW_OUTPUT_CASES)
def test_few_output_convolutions_evaluate_as_shifted_sums_and_differentiate_as_lax(shape, kernel_shape, padding, dilation):
    assert 1 < kernel_shape[-1] <= SHIFTED_SUM_MAX_OUTPUTS and np.prod(kernel_shape[:-1]) <= SHIFTED_SUM_MAX_TERMS
    reference, ours = _conv_pair(shape, kernel_shape, padding, dilation)
    _assert_float64_equal(reference, ours, shape, kernel_shape, seed=6)  # evaluated: no convolution
    x, k = np.ones(shape, "f4"), np.ones(kernel_shape, "f4")
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda a, b: jax.vjp(ours, a, b))(x, k))


def _lowered_for_cpu(function, *args) -> str:
    return jax.jit(function).lower(*args).as_text()


def test_only_tiny_convolutions_take_the_shifted_sum_path():
    x = jnp.ones((1, 8, 8, 64))
    big = Conv2d(64, 1, 3, padding=1, rngs=nnx.Rngs(0))  # 576 multiply-adds per output
    assert "stablehlo.convolution" in _lowered_for_cpu(lambda v: big(v), x)
    cbam = attn_flax.CBAM(64, rngs=nnx.Rngs(0))
    assert "stablehlo.convolution" not in _lowered_for_cpu(lambda v: cbam.sa(v), x)
    with attn_flax.set_cpu_kernels(False):
        assert "stablehlo.convolution" in _lowered_for_cpu(lambda v: cbam.sa(v), x)


def test_bfloat16_computes_in_float32_and_returns_bfloat16():
    conv = Conv2d(2, 1, 7, padding=3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 9, 9, 2)), jnp.float32)
    out = conv(x)
    assert out.dtype == jnp.bfloat16
    exact = Conv2d(2, 1, 7, padding=3, rngs=nnx.Rngs(0))(x.astype(jnp.bfloat16).astype(jnp.float32))
    # the only difference is the final rounding to bfloat16 (relative 2**-8 = 3.9e-3) and the
    # bfloat16 kernel; 1e-2 leaves room for both but not for a sum accumulated in bfloat16 (98 terms)
    np.testing.assert_allclose(out.astype(jnp.float32), exact, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shape, outputs", [((2, 5, 7, 16), 8), ((3, 9, 4), 5), ((2, 6, 5, 16), 1)])  # 1: BAM's last
def test_pointwise_convolutions_run_as_one_matrix_product(shape, outputs):
    kernel_shape = (1,) * (len(shape) - 2) + (shape[-1], outputs)
    padding = ((0, 0),) * (len(shape) - 2)
    reference, ours = _conv_pair(shape, kernel_shape, padding, (1,) * (len(shape) - 2))
    _assert_float64_equal(reference, ours, shape, kernel_shape, seed=4, path="dot_general")
    padded = ((1, 1),) * (len(shape) - 2)  # padding makes it a convolution (or shifted sums) again
    _, padded_conv = _conv_pair(shape, kernel_shape, padded, (1,) * (len(shape) - 2))
    assert "dot_general" not in str(jax.make_jaxpr(padded_conv)(np.ones(shape, "f4"), np.ones(kernel_shape, "f4")))


@pytest.mark.parametrize("shape, kernel_shape, padding, dilation", [
    ((2, 2, 2, 5), (3, 3, 5, 4), ((1, 1), (1, 1)), (1, 1)),  # a ResNet's last stage on a small image
    ((2, 1, 1, 3), (3, 3, 3, 2), ((1, 1), (1, 1)), (1, 1)),  # only the centre tap sees the input
    ((1, 1, 8, 2), (3, 3, 2, 3), ((1, 1), (2, 0)), (1, 1)),  # 8 positions, 9 taps; asymmetric padding
    ((2, 2, 3, 2), (3, 3, 2, 2), ((2, 2), (2, 2)), (2, 2)),  # dilated
    ((3, 4, 2), (5, 2, 3), ((2, 2),), (1,)),  # 1-D
])
def test_inputs_smaller_than_the_kernel_run_as_one_product_over_the_taps(shape, kernel_shape, padding, dilation):
    assert np.prod(shape[1:-1]) < np.prod(kernel_shape[:-2])
    reference, ours = _conv_pair(shape, kernel_shape, padding, dilation)
    _assert_float64_equal(reference, ours, shape, kernel_shape, seed=5, path="dot_general")
    as_large = (shape[0], 3, 3, shape[-1])  # as many positions as taps: a convolution again
    wide_kernel = (3, 3, shape[-1], SHIFTED_SUM_MAX_OUTPUTS + 1)  # (with few outputs: shifted sums)
    _, same_size = _conv_pair(as_large, wide_kernel, ((1, 1), (1, 1)), (1, 1))
    assert "conv_general_dilated" in str(jax.make_jaxpr(same_size)(np.ones(as_large, "f4"), np.ones(wide_kernel, "f4")))


def test_few_output_convolutions_accept_an_empty_batch():
    conv = Conv2d(4, 4, 3, padding=4, dilation=4, rngs=nnx.Rngs(0))  # BAM's 4 -> 4 dilated convolution
    assert conv(jnp.ones((0, 9, 9, 4))).shape == (0, 9, 9, 4)
