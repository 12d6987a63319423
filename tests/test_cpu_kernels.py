"""The CPU-kernel layer: its switch, an error planted in each kernel caught by the parity
harness for every module that uses it, and programs lowered for GPU and TPU holding only the
plain formulation."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import torch

import attn_flax
import attn_torch
from attn_flax import cpu_kernels
from parity.verify.harness import run_case
from parity.verify.registry import SPECS


def test_switch_as_a_call_and_as_a_context_manager():
    assert attn_flax.cpu_kernels_enabled()
    with attn_flax.set_cpu_kernels(False):
        assert not attn_flax.cpu_kernels_enabled()
        with attn_flax.set_cpu_kernels(True):
            assert attn_flax.cpu_kernels_enabled()
        assert not attn_flax.cpu_kernels_enabled()
    assert attn_flax.cpu_kernels_enabled()
    attn_flax.set_cpu_kernels(False)
    try:
        assert not attn_flax.cpu_kernels_enabled()
    finally:
        attn_flax.set_cpu_kernels(True)
    with pytest.raises(ValueError, match="`enabled` must be True or False, got 'no'"):
        attn_flax.set_cpu_kernels("no")


def test_one_kernel_at_a_time():
    with attn_flax.set_cpu_kernels(False, kernels=("map_images",)):
        assert attn_flax.cpu_kernels_enabled() and not attn_flax.cpu_kernels_enabled("map_images")
        assert attn_flax.cpu_kernels_enabled("conv_general_dilated")
        module = attn_flax.PositionAttention(16, rngs=nnx.Rngs(0))
        assert cpu_kernels.kernels_used(lambda v: module(v), jnp.ones((2, 4, 4, 16))) == {"conv_general_dilated"}
    assert attn_flax.cpu_kernels_enabled("map_images")
    with pytest.raises(ValueError, match="unknown CPU kernel 'nope'; the kernels are: conv_general_dilated"):
        attn_flax.set_cpu_kernels(False, kernels=("nope",))


@pytest.mark.parametrize("value, enabled", [("0", False), ("off", False), ("1", True), ("", True)])
def test_environment_variable(value, enabled):
    env = {**os.environ, cpu_kernels.ENV_VAR: value, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", "import attn_flax; print(attn_flax.cpu_kernels_enabled())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(enabled)


def test_the_switch_chooses_what_is_traced():
    cbam = attn_flax.CBAM(32, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 32))
    assert "platform_index" in str(jax.make_jaxpr(lambda v: cbam(v))(x))
    with attn_flax.set_cpu_kernels(False):
        assert "platform_index" not in str(jax.make_jaxpr(lambda v: cbam(v))(x))


# --- an error planted in each kernel ------------------------------------------------------------

MODULES = sorted(SPECS)


def _kernels_used(name: str) -> set[str]:
    """The kernels that the module's eval forward calls."""
    spec = SPECS[name]
    module = attn_flax.MODULES[name](**spec.kwargs_for(spec.cases[0]), rngs=nnx.Rngs(0))
    module.eval()
    n, c, h, w = spec.cases[0].shape
    return cpu_kernels.kernels_used(lambda v: module(v), jnp.ones((n, h, w, c)))


USAGE = {name: _kernels_used(name) for name in MODULES}
PLANTED = [(kernel, name) for kernel in cpu_kernels.KERNELS for name in MODULES if kernel in USAGE[name]]


def test_every_kernel_is_used_by_a_registered_module():
    assert {kernel for kernel, _ in PLANTED} == set(cpu_kernels.KERNELS)


def _wrong(y: jax.Array) -> jax.Array:
    # 1% off, plus a part that is not affine: SGE standardises the similarity it gets from its
    # kernel, which cancels a pure scaling.
    return y * 1.01 + 0.01 * jnp.abs(y)


@pytest.mark.parametrize("kernel, name", PLANTED, ids=[f"{k}-{n}" for k, n in PLANTED])
def test_an_error_planted_in_a_kernel_fails_the_harness(kernel, name, monkeypatch):
    original = cpu_kernels._platform_dependent

    def planted(this, args, cpu, plain):
        if this == kernel:
            fast = cpu
            cpu = lambda *a: jax.tree.map(_wrong, fast(*a))  # noqa: E731
        return original(this, args, cpu, plain)

    monkeypatch.setattr(cpu_kernels, "_platform_dependent", planted)
    spec = SPECS[name]
    result = run_case(spec, spec.cases[0], paths=("cpu_kernels",), modes=("eval",))
    assert not result.passed, f"an error planted in {kernel} went unnoticed in {name}"
    # the evaluated forms (eager and jitted) must be among what failed
    worst = result.checks["eval"].worst
    assert worst.startswith("cpu_kernels/"), worst


# --- lowered for GPU and TPU: the plain formulation ---------------------------------------------

_OP = re.compile(r"= (\"?stablehlo\.[a-z_]+)")
# The platform choice's own wrappers; under differentiation the plain branch also fills the
# CPU branch's residual slots with broadcast zeros.
_WRAPPERS = {"stablehlo.case", "stablehlo.constant", "stablehlo.return", "stablehlo.broadcast_in_dim"}


def _exported_ops(name: str, platform: str, kernels: bool) -> collections.Counter:
    spec = SPECS[name]
    module = attn_flax.MODULES[name](**spec.kwargs_for(spec.cases[0]), rngs=nnx.Rngs(0))
    n, c, h, w = spec.cases[0].shape
    x = jnp.ones((n, h, w, c))
    module.eval()
    graph, state = nnx.split(module)
    module.train()
    graph_t, params, rest = nnx.split(module, nnx.Param, ...)

    def forward(s, v):
        return nnx.merge(graph, s, copy=True)(v)

    def loss(p, r, v):
        return nnx.merge(graph_t, p, r, copy=True)(v).sum()

    text = ""
    with attn_flax.set_cpu_kernels(kernels):
        for function, args in ((forward, (state, x)), (jax.grad(loss, argnums=(0, 2)), (params, rest, x))):
            exported = jax.export.export(jax.jit(function), platforms=(platform,))(*args)
            text += exported.mlir_module()
    ops = (op.lstrip('"') for op in _OP.findall(text))
    return collections.Counter(op for op in ops if op not in _WRAPPERS)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name", MODULES)
def test_exported_for_gpu_and_tpu_is_the_plain_formulation(name, platform):
    with_kernels = _exported_ops(name, platform, kernels=True)
    plain = _exported_ops(name, platform, kernels=False)
    assert with_kernels == plain, f"{name} for {platform}: {with_kernels - plain} extra, {plain - with_kernels} missing"
    spec = SPECS[name]
    torch_module = attn_torch.MODULES[name](**spec.kwargs_for(spec.cases[0]))
    k_by_k = sum(1 for m in torch_module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd) and max(m.kernel_size) > 1)
    assert with_kernels["stablehlo.convolution"] >= k_by_k  # every k x k convolution is a convolution
    assert with_kernels["stablehlo.while"] == 0  # no per-image loop


def test_exported_for_cpu_holds_the_kernels():
    # the same export for CPU differs: the check above can tell the two apart
    assert _exported_ops("CBAM", "cpu", kernels=True) != _exported_ops("CBAM", "cpu", kernels=False)
