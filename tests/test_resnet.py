"""The ResNet backbone: torchvision's parameter names, attention in every block, argument checks.

torchvision cannot be installed beside torch 2.13 here, so its layout is written out
independently below from torchvision's documented architecture (``resnet.py``:
``conv1``/``bn1`` stem, ``layer1..4`` of ``BasicBlock``/``Bottleneck`` with a
``downsample`` = ``Sequential(conv1x1, BatchNorm2d)`` where the shape changes, ``fc``)
and its documented parameter counts. That list is not generated from our code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import attn_torch
import parity
from attn_common import eca_kernel_size
from parity.checkpoint import build_flax
from parity.verify.harness import compare, nhwc, randomize_
from parity.verify.tolerances import tolerance

# torchvision resnet18, module by module: (name, kind, shape of its weight).
TORCHVISION_RESNET18 = """
conv1 conv 64,3,7,7
bn1 bn 64
layer1.0.conv1 conv 64,64,3,3
layer1.0.bn1 bn 64
layer1.0.conv2 conv 64,64,3,3
layer1.0.bn2 bn 64
layer1.1.conv1 conv 64,64,3,3
layer1.1.bn1 bn 64
layer1.1.conv2 conv 64,64,3,3
layer1.1.bn2 bn 64
layer2.0.conv1 conv 128,64,3,3
layer2.0.bn1 bn 128
layer2.0.conv2 conv 128,128,3,3
layer2.0.bn2 bn 128
layer2.0.downsample.0 conv 128,64,1,1
layer2.0.downsample.1 bn 128
layer2.1.conv1 conv 128,128,3,3
layer2.1.bn1 bn 128
layer2.1.conv2 conv 128,128,3,3
layer2.1.bn2 bn 128
layer3.0.conv1 conv 256,128,3,3
layer3.0.bn1 bn 256
layer3.0.conv2 conv 256,256,3,3
layer3.0.bn2 bn 256
layer3.0.downsample.0 conv 256,128,1,1
layer3.0.downsample.1 bn 256
layer3.1.conv1 conv 256,256,3,3
layer3.1.bn1 bn 256
layer3.1.conv2 conv 256,256,3,3
layer3.1.bn2 bn 256
layer4.0.conv1 conv 512,256,3,3
layer4.0.bn1 bn 512
layer4.0.conv2 conv 512,512,3,3
layer4.0.bn2 bn 512
layer4.0.downsample.0 conv 512,256,1,1
layer4.0.downsample.1 bn 512
layer4.1.conv1 conv 512,512,3,3
layer4.1.bn1 bn 512
layer4.1.conv2 conv 512,512,3,3
layer4.1.bn2 bn 512
fc linear 1000,512
"""

# torchvision's documented sizes: (parameters, state dict entries).
TORCHVISION_SIZES = {18: (11_689_512, 122), 34: (21_797_672, 218), 50: (25_557_032, 320), 101: (44_549_160, 626)}


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for line in TORCHVISION_RESNET18.strip().splitlines():
        name, kind, dims = line.split()
        shape = tuple(int(d) for d in dims.split(","))
        if kind == "bn":
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.{leaf}"] = shape
            shapes[f"{name}.num_batches_tracked"] = ()
        else:
            shapes[f"{name}.weight"] = shape
            if kind == "linear":
                shapes[f"{name}.bias"] = shape[:1]
    return shapes


def test_resnet18_has_torchvision_names_shapes_and_order():
    model = attn_torch.ResNet(18)
    expected = torchvision_resnet18_shapes()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == list(expected.items())


def test_both_packages_share_the_layout_tables():
    from attn_common import tables
    from attn_flax import models as flax_models
    from attn_torch import models as torch_models

    for models in (torch_models, flax_models):
        assert models.LAYOUTS is tables.RESNET_LAYOUTS and models.WIDTHS is tables.RESNET_WIDTHS
    assert sorted(tables.RESNET_LAYOUTS) == sorted(TORCHVISION_SIZES)


@pytest.mark.parametrize("depth", sorted(TORCHVISION_SIZES))
def test_parameter_counts_match_torchvision(depth):
    model = attn_torch.ResNet(depth, device="meta")
    params, entries = TORCHVISION_SIZES[depth]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == entries


def test_torchvision_state_dict_loads_strictly_in_both_frameworks():
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) if shape else torch.tensor(7) for k, shape in
             torchvision_resnet18_shapes().items()}
    torch_model = attn_torch.ResNet(18, attention=None)
    torch_model.load_state_dict(state, strict=True)
    flax_model = build_flax("ResNet", {"depth": 18})
    parity.load_state_dict(flax_model, state, strict=True)
    back = parity.state_dict(flax_model)
    assert all(np.array_equal(back[k], v.numpy()) for k, v in state.items())


def test_attention_sits_in_every_block_with_the_block_width():
    model = attn_torch.ResNet(18, attention="cbam", reduction=8)
    assert model.attention == "CBAM"
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    assert [block.attn.channels for block in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(isinstance(block.attn, attn_torch.CBAM) for block in blocks)
    extra = set(model.state_dict()) - set(torchvision_resnet18_shapes())
    assert extra == {f"layer{s}.{b}.attn.{leaf}" for s in range(1, 5) for b in range(2)
                     for leaf in ("ca.se.0.weight", "ca.se.2.weight", "sa.conv.weight", "sa.conv.bias")}
    assert model.layer2[0].attn.ca.se[0].weight.shape == (128 // 8, 128, 1, 1)


def test_bottleneck_attention_gets_the_expanded_width_and_eca_adapts_its_kernel():
    model = attn_torch.ResNet(50, attention="ECA", num_classes=10, device="meta")
    widths = [block.attn.channels for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    assert widths == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert model.layer1[0].attn.kernel_size == eca_kernel_size(256) == 5
    assert model.layer4[0].attn.kernel_size == eca_kernel_size(2048) == 7


def test_attention_arguments_are_recorded_and_rebuild_the_twin():
    model = randomize_(attn_torch.ResNet(18, attention="SGE", num_classes=10, groups=8), 0)
    assert model.init_kwargs == {"depth": 18, "attention": "SGE", "num_classes": 10, "groups": 8}
    flax_model = parity.to_flax(model)
    assert flax_model.init_kwargs == model.init_kwargs
    assert flax_model.layer3.layers[1].attn.groups == 8
    back = parity.to_torch(flax_model).state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_bottleneck_resnet50_agrees_with_torch():
    """SPECS checks ResNet-18 in full; this checks the bottleneck path (eval, jit, odd map)."""
    torch.manual_seed(0)
    model = randomize_(attn_torch.ResNet(50, attention="se", num_classes=10), 1).eval()
    flax_model = build_flax("ResNet", model.init_kwargs)
    parity.load_state_dict(flax_model, model.state_dict())
    flax_model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 45), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.jit(lambda v: flax_model(v))(jnp.asarray(nhwc(x))))
    result = compare("eval", {"output": expected}, {"output": got}, tolerance("ResNet", "eval"))
    assert result.passed, result.describe("ResNet-50", "2x3x37x45")


def test_features_keep_the_last_stage_map():
    model = attn_torch.ResNet(34, num_classes=10).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 65, 33)).shape == (1, 512, 3, 2)
        assert model(torch.zeros(1, 3, 7, 5)).shape == (1, 10)


@pytest.mark.parametrize("framework", ["torch", "flax"])
@pytest.mark.parametrize("kwargs,match", [
    ({"depth": 20}, "`depth` must be one of 18, 34, 50, 101, got 20"),
    ({"depth": 18, "attention": "nope"}, "`attention`='nope' is not one of"),
    ({"depth": 18, "attention": "resnet"}, "`attention`='resnet' is not one of"),
    ({"depth": 18, "reduction": 8}, r"attention arguments \['reduction'\] were given but `attention` is None"),
    ({"depth": 18, "attention": "SE", "channels": 64}, "`channels` of the attention is set by ResNet"),
    ({"depth": 18, "num_classes": 0}, "`num_classes` must be a positive integer, got 0"),
])
def test_bad_arguments_raise_value_errors(framework, kwargs, match):
    with pytest.raises(ValueError, match=match):
        if framework == "torch":
            attn_torch.ResNet(**kwargs, device="meta")
        else:
            build_flax("ResNet", kwargs)


def test_wrong_input_channels_are_named():
    with pytest.raises(ValueError, match="ResNet was built with `channels`=3"):
        attn_torch.ResNet(18, device="meta")(torch.zeros(1, 4, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="looks like an NCHW array"):
        build_flax("ResNet", {"depth": 18})(jnp.zeros((1, 3, 8, 8)))
