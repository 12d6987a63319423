"""Training parity: torch.optim and optax follow the same trajectory from the same weights.

A tiny classifier is built in both frameworks around one registered attention
block (:class:`TorchNet` / :class:`FlaxNet`: 3x3 conv stem without bias,
BatchNorm, ReLU, the block, global average pool, linear head; a registered whole
classifier such as ``ResNet`` is used as it is), the torch weights are copied
into the Flax model with :func:`parity.load_state_dict`, and both are trained
for N steps on the same synthetic NumPy batches with cross-entropy, BatchNorm in
training mode:

* torch: ``torch.optim`` (:meth:`OptimizerPair.torch`), one eager step per batch;
* Flax: ``optax`` (:meth:`OptimizerPair.optax`) through
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``nnx.value_and_grad`` and
  ``nnx.jit`` (:func:`train_step`).

:func:`compare_update_rule` checks each optimizer pair alone on a shared gradient
sequence; :func:`compare_training` checks the loss of every step, the final
parameters and the final BatchNorm buffers (tolerances:
``parity.verify.tolerances.TRAINING``). Parameter elements whose gradient is zero in
exact arithmetic are checked apart (:func:`gradient_free`): Adam turns their
float32 rounding noise into full-size steps.

:func:`data_parallel_check` runs the same Flax step with the batch sharded over a
``jax.sharding.Mesh`` (parameters replicated) and compares it with the
single-device step: BatchNorm's batch mean is a plain ``jnp`` mean over the
global batch axis, so under ``jit`` GSPMD inserts the cross-device reduction and
the statistics are those of the global batch (torch's ``SyncBatchNorm``, not the
per-replica BatchNorm of plain ``DistributedDataParallel``).

``python -m parity train`` prints the losses side by side and the agreement.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

import attn_flax
import attn_torch
from attn_flax import layers
from parity.convert import load_state_dict, state_dict
from parity.verify.harness import CheckResult, compare, nhwc, randomize_
from parity.verify.registry import SPECS
from parity.verify.tolerances import training_tolerance


# -- the two models -----------------------------------------------------------


class TorchNet(torch.nn.Module):
    """``stem -> bn -> relu -> attn -> mean over H, W -> head``, NCHW input."""

    def __init__(self, attn: torch.nn.Module, channels: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        # No stem bias: BatchNorm cancels it, so its gradient is rounding noise
        # that Adam would normalise into full-size steps of random sign.
        self.stem = torch.nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.attn = attn
        self.head = torch.nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(F.relu(self.bn(self.stem(x))))
        return self.head(y.mean((2, 3)))


class FlaxNet(nnx.Module):
    """The twin of :class:`TorchNet` (same attribute names), NHWC input."""

    def __init__(self, attn: nnx.Module, channels: int, num_classes: int, in_channels: int = 3, *,
                 rngs: nnx.Rngs):
        self.stem = layers.Conv2d(in_channels, channels, 3, padding=1, bias=False, rngs=rngs)
        self.bn = layers.BatchNorm(channels)
        self.attn = attn
        self.head = layers.Linear(channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.attn(jax.nn.relu(self.bn(self.stem(x))))
        return self.head(y.mean((1, 2)))


def module_kwargs(name: str, channels: int | None = None) -> tuple[dict[str, Any], int]:
    """The registry's default kwargs for ``name`` and the channel count to use with them.

    ``channels=None`` takes the channel count of the module's example case;
    otherwise it replaces the spec's channel argument (when the module has one).
    """
    spec = SPECS[name]
    kwargs = spec.kwargs_for(spec.cases[0])
    if channels is None:
        return kwargs, spec.example_shape[1]
    arg = getattr(spec, "channels_arg", "channels")
    if arg in kwargs:
        kwargs[arg] = channels
    return kwargs, channels


@dataclass
class Models:
    """The torch model, its Flax twin with the same weights, and what their input looks like."""

    torch: torch.nn.Module
    flax: nnx.Module
    in_channels: int
    num_classes: int


def is_network(name: str) -> bool:
    """Whether registered module ``name`` is a whole classifier (returns ``(N, classes)``),
    rather than an attention block that keeps its input's shape."""
    spec = SPECS[name]
    with torch.no_grad():
        module = attn_torch.MODULES[name](**spec.kwargs_for(spec.cases[0])).eval()
        return module(torch.zeros(spec.example_shape)).ndim == 2


def build_models(
    name: str,
    *,
    channels: int | None = None,
    num_classes: int = 10,
    seed: int = 0,
    randomize: bool = True,
) -> Models:
    """The torch model for registered module ``name`` and its Flax twin with the same weights.

    An attention block is wrapped in :class:`TorchNet` / :class:`FlaxNet` (3 input
    channels, ``num_classes`` outputs; the stem and head keep torch's default
    initialisation); a whole classifier (:func:`is_network`, e.g. ``ResNet``) is
    trained as it is (its own initialisation), with its example's input channels
    and its own classes. With ``randomize`` an attention block gets random
    weights and BatchNorm statistics (:func:`parity.verify.harness.randomize_`), so
    gates that start at zero (DANet's and CCNet's ``gamma``, SGE's ``weight``)
    do not hide the branches behind them. Both models are in training mode.
    """
    kwargs, channels = module_kwargs(name, channels)
    torch.manual_seed(seed)
    module = attn_torch.MODULES[name](**kwargs)
    with torch.no_grad():
        probe = module.eval()(torch.zeros(SPECS[name].example_shape))
    network = probe.ndim == 2
    if randomize and not network:
        randomize_(module, seed)
    rngs = nnx.Rngs(seed)
    flax_module = attn_flax.MODULES[name](**kwargs, rngs=rngs)
    if network:
        torch_net, flax_net = module.train(), flax_module
        in_channels, classes = SPECS[name].example_shape[1], probe.shape[1]
    else:
        torch_net = TorchNet(module, channels, num_classes).train()
        flax_net, in_channels, classes = FlaxNet(flax_module, channels, num_classes, rngs=rngs), 3, num_classes
    load_state_dict(flax_net, torch_net.state_dict())
    flax_net.train()
    return Models(torch_net, flax_net, in_channels, classes)


def make_batches(
    steps: int, batch: int, *, in_channels: int = 3, size: tuple[int, int] = (8, 8),
    num_classes: int = 10, seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches ``(x NCHW float32, labels int64)``: per class a fixed colour
    and pattern, plus noise, so the loss can go down."""
    rng = np.random.default_rng(seed)
    colours = rng.standard_normal((num_classes, in_channels, 1, 1))
    patterns = (colours + 0.5 * rng.standard_normal((num_classes, in_channels, *size))).astype(np.float32)
    batches = []
    for _ in range(steps):
        labels = rng.integers(0, num_classes, batch)
        noise = rng.standard_normal((batch, in_channels, *size)).astype(np.float32)
        batches.append((patterns[labels] + noise, labels.astype(np.int64)))
    return batches


# -- optimizers ---------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerPair:
    """One ``torch.optim`` optimizer and the optax transformation that takes the same steps.

    ``kind``:

    * ``"sgd"``: ``torch.optim.SGD(lr, momentum, weight_decay, nesterov)`` (``dampening=0``) ==
      ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum, nesterov))``.
      torch's buffer ``b = m * b + g`` (``b = g`` on the first step) is optax's
      ``trace``; torch's weight decay is L2 added to the gradient *before* momentum.
    * ``"adam"``: ``torch.optim.Adam`` with ``weight_decay`` (L2 added to the gradient) ==
      ``optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, b1, b2, eps))``.
    * ``"adamw"``: ``torch.optim.AdamW`` (decoupled: ``p *= 1 - lr * wd``) ==
      ``optax.adamw(lr, b1, b2, eps, weight_decay=wd)``. The defaults differ
      (torch 1e-2, optax 1e-4), so ``wd`` is always passed.

    Both Adams put ``eps`` outside the square root of the bias-corrected second
    moment (optax's ``eps_root=0``).
    """

    kind: str
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def describe(self) -> str:
        """The two constructors, as code."""
        b1, b2 = self.betas
        wd = f"weight_decay={self.weight_decay:g}"
        if self.kind == "sgd":
            nesterov = ", nesterov=True" if self.nesterov else ""
            return (f"torch.optim.SGD(lr={self.lr:g}, momentum={self.momentum:g}, {wd}{nesterov}) == "
                    f"optax.chain(optax.add_decayed_weights({self.weight_decay:g}), "
                    f"optax.sgd({self.lr:g}, momentum={self.momentum:g}{nesterov}))")
        adam = f"lr={self.lr:g}, betas=({b1:g}, {b2:g}), eps={self.eps:g}"
        opt = f"{self.lr:g}, b1={b1:g}, b2={b2:g}, eps={self.eps:g}"
        if self.kind == "adam":
            return (f"torch.optim.Adam({adam}, {wd}) == optax.chain(optax.add_decayed_weights("
                    f"{self.weight_decay:g}), optax.adam({opt}))")
        return f"torch.optim.AdamW({adam}, {wd}) == optax.adamw({opt}, {wd})"

    def torch(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if self.kind == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay, nesterov=self.nesterov)
        if self.kind in ("adam", "adamw"):
            cls = torch.optim.Adam if self.kind == "adam" else torch.optim.AdamW
            return cls(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        raise ValueError(f"`kind` must be 'sgd', 'adam' or 'adamw', got {self.kind!r}")

    def optax(self) -> optax.GradientTransformation:
        b1, b2 = self.betas
        if self.kind == "sgd":
            momentum = self.momentum or None
            sgd = optax.sgd(self.lr, momentum=momentum, nesterov=self.nesterov)
            return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd)
        if self.kind == "adam":
            adam = optax.adam(self.lr, b1=b1, b2=b2, eps=self.eps)
            return optax.chain(optax.add_decayed_weights(self.weight_decay), adam)
        if self.kind == "adamw":
            return optax.adamw(self.lr, b1=b1, b2=b2, eps=self.eps, weight_decay=self.weight_decay)
        raise ValueError(f"`kind` must be 'sgd', 'adam' or 'adamw', got {self.kind!r}")


OPTIMIZERS: dict[str, OptimizerPair] = {
    "sgd": OptimizerPair("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": OptimizerPair("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": OptimizerPair("adam", lr=1e-3, weight_decay=1e-4),
    "adamw": OptimizerPair("adamw", lr=1e-3, weight_decay=1e-2),
}


def compare_update_rule(
    optimizer: str, *, tx: optax.GradientTransformation | None = None, steps: int = 10, seed: int = 0
) -> CheckResult:
    """The optimizer alone: feed one gradient sequence to ``torch.optim`` and to optax and
    compare the parameters after every step.

    Gradient elements span six orders of magnitude (1e-5 to 10), so a misplaced ``eps``, a wrong
    weight-decay convention or a wrong momentum buffer shows up. ``tx`` replaces
    the optax side (to show that a mismatched one fails).
    """
    pair = OPTIMIZERS[optimizer]
    rng = np.random.default_rng(seed)
    shapes = {"weight": (6, 5), "bias": (5,)}
    start = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    grads = [
        {k: (rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 1, shape)).astype(np.float32)
         for k, shape in shapes.items()}
        for _ in range(steps)
    ]
    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in start.items()}
    torch_opt = pair.torch(torch_params.values())
    tx = tx or pair.optax()
    params = {k: jnp.asarray(v) for k, v in start.items()}
    state = tx.init(params)
    ref, got = {}, {}
    for i, grad in enumerate(grads, 1):
        for k, p in torch_params.items():
            p.grad = torch.tensor(grad[k])
        torch_opt.step()
        updates, state = tx.update({k: jnp.asarray(v) for k, v in grad.items()}, state, params)
        params = optax.apply_updates(params, updates)
        for k in shapes:
            ref[f"{k} after step {i}"] = torch_params[k].detach().numpy().copy()
            got[f"{k} after step {i}"] = np.asarray(params[k])
    return compare("update_rule", ref, got, training_tolerance(optimizer, "update_rule"))


def adam_drift_bound(pair: OptimizerPair, steps: int) -> float:
    """How far apart two Adam runs can drift on one element in ``steps`` steps, whatever its gradients.

    Bias-corrected, ``|m_t / sqrt(v_t)| <= r_t = sqrt(sum_i a_i**2 / b_i)`` with
    ``a_i``, ``b_i`` the weights of gradient ``i`` in ``m_t`` and ``v_t``
    (Cauchy-Schwarz; ``r_t`` = 1.0 at t=1, 1.01 at 5, 1.16 at 20 for the default
    betas), so each run moves an element at most ``lr * r_t`` per step besides
    the (identical) decoupled decay, and two runs on different noise at most
    twice that. This is the tolerance of the gradient-free elements.
    """
    b1, b2 = pair.betas
    total = 0.0
    for t in range(1, steps + 1):
        a = [(1 - b1) * b1 ** (t - i) / (1 - b1**t) for i in range(1, t + 1)]
        b = [(1 - b2) * b2 ** (t - i) / (1 - b2**t) for i in range(1, t + 1)]
        total += math.sqrt(sum(x * x / y for x, y in zip(a, b)))
    return 2 * pair.lr * total


def _tolerance(optimizer: str, pair: OptimizerPair, check: str, steps: int):
    if pair.kind not in ("adam", "adamw"):
        return training_tolerance(optimizer, check)
    if check.startswith("free_"):
        return training_tolerance(optimizer, check, drift=adam_drift_bound(pair, steps))
    return training_tolerance(optimizer, check, adam_travel=pair.lr * steps)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (or decorated function).

    For these tiny models torch's thread pool only contends with XLA's on a small CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- training loops -----------------------------------------------------------


def loss_fn(model: nnx.Module, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy (``F.cross_entropy``) and the logits."""
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def train_step(
    model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array, nnx.State]:
    """One optimizer step in place; returns ``(loss, logits, grads)``. Wrap it in ``nnx.jit``."""
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, labels)
    optimizer.update(model, grads)
    return loss, logits, grads


@dataclass
class Trajectory:
    losses: list[float]
    state: dict[str, np.ndarray]  # torch names and layouts: parameters and buffers


def train_torch(net: torch.nn.Module, pair: OptimizerPair,
                batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> Trajectory:
    """Train ``net`` in place, one ``torch.optim`` step per batch (NCHW, int64 labels)."""
    net.train()
    optimizer = pair.torch(net.parameters())
    losses = []
    for x, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(labels))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return Trajectory(losses, {k: v.detach().numpy().copy() for k, v in net.state_dict().items()})


def train_steps(
    models: Sequence[nnx.Module], optimizers: Sequence[nnx.Optimizer], x: jax.Array, labels: jax.Array
) -> list[jax.Array]:
    """:func:`train_step` for several (model, optimizer) pairs on one batch; returns the losses."""
    return [train_step(model, optimizer, x, labels)[0] for model, optimizer in zip(models, optimizers)]


def train_flax(nets: Sequence[nnx.Module], pairs: Sequence[OptimizerPair],
               batches: Sequence[tuple[np.ndarray, np.ndarray]], *, jit: bool = True) -> list[Trajectory]:
    """Train each of ``nets`` in place with its optimizer pair's optax side.

    One ``nnx.jit`` program steps all of them (:func:`train_steps`), so the model is
    compiled once for every optimizer: a third less compile time than one program
    each, the same arithmetic. Batches as for :func:`train_torch` (moved to NHWC
    here); the states come back with torch names.
    """
    for net in nets:
        net.train()
    optimizers = [nnx.Optimizer(net, pair.optax(), wrt=nnx.Param) for net, pair in zip(nets, pairs)]
    step = nnx.jit(train_steps) if jit else train_steps
    losses: list[list[float]] = [[] for _ in nets]
    for x, labels in batches:
        out = step(nets, optimizers, jnp.asarray(nhwc(x)), jnp.asarray(labels, jnp.int32))
        for history, loss in zip(losses, out):
            history.append(float(loss))
    return [Trajectory(history, state_dict(net)) for history, net in zip(losses, nets)]


def gradient_free(
    net: torch.nn.Module, batch: tuple[np.ndarray, np.ndarray], rel: float = 1e-9
) -> dict[str, np.ndarray]:
    """Masks (torch names and layouts) of the parameter elements whose first-step
    gradient is zero in exact arithmetic.

    Structural zeros: a bias right before a training-mode BatchNorm (the batch
    mean removes it), a key bias before a softmax over the keys (it shifts a
    row's logits equally); and data-dependent ones (a unit no sample reaches).
    Found on a float64 copy of ``net``: at most ``rel`` times the largest
    gradient. In float32 such a gradient is rounding noise (about 1e-9), which
    Adam divides by its own size: the element moves by up to ``lr`` per step with
    a random sign, differently in each framework, until a real gradient arrives.
    An element with a real first gradient is safe: Adam's second moment keeps it.
    SGD's steps stay proportional to the noise.
    """
    model = copy.deepcopy(net).double().train()
    x, labels = batch
    F.cross_entropy(model(torch.from_numpy(x).double()), torch.from_numpy(labels)).backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).abs().numpy()
             for n, p in model.named_parameters()}
    top = max(float(g.max()) for g in grads.values() if g.size)
    return {n: g <= rel * top for n, g in grads.items()}


def dependent_buffers(net: torch.nn.Module, x: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Masks of the buffer elements whose training-mode update changes when the
    masked parameter elements change (float64): the running statistics that a
    gradient-free element feeds."""
    base = copy.deepcopy(net).double().train()
    moved = copy.deepcopy(base)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(1e-2 * torch.from_numpy(masks[n]).double())
        base(torch.from_numpy(x).double())
        moved(torch.from_numpy(x).double())
        after = dict(moved.named_buffers())
        return {n: ((b.double() - after[n].double()).abs() > 1e-12).numpy() for n, b in base.named_buffers()}


@dataclass
class TrainingResult:
    module: str
    optimizer: str
    torch_losses: list[float]
    flax_losses: list[float]
    gradient_free: dict[str, tuple[int, int]]  # parameter -> (gradient-free elements, size): "free_params"
    checks: dict[str, CheckResult] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks.values())

    @property
    def loss_diffs(self) -> list[float]:
        return [abs(a - b) for a, b in zip(self.torch_losses, self.flax_losses)]

    def failures(self) -> list[str]:
        label = f"{self.optimizer}, {len(self.torch_losses)} steps"
        return [c.describe(self.module, label) for c in self.checks.values() if not c.passed]


TRAINING_CHECKS = ("loss", "params", "bn_stats", "free_params", "free_bn_stats")
"""``loss``: every step's loss; ``params``: the final parameters (elements with a
real gradient); ``bn_stats``: the final BatchNorm buffers; ``free_*``: the
gradient-free elements (:func:`gradient_free`) and the buffer elements they feed
(:func:`dependent_buffers`), with :func:`parity.verify.tolerances.training_tolerance`'s
drift allowance."""


def _select(state: dict[str, np.ndarray], masks: dict[str, np.ndarray], keep: bool) -> dict[str, np.ndarray]:
    """The elements of each named tensor where ``mask == keep`` (names without any left out)."""
    out = {}
    for name, mask in masks.items():
        chosen = mask if keep else ~mask
        if chosen.any():
            out[name] = np.asarray(state[name])[chosen]
    return out


@one_torch_thread()
def compare_training(
    name: str,
    optimizers: Sequence[str] = ("sgd", "adamw"),
    *,
    steps: int = 5,
    batch: int = 4,
    size: tuple[int, int] = (8, 8),
    channels: int | None = None,
    num_classes: int = 10,
    seed: int = 0,
    lr: float | None = None,
    jit: bool = True,
) -> list[TrainingResult]:
    """Train the torch and Flax models for registered module ``name`` for ``steps``
    steps with each optimizer of ``optimizers`` (all from the same start; ``lr``
    replaces their learning rates) and compare."""
    models = build_models(name, channels=channels, num_classes=num_classes, seed=seed)
    batches = make_batches(steps, batch, in_channels=models.in_channels, size=size,
                           num_classes=models.num_classes, seed=seed)
    free = gradient_free(models.torch, batches[0])
    fed = dependent_buffers(models.torch, batches[0][0], free)
    pairs = [OPTIMIZERS[o] if lr is None else dataclasses.replace(OPTIMIZERS[o], lr=lr) for o in optimizers]
    flax_runs = train_flax([nnx.clone(models.flax) for _ in pairs], pairs, batches, jit=jit)
    results = []
    for optimizer, pair, got in zip(optimizers, pairs, flax_runs):
        ref = train_torch(copy.deepcopy(models.torch), pair, batches)
        counts = {n: (int(m.sum()), m.size) for n, m in free.items() if m.any()}
        result = TrainingResult(name, optimizer, ref.losses, got.losses, counts)
        groups = {
            "loss": ({"loss": np.array(ref.losses)}, {"loss": np.array(got.losses)}),
            "params": (_select(ref.state, free, False), _select(got.state, free, False)),
            "bn_stats": (_select(ref.state, fed, False), _select(got.state, fed, False)),
            "free_params": (_select(ref.state, free, True), _select(got.state, free, True)),
            "free_bn_stats": (_select(ref.state, fed, True), _select(got.state, fed, True)),
        }
        for check, (expected, actual) in groups.items():
            if expected:
                result.checks[check] = compare(check, expected, actual, _tolerance(optimizer, pair, check, steps))
        results.append(result)
    return results


# -- data parallel ------------------------------------------------------------


@dataclass
class DataParallelResult:
    module: str
    devices: int
    checks: dict[str, CheckResult]  # sharded vs single-device step
    batch_sharded: bool  # the logits came back split over all the devices
    replicated: bool  # every parameter, statistic and optimizer state is replicated after the step
    local_vs_global: float  # max |BN stats of one shard's samples alone - global|: a per-device BatchNorm

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks.values()) and self.batch_sharded and self.replicated

    def failures(self) -> list[str]:
        lines = [c.describe(self.module, f"data parallel x{self.devices}") for c in self.checks.values()
                 if not c.passed]
        if not (self.batch_sharded and self.replicated):
            lines.append(f"{self.module}: batch sharded {self.batch_sharded}, replicated {self.replicated}")
        return lines


def _named_grads(model: nnx.Module, grads: nnx.State) -> dict[str, np.ndarray]:
    """Gradients by torch name and layout (non-parameters come back as the model's values)."""
    holder = nnx.clone(model)
    nnx.update(holder, grads)
    return state_dict(holder)


@one_torch_thread()
def data_parallel_check(
    name: str,
    optimizer: str = "sgd",
    *,
    batch: int | None = None,
    size: tuple[int, int] = (8, 8),
    channels: int | None = None,
    seed: int = 0,
) -> DataParallelResult:
    """One training step with the batch sharded over every device vs the same step on one device.

    The mesh has one axis, ``"data"`` (``AxisType.Auto``: GSPMD propagates the
    shardings); inputs and labels are placed with ``NamedSharding(mesh, P("data"))``,
    the model and optimizer state with ``NamedSharding(mesh, P())`` (replicated),
    and the unchanged :func:`train_step` runs under ``nnx.jit``. Compared: loss
    and logits, parameter gradients, updated parameters and BatchNorm buffers.
    ``local_vs_global`` is how far the statistics of one device's samples alone
    are from the global ones (what a per-device BatchNorm would keep), so the
    ``bn_stats`` check is known to be able to fail. The samples are sorted by
    class, so every shard sees different data.

    Needs several devices, e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=8
    JAX_PLATFORMS=cpu`` set before JAX starts.
    """
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    n = len(devices)
    if n < 2:
        raise RuntimeError(
            "data_parallel_check needs several devices; on a CPU set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu before JAX starts"
        )
    batch = batch or 2 * n
    if batch % n:
        raise ValueError(f"`batch` must be a multiple of the {n} devices, got {batch}")
    mesh = Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
    data, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())

    models = build_models(name, channels=channels, seed=seed)
    x, labels = make_batches(1, batch, in_channels=models.in_channels, size=size,
                             num_classes=models.num_classes, seed=seed)[0]
    order = np.argsort(labels, kind="stable")
    x, labels = x[order], labels[order]
    free = gradient_free(models.torch, (x, labels))
    fed = dependent_buffers(models.torch, x, free)
    x, labels = nhwc(x), labels.astype(np.int32)

    tx = OPTIMIZERS[optimizer].optax()
    single, sharded, local = models.flax, nnx.clone(models.flax), nnx.clone(models.flax)
    opt_single, opt_sharded, opt_local = (nnx.Optimizer(m, tx, wrt=nnx.Param) for m in (single, sharded, local))
    for obj in (sharded, opt_sharded):
        nnx.update(obj, jax.device_put(nnx.state(obj), replicated))

    step = nnx.jit(train_step)
    loss_1, logits_1, grads_1 = step(single, opt_single, jnp.asarray(x), jnp.asarray(labels))
    loss_n, logits_n, grads_n = step(sharded, opt_sharded, jax.device_put(x, data), jax.device_put(labels, data))
    # The first device's samples repeated to the full batch: the same program, and
    # the batch mean of that shard alone.
    per = batch // n
    step(local, opt_local, jnp.asarray(np.tile(x[:per], (n, 1, 1, 1))), jnp.asarray(np.tile(labels[:per], n)))

    grad_ref, grad_got = _named_grads(single, grads_1), _named_grads(sharded, grads_n)
    ref, got, alone = state_dict(single), state_dict(sharded), state_dict(local)
    pair = OPTIMIZERS[optimizer]

    def check(key: str, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> CheckResult:
        if key.startswith("free_"):
            return compare(key, expected, actual, _tolerance(optimizer, pair, key, 1))
        adaptive = pair.kind in ("adam", "adamw") and key in ("params", "bn_stats")
        tol = training_tolerance("data_parallel", key, adam_travel=pair.lr if adaptive else 0.0)
        return compare(key, expected, actual, tol)

    checks = {
        "outputs": check("outputs", {"loss": np.asarray(loss_1), "logits": np.asarray(logits_1)},
                         {"loss": np.asarray(loss_n), "logits": np.asarray(logits_n)}),
        "grads": check("grads", {k: grad_ref[k] for k in free}, {k: grad_got[k] for k in free}),
        "params": check("params", _select(ref, free, False), _select(got, free, False)),
        "bn_stats": check("bn_stats", _select(ref, fed, False), _select(got, fed, False)),
    }
    if any(m.any() for m in free.values()):
        checks["free_params"] = check("free_params", _select(ref, free, True), _select(got, free, True))
    if any(m.any() for m in fed.values()):
        checks["free_bn_stats"] = check("free_bn_stats", _select(ref, fed, True), _select(got, fed, True))
    local_diff = max(float(np.abs(alone[k].astype(np.float64) - ref[k]).max()) for k in fed)
    leaves = jax.tree.leaves(nnx.state((sharded, opt_sharded)))
    return DataParallelResult(
        module=name,
        devices=n,
        checks=checks,
        batch_sharded=len({s.device for s in logits_n.addressable_shards}) == n
        and not logits_n.sharding.is_fully_replicated,
        replicated=all(leaf.sharding.is_fully_replicated for leaf in leaves),
        local_vs_global=local_diff,
    )


# -- command line -------------------------------------------------------------


def _format_losses(results: list[TrainingResult]) -> str:
    header = ["step"] + [f"{r.optimizer}: {col}" for r in results for col in ("torch", "flax", "|diff|")]
    rows = [header]
    for i in range(len(results[0].torch_losses)):
        row = [str(i + 1)]
        for r in results:
            row += [f"{r.torch_losses[i]:.7f}", f"{r.flax_losses[i]:.7f}", f"{r.loss_diffs[i]:.1e}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def _format_summary(results: list[TrainingResult]) -> str:
    header = ["module", "optimizer", *TRAINING_CHECKS, "result"]
    rows = [header] + [
        [r.module, r.optimizer, *(f"{r.checks[c].max_abs:.1e}" if c in r.checks else "-" for c in TRAINING_CHECKS),
         "pass" if r.passed else "FAIL"]
        for r in results
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity train", description=__doc__.split("\n")[0])
    parser.add_argument("--modules", nargs="+", default=[next(iter(SPECS))], choices=list(SPECS), metavar="NAME",
                        help=f"attention modules (default: the first registered; all: {', '.join(SPECS)})")
    parser.add_argument("--all", action="store_true", help="every registered module (summary only)")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(8, 8), metavar=("H", "W"))
    parser.add_argument("--channels", type=int, default=None, help="default: the module's example case")
    parser.add_argument("--lr", type=float, default=None, help="replaces every optimizer's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-parallel", action="store_true",
                        help="also compare a step sharded over all devices with the single-device step "
                             "(on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    args = parser.parse_args(argv)
    modules = list(SPECS) if args.all else args.modules

    print(f"training parity: torch.optim vs optax, float32, JAX backend {jax.default_backend()}, "
          f"{args.steps} steps, batch {args.batch}, {args.size[0]}x{args.size[1]}", file=sys.stderr)
    failures: list[str] = []
    print("update rule alone (same gradients, 10 steps), max |optax - torch|:")
    for opt in args.optimizers:
        rule = compare_update_rule(opt, seed=args.seed)
        print(f"  {opt:13s} {rule.max_abs:.1e}  {'pass' if rule.passed else 'FAIL'}  {OPTIMIZERS[opt].describe()}")
        if not rule.passed:
            failures.append(rule.describe(opt, "update rule"))
    results: list[TrainingResult] = []
    for name in modules:
        start = time.perf_counter()
        try:
            per_module = compare_training(name, args.optimizers, steps=args.steps, batch=args.batch,
                                          size=tuple(args.size), channels=args.channels, seed=args.seed, lr=args.lr)
        except Exception as error:  # report it and go on with the other modules
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failures.append(f"{name}: training raised {type(error).__name__}: {message}")
            print(f"  {name}: ERROR ({failures[-1]})", file=sys.stderr)
            continue
        ok = all(r.passed for r in per_module)
        print(f"  {name}: {'ok' if ok else 'FAILED'} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
        results += per_module
        if not args.all:
            print(f"\n{name}: loss per step")
            print(_format_losses(per_module))
            if per_module[0].gradient_free:
                listed = ", ".join(f"{n} ({k} of {size})" for n, (k, size) in per_module[0].gradient_free.items())
                print(f"gradient-free elements (first gradient 0 in exact arithmetic): {listed}")
    print("\nmax |flax - torch| at the end (loss: over all steps; free_*: gradient-free parameters "
          "and the running means they feed)")
    print(_format_summary(results))
    failures += [line for r in results for line in r.failures()]

    if args.data_parallel:
        print(f"\ndata parallel over {len(jax.devices())} devices: sharded step vs single-device step, "
              "max |diff|")
        for name in modules:
            try:
                d = data_parallel_check(name, args.optimizers[0], seed=args.seed)
            except Exception as error:  # report it and go on with the other modules
                failures.append(f"{name}: data parallel step raised {type(error).__name__}: {error}".splitlines()[0])
                continue
            cells = "  ".join(f"{k}: {c.max_abs:.1e}" for k, c in d.checks.items())
            print(f"{name:34s} {cells}  batch sharded: {d.batch_sharded}  replicated: {d.replicated}  "
                  f"(BN stats of one shard alone: {d.local_vs_global:.2g} off)  {'pass' if d.passed else 'FAIL'}")
            failures += d.failures()
    for line in failures:
        print(line)
    print(f"{len(results) - sum(not r.passed for r in results)} of {len(results)} training runs agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
