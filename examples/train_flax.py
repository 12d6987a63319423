"""Train a small Flax NNX network with attention blocks, with optax, on synthetic data.

    python examples/train_flax.py            # 64 steps on 32x32 images
    python examples/train_flax.py --tiny     # a few steps on 8x8 images (CI)

Needs only ``pip install ".[jax]"`` and optax; no torch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import attn_flax


class Net(nnx.Module):
    """Conv stem, two conv + attention stages (CBAM, then SE), global pool, linear head. NHWC."""

    def __init__(self, width: int, num_classes: int, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, width, (3, 3), rngs=rngs)
        self.cbam = attn_flax.CBAM(width, reduction=4, rngs=rngs)
        self.conv = nnx.Conv(width, 2 * width, (3, 3), strides=2, rngs=rngs)
        self.se = attn_flax.SE(2 * width, reduction=4, rngs=rngs)
        self.head = nnx.Linear(2 * width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.cbam(nnx.relu(self.stem(x)))
        x = self.se(nnx.relu(self.conv(x)))
        return self.head(x.mean(axis=(1, 2)))


def synthetic_batch(rng: np.random.Generator, batch: int, size: int, num_classes: int):
    """Images whose class is written into their mean colour, so the loss can fall."""
    labels = rng.integers(0, num_classes, batch)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    images[..., 0] += labels[:, None, None] - num_classes / 2
    return jnp.asarray(images), jnp.asarray(labels)


@nnx.jit
def train_step(model: Net, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array) -> jax.Array:
    def loss_fn(model: Net) -> jax.Array:
        logits = model(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few steps on tiny inputs (CI)")
    args = parser.parse_args(argv)
    steps, batch, size, width = (4, 4, 8, 8) if args.tiny else (64, 32, 32, 32)
    num_classes = 4

    model = Net(width, num_classes, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-2), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(steps):
        loss = float(train_step(model, optimizer, *synthetic_batch(rng, batch, size, num_classes)))
        losses.append(loss)
        print(f"step {step:3d}  loss {loss:.4f}")
    if not all(np.isfinite(losses)):
        raise SystemExit("the loss is not finite")
    return losses


if __name__ == "__main__":
    main()
