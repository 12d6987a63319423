"""``attn_flax.compiler_options``: the CPU options take effect, change no result, and degrade to none."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_flax
from attn_flax import cpu_kernels as compiler
from parity.verify.tolerances import tolerance


def _conv(x, w):  # large enough (32 channels) for XLA:CPU to hand it to YNNPACK by default
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_cpu_options_keep_convolutions_on_xla_and_change_no_result():
    options = attn_flax.compiler_options()
    assert options == compiler.CPU_OPTIONS and options is not compiler.CPU_OPTIONS
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)
    tuned = jax.jit(_conv, compiler_options=options).lower(x, w).compile()
    assert "ynn_fusion" not in tuned.as_text() and " convolution(" in tuned.as_text()
    # two kernels, two summation orders: judged like the float32 parity checks (measured 3.1e-5
    # against outputs up to 58; a wrong tap or channel is O(1) off)
    expected = jax.jit(_conv)(x, w)
    tol = tolerance("compiler_options", "eval")
    np.testing.assert_allclose(tuned(x, w), expected, rtol=tol.rtol, atol=tol.atol * max(1.0, float(jnp.abs(expected).max())))


def test_no_options_off_cpu_or_with_the_cpu_kernels_off():
    assert attn_flax.compiler_options("gpu") == {} and attn_flax.compiler_options("tpu") == {}
    with attn_flax.set_cpu_kernels(False):
        assert attn_flax.compiler_options("cpu") == {}


def test_an_option_this_xla_rejects_gives_no_options_and_a_warning(monkeypatch):
    monkeypatch.setitem(compiler.CPU_OPTIONS, "xla_cpu_experimental_ynn_fusion_type", "NOT_A_FUSION_TYPE")
    compiler._cpu_accepts_options.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="rejects"):
            assert attn_flax.compiler_options("cpu") == {}
    finally:
        compiler._cpu_accepts_options.cache_clear()
