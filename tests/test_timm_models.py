"""timm's ResNet family and legacy SENets, every named architecture, in both packages, against timm 1.0.31.

The goldens (tests/data/timm, made by timm itself) hold each architecture's state-dict
manifest and its logits for recipe weights, in eval and train mode. For each of the 89
names: the torch model's keys, shapes and dtypes equal timm's in order, recipe weights
load strictly, and its logits match timm's; the Flax model (same names through the
conversion rules) loads them strictly and matches too.
"""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity
from attn_common.timm_models import MODELS
from parity.checkpoint import build_flax
from parity.convert import iter_leaves
from parity.verify.harness import compare, nhwc
from parity.verify.tolerances import tolerance
from timm_goldens import load_goldens, recipe_input, recipe_state_dict

META, ARRAYS = load_goldens()
NAMES = list(META["models"])
# The slowest first: the pruned ones (every layer a new shape to compile), then by size.
BY_COST = sorted(NAMES, key=lambda n: ("pruned" not in n,
                                      -sum(math.prod(shape) for _, shape, _ in META["models"][n]["manifest"])))


def _tolerance(name: str, mode: str):
    if mode == "eval":
        return tolerance("timm.ResNet", "eval")
    blocks = sum(MODELS[name][1]["layers"])
    return tolerance("timm.ResNet", "train" if blocks <= 40 else "train, over 40 blocks")


def _modes(name: str) -> list[str]:
    # Eval first: a train-mode pass updates the running statistics.
    return ["eval", "train"] if META["models"][name]["train"] else ["eval"]


def test_every_timm_architecture_is_named():
    assert len(NAMES) == 89
    for package in (attn_torch, attn_flax):
        assert sorted(package.list_models()) == sorted(NAMES)


def _torch_logits(name: str, state: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    entry = META["models"][name]
    model = attn_torch.create_model(name, device="meta")  # no random initialisation: all is loaded
    manifest = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert manifest == entry["manifest"], "torch state-dict manifest differs from timm's"
    # Weights shared with the recipe arrays; the statistics a train-mode pass updates are copied.
    tensors = {k: torch.from_numpy(v if v.ndim > 1 or "weight" in k or "bias" in k else v.copy())
               for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    if any(b.is_meta for b in model.buffers()):  # a non-persistent buffer (BlurPool's filter) needs a real build
        model = attn_torch.create_model(name)
        model.load_state_dict(tensors, strict=True)
    out = {}
    for mode in _modes(name):
        with torch.no_grad():
            out[mode] = model.train(mode == "train")(torch.from_numpy(x)).numpy()
    return out


def _flax_logits(name: str, state: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    entry = META["models"][name]

    def build() -> nnx.Module:
        return attn_flax.create_model(name, rngs=nnx.Rngs(0))

    # Shapes only, no random init (no initialiser to compile, 1.9 GB saved for resnext101_32x32d); but
    # under nnx.eval_shape each draw from nnx.Rngs costs O(model), so the deep ones are built for real.
    shallow = sum(MODELS[name][1]["layers"]) <= 40
    model = nnx.eval_shape(build) if shallow else build()
    # As sets: a module rebuilt by nnx.eval_shape lists its attributes sorted.
    leaves = sorted([leaf.torch_name, list(leaf.torch_shape())] for leaf in iter_leaves(model))
    assert leaves == sorted([k, shape] for k, shape, _ in entry["manifest"]), "Flax names/shapes differ from timm's"
    # Loaded in slices that are dropped from the recipe as they go: the largest model
    # (resnext101_32x32d, 469M parameters) would otherwise hold three float32 copies at once.
    keys, elements, last = [], 0, next(reversed(state))
    for key in list(state):
        keys.append(key)
        elements += state[key].size
        if elements > 2**25 or key == last:
            parity.load_state_dict(model, {k: state.pop(k) for k in keys}, strict=False)
            keys, elements = [], 0
    assert not state
    out = {}
    for mode in _modes(name):
        model.train() if mode == "train" else model.eval()
        out[mode] = np.asarray(model(jnp.asarray(nhwc(x))))
    return out


@pytest.mark.parametrize("name", BY_COST)  # see conftest.LONGEST_FIRST
def test_matches_timm(name: str):
    """Both packages against timm's logits (one recipe per architecture: drawing it costs most)."""
    state = recipe_state_dict(META["models"][name]["manifest"])
    x = recipe_input(META["models"][name]["input"])
    failures = []
    # Flax last: it consumes the recipe.
    for framework, run in (("torch", _torch_logits), ("flax", _flax_logits)):
        for mode, got in run(name, state, x).items():
            result = compare(f"{framework} {mode}", {"logits": ARRAYS[f"models/{name}/{mode}"]}, {"logits": got},
                             _tolerance(name, mode))
            if not result.passed:
                failures.append(result.describe(name, "timm golden"))
    assert not failures, "\n".join(failures)


def test_unknown_name_names_it_and_close_matches():
    for create in (attn_torch.create_model, lambda n: attn_flax.create_model(n, rngs=nnx.Rngs(0))):
        with pytest.raises(ValueError, match=r"'seresnet5'.*seresnet50"):
            create("seresnet5")
        with pytest.raises(ValueError, match=r"'no_such_net'.*list_models"):
            create("no_such_net")


def test_list_models_pattern():
    assert attn_torch.list_models("legacy_*") == [
        "legacy_senet154", "legacy_seresnet18", "legacy_seresnet34", "legacy_seresnet50", "legacy_seresnet101",
        "legacy_seresnet152", "legacy_seresnext26_32x4d", "legacy_seresnext50_32x4d", "legacy_seresnext101_32x4d"]
    assert attn_flax.list_models("*eca*") == attn_torch.list_models("*eca*")
    assert "ecaresnet50d" in attn_flax.list_models("*eca*")
    assert attn_torch.list_models("nothing*") == []


@pytest.mark.parametrize("name", ["resnet10t", "legacy_seresnet18"])
def test_fine_tuning_api(name: str):
    torch_model = attn_torch.create_model(name, num_classes=0, in_chans=1).eval()
    flax_model = parity.to_flax(torch_model)
    x = np.random.default_rng(1).standard_normal((2, 1, 40, 48)).astype(np.float32)
    with torch.no_grad():
        pooled = torch_model(torch.from_numpy(x)).numpy()
        features = torch_model.forward_features(torch.from_numpy(x))
    assert pooled.shape == (2, torch_model.num_features)
    np.testing.assert_allclose(np.asarray(flax_model(jnp.asarray(nhwc(x)))), pooled, rtol=1e-5, atol=1e-5)
    assert flax_model.forward_features(jnp.asarray(nhwc(x))).shape == nhwc(features.numpy()).shape

    torch_model.reset_classifier(7, global_pool="catavgmax")
    flax_model.reset_classifier(7, global_pool="catavgmax", rngs=nnx.Rngs(1))
    assert torch_model.head_hidden_size == flax_model.head_hidden_size == 2 * torch_model.num_features
    parity.load_state_dict(flax_model, torch_model.state_dict())
    with torch.no_grad():
        logits = torch_model(torch.from_numpy(x)).numpy()
        pre = torch_model.forward_head(features, pre_logits=True).numpy()
    assert logits.shape == (2, 7) and pre.shape == (2, 2 * torch_model.num_features)
    np.testing.assert_allclose(np.asarray(flax_model(jnp.asarray(nhwc(x)))), logits, rtol=1e-5, atol=1e-5)
    flax_pre = flax_model.forward_head(jnp.asarray(nhwc(features.numpy())), pre_logits=True)
    np.testing.assert_allclose(np.asarray(flax_pre), pre, rtol=1e-5, atol=1e-5)


def test_conversion_round_trip_is_bit_exact(tmp_path):
    torch_model = attn_torch.create_model("resnet10t", block_args={"attn_layer": "eca"}, num_classes=5)
    assert type(torch_model).registry_name == "timm.ResNet"
    json.dumps(torch_model.init_kwargs)  # storable with a Flax checkpoint
    flax_model = parity.to_flax(torch_model.eval())
    back = parity.to_torch(flax_model)
    assert list(back.state_dict()) == list(torch_model.state_dict())
    for key, value in torch_model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(flax_model(jnp.asarray(nhwc(x)))), expected, rtol=1e-5, atol=1e-5)

    path = parity.save_flax(flax_model, tmp_path / "model.safetensors")
    rebuilt = build_flax("timm.ResNet", torch_model.init_kwargs)
    assert parity.load_flax(rebuilt, path)["model"] == "timm.ResNet"
    rebuilt.eval()
    assert np.array_equal(np.asarray(rebuilt(jnp.asarray(nhwc(x)))), np.asarray(flax_model(jnp.asarray(nhwc(x)))))


def test_torch_classes_are_accepted_as_timm_passes_them():
    from functools import partial

    from attn_torch.timm import resnet as tr

    by_name = attn_torch.create_model("resnetrs50", aa_layer="avgpool")
    se = partial(attn_torch.timm.SEModule, rd_ratio=0.25)
    by_class = tr.ResNet(tr.Bottleneck, [3, 4, 6, 3], stem_width=32, stem_type="deep", replace_stem_pool=True,
                         avg_down=True, act_layer=torch.nn.ReLU, norm_layer=torch.nn.BatchNorm2d,
                         aa_layer=torch.nn.AvgPool2d, block_args={"attn_layer": se})
    assert [(k, v.shape) for k, v in by_name.state_dict().items()] == [
        (k, v.shape) for k, v in by_class.state_dict().items()]
    with pytest.raises(ValueError, match="'nope' is not a timm attention kind"):
        attn_torch.create_model("resnet18", block_args={"attn_layer": "nope"})
    with pytest.raises(ValueError, match="`stem_type`='wide'"):
        attn_flax.create_model("resnet18", stem_type="wide", rngs=nnx.Rngs(0))


def test_drop_path_and_dropout_in_training_only():
    model = attn_flax.create_model("resnet10t", drop_path_rate=0.5, drop_rate=0.5, num_classes=3,
                                   rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 32, 32, 3)), jnp.float32)
    model.eval()
    assert np.array_equal(np.asarray(model(x)), np.asarray(model(x)))
    model.train()
    assert not np.array_equal(np.asarray(model(x)), np.asarray(model(x)))
    torch_model = attn_torch.create_model("resnet10t", drop_path_rate=0.5, num_classes=3)
    assert [b.drop_path for b in torch_model.layer1] == [None]  # the first block is never dropped
    assert torch_model.layer4[0].drop_path.drop_prob == 0.5
    assert model.layer4.layers[0].drop_path.rate == 0.5


def test_golden_check_can_fail():
    name = "resnet10t"
    state = recipe_state_dict(META["models"][name]["manifest"])
    state["layer2.0.conv1.weight"] = -state["layer2.0.conv1.weight"]
    logits = _torch_logits(name, state, recipe_input(META["models"][name]["input"]))["eval"]
    result = compare("torch eval", {"logits": ARRAYS[f"models/{name}/eval"]}, {"logits": logits},
                     _tolerance(name, "eval"))
    assert not result.passed
