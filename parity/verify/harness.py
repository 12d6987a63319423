"""Prove that an ``attn_torch`` module and its ``attn_flax`` twin compute the same function.

For one registry :class:`~parity.verify.registry.Spec` and one
:class:`~parity.verify.registry.Case`, :func:`run_case` builds the torch module with
random weights and random BatchNorm statistics, converts it with
:func:`parity.to_flax`, and compares with torch, for each mode of the case and
for each Flax path (``plain``: the CPU kernels off; ``cpu_kernels``: on, see
``attn_flax.cpu_kernels``):

* ``eval`` / ``train``: the output of the eager call, of the ``nnx.jit`` call and
  the value computed under ``nnx.grad`` (each path can differ: a kernel may be
  evaluated one way and differentiated another);
* ``grad_input``: the gradient of ``sum(out * cotangent)`` w.r.t. the input;
* ``grad_param``: the same gradient w.r.t. every parameter (by torch name);
* ``bn_stats``: every buffer (running mean/var, ``num_batches_tracked``) after
  the training step.

Tensor names in a result say which path and call a difference came from
(``cpu_kernels/jit``, ``plain/conv.weight``).

:func:`run_bf16` measures mixed precision: attn_flax with ``dtype=jnp.bfloat16``
and attn_torch under ``torch.autocast("cpu", dtype=torch.bfloat16)``, each
against the float32 torch module (eval forward and input gradient).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from attn_flax.cpu_kernels import kernels_used, set_cpu_kernels
from parity.convert import state_dict, to_flax
from parity.verify.registry import Case, Spec
from parity.verify.tolerances import Bf16Tolerance, Tolerance, bf16_tolerance, tolerance

CHECKS = ("eval", "train", "grad_input", "grad_param", "bn_stats")
PATHS = ("plain", "cpu_kernels")
CALLS = ("eager", "jit", "grad")


@dataclass
class CheckResult:
    check: str
    max_abs: float
    max_rel: float  # max |flax - torch| / (|torch| + atol * max(1, max|torch|)), elementwise
    passed: bool
    worst: str  # the tensor with the largest violation (or largest difference)
    tol: Tolerance

    def describe(self, module: str, case: str) -> str:
        return (
            f"{module} [{case}] {self.check}: {'ok' if self.passed else 'FAILED'} at {self.worst!r}: "
            f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g} "
            f"(rtol={self.tol.rtol:g}, atol={self.tol.atol:g} x max(1, |ref|))"
        )


@dataclass
class CaseResult:
    module: str
    case: str
    checks: dict[str, CheckResult] = field(default_factory=dict)
    paths: tuple[str, ...] = ()  # the Flax paths compared

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks.values())

    def failures(self) -> list[str]:
        return [c.describe(self.module, self.case) for c in self.checks.values() if not c.passed]


def compare(
    check: str,
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tol: Tolerance,
    shared_scale: bool = False,
) -> CheckResult:
    """Compare tensors by name; keys must agree. NaN or Inf anywhere fails.

    ``atol`` is scaled by ``max(1, max|ref|)`` of each tensor, or with
    ``shared_scale`` of all tensors together. Parameter gradients use the shared
    scale: a parameter whose true gradient is 0 (a bias before a training-mode
    BatchNorm or inside a softmax) gets float32 cancellation noise proportional to
    the module's other gradients, not to its own.
    """
    if set(reference) != set(candidate):
        missing = sorted(set(reference) ^ set(candidate))
        return CheckResult(check, math.inf, math.inf, False, f"keys differ: {missing}", tol)
    result = CheckResult(check, 0.0, 0.0, True, "", tol)
    worst_excess = -math.inf
    common = max((float(np.abs(np.asarray(v, np.float64)).max()) for v in reference.values() if np.size(v)), default=0)
    for name in reference:
        ref = np.asarray(reference[name], np.float64)
        got = np.asarray(candidate[name], np.float64)
        if ref.shape != got.shape:
            return CheckResult(check, math.inf, math.inf, False, f"{name}: shape {got.shape} != {ref.shape}", tol)
        if ref.size == 0:
            continue
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            return CheckResult(check, math.inf, math.inf, False, f"{name}: non-finite values", tol)
        diff = np.abs(got - ref)
        scale = common if shared_scale else float(np.abs(ref).max())
        allowed = tol.atol * max(1.0, scale) + tol.rtol * np.abs(ref)
        excess = float((diff - allowed).max())
        result.max_abs = max(result.max_abs, float(diff.max()))
        floor = tol.atol * max(1.0, scale)
        result.max_rel = max(result.max_rel, float((diff / (np.abs(ref) + floor)).max()))
        if excess > worst_excess:
            worst_excess, result.worst = excess, name
    result.passed = worst_excess <= 0 or worst_excess == -math.inf
    return result


def merge(a: CheckResult | None, b: CheckResult) -> CheckResult:
    """Keep the worse of two results of the same check (across modes)."""
    if a is None:
        return b
    worse = a if (not a.passed, a.max_rel) >= (not b.passed, b.max_rel) else b
    return CheckResult(a.check, max(a.max_abs, b.max_abs), max(a.max_rel, b.max_rel),
                       a.passed and b.passed, worse.worst, worse.tol)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights (zero-initialised gates included) and random BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim > 1:
                value = noise / math.sqrt(max(1, p[0].numel()))
            elif name.endswith("weight"):  # norm scales around 1
                value = 1 + 0.5 * noise
            else:
                value = 0.5 * noise
            p.copy_(value)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(0, 1000, (), generator=gen)))
    return module


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


@dataclass
class Step:
    output: np.ndarray  # torch layout
    grad_input: np.ndarray  # torch layout
    grad_params: dict[str, np.ndarray]  # torch names and layouts


def torch_step(module: torch.nn.Module, x: np.ndarray, cotangent: np.ndarray) -> Step:
    xt = torch.tensor(x, requires_grad=True)
    module.zero_grad(set_to_none=True)
    out = module(xt)
    (out * torch.from_numpy(cotangent)).sum().backward()
    grads = {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy().copy()
        for n, p in module.named_parameters()
    }
    return Step(out.detach().numpy().copy(), xt.grad.numpy().copy(), grads)


def _flax_vjp(model: nnx.Module, inputs: jax.Array, cotangent: jax.Array) -> tuple[nnx.State, jax.Array, jax.Array]:
    """Output and the gradients of ``sum(output * cotangent)``, compiled as one program
    (a few XLA compilations per case instead of one per eager op; the persistent
    cache of :mod:`parity.verify.xla_cache` serves repeats)."""

    def loss(model: nnx.Module, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = model(inputs)
        return jnp.sum(out * cotangent), out

    (grad_model, grad_x), out = nnx.grad(loss, argnums=(0, 1), has_aux=True)(model, inputs)
    return grad_model, grad_x, out


def flax_step(module: nnx.Module, x: np.ndarray, cotangent: np.ndarray, param_names: list[str]) -> Step:
    # A fresh trace per call: a jit cached across calls would keep serving the old program
    # to a module whose code changed in between (a patched __call__).
    grad_model, grad_x, out = nnx.jit(_flax_vjp)(module, jnp.asarray(nhwc(x)), jnp.asarray(nhwc(cotangent)))
    holder = nnx.clone(module)
    nnx.update(holder, grad_model)
    grads = {k: v for k, v in state_dict(holder).items() if k in param_names}
    return Step(nchw(np.asarray(out)), nchw(np.asarray(grad_x)), grads)


def _buffers(module: torch.nn.Module) -> dict[str, np.ndarray]:
    persistent = module.state_dict()  # non-persistent buffers (a blur filter) are constants, not state
    return {n: b.numpy().copy() for n, b in module.named_buffers() if n in persistent}


def flax_calls(module: nnx.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """The output of the eager call and of the ``nnx.jit`` call, torch layout; ``module`` is not changed."""
    xf = jnp.asarray(nhwc(x))
    eager = np.asarray(nnx.clone(module)(xf))
    jitted = np.asarray(nnx.jit(lambda m, v: m(v))(nnx.clone(module), xf))  # traced afresh, see flax_step
    return {"eager": nchw(eager), "jit": nchw(jitted)}


def flax_paths(flax_module: nnx.Module, shape: tuple[int, ...]) -> tuple[str, ...]:
    """Both paths where the module calls a CPU kernel; only ``plain`` where it calls none (the two
    would trace the same program). ``shape`` is the NCHW input shape; ``flax_module`` is not changed."""
    twin = nnx.clone(flax_module)
    twin.eval()
    n, c, h, w = shape
    used = kernels_used(lambda v: twin(v), jnp.zeros((n, h, w, c), jnp.float32))
    return PATHS if used else ("plain",)


def run_case(spec: Spec, case: Case, seed: int = 0, calls: bool = True, paths: tuple[str, ...] | None = None,
             modes: tuple[str, ...] | None = None) -> CaseResult:
    """Run every check of one case and return the per-check results.

    ``calls=False`` leaves out the eager and jitted calls (the value under ``grad`` is
    always compared); ``paths`` and ``modes`` select a subset (default: every mode of the
    case, and both paths where the module calls a CPU kernel, see :func:`flax_paths`).
    """
    torch.manual_seed(seed)
    torch_module = randomize_(spec.torch_module(case), seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    result = CaseResult(spec.name, case.label)
    param_names = [n for n, _ in torch_module.named_parameters()]
    buffer_names = list(_buffers(torch_module))
    with torch.no_grad():
        out_shape = tuple(torch_module.eval()(torch.from_numpy(x)).shape)
    cotangent = rng.standard_normal(out_shape, dtype=np.float32)

    def record(check: str, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> None:
        outcome = compare(check, ref, got, tolerance(spec.name, check), shared_scale=check == "grad_param")
        result.checks[check] = merge(result.checks.get(check), outcome)

    for mode in modes or case.modes:
        training = mode == "train"
        before = copy.deepcopy(torch_module.train(training))
        t = torch_step(torch_module, x, cotangent)
        converted = to_flax(before)  # once per mode: each path gets a copy
        paths = paths or flax_paths(converted, case.shape)
        outputs, grad_input, grad_params, buffers = {}, {}, {}, {}
        for path in paths:
            with set_cpu_kernels(path == "cpu_kernels"):
                flax_module = nnx.clone(converted)
                flax_module.train() if training else flax_module.eval()
                if calls:
                    outputs.update({f"{path}/{call}": out for call, out in flax_calls(flax_module, x).items()})
                f = flax_step(flax_module, x, cotangent, param_names)
            outputs[f"{path}/grad"] = f.output
            grad_input[path] = f.grad_input
            grad_params.update({f"{path}/{n}": g for n, g in f.grad_params.items()})
            if training and buffer_names:
                flax_state = state_dict(flax_module)
                buffers.update({f"{path}/{n}": flax_state[n] for n in buffer_names})
        record(mode, dict.fromkeys(outputs, t.output), outputs)
        record("grad_input", dict.fromkeys(grad_input, t.grad_input), grad_input)
        record("grad_param", {k: t.grad_params[k.split("/", 1)[1]] for k in grad_params}, grad_params)
        if buffers:
            torch_buffers = _buffers(torch_module)
            record("bn_stats", {k: torch_buffers[k.split("/", 1)[1]] for k in buffers}, buffers)
    result.paths = paths or ()
    return result


# --- bfloat16: attn_flax with dtype=bfloat16 and attn_torch under CPU autocast ---------------

BF16_CHECKS = ("forward", "grad_input")
BF16_RUNS = ("flax", "torch")  # flax: dtype=jnp.bfloat16, float32 parameters; torch: autocast


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """``(||got - ref||_2 / ||ref||_2, max|got - ref| / max|ref|)``; ``inf`` for non-finite values.

    The first, the normwise error, is what the bf16 tolerances judge: a bf16
    rounding that moves a max-pool's argmax or a ReLU's sign reroutes a gradient
    element wholesale, which the elementwise max reports as an O(1) error while
    the normwise error stays at the bf16 level.
    """
    ref = np.asarray(reference, np.float64)
    got = np.asarray(candidate, np.float64)
    if ref.shape != got.shape or not np.isfinite(got).all():
        return math.inf, math.inf
    diff = got - ref
    norm, peak = float(np.linalg.norm(ref)), float(np.abs(ref).max(initial=0.0))
    normwise = float(np.linalg.norm(diff)) / norm if norm else (0.0 if not diff.any() else math.inf)
    elementwise = float(np.abs(diff).max(initial=0.0)) / peak if peak else (0.0 if not diff.any() else math.inf)
    return normwise, elementwise


@dataclass
class Bf16Result:
    """bf16 errors of one case: ``errors[(run, check)] = (normwise, elementwise max)``."""

    module: str
    case: str
    errors: dict[tuple[str, str], tuple[float, float]]
    flax_dtype: str  # dtype of the Flax output for a float32 input: must be bfloat16
    tol: Bf16Tolerance

    def limit(self, check: str) -> float:
        return getattr(self.tol, check)

    def failures(self) -> list[str]:
        lines = []
        if self.flax_dtype != "bfloat16":
            lines.append(f"{self.module} [{self.case}] bf16: attn_flax output dtype is {self.flax_dtype}, not bfloat16")
        for (run, check), (normwise, elementwise) in self.errors.items():
            if not normwise <= self.limit(check):
                lines.append(
                    f"{self.module} [{self.case}] bf16 {run} {check}: FAILED: relative error "
                    f"{normwise:.3g} (normwise; elementwise max {elementwise:.3g}) > tolerance {self.limit(check):g}"
                )
        return lines

    @property
    def passed(self) -> bool:
        return not self.failures()


def flax_bf16_step(module: nnx.Module, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Jitted output and input gradient of ``module`` (NHWC inside, torch layout out), and the output dtype.

    The function is traced afresh on each call (a module-level jit would keep a
    trace of a monkeypatched ``__call__`` for the next module of the same structure).
    """

    def loss(model: nnx.Module, inputs: jax.Array, cot: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = model(inputs)
        return jnp.sum(out.astype(jnp.float32) * cot), out

    vjp = nnx.jit(nnx.grad(loss, argnums=1, has_aux=True))
    grad_x, out = vjp(module, jnp.asarray(nhwc(x)), jnp.asarray(nhwc(cotangent)))
    return nchw(np.asarray(out, np.float32)), nchw(np.asarray(grad_x, np.float32)), str(out.dtype)


def autocast_step(module: torch.nn.Module, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output and input gradient of a float32 torch module run under ``torch.autocast("cpu", bfloat16)``."""
    xt = torch.tensor(x, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(xt)
    (out.float() * torch.from_numpy(cotangent)).sum().backward()
    return out.detach().float().numpy(), xt.grad.numpy().copy()


def run_bf16(spec: Spec, case: Case | None = None, seed: int = 0) -> Bf16Result:
    """bf16 against float32, eval mode: forward and input gradient of ``case`` (default: the first).

    The reference is the float32 torch module; the same weights run in attn_flax
    with ``dtype=jnp.bfloat16`` (float32 parameters) and in attn_torch under CPU
    autocast. Both start from the same float32 input and cotangent.
    """
    case = case or spec.cases[0]
    torch.manual_seed(seed)
    torch_module = randomize_(spec.torch_module(case), seed).eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    with torch.no_grad():
        out_shape = tuple(torch_module(torch.from_numpy(x)).shape)
    cotangent = rng.standard_normal(out_shape, dtype=np.float32)
    reference = torch_step(torch_module, x, cotangent)
    flax_out, flax_grad, flax_dtype = flax_bf16_step(to_flax(torch_module, dtype=jnp.bfloat16), x, cotangent)
    torch_out, torch_grad = autocast_step(torch_module, x, cotangent)
    got = {("flax", "forward"): flax_out, ("flax", "grad_input"): flax_grad,
           ("torch", "forward"): torch_out, ("torch", "grad_input"): torch_grad}
    want = {"forward": reference.output, "grad_input": reference.grad_input}
    errors = {key: relative_error(want[key[1]], value) for key, value in got.items()}
    return Bf16Result(spec.name, case.label, errors, flax_dtype, bf16_tolerance(spec.name))
