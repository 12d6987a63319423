"""timm's attention layers in both packages against timm 1.0.31's own outputs (tests/data/timm).

For each of the 25 layer configurations of the goldens: the torch layer built by
``create_attn`` has timm's state-dict keys, shapes and dtypes in timm's order, loads the
recipe weights strictly and reproduces timm's output in eval and train mode; its Flax
twin (converted, and built directly by ``attn_flax.create_attn`` then loaded) does too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity
from attn_common.timm import ATTN_KINDS
from parity.verify.harness import compare
from parity.verify.tolerances import tolerance
from timm_goldens import load_goldens, recipe_input, recipe_state_dict

META, ARRAYS = load_goldens()
LABELS = sorted(META["layers"])
MODES = ("eval", "train")

# timm 1.0.31's create_attn kinds (timm/layers/create_attn.py).
TIMM_KINDS = {"se", "ese", "eca", "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord", "scoord", "ela",
              "strip", "nl", "bat", "sk", "splat", "lambda", "bottleneck", "halo"}


def _entry(label):
    return META["layers"][label]


def _manifest(module):
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()]


def _check(label, mode, got_nchw):
    golden = ARRAYS[f"layers/{label}/{mode}"]
    tol = tolerance(f"timm.{_entry(label)['create_attn']}", "golden")
    result = compare(mode, {"out": golden}, {"out": np.asarray(got_nchw)}, tol)
    assert result.passed, result.describe(label, "timm golden")


def _torch_layer(label):
    entry = _entry(label)
    module = attn_torch.create_attn(entry["create_attn"], **entry["kwargs"])
    assert _manifest(module) == entry["manifest"], f"{label}: state dict differs from timm's"
    weights = {k: torch.from_numpy(v) for k, v in recipe_state_dict(entry["manifest"]).items()}
    module.load_state_dict(weights, strict=True)
    return module


def _flax_outputs(module, x_nchw):
    """Each mode's output, eager, with the CPU kernels on and off (the first must agree with timm too)."""
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    out = {}
    for mode in MODES:
        module.eval() if mode == "eval" else module.train()
        for kernels in (True, False):
            with attn_flax.set_cpu_kernels(kernels):
                out[mode, kernels] = np.asarray(nnx.clone(module)(x)).transpose(0, 3, 1, 2)
    return out


@pytest.mark.parametrize("label", LABELS)
def test_torch_matches_timm(label):
    module = _torch_layer(label)
    x = torch.from_numpy(recipe_input(_entry(label)["input"]))
    assert _entry(label)["train"]
    for mode in MODES:
        module.train(mode == "train")
        with torch.no_grad():
            _check(label, mode, module(x).numpy())


@pytest.mark.parametrize("label", LABELS)
def test_flax_matches_timm(label):
    entry = _entry(label)
    x = recipe_input(entry["input"])
    converted = parity.to_flax(_torch_layer(label))
    for (mode, _), y in _flax_outputs(converted, x).items():
        _check(label, mode, y)
    # Built directly by create_attn, loaded from the timm-named state dict.
    direct = attn_flax.create_attn(entry["create_attn"], **entry["kwargs"], rngs=nnx.Rngs(0))
    assert sorted(parity.state_dict(direct)) == sorted(k for k, _, _ in entry["manifest"])
    parity.load_state_dict(direct, recipe_state_dict(entry["manifest"]), strict=True)
    for (mode, _), y in _flax_outputs(direct, x).items():
        _check(label, mode, y)


def test_goldens_cover_every_kind():
    assert {e["create_attn"] for e in META["layers"].values()} == TIMM_KINDS
    assert len(LABELS) == 25


@pytest.mark.parametrize("package", [attn_torch, attn_flax], ids=["torch", "flax"])
def test_create_attn_knows_timms_kinds(package):
    assert set(ATTN_KINDS) == TIMM_KINDS
    for kind in TIMM_KINDS:
        assert package.get_attn(kind) is not None and package.get_attn(kind.upper()) is not None
    assert package.get_attn(None) is None and package.create_attn("", 8) is None
    assert package.get_attn(True) is package.MODULES["SEModule"]
    with pytest.raises(ValueError, match="'squeeze'"):
        package.get_attn("squeeze")
    with pytest.raises(ValueError, match="'squeeze'"):
        package.create_attn("squeeze", 8)


def test_timm_layers_are_registered_in_both_packages():
    torch_timm = {n for n, c in attn_torch.MODULES.items() if c.__module__.startswith("attn_torch.timm.")}
    flax_timm = {n for n, c in attn_flax.MODULES.items() if c.__module__.startswith("attn_flax.timm.")}
    assert torch_timm == flax_timm
    assert {ATTN_KINDS[k][0] for k in TIMM_KINDS} <= torch_timm
    for name in torch_timm:  # the models are registered as "timm.ResNet", "timm.SENet"
        assert getattr(attn_torch.timm, name.removeprefix("timm.")) is attn_torch.MODULES[name]
        assert getattr(attn_flax.timm, name.removeprefix("timm.")) is attn_flax.MODULES[name]


def test_blurpool_filter_is_not_state():
    torch_pool = attn_torch.timm.BlurPool2d(4)
    assert dict(torch_pool.state_dict()) == {}
    flax_pool = attn_flax.timm.BlurPool2d(4)
    assert parity.state_dict(flax_pool) == {}
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 8)).astype(np.float32)
    expected = torch_pool(torch.from_numpy(x)).numpy()
    got = np.asarray(flax_pool(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_recorded_arguments_cross_frameworks():
    """Classes given to the torch layer (nn.ReLU, nn.BatchNorm2d) reach the Flax twin by name, and back."""
    module = attn_torch.create_attn("se", 16, act_layer=torch.nn.SiLU, norm_layer=torch.nn.BatchNorm2d)
    flax_module = parity.to_flax(module.eval())
    x = np.random.default_rng(1).standard_normal((2, 16, 5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = np.asarray(flax_module(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    back = parity.to_torch(flax_module)
    assert type(back.act) is torch.nn.SiLU and type(back.bn) is torch.nn.BatchNorm2d


def test_register_under_an_explicit_key():
    from attn_common.registry import make_registry
    from parity.convert import registered_name

    modules, register = make_registry(framework_args=("device",))

    class ResNet:
        def __init__(self, depth: int, width: int = 64, device=None):
            self.depth = depth

    register(ResNet)
    timm_resnet = register(name="timm.ResNet")(type("ResNet", (), {"__init__": lambda self, layers=2, **kw: None}))
    assert modules["ResNet"] is ResNet and modules["timm.ResNet"] is timm_resnet
    assert ResNet(50, device="cpu").init_kwargs == {"depth": 50, "width": 64}
    built = timm_resnet(layers=3, drop=0.1)
    assert built.init_kwargs == {"layers": 3, "drop": 0.1}
    assert registered_name(built) == "timm.ResNet" and registered_name(ResNet(18)) == "ResNet"
    with pytest.raises(ValueError, match="timm.ResNet"):
        register(name="timm.ResNet")(timm_resnet)


# Options the goldens do not reach, torch against Flax with every parity check (outputs in
# eval and train, input and parameter gradients, BatchNorm statistics, jit): (name, kwargs, NCHW).
OFF_GOLDEN = [
    # BatchNorm on the pooled (N, 1, 1, C) map: with N=2 it outputs +-1 and its input gradient is rounding noise.
    ("SEModule", dict(channels=16, norm_layer="batchnorm2d", add_maxpool=True, act_layer="silu"), (4, 16, 5, 6)),
    ("CecaModule", dict(channels=None, kernel_size=5, act_layer="relu"), (2, 12, 4, 5)),
    ("GatherExcite", dict(channels=16, extent=4, extra_params=True), (2, 16, 8, 7)),
    ("GatherExcite", dict(channels=16, extent=2, add_maxpool=True, use_mlp=False), (2, 16, 7, 6)),
    ("GlobalContext", dict(channels=16, use_attn=False, fuse_add=True), (2, 16, 5, 6)),
    ("CoordAttn", dict(channels=16, has_skip=True, gate_layer="hard_sigmoid"), (2, 16, 5, 7)),
    ("EfficientLocalAttn", dict(channels=16, norm_layer=None, kernel_size=3), (2, 16, 5, 7)),
    ("StripAttn", dict(channels=16, use_conv=False, has_skip=True), (2, 16, 5, 7)),
    ("NonLocalAttn", dict(in_channels=16, use_scale=False), (2, 16, 5, 6)),
    ("BatNonLocalAttn", dict(in_channels=16, block_size=2, drop_rate=0.0), (2, 16, 4, 6)),
    ("SelectiveKernel", dict(in_channels=16, out_channels=24, stride=2, aa_layer="blur"), (2, 16, 8, 7)),
    ("SplitAttn", dict(in_channels=16, out_channels=16, radix=1, norm_layer="batchnorm2d"), (2, 16, 5, 6)),
    ("SplitAttn", dict(in_channels=16, out_channels=32, groups=2, stride=2), (2, 16, 7, 6)),
    ("LambdaLayer", dict(dim=16, num_heads=4, dim_head=4, r=None, feat_size=(4, 6)), (2, 16, 4, 6)),
    ("LambdaLayer", dict(dim=16, dim_out=32, num_heads=4, dim_head=4, r=3, stride=2), (2, 16, 6, 6)),
    ("BottleneckAttn", dict(dim=16, feat_size=(4, 6), num_heads=2, stride=2, scale_pos_embed=True), (2, 16, 4, 6)),
    ("HaloAttn", dict(dim=16, num_heads=2, block_size=4, halo_size=1, stride=2), (2, 16, 8, 4)),
    ("HaloAttn", dict(dim=16, dim_out=8, num_heads=2, block_size=2, halo_size=1, avg_down=True, stride=2),
     (2, 16, 4, 6)),
    ("ConvNormAct", dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, aa_layer="avg"), (2, 8, 6, 6)),
    ("BlurPool2d", dict(channels=None, filt_size=5, pad_mode="constant"), (2, 8, 9, 8)),
    # Defaults of the remaining kinds, for the gradient and BatchNorm-statistics checks.
    ("EffectiveSEModule", dict(channels=16), (2, 16, 5, 6)),
    ("EcaModule", dict(channels=16, use_mlp=True), (2, 16, 5, 6)),
    ("GlobalContext", dict(channels=16), (2, 16, 5, 6)),
    ("CbamModule", dict(channels=16), (2, 16, 5, 6)),
    ("LightCbamModule", dict(channels=16), (2, 16, 5, 6)),
    ("SimpleCoordAttn", dict(channels=16), (2, 16, 5, 6)),
    ("EfficientLocalAttn", dict(channels=16), (2, 16, 5, 6)),
]


@pytest.mark.parametrize("name,kwargs,shape", OFF_GOLDEN, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(OFF_GOLDEN)])
def test_torch_and_flax_agree_off_the_goldens(name, kwargs, shape):
    from parity.verify.harness import run_case
    from parity.verify.registry import Case, Spec

    result = run_case(Spec(name, kwargs, (Case(shape),)), Case(shape))
    assert {"eval", "train", "grad_input", "grad_param"} <= set(result.checks)
    assert result.passed, "\n".join(result.failures())


def test_attention_classes_cross_frameworks():
    """A block's recorded ``attn_layer`` (a class or a partial of one) resolves to the twin class."""
    import functools

    assert attn_flax.get_attn(attn_torch.timm.EcaModule) is attn_flax.timm.EcaModule
    assert attn_torch.get_attn(attn_flax.timm.CbamModule) is attn_torch.timm.CbamModule
    partial = attn_flax.get_attn(functools.partial(attn_torch.timm.SEModule, rd_ratio=0.25))
    assert partial.func is attn_flax.timm.SEModule and partial.keywords == {"rd_ratio": 0.25}
    layer = attn_flax.create_attn(functools.partial(attn_torch.timm.SEModule, rd_ratio=0.25), 32, rngs=nnx.Rngs(0))
    assert layer.fc1.out_features == 8
    with pytest.raises(ValueError, match="attn_type"):
        attn_flax.get_attn(torch.nn.ReLU)


@pytest.mark.parametrize("label", LABELS)
def test_flax_bfloat16_close_to_timm(label):
    from parity.verify.harness import relative_error
    from parity.verify.tolerances import TIMM_LAYERS_BF16_FORWARD

    entry = _entry(label)
    module = attn_flax.create_attn(entry["create_attn"], **entry["kwargs"], dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    parity.load_state_dict(module, recipe_state_dict(entry["manifest"]))
    x = jnp.asarray(recipe_input(entry["input"]).transpose(0, 2, 3, 1))
    for mode in MODES:
        module.eval() if mode == "eval" else module.train()
        y = module(x)
        assert y.dtype == jnp.bfloat16
        normwise, _ = relative_error(ARRAYS[f"layers/{label}/{mode}"], np.asarray(y, np.float32).transpose(0, 3, 1, 2))
        assert normwise <= TIMM_LAYERS_BF16_FORWARD, f"{label} {mode}: bf16 normwise error {normwise:.3g}"


@pytest.mark.parametrize("label", ["cbam", "halo"])
def test_converted_layer_saves_and_rebuilds_from_its_checkpoint(tmp_path, label):
    """Constructor arguments holding torch classes (act_layer=nn.ReLU) are stored by name."""
    import json

    from parity.checkpoint import build_flax, load_flax, read_flax_metadata, save_flax

    entry = _entry(label)
    flax_module = parity.to_flax(_torch_layer(label).eval())
    path = save_flax(flax_module, tmp_path / f"{label}.safetensors")
    meta = read_flax_metadata(path)
    assert meta["model"] == type(flax_module).__name__
    if label == "cbam":
        assert json.loads(meta["args"])["act_layer"] == "ReLU"
    rebuilt = build_flax(meta["model"], json.loads(meta["args"]))
    load_flax(rebuilt, path)
    rebuilt.eval()
    x = jnp.asarray(recipe_input(entry["input"]).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(flax_module(x)))
    back = parity.to_torch(rebuilt).state_dict()
    expected = recipe_state_dict(entry["manifest"])
    assert list(back) == [k for k, _, _ in entry["manifest"]]
    assert all(np.array_equal(back[k].numpy(), v) for k, v in expected.items())


# One configuration per file (the slowest to differentiate eagerly left out).
FORWARD_MODE = ["se", "ese", "eca_k5", "ceca", "ge_extent2", "gc", "cbam", "coord", "scoord", "strip", "nl", "lambda",
                "bottleneck", "halo"]


@pytest.mark.parametrize("label", FORWARD_MODE)
def test_flax_forward_mode_agrees_with_reverse_mode(label):
    """Plain JAX (no custom_vjp): jvp works and <J t, c> == <t, J^T c>."""
    entry = _entry(label)
    module = attn_flax.create_attn(entry["create_attn"], **entry["kwargs"], rngs=nnx.Rngs(0))
    parity.load_state_dict(module, recipe_state_dict(entry["manifest"]))
    module.eval()
    x = jnp.asarray(recipe_input(entry["input"]).transpose(0, 2, 3, 1))
    rng = np.random.default_rng(1)
    t = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    y, forward = jax.jvp(module, (x,), (t,))
    c = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    (reverse,) = jax.vjp(module, x)[1](c)
    # Two float32 sums of the same products in different orders, judged against their magnitude.
    scale = float(jnp.linalg.norm(forward) * jnp.linalg.norm(c))
    np.testing.assert_allclose(jnp.vdot(forward, c), jnp.vdot(t, reverse), rtol=0,
                               atol=tolerance(f"timm.{entry['create_attn']}", "forward_mode").atol * scale)
