"""parity.save_flax / load_flax: safetensors and Orbax, strict loading, nothing left behind on failure."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity
import parity.checkpoint as checkpoint
from parity.checkpoint import CheckpointError, build_flax, flax_variables, read_flax, read_torch
from parity.verify.harness import nhwc, randomize_
from parity.verify.registry import SPECS

# BatchNorm (CoordAttention), ChannelParam + GroupNorm (ShuffleAttention, SGE), Conv1d (ECA),
# nnx.Sequential (SE, CBAM).
NAMES = ["SE", "ECA", "CBAM", "CoordAttention", "ShuffleAttention", "SGE"]
FORMATS = ["model.safetensors", "orbax_dir"]


def _flax(name, seed=0):
    """The Flax twin of a torch module with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    return parity.to_flax(randomize_(attn_torch.MODULES[name](**SPECS[name].kwargs), seed))


def _values(module):
    return {k: np.asarray(v.get_value()) for k, v in flax_variables(module).items()}


def _listing(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


@pytest.mark.parametrize("target", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact_and_the_module_computes_the_same(tmp_path, name, target):
    source = _flax(name, seed=1)
    path = parity.save_flax(source, tmp_path / target)
    fresh = attn_flax.MODULES[name](**SPECS[name].kwargs, rngs=nnx.Rngs(5))
    meta = parity.load_flax(fresh, path)
    assert meta["model"] == name and json.loads(meta["args"]) == source.init_kwargs
    expected, got = _values(source), _values(fresh)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key
    x = jnp.asarray(nhwc(np.random.default_rng(0).standard_normal(SPECS[name].example_shape, dtype=np.float32)))
    source.eval(), fresh.eval()
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(source(x)))


def test_safetensors_keys_are_nnx_state_paths_with_metadata(tmp_path):
    module = attn_flax.CoordAttention(32, reduction=8, rngs=nnx.Rngs(0))
    arrays, meta = read_flax(parity.save_flax(module, tmp_path / "coord.safetensors"))
    assert set(arrays) == {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(module))}
    assert "bn1.num_batches_tracked" in arrays and arrays["bn1.num_batches_tracked"].shape == ()
    assert arrays["conv1.kernel"].shape == (1, 1, 32, 8)  # Flax layout, not torch's
    assert meta == {"format": "attn-parity-flax", "format_version": "1", "model": "CoordAttention",
                    "args": json.dumps({"channels": 32, "reduction": 8})}
    se_keys = set(read_flax(parity.save_flax(attn_flax.SE(32, 4, rngs=nnx.Rngs(0)), tmp_path / "se.safetensors"))[0])
    assert se_keys == {"fc.layers.0.kernel", "fc.layers.2.kernel"}


@pytest.mark.parametrize("name", ["CoordAttention", "SE"])
def test_orbax_directory_restores_with_flax_standard_recipe(tmp_path, name):
    import orbax.checkpoint as ocp

    source = _flax(name, seed=2)
    parity.save_flax(source, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["attn_parity.json", "state"]
    abstract = nnx.eval_shape(lambda: attn_flax.MODULES[name](**SPECS[name].kwargs, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    restored_state = ocp.StandardCheckpointer().restore((tmp_path / "ckpt" / "state").absolute(), nnx.state(abstract))
    restored = nnx.merge(graphdef, restored_state)
    assert list(_values(restored)) == list(_values(source))
    assert all(np.array_equal(_values(restored)[k], v) for k, v in _values(source).items())


def test_orbax_directories_of_the_pure_dict_layout_still_load(tmp_path):
    """Directories written before the nnx.State layout (a pure dict, no orbax_layout) are read as before."""
    import orbax.checkpoint as ocp

    source = _flax("SE", seed=2)
    (tmp_path / "old").mkdir()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((tmp_path / "old" / "state").absolute(), nnx.to_pure_dict(nnx.state(source)))
    (tmp_path / "old" / "attn_parity.json").write_text(json.dumps(checkpoint.flax_metadata(source)))
    fresh = attn_flax.SE(**SPECS["SE"].kwargs, rngs=nnx.Rngs(9))
    parity.load_flax(fresh, tmp_path / "old")
    assert all(np.array_equal(_values(fresh)[k], v) for k, v in _values(source).items())


def test_resnet_round_trips_through_orbax(tmp_path):
    torch_model = randomize_(attn_torch.ResNet(18, attention="cbam", num_classes=10), 3)
    module = build_flax("ResNet", torch_model.init_kwargs)
    parity.load_state_dict(module, torch_model.state_dict())
    parity.save_flax(module, tmp_path / "resnet")
    again = build_flax("ResNet", torch_model.init_kwargs)
    parity.load_flax(again, tmp_path / "resnet")
    back = parity.state_dict(again)
    for key, value in torch_model.state_dict().items():
        assert back[key].dtype == value.numpy().dtype and np.array_equal(back[key], value.numpy()), key


def test_mismatch_lists_every_key_and_leaves_the_module_untouched(tmp_path):
    path = parity.save_flax(attn_flax.CoordAttention(32, reduction=8, rngs=nnx.Rngs(0)), tmp_path / "c.safetensors")
    target = attn_flax.CoordAttention(48, reduction=8, rngs=nnx.Rngs(1))
    before = _values(target)
    with pytest.raises(parity.ConversionError) as info:
        parity.load_flax(target, path)
    message = str(info.value)
    assert "shape mismatches (5)" in message  # hidden width max(8, C // 8) stays 8
    assert "'conv1.kernel': expected (1, 1, 48, 8), got (1, 1, 32, 8)" in message
    assert all(np.array_equal(before[k], v) for k, v in _values(target).items())
    other = attn_flax.SE(32, 4, rngs=nnx.Rngs(0))
    with pytest.raises(parity.ConversionError) as info:
        parity.load_flax(other, path)
    assert "missing keys (2): 'fc.layers.0.kernel', 'fc.layers.2.kernel'" in str(info.value)
    assert "unexpected keys (11)" in str(info.value) and "'bn1.num_batches_tracked'" in str(info.value)


def test_a_torch_safetensors_file_is_not_taken_for_a_flax_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"fc.0.weight": torch.zeros(8, 32), "fc.2.weight": torch.zeros(32, 8)}, tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match="not a Flax checkpoint of attn-parity"):
        parity.load_flax(attn_flax.SE(32, 4, rngs=nnx.Rngs(0)), tmp_path / "t.safetensors")


def test_refusals_and_failures_leave_nothing_behind(tmp_path, monkeypatch):
    module = attn_flax.SE(32, 4, rngs=nnx.Rngs(0))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="busy exists; give --overwrite"):
        parity.save_flax(module, tmp_path / "busy")
    with pytest.raises(CheckpointError, match="neither empty nor an attn-parity Orbax checkpoint"):
        parity.save_flax(module, tmp_path / "busy", overwrite=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        parity.save_flax(module, tmp_path / "missing" / "m.safetensors")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        parity.save_flax(module, tmp_path / "m.safetensors")
    monkeypatch.setattr(checkpoint, "METADATA_FILE", "no/such/dir.json")  # fails after Orbax has written
    with pytest.raises(OSError):
        parity.save_flax(module, tmp_path / "orbax")
    assert _listing(tmp_path) == ["busy", "busy/keep.txt"]


def test_written_files_get_the_usual_permissions(tmp_path):
    module = attn_flax.SE(32, 4, rngs=nnx.Rngs(0))
    mask = os.umask(0o022)
    try:
        assert (parity.save_flax(module, tmp_path / "m.safetensors").stat().st_mode & 0o777) == 0o644
        assert (parity.save_flax(module, tmp_path / "d").stat().st_mode & 0o777) == 0o755
    finally:
        os.umask(mask)


def test_read_torch_accepts_nested_state_dicts_and_keeps_dtypes(tmp_path):
    state = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.tensor(3, dtype=torch.int64),
             "c": torch.randn(4).to(torch.bfloat16)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "nested.pth")
    got = read_torch(tmp_path / "nested.pth")
    assert list(got) == ["a", "b", "c"]
    assert got["a"].dtype == np.float16 and got["b"].shape == () and got["c"].dtype.name == "bfloat16"
    assert np.array_equal(got["c"].view(np.int16), state["c"].view(torch.int16).numpy())
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        read_torch(tmp_path / "other.pt")


def test_code_running_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.ones(2), "x": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to load .*evil.pt: it would call (posix|os)\.system"):
        read_torch(tmp_path / "evil.pt")
    assert not marker.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
