"""Mixed precision: attn_flax with ``dtype=jnp.bfloat16`` and attn_torch under CPU autocast.

Every registered module, first registry case: bf16 output dtype (Flax), finite
values and errors within ``parity.verify.tolerances.BF16`` of the float32 torch module;
finite gradients and float32 BatchNorm statistics in a bf16 training step; every
softmax and normalisation statistic computed in float32 (the convention in
``attn_flax/layers.py``).
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.utils._python_dispatch import TorchDispatchMode

import attn_flax
import attn_torch
from attn_flax.layers import BatchNorm
from parity.verify import report
from parity.convert import state_dict, to_flax
from parity.verify.harness import BF16_CHECKS, BF16_RUNS, nchw, nhwc, randomize_, relative_error, run_bf16, torch_step
from parity.verify.registry import MODEL_SPECS, SPECS
from parity.verify.tolerances import BF16, Bf16Tolerance

NAMES = list(SPECS)
# ResNet's registry case is slow to compile (a ResNet-18 forward and backward);
# `python -m parity report` runs its bf16 row, test_resnet_bf16_training_statistics below
# a small input in training mode.
BLOCKS = [name for name in NAMES if name != "ResNet"]


def _first_training_case(name: str):
    return next(c for c in SPECS[name].cases if "train" in c.modes)


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_every_module_has_a_bf16_tolerance():
    assert set(BF16) == set(SPECS) | set(MODEL_SPECS)


@pytest.mark.parametrize("name", BLOCKS)
def test_bf16_matches_float32(name):
    result = run_bf16(SPECS[name])
    assert result.flax_dtype == "bfloat16"
    assert set(result.errors) == {(run, check) for run in BF16_RUNS for check in BF16_CHECKS}
    assert result.passed, "\n".join(result.failures())


def test_relative_error_flags_non_finite_and_judges_normwise():
    ref = np.array([3.0, -4.0])
    assert relative_error(ref, np.array([3.0, np.nan])) == (np.inf, np.inf)
    normwise, elementwise = relative_error(ref, np.array([3.0, -4.5]))
    assert normwise == pytest.approx(0.1) and elementwise == pytest.approx(0.125)


def _abstract(name: str, **kwargs: Any) -> tuple[nnx.GraphDef, nnx.State]:
    """An eval-mode module of the registry's default arguments, shapes only (no initialiser runs)."""
    module = nnx.eval_shape(lambda: attn_flax.MODULES[name](**SPECS[name].kwargs, **kwargs, rngs=nnx.Rngs(0)))
    module.eval()
    return nnx.split(module)


def _nhwc_input(name: str, dtype: Any) -> jax.ShapeDtypeStruct:
    n, c, h, w = SPECS[name].example_shape
    return jax.ShapeDtypeStruct((n, h, w, c), dtype)


@pytest.mark.parametrize("name", NAMES)
def test_default_dtype_promotes_bf16_input_with_float32_parameters(name):
    """``dtype=None``: the computation dtype is the promotion of input and parameters."""
    graph, state = _abstract(name)
    out = jax.eval_shape(lambda s, v: nnx.merge(graph, s)(v), state, _nhwc_input(name, jnp.bfloat16))
    assert out.dtype == jnp.float32


def _flax_train_step(module: nnx.Module, x: np.ndarray, cotangent: np.ndarray):
    cot = jnp.asarray(nhwc(cotangent))

    def loss(model: nnx.Module, inputs: jax.Array) -> jax.Array:
        return jnp.sum(model(inputs).astype(jnp.float32) * cot)

    return nnx.jit(nnx.grad(loss, argnums=(0, 1)))(module, jnp.asarray(nhwc(x)))


def _check_training_step(
    name: str, kwargs: dict[str, Any], shape: tuple[int, ...], tol: float, gradients: bool = True
) -> None:
    """Finite gradients in both frameworks; BatchNorm statistics stay float32 and follow float32 torch."""
    torch_module = randomize_(attn_torch.MODULES[name](**kwargs), seed=0).train()
    flax_module = to_flax(torch_module, dtype=jnp.bfloat16)
    x = _data(shape)
    with torch.no_grad():
        cotangent = _data(tuple(torch_module.eval()(torch.from_numpy(x)).shape), seed=1)
    torch_module.train()

    xt = torch.tensor(x, requires_grad=gradients)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch_module(xt)
    if gradients:
        grad_module, grad_x = _flax_train_step(flax_module, x, cotangent)
        assert np.isfinite(np.asarray(grad_x)).all()
        for path, value in nnx.to_flat_state(nnx.state(grad_module, nnx.Param)):
            assert np.isfinite(np.asarray(value[...], np.float32)).all(), path
        (out.float() * torch.from_numpy(cotangent)).sum().backward()
        assert torch.isfinite(xt.grad).all()
        for pname, p in torch_module.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), pname
    else:
        flax_out = nnx.jit(lambda m, v: m(v))(flax_module, jnp.asarray(nhwc(x)))
        assert flax_out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(flax_out, np.float32)).all()
        assert torch.isfinite(out).all()

    norms = [m for _, m in nnx.iter_modules(flax_module) if isinstance(m, BatchNorm)]
    assert all(n.mean[...].dtype == n.var[...].dtype == jnp.float32 for n in norms)
    assert all(b.dtype == torch.float32 for b in torch_module.buffers() if b.is_floating_point())
    reference = randomize_(attn_torch.MODULES[name](**kwargs), seed=0).train()
    torch_step(reference, x, cotangent)  # the same step in float32
    expected = {n: b.numpy() for n, b in reference.named_buffers() if b.is_floating_point()}
    assert len(expected) == 2 * len(norms)
    flax_state = state_dict(flax_module)
    autocast_state = {n: b.numpy() for n, b in torch_module.named_buffers()}
    for key, value in expected.items():
        for label, got in (("flax", flax_state[key]), ("torch autocast", autocast_state[key])):
            normwise, _ = relative_error(value, got)
            assert normwise <= tol, f"{label} {key}: off by {normwise:.3g} (normwise) > {tol}"


@pytest.mark.parametrize("name", BLOCKS)
def test_bf16_training_step(name):
    case = _first_training_case(name)
    # running statistics are statistics of activations as precise as the forward pass
    _check_training_step(name, SPECS[name].kwargs_for(case), case.shape, BF16[name].forward)


def test_resnet_bf16_training_statistics():
    """Forward only (the backward is slow to compile; the report checks ResNet's bf16 gradient).

    2x3x32x32 leaves 2 values per channel in layer4's BatchNorms: measured worst 8.7e-3
    (layer4.1.bn2.running_var), within ResNet's forward tolerance.
    """
    _check_training_step("ResNet", {"depth": 18, "attention": "se", "num_classes": 10}, (2, 3, 32, 32),
                         BF16["ResNet"].forward, gradients=False)


def _equations(jaxpr: Any) -> Iterator[Any]:
    """Every equation of a jaxpr, sub-jaxprs (jit, custom_jvp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                if hasattr(sub, "eqns"):
                    yield from _equations(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _equations(sub.jaxpr)


# softmax's exp, the variance's rsqrt/sqrt: run in bf16 these lose the float32 statistics.
FLOAT32_PRIMITIVES = ("exp", "log", "sqrt", "rsqrt")


@pytest.mark.parametrize("name", NAMES)
def test_flax_softmax_and_norm_statistics_run_in_float32(name):
    graph, state = _abstract(name, dtype=jnp.bfloat16)
    closed = jax.make_jaxpr(lambda s, v: nnx.merge(graph, s)(v))(state, _nhwc_input(name, jnp.float32))
    in_bf16 = [
        eqn.primitive.name for eqn in _equations(closed.jaxpr)
        if eqn.primitive.name in FLOAT32_PRIMITIVES
        and any(getattr(v.aval, "dtype", None) == jnp.bfloat16 for v in eqn.invars)
    ]
    assert not in_bf16, f"{name} computes {sorted(set(in_bf16))} in bfloat16"
    assert closed.out_avals[0].dtype == jnp.bfloat16


class _SoftmaxDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._softmax, torch.ops.aten._log_softmax):
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", NAMES)
def test_torch_autocast_softmax_runs_in_float32(name):
    spec = SPECS[name]
    module = randomize_(attn_torch.MODULES[name](**spec.kwargs), seed=0).eval()
    x = torch.from_numpy(_data(spec.example_shape))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), _SoftmaxDtypes() as seen:
        out = module(x)
    assert torch.isfinite(out).all()
    assert all(dtype == torch.float32 for dtype in seen.dtypes), f"softmax inputs: {seen.dtypes}"


# The first case is in test_bf16_matches_float32; these two stress the mask: recurrence 2
# (the second pass attends over bf16 outputs) and a single row, where a pixel's column holds
# only itself, masked, so its softmax sees one -inf per row.
MASK_CASES = [c for c in SPECS["CrissCrossAttention"].cases if c.kwargs.get("recurrence") == 2 or c.shape[2] == 1]


@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: c.label)
def test_criss_cross_mask_in_bf16(case):
    """The -inf mask in bf16: Flax dtype=bfloat16, torch autocast and torch all-bf16 against float32."""
    spec = SPECS["CrissCrossAttention"]
    torch_module = randomize_(attn_torch.CrissCrossAttention(**spec.kwargs_for(case)), seed=0).eval()
    x = _data(case.shape)
    with torch.no_grad():
        expected = torch_module(torch.from_numpy(x)).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = torch_module(torch.from_numpy(x)).float().numpy()
        all_bf16 = torch_module.to(torch.bfloat16)(torch.from_numpy(x).to(torch.bfloat16))
    assert all_bf16.dtype == torch.bfloat16
    flax_out = to_flax(torch_module.float(), dtype=jnp.bfloat16)(jnp.asarray(nhwc(x)))
    assert flax_out.dtype == jnp.bfloat16
    tol = BF16["CrissCrossAttention"].forward
    for label, got in (("flax", nchw(np.asarray(flax_out, np.float32))), ("autocast", autocast),
                       ("torch bf16", all_bf16.float().numpy())):
        normwise, _ = relative_error(expected, got)
        assert normwise <= tol, f"{label}: {normwise:.3g} > {tol}"


def test_report_prints_the_bf16_table_and_fails_beyond_tolerance(capsys, monkeypatch):
    assert report.main(["--modules", "SE", "--quick", "--jobs", "2"]) == 0  # the float32 and bf16 rows in two processes
    out = capsys.readouterr().out
    assert "bf16:" in out and "1 of 1 modules passed in bf16" in out and "1 of 1 cases passed" in out
    row = next(line for line in out.splitlines() if line.startswith("SE ") and "bfloat16" in line)
    assert row.split()[-1] == "pass"

    assert report.main(["--modules", "SE", "--quick", "--no-bf16", "--jobs", "1"]) == 0
    assert "bf16:" not in capsys.readouterr().out

    monkeypatch.setitem(BF16, "SE", Bf16Tolerance(forward=1e-4, grad_input=1e-4))  # seen in this process only
    assert report.main(["--modules", "SE", "--quick", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "SE [2x32x8x8] bf16 flax forward: FAILED" in out and "0 of 1 modules passed in bf16" in out
    with pytest.raises(SystemExit):
        report.main(["--jobs", "0"])
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
