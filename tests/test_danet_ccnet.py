"""DANet's position/channel attention and CCNet's criss-cross attention.

Both packages are checked against independent float64 NumPy formulas (the seed's
DANet code cannot serve as a reference: it only runs at 512 channels and 7x7),
plus argument checks, identity at initialisation and bfloat16; the memory-efficient
(blockwise) path of position attention against the exact path and across
frameworks, and that it never holds the (HW, HW) matrix; criss-cross attention
against the seed's code, gradients included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.utils._python_dispatch import TorchDispatchMode

import attn_flax
import attn_torch
from attn_common import tables
from attn_flax import danet as flax_danet
from attn_torch import danet as torch_danet
from parity.devtools import memory
from parity.convert import to_flax
from parity.verify.harness import compare, flax_step, nchw, nhwc, randomize_, relative_error, run_case, torch_step
from parity.verify.registry import SPECS, Case
from parity.verify.tolerances import BF16, tolerance

DANET = ("PositionAttention", "ChannelAttention", "DualAttention")
QUERY_KEY = ("PositionAttention", "DualAttention", "CrissCrossAttention")


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _conv1x1(x: np.ndarray, params: dict, name: str) -> np.ndarray:
    weight, bias = params[f"{name}.weight"][:, :, 0, 0], params[f"{name}.bias"]
    return np.einsum("oc,nchw->nohw", weight, x) + bias[None, :, None, None]


def position_formula(x: np.ndarray, params: dict, prefix: str = "") -> np.ndarray:
    n, c, h, w = x.shape
    q, k, v = (_conv1x1(x, params, prefix + name).reshape(n, -1, h * w) for name in ("query_conv", "key_conv", "value_conv"))
    attention = _softmax(np.einsum("nci,ncj->nij", q, k))  # over keys j
    out = np.einsum("nij,ncj->nci", attention, v).reshape(x.shape)
    return params[prefix + "gamma"] * out + x


def channel_formula(x: np.ndarray, params: dict, prefix: str = "") -> np.ndarray:
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    # softmax(rowmax - energy) == softmax(-energy): the shift cancels.
    attention = _softmax(-np.einsum("nci,ndi->ncd", flat, flat))
    return params[prefix + "gamma"] * np.einsum("ncd,ndi->nci", attention, flat).reshape(x.shape) + x


def criss_cross_formula(x: np.ndarray, params: dict, recurrence: int) -> np.ndarray:
    """Pixel by pixel: attend over the column without the centre, then the whole row."""
    for _ in range(recurrence):
        q, k, v = (_conv1x1(x, params, name) for name in ("query_conv", "key_conv", "value_conv"))
        out = np.zeros_like(x)
        n, c, height, width = x.shape
        for b in range(n):
            for i in range(height):
                for j in range(width):
                    pixels = [(g, j) for g in range(height) if g != i] + [(i, g) for g in range(width)]
                    keys = np.stack([k[b, :, r, s] for r, s in pixels])
                    values = np.stack([v[b, :, r, s] for r, s in pixels])
                    out[b, :, i, j] = _softmax(keys @ q[b, :, i, j]) @ values
        x = params["gamma"] * out + x
    return x


FORMULAS = {
    "PositionAttention": lambda x, p, kw: position_formula(x, p),
    "ChannelAttention": lambda x, p, kw: channel_formula(x, p),
    "DualAttention": lambda x, p, kw: position_formula(x, p, "position.") + channel_formula(x, p, "channel."),
    "CrissCrossAttention": lambda x, p, kw: criss_cross_formula(x, p, kw.get("recurrence", 1)),
}

CASES = [
    *[(name, {}, shape) for name in DANET for shape in [(2, 16, 5, 7), (1, 8, 1, 1), (1, 24, 1, 9)]],
    ("CrissCrossAttention", {}, (2, 16, 5, 7)),
    ("CrissCrossAttention", {}, (1, 16, 1, 6)),  # one row: the column holds only the centre
    ("CrissCrossAttention", {}, (1, 16, 6, 1)),  # one column
    ("CrissCrossAttention", {"recurrence": 2}, (2, 8, 4, 6)),
    ("CrissCrossAttention", {"recurrence": 3}, (1, 16, 3, 5)),
]


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{c[2]}-{c[1]}" for c in CASES])
def test_matches_independent_formula(name, kwargs, shape):
    module = randomize_(attn_torch.MODULES[name](shape[1], **kwargs), seed=3).eval()
    params = {k: v.double().numpy() for k, v in module.state_dict().items()}
    x = np.random.default_rng(0).standard_normal(shape)
    expected = FORMULAS[name](x, params, kwargs)
    assert np.isfinite(expected).all()

    with torch.no_grad():
        got_torch = module(torch.from_numpy(x.astype(np.float32))).numpy()
    got_flax = nchw(np.asarray(to_flax(module)(jnp.asarray(nhwc(x.astype(np.float32))))))
    np.testing.assert_allclose(got_torch, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_flax, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [*DANET, "CrissCrossAttention"])
def test_zero_gamma_is_identity_at_initialisation(name):
    copies = 2 if name == "DualAttention" else 1  # each branch adds its own residual
    x = np.random.default_rng(1).standard_normal((2, 16, 5, 7)).astype(np.float32)
    with torch.no_grad():
        got = attn_torch.MODULES[name](16)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, copies * x)
    flax_module = attn_flax.MODULES[name](16, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(flax_module(jnp.asarray(nhwc(x)))), copies * nhwc(x))


def test_dual_attention_names_and_sum():
    module = randomize_(attn_torch.DualAttention(16), seed=2)
    assert sorted(module.state_dict()) == sorted(
        [f"position.{c}.{p}" for c in ("query_conv", "key_conv", "value_conv") for p in ("weight", "bias")]
        + ["position.gamma", "channel.gamma"]
    )
    x = torch.randn(2, 16, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.position(x) + module.channel(x))


@pytest.mark.parametrize("name", QUERY_KEY)
@pytest.mark.parametrize("channels", [0, 4, 7])
def test_channels_too_few_for_query_key_width(name, channels):
    with pytest.raises(ValueError, match="`channels`"):
        attn_torch.MODULES[name](channels)
    with pytest.raises(ValueError, match="`channels`"):
        attn_flax.MODULES[name](channels, rngs=nnx.Rngs(0))


def test_channel_attention_accepts_few_channels_but_not_zero():
    assert attn_torch.ChannelAttention(3)(torch.randn(1, 3, 2, 2)).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="`channels`"):
        attn_torch.ChannelAttention(0)
    with pytest.raises(ValueError, match="`channels`"):
        attn_flax.ChannelAttention(0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("recurrence", [0, -1, 1.5, True])
def test_recurrence_must_be_positive(recurrence):
    with pytest.raises(ValueError, match="`recurrence`"):
        attn_torch.CrissCrossAttention(16, recurrence)
    with pytest.raises(ValueError, match="`recurrence`"):
        attn_flax.CrissCrossAttention(16, recurrence, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", [*DANET, "CrissCrossAttention"])
def test_input_rank_and_channels_are_checked(name):
    torch_module = attn_torch.MODULES[name](16)
    flax_module = attn_flax.MODULES[name](16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="16 channels|has 8 channels"):
        torch_module(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        torch_module(torch.randn(16, 4, 4))
    with pytest.raises(ValueError, match="NCHW array"):
        flax_module(jnp.ones((1, 16, 4, 5)))


def test_key_bias_gradient_vanishes():
    """``key_conv.bias`` shifts each softmax row by a constant; its gradient is exactly 0.

    This is why the float32 parity of that gradient compares noise (parity/verify/tolerances.py).
    """
    for name in ("PositionAttention", "CrissCrossAttention"):
        module = randomize_(attn_torch.MODULES[name](16), seed=4).double()
        module(torch.randn(2, 16, 5, 6, dtype=torch.float64)).square().sum().backward()
        assert module.key_conv.bias.grad.abs().max() < 1e-10
        assert module.key_conv.weight.grad.abs().max() > 1e-3


def test_criss_cross_bfloat16():
    x = torch.randn(2, 16, 5, 7)
    module = randomize_(attn_torch.CrissCrossAttention(16, recurrence=2), seed=5)
    with torch.no_grad():
        expected = module(x)
        got = module.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected, rtol=0.1, atol=0.1)

    flax_module = to_flax(module.float(), dtype=jnp.bfloat16)
    out = flax_module(jnp.asarray(nhwc(x.numpy()), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out).all())
    np.testing.assert_allclose(nchw(np.asarray(out, np.float32)), expected.numpy(), rtol=0.1, atol=0.1)


# --- the memory-efficient (blockwise) path of PositionAttention / DualAttention -------------

BLOCKWISE = ("PositionAttention", "DualAttention")


def _assert_steps_agree(name, reference, candidate, what):
    checks = [
        compare("eval", {"output": reference.output}, {"output": candidate.output}, tolerance(name, "eval")),
        compare("grad_input", {"input": reference.grad_input}, {"input": candidate.grad_input},
                tolerance(name, "grad_input")),
        compare("grad_param", reference.grad_params, candidate.grad_params, tolerance(name, "grad_param"),
                shared_scale=True),
    ]
    failures = [c.describe(name, what) for c in checks if not c.passed]
    assert not failures, "\n".join(failures)


def _torch_pair(name, shape, seed=1):
    exact = randomize_(attn_torch.MODULES[name](shape[1], memory_efficient=False), seed=seed)
    blockwise = attn_torch.MODULES[name](shape[1], memory_efficient=True)
    blockwise.load_state_dict(exact.state_dict())
    return exact, blockwise


@pytest.mark.parametrize("name", BLOCKWISE)
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 24, 9, 10), (3, 8, 1, 13)], ids=str)
def test_blockwise_path_equals_exact_path(name, shape):
    """Forward, input and parameter gradients, in each framework, within the float32 tolerance."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape, dtype=np.float32)
    cotangent = rng.standard_normal(shape, dtype=np.float32)
    exact, blockwise = _torch_pair(name, shape)
    names = [n for n, _ in exact.named_parameters()]
    _assert_steps_agree(name, torch_step(exact, x, cotangent), torch_step(blockwise, x, cotangent), "torch")
    flax_exact, flax_blockwise = to_flax(exact), to_flax(blockwise)
    for module, flag in ((flax_exact, False), (flax_blockwise, True)):  # the converter carries the choice
        assert getattr(module, "position", module).memory_efficient is flag
    _assert_steps_agree(name, flax_step(flax_exact, x, cotangent, names),
                        flax_step(flax_blockwise, x, cotangent, names), "flax")


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu_kernels", "plain"])
def test_flax_blockwise_over_several_padded_blocks(kernels):
    """35 queries in blocks of 4: nine blocks, the last padded; values and gradients match.

    ``attend_exact`` maps over the images with the CPU kernels and vmaps without: both are checked.
    """
    backend = "cpu_kernels" if kernels else "plain"
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((2, 35, 3), dtype=np.float32)) for _ in range(2))
    v = jnp.asarray(rng.standard_normal((2, 35, 6), dtype=np.float32))
    cot = jnp.asarray(rng.standard_normal((2, 35, 6), dtype=np.float32))

    def run(attend):
        out, vjp = jax.vjp(attend, q, k, v)
        return {"out": out, **dict(zip(("dq", "dk", "dv"), vjp(cot)))}

    textbook = run(lambda q, k, v: jax.nn.softmax(jnp.einsum("nic,njc->nij", q, k), axis=-1) @ v)
    with attn_flax.set_cpu_kernels(kernels):
        exact = run(flax_danet.attend_exact)
        blockwise = run(lambda *a: flax_danet.attend_blockwise(*a, block=4))
    limits = tolerance("PositionAttention", "eval")
    for name, result in (("attend_exact", compare("exact", textbook, exact, limits)),
                         ("attend_blockwise", compare("blockwise", exact, blockwise, limits))):
        assert result.passed, result.describe(name, backend)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_flax_module_image_by_image_equals_vmapped(memory_efficient):
    """The module loops over the images with the CPU kernels and vmaps them without: same output and gradients."""
    module = to_flax(_torch_pair("PositionAttention", (3, 16, 5, 7))[memory_efficient])
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 5, 7, 16), dtype=np.float32))

    def run(kernels):
        graph, params = nnx.split(module)
        with attn_flax.set_cpu_kernels(kernels):
            out, vjp = jax.vjp(lambda p, v: nnx.merge(graph, p)(v), params, x)
        dparams, dx = vjp(jnp.ones_like(out))
        return {"out": out, "dx": dx, **{f"dparam{i}": g for i, g in enumerate(jax.tree.leaves(dparams))}}

    result = compare("vmapped", run(True), run(False), tolerance("PositionAttention", "eval"))
    assert result.passed, result.describe("PositionAttention", f"memory_efficient={memory_efficient}")


@pytest.mark.parametrize("pixels", [4, 3136, 12544, 10**7])
def test_flax_query_blocks_fit_the_budget_and_pad_little(pixels):
    block = flax_danet.query_block(pixels)
    blocks = -(-pixels // block)
    assert block * pixels <= flax_danet.BLOCK_ENERGIES or block == 1
    assert blocks * block - pixels < blocks  # blocks of (nearly) equal size: less than one padded row each
    fewer = blocks - 1  # as few blocks as the budget allows
    assert fewer == 0 or -(-pixels // fewer) * pixels > flax_danet.BLOCK_ENERGIES


@pytest.mark.parametrize("name", BLOCKWISE)
@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (1, 24, 3, 10)], ids=str)
def test_blockwise_parity_torch_vs_flax(name, shape):
    """Every parity check (eval, train, gradients, jit) with both frameworks on the blockwise path."""
    case = Case(shape, kwargs={"channels": shape[1], "memory_efficient": True})
    result = run_case(SPECS[name], case)
    assert {"eval", "train", "grad_input", "grad_param"} <= set(result.checks)
    assert result.passed, "\n".join(result.failures())


def test_automatic_path_threshold_is_shared():
    threshold = tables.MEMORY_EFFICIENT_MIN_PIXELS
    assert torch_danet.MEMORY_EFFICIENT_MIN_PIXELS == flax_danet.MEMORY_EFFICIENT_MIN_PIXELS == threshold
    torch_module = attn_torch.PositionAttention(16)
    flax_module = attn_flax.PositionAttention(16, rngs=nnx.Rngs(0))
    for module in (torch_module, flax_module):
        assert module.memory_efficient is None
        assert not module.uses_blockwise(1, threshold - 1) and module.uses_blockwise(1, threshold)
        assert not module.uses_blockwise(45, 45) and module.uses_blockwise(46, 46)
    for flag in (True, False):
        assert attn_torch.PositionAttention(16, flag).uses_blockwise(1, 1) is flag
        assert attn_flax.PositionAttention(16, flag, rngs=nnx.Rngs(0)).uses_blockwise(10**4, 10**4) is flag


@pytest.mark.parametrize("name", BLOCKWISE)
def test_automatic_choice_takes_the_blockwise_path_above_the_threshold(name, monkeypatch):
    calls = []
    for package, blockwise in ((torch_danet, "attend_blockwise"), (flax_danet, "attend_image_blockwise")):
        original = getattr(package, blockwise)
        monkeypatch.setattr(package, blockwise, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
        monkeypatch.setattr(package, "MEMORY_EFFICIENT_MIN_PIXELS", 30)
    small, large = (1, 8, 5, 5), (1, 8, 5, 6)
    for shape, expected in ((small, 0), (large, 1)):
        calls.clear()
        with torch.no_grad():
            attn_torch.MODULES[name](8)(torch.zeros(shape))
        attn_flax.MODULES[name](8, rngs=nnx.Rngs(0))(jnp.zeros(nhwc(np.zeros(shape)).shape))
        assert len(calls) == 2 * expected, shape


@pytest.mark.parametrize("value", ["yes", 1, 0, 0.5])
def test_memory_efficient_must_be_bool_or_none(value):
    for name in BLOCKWISE:
        with pytest.raises(ValueError, match="`memory_efficient`"):
            attn_torch.MODULES[name](16, value)
        with pytest.raises(ValueError, match="`memory_efficient`"):
            attn_flax.MODULES[name](16, value, rngs=nnx.Rngs(0))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_flax_intermediate(module, x):
    graph, params = nnx.split(module)
    closed = jax.make_jaxpr(jax.grad(lambda p, v: nnx.merge(graph, p)(v).sum(), argnums=(0, 1)))(params, x)
    return max(int(np.prod(var.aval.shape)) for eqn in _equations(closed.jaxpr) for var in eqn.outvars)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_blockwise_path_never_holds_the_attention_matrix(monkeypatch):
    """Forward and backward: no tensor as large as one image's (HW, HW) matrix; the exact path has one."""
    shape = (2, 16, 24, 24)
    matrix = (shape[2] * shape[3]) ** 2
    exact, blockwise = _torch_pair("PositionAttention", shape)
    for module, holds in ((exact, True), (blockwise, False)):
        x = torch.randn(shape, requires_grad=True)
        with _LargestTensor() as seen:
            module(x).sum().backward()
        assert (seen.largest >= matrix) == holds, (holds, seen.largest)

    monkeypatch.setattr(flax_danet, "BLOCK_ENERGIES", 64 * 576)  # 64 of an image's queries per block
    x = jnp.asarray(nhwc(np.random.default_rng(0).standard_normal(shape, dtype=np.float32)))
    assert _largest_flax_intermediate(to_flax(exact), x) >= matrix
    # both lowerings are in the jaxpr: the plain one vmaps the images, holding one block of each
    assert _largest_flax_intermediate(to_flax(blockwise), x) <= shape[0] * 64 * 576 < matrix


@pytest.mark.parametrize("name", BLOCKWISE)
def test_blockwise_path_in_bf16(name):
    """Flax ``dtype=bfloat16`` and torch autocast on the blockwise path: within the module's bf16 tolerance."""
    shape = (2, 16, 8, 8)
    exact, blockwise = _torch_pair(name, shape)
    x = np.random.default_rng(4).standard_normal(shape, dtype=np.float32)
    with torch.no_grad():
        expected = exact(torch.from_numpy(x)).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = blockwise(torch.from_numpy(x)).float().numpy()
    flax_out = to_flax(blockwise, dtype=jnp.bfloat16)(jnp.asarray(nhwc(x)))
    assert flax_out.dtype == jnp.bfloat16
    for label, got in (("flax", nchw(np.asarray(flax_out, np.float32))), ("autocast", autocast)):
        normwise, _ = relative_error(expected, got)
        assert normwise <= BF16[name].forward, f"{label}: {normwise:.3g}"


def test_memory_command_measures_and_skips(capsys):
    """One real (tiny) measurement in a subprocess; an exact run over the size limit is not started."""
    code = memory.main(["--shape", "1x8x4x4", "--frameworks", "torch", "--paths", "blockwise", "exact",
                        "--skip-exact-above", "1e-9"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out + captured.err
    blockwise_row = next(line for line in out.splitlines() if line.startswith("torch") and "blockwise" in line)
    assert float(blockwise_row.split()[2]) > 0.01  # a peak RSS in GB
    assert "not run" in next(line for line in out.splitlines() if line.startswith("torch") and "exact" in line)
    assert memory.main(["--shape", "1x8x4x4", "--frameworks", "torch", "--paths", "blockwise",
                        "--limit-gb", "0.001"]) == 1


# --- criss-cross attention against the seed's code --------------------------------------------


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 16, 1, 6), (2, 32, 6, 1)], ids=str)
def test_criss_cross_matches_seed_forward_and_gradients(shape):
    """The rewritten torch module against fightingcv's CrissCrossAttention, in float64."""
    from fightingcv_attention.attention.CrissCrossAttention import CrissCrossAttention as Seed

    ours = randomize_(attn_torch.CrissCrossAttention(shape[1]), seed=6).double()
    seed = Seed(shape[1]).double()
    seed.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(shape, dtype=torch.float64)
    results = []
    for module in (seed, ours):
        out = module(x)
        grads = torch.autograd.grad((out * cotangent).sum(), [x, *module.parameters()])
        results.append((out, grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    for got, expected in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
