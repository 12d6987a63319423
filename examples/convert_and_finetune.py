"""Convert a PyTorch checkpoint to Flax and fine-tune it there.

    python examples/convert_and_finetune.py          # SE-ResNet-18 at 64x64, 20 steps
    python examples/convert_and_finetune.py --tiny   # 32x32, 2 steps (CI)

A torch SE-ResNet-18 (standing in for one you trained) is saved as a safetensors
state dict, loaded strictly into its ``attn_flax`` twin, checked against torch,
fine-tuned with optax and saved as a Flax checkpoint. The same conversion from the
shell: ``attn-convert to-flax model.safetensors flax.safetensors --model ResNet
--arg depth=18 --arg attention=SE --arg num_classes=10``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from safetensors.numpy import load_file
from safetensors.torch import save_file

import attn_flax
import attn_torch
import parity

ARGS = {"depth": 18, "attention": "SE", "num_classes": 10}


def save_torch_checkpoint(path: Path) -> attn_torch.ResNet:
    torch.manual_seed(0)
    model = attn_torch.ResNet(**ARGS).eval()
    save_file(model.state_dict(), path)
    return model


def load_into_flax(path: Path) -> attn_flax.ResNet:
    model = attn_flax.ResNet(**ARGS, rngs=nnx.Rngs(0))
    parity.load_state_dict(model, load_file(path))  # strict: every key and shape, or ConversionError
    return model


@nnx.jit
def train_step(model: attn_flax.ResNet, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array) -> jax.Array:
    def loss_fn(model: attn_flax.ResNet) -> jax.Array:
        logits = model(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)  # BatchNorm statistics update in place
    return loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few steps on tiny inputs (CI)")
    args = parser.parse_args(argv)
    steps, batch, size = (2, 2, 32) if args.tiny else (20, 16, 64)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "se_resnet18.safetensors"
        torch_model = save_torch_checkpoint(checkpoint)
        model = load_into_flax(checkpoint)

        images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)  # NCHW for torch
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(images)).numpy()
        model.eval()
        got = np.asarray(model(jnp.asarray(images.transpose(0, 2, 3, 1))))  # NHWC for Flax
        print(f"converted: max |flax - torch| = {np.abs(got - expected).max():.2e}")
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

        model.train()
        optimizer = nnx.Optimizer(model, optax.sgd(1e-2, momentum=0.9), wrt=nnx.Param)
        for step in range(steps):
            x = jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
            labels = jnp.asarray(rng.integers(0, ARGS["num_classes"], batch))
            loss = float(train_step(model, optimizer, x, labels))
            print(f"step {step:3d}  loss {loss:.4f}")
            if not np.isfinite(loss):
                raise SystemExit("the loss is not finite")

        model.eval()
        saved = parity.save_flax(model, Path(tmp) / "finetuned.safetensors")
        print(f"saved {saved.name}; torch twin again with parity.to_torch(model)")


if __name__ == "__main__":
    main()
