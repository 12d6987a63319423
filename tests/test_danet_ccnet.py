"""DANet's position/channel attention and CCNet's criss-cross attention.

Both packages are checked against independent float64 NumPy formulas (the seed's
DANet code cannot serve as a reference: it only runs at 512 channels and 7x7),
plus argument checks, identity at initialisation and bfloat16.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
from parity.convert import to_flax
from parity.harness import nchw, nhwc, randomize_

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

    This is why the float32 parity of that gradient compares noise (parity/tolerances.py).
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
