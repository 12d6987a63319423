"""The CPU kernels' forms and derivative rules (ShuffleAttention, SGE, CBAM, CrissCrossAttention)
against autodiff of an independent plain formulation, and forward mode on every module.

With the CPU kernels on, these modules run a reformulation (``attn_flax.cpu_kernels``), some
evaluated one way and differentiated another (``custom_jvp``). Here each module, with the
kernels on and off, is compared in float64 with ``jax.grad`` of the module written out branch
by branch, as the paper and the torch twin describe it, for the output, the input gradient and
every parameter gradient. Inputs carry a mean offset, so that a centring mistake in a backward
shows, and the group counts include an odd one and one channel per half-group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attn_flax
from attn_flax.cpu_kernels import _evaluated_as
from parity.verify.registry import SPECS
from parity.verify.tolerances import tolerance

ATOL = 1e-10  # float64: both sides are exact up to rounding


def _plain_shuffle_attention(module: attn_flax.ShuffleAttention, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    g = module.groups
    halves = x.reshape(b, h, w, g, 2, c // (2 * g))
    x_channel, x_spatial = halves[..., 0, :], halves[..., 1, :]
    flat = lambda p: p[...].reshape(-1)
    channel_gate = jax.nn.sigmoid(flat(module.cweight) * x_channel.mean((1, 2), keepdims=True) + flat(module.cbias))
    mean = x_spatial.mean((1, 2), keepdims=True)
    var = ((x_spatial - mean) ** 2).mean((1, 2), keepdims=True)
    normed = (x_spatial - mean) / jnp.sqrt(var + module.gn.epsilon) * module.gn.scale[...] + module.gn.bias[...]
    spatial_gate = jax.nn.sigmoid(flat(module.sweight) * normed + flat(module.sbias))
    y = jnp.stack([x_channel * channel_gate, x_spatial * spatial_gate], axis=-2).reshape(b, h, w, c)
    return y.reshape(b, h, w, 2, c // 2).swapaxes(3, 4).reshape(b, h, w, c)


def _plain_sge(module: attn_flax.SGE, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    grouped = x.reshape(b, h, w, module.groups, c // module.groups)
    t = (grouped * grouped.mean((1, 2), keepdims=True)).sum(-1)
    t = t - t.mean((1, 2), keepdims=True)
    t = t / (t.std((1, 2), ddof=1, keepdims=True) + 1e-5)
    gate = jax.nn.sigmoid(t * module.weight[...] + module.bias[...])
    return (grouped * gate[..., None]).reshape(b, h, w, c)


def _plain_cbam(module: attn_flax.CBAM, x: jax.Array) -> jax.Array:
    out = x * module.ca(x)
    pooled = jnp.concatenate([out.max(-1, keepdims=True), out.mean(-1, keepdims=True)], axis=-1)
    return out * module.sa.from_pooled(pooled) + x


def _plain_criss_cross(module: attn_flax.CrissCrossAttention, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    query, key, value = module.query_conv(x), module.key_conv(x), module.value_conv(x)
    energy_col = jnp.einsum("nhwc,ngwc->nhwg", query, key) - jnp.where(jnp.eye(h, dtype=bool), jnp.inf, 0.0)[:, None]
    energy_row = jnp.einsum("nhwc,nhgc->nhwg", query, key)
    attention = jax.nn.softmax(jnp.concatenate([energy_col, energy_row], axis=-1), axis=-1)
    out = jnp.einsum("nhwg,ngwc->nhwc", attention[..., :h], value) + jnp.einsum("nhwg,nhgc->nhwc", attention[..., h:], value)
    return module.gamma[...] * out + x


def _randomized(module: nnx.Module, seed: int) -> nnx.Module:
    graph, state = nnx.split(module)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [jax.random.normal(k, leaf.shape, jnp.float64) for k, leaf in zip(keys, leaves)]
    return nnx.merge(graph, jax.tree.unflatten(tree, leaves))


CASES = [
    ("ShuffleAttention", _plain_shuffle_attention, 32, {"groups": 4}, (2, 5, 6)),
    ("ShuffleAttention", _plain_shuffle_attention, 48, {"groups": 3}, (2, 4, 7)),  # odd group count
    ("ShuffleAttention", _plain_shuffle_attention, 32, {"groups": 16}, (1, 6, 5)),  # one channel per half-group
    ("SGE", _plain_sge, 32, {"groups": 4}, (2, 5, 6)),
    ("SGE", _plain_sge, 30, {"groups": 5}, (3, 7, 4)),
    ("CBAM", _plain_cbam, 32, {"reduction": 4}, (2, 9, 7)),
    ("CBAM", _plain_cbam, 24, {"reduction": 8, "kernel_size": 3}, (3, 5, 6)),
    ("CrissCrossAttention", _plain_criss_cross, 16, {}, (2, 5, 7)),
]


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu_kernels", "plain"])
@pytest.mark.parametrize("name,plain,channels,kwargs,nhw", CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_module_equals_autodiff_of_the_plain_formulation(name, plain, channels, kwargs, nhw, kernels):
    with jax.enable_x64(True), attn_flax.set_cpu_kernels(kernels):
        module = attn_flax.MODULES[name](channels=channels, **kwargs, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        module = _randomized(module, seed=1)
        n, h, w = nhw
        rng = np.random.default_rng(2)
        x = jnp.asarray(3.0 * rng.standard_normal((n, h, w, channels)) + 5.0)  # an offset mean
        cotangent = jnp.asarray(rng.standard_normal(x.shape))
        graph, state = nnx.split(module)

        def loss(apply, s, v):
            return jnp.vdot(apply(nnx.merge(graph, s), v), cotangent)

        fast = jax.jit(jax.value_and_grad(lambda s, v: loss(lambda m, u: m(u), s, v), argnums=(0, 1)))
        slow = jax.jit(jax.value_and_grad(lambda s, v: loss(plain, s, v), argnums=(0, 1)))
        (got_value, (got_state, got_x)), (want_value, (want_state, want_x)) = fast(state, x), slow(state, x)

        assert got_x.dtype == jnp.float64
        np.testing.assert_allclose(got_value, want_value, rtol=1e-12)
        np.testing.assert_allclose(module(x), plain(module, x), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got_x, want_x, atol=ATOL, rtol=0)
        got_params, want_params = jax.tree.leaves(got_state), jax.tree.leaves(want_state)
        assert len(got_params) == len(want_params) > 0
        for got, want in zip(got_params, want_params):
            np.testing.assert_allclose(got, want, atol=ATOL * max(1.0, float(jnp.abs(want).max())), rtol=0)


@pytest.mark.parametrize("fast_primal", [True, False])
def test_evaluated_as_evaluates_the_body_and_differentiates_the_reference(fast_primal):
    # A body whose own derivative would be wrong (0 instead of 2x): the rule must come from the reference.
    square = _evaluated_as(lambda x: jax.lax.stop_gradient(x * x), lambda x: x ** 2, fast_primal=fast_primal)
    x = jnp.array([1.5, -2.0])
    np.testing.assert_array_equal(jax.jit(square)(x), x * x)
    np.testing.assert_array_equal(jax.grad(lambda v: square(v).sum())(x), 2 * x)
    np.testing.assert_array_equal(jax.jvp(square, (x,), (jnp.ones_like(x),))[1], 2 * x)
    np.testing.assert_array_equal(jax.jacfwd(square)(x), jnp.diag(2 * x))


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu_kernels", "plain"])
@pytest.mark.parametrize("name", sorted(set(SPECS) - {"ResNet"}))
def test_forward_mode_agrees_with_reverse_mode(name, kernels):
    """``<J t, c> == <t, J^T c>`` for every module, eval and train, on both paths."""
    module = attn_flax.MODULES[name](**SPECS[name].kwargs_at(16), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 6, 16)), jnp.float32)
    rng = np.random.default_rng(1)
    t, c = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for _ in range(2))
    for mode in ("eval", "train"):
        module.eval() if mode == "eval" else module.train()
        graph, state = nnx.split(module)
        apply = lambda v: nnx.merge(graph, state, copy=True)(v)  # noqa: E731  (fresh statistics for each call)
        with attn_flax.set_cpu_kernels(kernels):
            _, forward = jax.jvp(apply, (x,), (t,))
            (reverse,) = jax.vjp(apply, x)[1](c)
            hessian_vector = jax.jvp(jax.grad(lambda v: jnp.vdot(apply(v), c)), (x,), (t,))[1]
        # Two float32 sums of the same products in different orders: measured at most 4.6e-7 apart.
        np.testing.assert_allclose(jnp.vdot(forward, c), jnp.vdot(t, reverse), rtol=tolerance(name, "eval").rtol)
        assert hessian_vector.shape == x.shape and bool(jnp.isfinite(hessian_vector).all())
