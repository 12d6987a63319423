"""attn_flax's BatchNorm follows torch's rules over several training steps."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import parity
from attn_flax.layers import BatchNorm
from parity.verify.harness import randomize_

import attn_torch


@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["centred", "offset1000"])
@pytest.mark.parametrize("shape", [(8, 5), (4, 6, 7, 5)], ids=["1d", "2d"])
def test_running_statistics_follow_torch(shape, offset):
    rng = np.random.default_rng(0)
    reference = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(shape[-1])
    ours = BatchNorm(shape[-1])
    step = nnx.jit(lambda m, v: m(v))
    for _ in range(4):
        x = (rng.standard_normal(shape) * 3 + offset).astype(np.float32)
        expected = reference(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).detach().numpy()
        got = np.asarray(step(ours, jnp.asarray(x)))
        np.testing.assert_allclose(np.moveaxis(got, -1, 1), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.mean[...], reference.running_mean.numpy(), rtol=1e-6, atol=1e-6 * (1 + offset))
    np.testing.assert_allclose(ours.var[...], reference.running_var.numpy(), rtol=1e-5)
    assert int(ours.num_batches_tracked[...]) == int(reference.num_batches_tracked) == 4
    ours.eval()
    reference.eval()
    x = rng.standard_normal(shape).astype(np.float32) + offset
    np.testing.assert_allclose(
        np.moveaxis(np.asarray(ours(jnp.asarray(x))), -1, 1),
        reference(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).detach().numpy(),
        rtol=1e-5, atol=1e-4,
    )


def test_module_statistics_after_several_training_steps():
    torch_module = randomize_(attn_torch.CoordAttention(16, reduction=4), seed=3).train()
    flax_module = parity.to_flax(torch_module)
    step = nnx.jit(lambda m, v: m(v))
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((4, 16, 6, 7)).astype(np.float32)
        torch_module(torch.from_numpy(x))
        step(flax_module, jnp.asarray(x.transpose(0, 2, 3, 1)))
    flax_state = parity.state_dict(flax_module)
    for name, buffer in torch_module.named_buffers():
        np.testing.assert_allclose(flax_state[name], buffer.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
