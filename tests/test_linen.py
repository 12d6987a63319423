"""attn_flax.linen: every registered module as a Linen module, equal to its nnx twin, fed from torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import nnx

import attn_flax
import attn_torch
import parity
from attn_flax import linen as attn_linen
from parity.checkpoint import build_flax
from parity.convert_cli import main as convert
from parity.verify.harness import compare, nhwc, randomize_
from parity.verify.registry import SPECS
from parity.verify.tolerances import tolerance

NAMES = sorted(name for name in SPECS if name != "ResNet")  # ResNet: from a checkpoint, below


def _inputs(shape, seed=0):
    return jnp.asarray(nhwc(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)))


def test_every_registered_module_is_wrapped():
    assert set(attn_flax.MODULES) <= set(attn_linen.__all__)
    for name, cls in attn_flax.MODULES.items():
        wrapper = getattr(attn_linen, name)
        assert issubclass(wrapper, nn.Module) and issubclass(wrapper, attn_linen.Bridged)
        assert wrapper.__name__ == name and f"attn_flax.{name}" in wrapper.__doc__


@pytest.mark.parametrize("name", NAMES)
def test_linen_equals_nnx_with_the_same_weights(name):
    spec = SPECS[name]
    torch.manual_seed(0)
    torch_module = randomize_(attn_torch.MODULES[name](**spec.kwargs), 0)
    module = parity.to_flax(torch_module)
    variables = attn_linen.to_variables(module)
    model = getattr(attn_linen, name)(**spec.kwargs)
    x = _inputs(spec.example_shape)

    initialised = model.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, initialised) == jax.tree.map(jnp.shape, variables)
    has_stats = any(isinstance(v, nnx.BatchStat) for _, v in nnx.to_flat_state(nnx.state(module)))
    assert set(variables) == ({"params", "batch_stats"} if has_stats else {"params"})

    module.eval()
    np.testing.assert_array_equal(np.asarray(model.apply(variables, x)), np.asarray(module(x)))
    module.train()
    y, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(module(x)))
    after = attn_linen.to_variables(module)
    assert jax.tree.all(jax.tree.map(np.array_equal, dict(updates), {k: v for k, v in after.items() if k != "params"}))

    back = parity.to_torch(attn_linen.to_nnx(model, variables)).state_dict()  # linen -> torch
    assert all(torch.equal(back[k], v) for k, v in torch_module.state_dict().items())


def test_channel_params_stay_among_the_params():
    variables = attn_linen.SGE(32, groups=4).init(jax.random.key(0), _inputs((2, 32, 5, 7)))
    assert set(variables) == {"params"}
    assert jax.tree.map(jnp.shape, variables["params"]) == {"weight": (1, 1, 1, 4), "bias": (1, 1, 1, 4)}


def test_training_needs_mutable_batch_stats():
    x = _inputs((2, 32, 6, 5))
    model = attn_linen.CoordAttention(32, reduction=8)
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
        model.apply(variables, x, train=True)
    se = attn_linen.SE(32, reduction=4)  # no BatchNorm: nothing to update
    se.apply(se.init(jax.random.key(0), x), x, train=True)


def test_wrappers_nest_in_a_linen_model_under_jit():
    class Head(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(32, (3, 3))(x)
            x = attn_linen.CBAM(32, reduction=4)(x, train)
            return attn_linen.CoordAttention(32, reduction=8)(x, train)

    x = _inputs((2, 16, 7, 5))
    variables = Head().init(jax.random.key(0), x)
    assert set(variables["params"]) == {"Conv_0", "CBAM_0", "CoordAttention_0"}
    y, updates = jax.jit(lambda v, x: Head().apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert y.shape == (2, 7, 5, 32)
    assert int(updates["batch_stats"]["CoordAttention_0"]["bn1"]["num_batches_tracked"]) == 1


def test_to_nnx_is_strict():
    model = attn_linen.SE(32, reduction=4)
    variables = model.init(jax.random.key(0), _inputs((1, 32, 3, 3)))
    wrong = {"params": {**variables["params"], "extra": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        attn_linen.to_nnx(model, wrong)
    with pytest.raises(ValueError, match="shape mismatches"):
        attn_linen.to_nnx(attn_linen.SE(64, reduction=8), variables)


def test_linen_resnet_from_a_torch_checkpoint(tmp_path):
    """torch .pt -> attn-convert -> load_flax -> Linen variables -> apply, against torch."""
    torch.manual_seed(0)
    torch_model = randomize_(attn_torch.ResNet(18, attention="cbam", num_classes=10), 5).eval()
    torch.save(torch_model.state_dict(), tmp_path / "resnet.pt")
    kwargs = {"depth": 18, "attention": "cbam", "num_classes": 10}
    assert convert(["to-flax", str(tmp_path / "resnet.pt"), str(tmp_path / "resnet.safetensors"), "--model", "ResNet",
                    *[a for k, v in kwargs.items() for a in ("--arg", f"{k}={v}")]]) == 0
    module = build_flax("ResNet", kwargs)
    parity.load_flax(module, tmp_path / "resnet.safetensors")
    variables = attn_linen.to_variables(module)
    assert set(variables) == {"params", "batch_stats"}

    x = np.random.default_rng(1).standard_normal((2, 3, 35, 29), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    model = attn_linen.ResNet(**kwargs)
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(nhwc(x))))
    result = compare("eval", {"output": expected}, {"output": got}, tolerance("ResNet", "eval"))
    assert result.passed, result.describe("linen ResNet", "2x3x35x29")
