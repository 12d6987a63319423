"""Flax modules start from the same distributions as their torch twins."""

import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity
from parity.verify.registry import SPECS


@pytest.mark.parametrize("name", sorted(SPECS))
def test_initial_values_follow_torch(name):
    torch.manual_seed(0)
    reference = {k: v.numpy() for k, v in attn_torch.MODULES[name](**SPECS[name].kwargs).state_dict().items()}
    flax_state = parity.state_dict(attn_flax.MODULES[name](**SPECS[name].kwargs, rngs=nnx.Rngs(0)))
    assert set(flax_state) == set(reference)
    for key, expected in reference.items():
        got = flax_state[key]
        assert got.shape == expected.shape, key
        constant = (expected == expected.flat[0]).all() and (expected.size > 1 or expected.flat[0] in (0, 1))
        if constant:  # zeros, ones, counters
            np.testing.assert_array_equal(got, expected, err_msg=key)
        elif expected.size >= 256:  # uniform(-b, b): same bound and spread
            assert 0.85 < np.abs(got).max() / np.abs(expected).max() < 1.15, key
            assert 0.85 < got.std() / expected.std() < 1.15, key
            assert abs(got.mean()) < 4 * expected.std() / np.sqrt(expected.size), key  # 4 standard errors
        else:  # few values: at least inside torch's bound for this tensor's fan-in
            weight = reference.get(key.rsplit(".", 1)[0] + ".weight") if key.endswith("bias") else expected
            if weight is not None and weight.ndim > 1:
                assert np.abs(got).max() <= 1 / np.sqrt(weight[0].size) + 1e-6, key
