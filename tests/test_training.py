"""Training parity: torch.optim and optax take the same steps from the same weights.

Every registered attention block is trained for 5 steps in both frameworks
(``parity.devtools.training``: conv stem, BatchNorm, the block, pool, linear head; BatchNorm
in training mode; the Flax step under ``nnx.jit``) with SGD-momentum and AdamW.
"""

import dataclasses

import numpy as np
import optax
import pytest
import torch

from parity.verify.registry import SPECS
from parity.verify.tolerances import training_tolerance
from parity.devtools.training import (
    OPTIMIZERS,
    OptimizerPair,
    compare_training,
    compare_update_rule,
    dependent_buffers,
    gradient_free,
    is_network,
    main,
)

# Whole classifiers in the registry (ResNet) are trained by `python -m parity train
# --modules NAME`; compiling their training step takes tens of seconds on a CPU.
BLOCKS = [name for name in SPECS if not is_network(name)]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_update_rule_matches_torch(optimizer):
    result = compare_update_rule(optimizer)
    assert result.passed, result.describe(optimizer, "update rule")


def _ema_momentum_sgd(pair):
    # b = m * b + (1 - m) * g instead of torch's b = m * b + g.
    return optax.chain(optax.add_decayed_weights(pair.weight_decay), optax.ema(pair.momentum, debias=False),
                       optax.scale(-pair.lr))


WRONG = {
    "adamw: optax's default weight_decay (1e-4)": ("adamw", lambda p: optax.adamw(p.lr, eps=p.eps)),
    "adamw: eps inside the square root": (
        "adamw", lambda p: optax.adamw(p.lr, eps=0.0, eps_root=p.eps, weight_decay=p.weight_decay)),
    "adamw: L2 decay (torch Adam's) instead of decoupled": (
        "adamw", lambda p: optax.chain(optax.add_decayed_weights(p.weight_decay), optax.adam(p.lr, eps=p.eps))),
    "sgd: weight decay left out": ("sgd", lambda p: optax.sgd(p.lr, momentum=p.momentum)),
    "sgd: EMA momentum buffer": ("sgd", _ema_momentum_sgd),
    "sgd-nesterov: plain momentum": (
        "sgd-nesterov", lambda p: optax.chain(optax.add_decayed_weights(p.weight_decay),
                                              optax.sgd(p.lr, momentum=p.momentum))),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_update_rule_check_catches_wrong_conventions(wrong):
    optimizer, make = WRONG[wrong]
    result = compare_update_rule(optimizer, tx=make(OPTIMIZERS[optimizer]))
    assert not result.passed
    assert result.max_abs > 3 * training_tolerance(optimizer, "update_rule").atol


@pytest.mark.parametrize("name", BLOCKS)
def test_training_follows_torch(name):
    results = compare_training(name, ("sgd", "adamw"), steps=5, batch=4, size=(8, 8))
    assert [r.optimizer for r in results] == ["sgd", "adamw"]
    for result in results:
        assert len(result.torch_losses) == len(result.flax_losses) == 5
        assert {"loss", "params", "bn_stats"} <= set(result.checks)
        assert result.passed, "\n".join(result.failures())


class _SGDWithoutDecay(OptimizerPair):
    def optax(self):
        return optax.sgd(self.lr, momentum=self.momentum)


def test_training_check_catches_a_wrong_optimizer(monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "sgd", _SGDWithoutDecay(**dataclasses.asdict(OPTIMIZERS["sgd"])))
    (result,) = compare_training(BLOCKS[0], ("sgd",), steps=5, batch=4, size=(8, 8))
    assert not result.passed
    assert result.checks["params"].max_abs > 10 * training_tolerance("sgd", "params").atol  # measured 4.8e-4


class _BiasBeforeBatchNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)  # bias: removed by the BatchNorm
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_gradient_free_elements_and_the_statistics_they_feed():
    torch.manual_seed(0)
    net = _BiasBeforeBatchNorm()
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 3, 6, 6)).astype(np.float32), rng.integers(0, 10, 4))
    free = gradient_free(net, batch)
    assert free["conv.bias"].all()
    assert not any(free[n].any() for n in ("conv.weight", "bn.weight", "bn.bias", "head.weight", "head.bias"))
    fed = dependent_buffers(net, batch[0], free)
    assert fed["bn.running_mean"].all()
    assert not fed["bn.running_var"].any() and not fed["bn.num_batches_tracked"].any()


def test_command_prints_losses_side_by_side(capsys):
    name = BLOCKS[0]
    assert main(["--modules", name, "--optimizers", "sgd", "--steps", "2", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert f"{name}: loss per step" in out
    assert "sgd: torch" in out and "sgd: flax" in out
    assert "1 of 1 training runs agree" in out
