"""BAM and GAM: reference checkpoints, the papers' formulas, and their ValueErrors."""

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import attn_flax
import attn_torch
from parity.convert import state_dict, to_flax
from parity.verify.harness import randomize_
from reference_check import assert_agrees_with_reference

BATCH_1_TRAINING = "BAM in training mode needs more than one value per channel"


def _reference_bam(channels: int, reduction: int, dilation: int, *, fix_padding: bool):
    from fightingcv_attention.attention.BAM import BAMBlock

    reference = BAMBlock(channel=channels, reduction=reduction, dia_val=dilation)
    if fix_padding:  # the official BAM pads the dilated convs by the dilation
        for i in range(3):
            getattr(reference.sa.sa, f"conv_{i}").padding = (dilation, dilation)
    return reference


def test_bam_reference_state_dict_loads_strictly():
    pytest.importorskip("fightingcv_attention.attention")
    reference = _reference_bam(64, 16, 2, fix_padding=False)
    ours = attn_torch.BAM(64, reduction=16, dilation=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    theirs = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs


@pytest.mark.parametrize("dilation,shape", [(2, (3, 64, 9, 11)), (3, (4, 64, 7, 5))])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bam_agrees_with_the_reference_with_its_padding_fixed(dilation, shape, training):
    pytest.importorskip("fightingcv_attention.attention")
    reference = _reference_bam(64, 16, dilation, fix_padding=True)
    assert_agrees_with_reference(reference, attn_torch.BAM(64, reduction=16, dilation=dilation), shape, training)


def test_bam_reference_without_the_fix_only_runs_at_7x7():
    """Documents the departure: the reference's padding-1 dilated convs shrink the map."""
    pytest.importorskip("fightingcv_attention.attention")
    reference = _reference_bam(64, 16, 2, fix_padding=False).eval()
    assert reference.sa(torch.randn(2, 64, 7, 7)).shape == (2, 64, 7, 7)  # a 1x1 map, broadcast
    with pytest.raises(RuntimeError):
        reference(torch.randn(2, 64, 9, 11))
    assert attn_torch.BAM(64).eval()(torch.randn(2, 64, 9, 11)).shape == (2, 64, 9, 11)


def test_bam_flax_names_mirror_torch():
    torch_names = {k: tuple(v.shape) for k, v in attn_torch.BAM(32, 4).state_dict().items()}
    flax_names = {k: v.shape for k, v in state_dict(attn_flax.BAM(32, 4, rngs=nnx.Rngs(0))).items()}
    assert flax_names == torch_names
    assert "ca.ca.bn0.running_var" in flax_names and "sa.sa.last_conv.weight" in flax_names


def test_bam_batch_1_training_is_the_same_clear_error_in_both_packages():
    torch_bam = attn_torch.BAM(32, 4).train()
    flax_bam = attn_flax.BAM(32, 4, rngs=nnx.Rngs(0))
    flax_bam.train()
    with pytest.raises(ValueError) as torch_error:
        torch_bam(torch.randn(1, 32, 5, 7))
    with pytest.raises(ValueError) as flax_error:
        flax_bam(jnp.ones((1, 5, 7, 32)))
    assert BATCH_1_TRAINING in str(torch_error.value)
    assert str(flax_error.value) == str(torch_error.value).replace("(1, 32, 5, 7)", "(1, 5, 7, 32)")
    # Batch 1 in eval works.
    assert torch_bam.eval()(torch.randn(1, 32, 5, 7)).shape == (1, 32, 5, 7)
    flax_bam.eval()
    assert flax_bam(jnp.ones((1, 5, 7, 32))).shape == (1, 5, 7, 32)


def test_gam_batch_1_with_a_1x1_map_in_training_is_a_clear_error():
    torch_gam = attn_torch.GAM(16).train()
    flax_gam = attn_flax.GAM(16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GAM in training mode needs more than one value per channel"):
        torch_gam(torch.randn(1, 16, 1, 1))
    with pytest.raises(ValueError, match="GAM in training mode needs more than one value per channel"):
        flax_gam(jnp.ones((1, 1, 1, 16)))
    assert torch_gam(torch.randn(1, 16, 2, 1)).shape == (1, 16, 2, 1)  # two values per channel


BAD_ARGUMENTS = [
    ("BAM", {"channels": 8, "reduction": 16}, "`reduction`=16 is too large for `channels`=8"),
    ("BAM", {"channels": 32, "dilation": 0}, "`dilation` must be a positive integer, got 0"),
    ("BAM", {"channels": 32, "reduction": 0}, "`reduction` must be a positive integer, got 0"),
    ("GAM", {"channels": 3, "rate": 4}, "`rate`=4 is too large for `channels`=3"),
    ("GAM", {"channels": 32, "rate": 0}, "`rate` must be a positive integer, got 0"),
]


@pytest.mark.parametrize("package", ["torch", "flax"])
@pytest.mark.parametrize("name,kwargs,words", BAD_ARGUMENTS, ids=[f"{b[0]}-{b[2][:24]}" for b in BAD_ARGUMENTS])
def test_bad_hyper_parameters(package, name, kwargs, words):
    with pytest.raises(ValueError) as info:
        if package == "torch":
            attn_torch.MODULES[name](**kwargs)
        else:
            attn_flax.MODULES[name](**kwargs, rngs=nnx.Rngs(0))
    assert words in str(info.value)


@pytest.mark.parametrize("name", ["BAM", "GAM"])
def test_wrong_input_is_named(name):
    with pytest.raises(ValueError, match=f"{name} was built with `channels`=16 but the NCHW input"):
        attn_torch.MODULES[name](16, 4)(torch.zeros(2, 12, 5, 5))
    with pytest.raises(ValueError, match="looks like an NCHW array"):
        attn_flax.MODULES[name](16, 4, rngs=nnx.Rngs(0))(jnp.zeros((2, 16, 5, 7)))
    with pytest.raises(ValueError, match=r"expects a 4-D NHWC input, got shape \(2, 8, 16\)"):
        attn_flax.MODULES[name](16, 4, rngs=nnx.Rngs(0))(jnp.zeros((2, 8, 16)))


def _gam_formula(module: attn_torch.GAM, x: torch.Tensor, training: bool) -> torch.Tensor:
    """The paper's GAM written out with functional ops from the module's parameters."""
    fc1, fc2 = module.channel_attention[0], module.channel_attention[2]
    conv1, bn1, conv2, bn2 = (module.spatial_attention[i] for i in (0, 1, 3, 4))

    def bn(y, norm):
        mean, var = norm.running_mean.clone(), norm.running_var.clone()
        return F.batch_norm(y, mean, var, norm.weight, norm.bias, training, 0.1, norm.eps)

    pixels = x.permute(0, 2, 3, 1)  # every pixel's channel vector
    channel_gate = torch.sigmoid(fc2(torch.relu(fc1(pixels)))).permute(0, 3, 1, 2)
    y = x * channel_gate
    hidden = torch.relu(bn(F.conv2d(y, conv1.weight, conv1.bias, padding=3), bn1))
    spatial_gate = torch.sigmoid(bn(F.conv2d(hidden, conv2.weight, conv2.bias, padding=3), bn2))
    return y * spatial_gate


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gam_follows_the_paper_formula(training):
    torch.manual_seed(0)
    module = randomize_(attn_torch.GAM(24, rate=4), seed=3).train(training)
    assert module.channel_attention[0].out_features == int(24 / 4)
    x = torch.randn(3, 24, 7, 9)
    with torch.no_grad():
        expected = _gam_formula(module, x, training)
        got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    flax_module = to_flax(module.eval())
    flax_out = flax_module(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    with torch.no_grad():
        eval_expected = _gam_formula(module, x, False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(flax_out), eval_expected, rtol=1e-5, atol=1e-5)


def test_gam_gates_are_sigmoids():
    """Both gates lie in (0, 1), so |out| < |x|; the seed's raw channel gate breaks this."""
    torch.manual_seed(0)
    module = randomize_(attn_torch.GAM(16, rate=2), seed=0).eval()
    with torch.no_grad():
        module.channel_attention[2].bias.fill_(-50.0)  # channel logits very negative
        x = torch.randn(2, 16, 6, 5)
        out = module(x)
    assert torch.all(out.abs() <= x.abs())
    assert out.abs().max() < 1e-12 * x.abs().max() + 1e-12


def test_bam_is_the_paper_formula():
    """``(1 + sigmoid(channel + spatial)) * x`` with the branches' own outputs."""
    torch.manual_seed(0)
    module = randomize_(attn_torch.BAM(32, reduction=4, dilation=3), seed=2).eval()
    x = torch.randn(2, 32, 6, 7)
    with torch.no_grad():
        channel = module.ca.ca(x.mean((2, 3)))[:, :, None, None]
        spatial = module.sa.sa(x)
        assert spatial.shape == (2, 1, 6, 7)
        torch.testing.assert_close(module(x), (1 + torch.sigmoid(channel + spatial)) * x)
