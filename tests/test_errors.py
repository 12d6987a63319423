"""Bad hyper-parameters and inputs raise the same clear ValueError in both packages."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch

# name, kwargs, words the message must contain
BAD_ARGUMENTS = [
    ("SE", {"channels": 8, "reduction": 16}, "`reduction`=16 is too large for `channels`=8"),
    ("SE", {"channels": 0}, "`channels` must be a positive integer, got 0"),
    ("CBAM", {"channels": 8, "reduction": 16}, "`reduction`=16 is too large for `channels`=8"),
    ("CBAM", {"channels": 32, "kernel_size": 6}, "`kernel_size` must be odd"),
    ("ECA", {"kernel_size": 4}, "`kernel_size` must be odd so that the padding keeps the size, got 4"),
    ("ECA", {"kernel_size": 0}, "`kernel_size` must be a positive integer, got 0"),
    ("CoordAttention", {"channels": 32, "reduction": 0}, "`reduction` must be a positive integer, got 0"),
]


def _build(package, name, kwargs):
    if package == "torch":
        return attn_torch.MODULES[name](**kwargs)
    return attn_flax.MODULES[name](**kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("package", ["torch", "flax"])
@pytest.mark.parametrize("name,kwargs,words", BAD_ARGUMENTS, ids=[f"{b[0]}-{b[2][:30]}" for b in BAD_ARGUMENTS])
def test_bad_hyper_parameters(package, name, kwargs, words):
    with pytest.raises(ValueError) as info:
        _build(package, name, kwargs)
    assert words in str(info.value)


# name, kwargs with channels=16 where the module takes them
INPUT_CHECKED = [
    ("SE", {"channels": 16, "reduction": 4}),
    ("CBAM", {"channels": 16, "reduction": 4}),
    ("ECA", {"channels": 16}),
    ("CoordAttention", {"channels": 16}),
]


@pytest.mark.parametrize("name,kwargs", INPUT_CHECKED)
def test_wrong_rank(name, kwargs):
    with pytest.raises(ValueError, match=r"expects a 4-D NCHW input, got shape \(2, 16, 8\)"):
        _build("torch", name, kwargs)(torch.zeros(2, 16, 8))
    with pytest.raises(ValueError, match=r"expects a 4-D NHWC input, got shape \(2, 8, 16\)"):
        _build("flax", name, kwargs)(jnp.zeros((2, 8, 16)))


@pytest.mark.parametrize("name,kwargs", INPUT_CHECKED)
def test_wrong_channels(name, kwargs):
    with pytest.raises(ValueError, match="`channels`=16 but the NCHW input of shape \\(2, 12, 5, 5\\) has 12"):
        _build("torch", name, kwargs)(torch.zeros(2, 12, 5, 5))


@pytest.mark.parametrize("name,kwargs", INPUT_CHECKED)
def test_nchw_array_given_to_flax_is_named(name, kwargs):
    with pytest.raises(ValueError, match="looks like an NCHW array"):
        _build("flax", name, kwargs)(jnp.zeros((2, 16, 5, 7)))


def test_eca_adaptive_kernel_size_follows_the_paper():
    # k = |log2(C)/2 + 1/2| made odd: C=64 -> 3.5 -> 3, C=256 -> 4.5 -> 4 -> 5, C=512 -> 5
    for channels, k in [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)]:
        assert attn_torch.ECA(channels=channels).kernel_size == k
        assert attn_flax.ECA(channels=channels, rngs=nnx.Rngs(0)).kernel_size == k
    assert attn_torch.ECA().kernel_size == 3
    assert attn_torch.ECA(kernel_size=7, channels=64).kernel_size == 7


def test_batchnorm_single_value_in_training_is_a_clear_error():
    from attn_flax.layers import BatchNorm

    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(4)(jnp.zeros((1, 4)))
    assert np.asarray(BatchNorm(4, use_running_average=True)(jnp.ones((1, 4)))).shape == (1, 4)


# --- one argument convention: `channels` first, NumPy integers, empty maps -------------------------

from parity.verify.registry import SPECS  # noqa: E402


@pytest.mark.parametrize("package", ["torch", "flax"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_channels_is_the_first_argument(package, name):
    cls = (attn_torch if package == "torch" else attn_flax).MODULES[name]
    import inspect

    first = list(inspect.signature(cls.__init__).parameters)[1]
    assert first == ("depth" if name == "ResNet" else "channels"), (name, first)


@pytest.mark.parametrize("package", ["torch", "flax"])
def test_eca_and_sge_take_channels_first_and_hyper_parameters_by_keyword(package):
    eca = _build(package, "ECA", {"channels": 64})
    assert eca.channels == 64 and eca.kernel_size == 3  # adaptive: |log2(64)/2 + 1/2| -> 3
    assert _build(package, "ECA", {"channels": 256}).kernel_size == 5
    sge = _build(package, "SGE", {"channels": 32})
    assert sge.channels == 32 and sge.groups == 8
    cls = (attn_torch if package == "torch" else attn_flax).MODULES["SGE"]
    with pytest.raises(TypeError):  # `groups` is keyword-only: SGE(32, 4) cannot mean anything silently
        cls(32, 4) if package == "torch" else cls(32, 4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("package", ["torch", "flax"])
def test_numpy_integers_are_accepted(package):
    cbam = _build(package, "CBAM", {"channels": np.int64(32), "reduction": np.int32(4)})
    assert type(cbam.channels) is int and cbam.channels == 32
    assert _build(package, "ECA", {"channels": np.int64(64), "kernel_size": np.int16(5)}).kernel_size == 5
    with pytest.raises(ValueError, match="`channels` must be a positive integer, got True"):
        _build(package, "SE", {"channels": True})


@pytest.mark.parametrize("package", ["torch", "flax"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_empty_map_is_refused_in_every_module(package, name):
    spec = SPECS[name]
    n, c, h, w = spec.example_shape
    module = _build(package, name, dict(spec.kwargs))
    for shape in ((n, c, 0, w), (n, c, h, 0)):
        x = torch.zeros(shape) if package == "torch" else jnp.zeros((shape[0], shape[2], shape[3], shape[1]))
        with pytest.raises(ValueError, match="needs a non-empty spatial map"):
            module(x)
