"""Shuffle Attention, SGE and Polarized Self-Attention: argument checks and special behaviour."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity

PSA = ["ParallelPolarizedSelfAttention", "SequentialPolarizedSelfAttention"]


def _build(package, name, *args, **kwargs):
    if package == "torch":
        return attn_torch.MODULES[name](*args, **kwargs)
    return attn_flax.MODULES[name](*args, **kwargs, rngs=nnx.Rngs(0))


def _input(package, n, c, h, w):
    x = np.random.default_rng(0).standard_normal((n, c, h, w), dtype=np.float32)
    return torch.from_numpy(x) if package == "torch" else jnp.asarray(x.transpose(0, 2, 3, 1))


PACKAGES = pytest.mark.parametrize("package", ["torch", "flax"])


@PACKAGES
@pytest.mark.parametrize(
    "name,kwargs,words",
    [
        ("ShuffleAttention", {"channels": 40, "groups": 8}, "`channels`=40 must be divisible by 2 * `groups`=16"),
        ("ShuffleAttention", {"channels": 32, "groups": 0}, "`groups` must be a positive integer, got 0"),
        ("ShuffleAttention", {"channels": 0}, "`channels` must be a positive integer, got 0"),
        ("SGE", {"groups": 0}, "`groups` must be a positive integer, got 0"),
        ("SGE", {"groups": 8, "channels": 20}, "`channels`=20 must be divisible by `groups`=8"),
        ("ParallelPolarizedSelfAttention", {"channels": 1}, "`channels` must be at least 2"),
        ("SequentialPolarizedSelfAttention", {"channels": 1}, "`channels` must be at least 2"),
    ],
)
def test_bad_hyper_parameters(package, name, kwargs, words):
    with pytest.raises(ValueError) as info:
        _build(package, name, **kwargs)
    assert words in str(info.value)


@PACKAGES
def test_sge_without_channels_checks_divisibility_at_call_time(package):
    module = _build(package, "SGE", groups=8)
    assert module(_input(package, 2, 16, 5, 7)).shape == _input(package, 2, 16, 5, 7).shape
    with pytest.raises(ValueError, match="`channels`=20 must be divisible by `groups`=8"):
        module(_input(package, 2, 20, 5, 7))


@PACKAGES
@pytest.mark.parametrize("channels", [None, 16])
def test_sge_single_position_is_a_clear_error(package, channels):
    module = _build(package, "SGE", channels, groups=4)
    with pytest.raises(ValueError, match=r"`H\*W` must be at least 2 \(SGE divides by the unbiased std"):
        module(_input(package, 2, 16, 1, 1))
    out = module(_input(package, 2, 16, 1, 2))  # two positions: defined
    assert np.isfinite(np.asarray(out.detach() if package == "torch" else out)).all()


@pytest.mark.filterwarnings("ignore:std\\(\\):UserWarning")  # the reference's own warning
def test_reference_sge_gives_nan_on_a_single_position():
    """The departure documented in SGE's docstring: the reference silently returns NaN."""
    sge = pytest.importorskip("fightingcv_attention.attention.SGE")
    with torch.no_grad():
        out = sge.SpatialGroupEnhance(groups=4)(torch.randn(2, 16, 1, 1))
    assert torch.isnan(out).all()


@PACKAGES
@pytest.mark.parametrize(
    "name,args", [("ShuffleAttention", (16, 4)), ("SGE", (16,)), *[(n, (16,)) for n in PSA]]
)
def test_wrong_channels_and_rank(package, name, args):
    module = _build(package, name, *args)
    with pytest.raises(ValueError, match="`channels`=16 but the"):
        module(_input(package, 2, 24, 5, 5))
    with pytest.raises(ValueError, match="expects a 4-D"):
        module(_input(package, 2, 16, 5, 5)[0])


def test_initial_values_follow_the_reference_in_both_packages():
    expected = {
        "ShuffleAttention": {
            "cweight": 0.0, "cbias": 1.0, "sweight": 0.0, "sbias": 1.0, "gn.weight": 1.0, "gn.bias": 0.0,
        },
        "SGE": {"weight": 0.0, "bias": 0.0},
    }
    args = {"ShuffleAttention": {"channels": 32, "groups": 4}, "SGE": {"groups": 4}}
    for name, values in expected.items():
        torch_state = attn_torch.MODULES[name](**args[name]).state_dict()
        flax_state = parity.state_dict(attn_flax.MODULES[name](**args[name], rngs=nnx.Rngs(0)))
        for key, value in values.items():
            np.testing.assert_array_equal(torch_state[key].numpy(), np.full(torch_state[key].shape, value))
            np.testing.assert_array_equal(flax_state[key], torch_state[key].numpy())


def test_flax_channel_params_are_stored_channel_last():
    module = attn_flax.ShuffleAttention(48, groups=3, rngs=nnx.Rngs(0))
    assert module.cweight.shape == (1, 1, 1, 8)
    assert parity.state_dict(module)["cweight"].shape == (1, 8, 1, 1)
    assert attn_flax.SGE(groups=6, rngs=nnx.Rngs(0)).weight.shape == (1, 1, 1, 6)


@PACKAGES
def test_sge_starts_as_half_the_input(package):
    x = _input(package, 2, 16, 5, 7)
    out = _build(package, "SGE", groups=4)(x)
    np.testing.assert_allclose(np.asarray(out.detach() if package == "torch" else out), 0.5 * np.asarray(x), rtol=1e-6)


def test_channel_shuffle_interleaves_the_two_halves():
    """With the gates at their initial values the only change is the channel order."""
    torch_module = attn_torch.ShuffleAttention(8, groups=2)
    with torch.no_grad():
        torch_module.cbias.fill_(50.0)  # sigmoid(50) == 1: both gates pass everything through
        torch_module.sbias.fill_(50.0)
    flax_module = parity.to_flax(torch_module)
    x = torch.arange(8.0).reshape(1, 8, 1, 1).expand(1, 8, 2, 3).contiguous()
    # groups [0..3], [4..7]; after the shuffle channel 2j is old j, channel 2j+1 is old 4+j
    order = [0, 4, 1, 5, 2, 6, 3, 7]
    with torch.no_grad():
        np.testing.assert_array_equal(torch_module(x)[0, :, 0, 0].numpy(), order)
    out = flax_module(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(out)[0, 0, 0], order)


@pytest.mark.parametrize("name,args", [("ShuffleAttention", (16, 4)), ("SGE", (16,)), *[(n, (16,)) for n in PSA]])
def test_flax_compute_dtype(name, args):
    module = attn_flax.MODULES[name](*args, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = module(jnp.linspace(-2, 2, 5 * 7 * 16).reshape(1, 5, 7, 16).astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out, np.float32)).all()
