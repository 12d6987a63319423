"""The converter: lossless round trips, strict errors that list everything, memory ownership."""

import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity
from parity.verify.harness import randomize_
from parity.verify.registry import SPECS

NAMES = sorted(SPECS)


def _random_torch(name, seed=0):
    spec = SPECS[name]
    return randomize_(attn_torch.MODULES[name](**spec.kwargs), seed)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bit_identical(name):
    source = _random_torch(name)
    back = parity.to_torch(parity.to_flax(source))
    expected, got = source.state_dict(), back.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_names_and_shapes_match_torch(name):
    source = _random_torch(name)
    flax_state = parity.state_dict(parity.to_flax(source))
    assert {k: v.shape for k, v in flax_state.items()} == {
        k: tuple(v.shape) for k, v in source.state_dict().items()
    }


def test_num_batches_tracked_round_trips():
    source = _random_torch("CoordAttention")
    source.bn1.num_batches_tracked.fill_(123456789)
    back = parity.to_torch(parity.to_flax(source))
    assert back.bn1.num_batches_tracked.dtype == torch.int64
    assert int(back.bn1.num_batches_tracked) == 123456789


def test_mode_is_carried_over():
    source = _random_torch("CoordAttention").eval()
    flax_module = parity.to_flax(source)
    assert flax_module.bn1.use_running_average
    assert not parity.to_torch(flax_module).training
    flax_module.train()
    assert parity.to_torch(flax_module).training


def test_strict_error_lists_every_missing_unexpected_and_mismatched_key():
    flax_module = attn_flax.CoordAttention(32, reduction=8, rngs=nnx.Rngs(0))
    state = {k: torch.from_numpy(v) for k, v in parity.state_dict(flax_module).items()}
    del state["conv1.weight"], state["bn1.running_var"]
    state["extra.weight"] = torch.zeros(3)
    state["conv_h.bias"] = torch.zeros(31)
    state["conv_w.weight"] = torch.zeros(32, 8, 3, 3)
    with pytest.raises(parity.ConversionError) as info:
        parity.load_state_dict(flax_module, state)
    message = str(info.value)
    for expected in ("'conv1.weight'", "'bn1.running_var'", "'extra.weight'",
                     "'conv_h.bias': expected (32,), got (31,)",
                     "'conv_w.weight': expected (32, 8, 1, 1), got (32, 8, 3, 3)"):
        assert expected in message
    assert isinstance(info.value, ValueError)


def test_failed_load_changes_nothing():
    flax_module = attn_flax.SE(32, reduction=4, rngs=nnx.Rngs(0))
    before = parity.state_dict(flax_module)
    state = {k: np.ones_like(v) for k, v in before.items()}
    state["fc.2.weight"] = np.ones((5, 5), np.float32)
    with pytest.raises(parity.ConversionError):
        parity.load_state_dict(flax_module, state)
    after = parity.state_dict(flax_module)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_non_strict_load_reports_missing_and_unexpected():
    flax_module = attn_flax.SE(32, reduction=4, rngs=nnx.Rngs(0))
    state = parity.state_dict(flax_module)
    del state["fc.0.weight"]
    state["other"] = np.zeros(1, np.float32)
    result = parity.load_state_dict(flax_module, state, strict=False)
    assert result.missing_keys == ["fc.0.weight"]
    assert result.unexpected_keys == ["other"]


def test_flax_module_owns_its_memory():
    source = _random_torch("CoordAttention")
    flax_module = parity.to_flax(source)
    snapshot = parity.state_dict(flax_module)
    with torch.no_grad():  # in-place writes into the source, as an optimizer step would
        for tensor in source.state_dict().values():
            tensor.add_(1)
    handed_out = parity.state_dict(flax_module)
    for array in handed_out.values():
        array += 1  # writing into arrays the converter handed out
    after = parity.state_dict(flax_module)
    assert all(np.array_equal(snapshot[k], after[k]) for k in snapshot)


def test_numpy_state_is_copied_on_load():
    flax_module = attn_flax.SE(32, reduction=4, rngs=nnx.Rngs(0))
    state = {k: np.ones_like(v) for k, v in parity.state_dict(flax_module).items()}
    parity.load_state_dict(flax_module, state)
    for array in state.values():
        array[...] = 7
    assert all((v == 1).all() for v in parity.state_dict(flax_module).values())


def test_unregistered_module_is_refused():
    with pytest.raises(parity.ConversionError, match="not a registered"):
        parity.to_flax(torch.nn.Linear(2, 2))


def test_every_rule_is_exercised_by_the_registry():
    """A rule no registered module uses is dead code or a sign of a missing test."""
    used = set()
    for name in NAMES:
        flax_module = nnx.eval_shape(lambda: attn_flax.MODULES[name](**SPECS[name].kwargs, rngs=nnx.Rngs(0)))
        used.update(id(leaf.rule) for leaf in parity.convert.iter_leaves(flax_module))
    unused = [rule for rule in parity.RULES if id(rule) not in used]
    assert not unused, unused
