"""Use attention modules from a ``flax.linen`` model, and train it a few steps with optax.

    python examples/linen_usage.py          # 32 steps on 16x16 images
    python examples/linen_usage.py --tiny   # 3 steps on 8x8 images (CI)

``attn_flax.linen`` has every registered module as a Linen module with the same
arguments; ``__call__(x, train)`` picks batch or running BatchNorm statistics, and
training needs ``mutable=["batch_stats"]``. ``to_variables(nnx_module)`` brings in
converted weights, ``to_nnx(model, variables)`` goes back to nnx (e.g. for
``parity.to_torch``).
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import attn_flax
from attn_flax import linen as attn_linen


class Classifier(nn.Module):
    width: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = attn_linen.CoordAttention(self.width, reduction=4)(x, train)  # has BatchNorm
        x = attn_linen.CBAM(self.width, reduction=4)(x, train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few steps on tiny inputs (CI)")
    args = parser.parse_args(argv)
    steps, batch, size, width = (3, 4, 8, 8) if args.tiny else (32, 16, 16, 16)
    num_classes = 3
    rng = np.random.default_rng(0)

    model = Classifier(width, num_classes)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                          train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

    for step in range(steps):
        labels = rng.integers(0, num_classes, batch)
        images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
        images[..., 0] += labels[:, None, None]
        params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state, images, labels)
        print(f"step {step:3d}  loss {float(loss):.4f}")
        if not np.isfinite(float(loss)):
            raise SystemExit("the loss is not finite")

    logits = model.apply({"params": params, "batch_stats": batch_stats}, images)  # eval: running statistics
    print("eval logits", logits.shape)

    # A single module: the nnx twin's weights in and out of Linen variables.
    nnx_cbam = attn_flax.CBAM(width, reduction=4, rngs=nnx.Rngs(1))
    linen_cbam = attn_linen.CBAM(width, reduction=4)
    x = jnp.asarray(rng.standard_normal((2, size, size, width), dtype=np.float32))
    same = linen_cbam.apply(attn_linen.to_variables(nnx_cbam), x)
    np.testing.assert_allclose(np.asarray(same), np.asarray(nnx_cbam(x)), rtol=1e-6, atol=1e-6)
    back = attn_linen.to_nnx(linen_cbam, attn_linen.to_variables(nnx_cbam))
    print("round trip through Linen variables:", type(back).__name__)


if __name__ == "__main__":
    main()
