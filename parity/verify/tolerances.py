"""The one table of parity tolerances.

A comparison passes when ``|flax - torch| <= atol * max(1, max|torch|) + rtol * |torch|``
elementwise: ``atol`` is scaled by the reference's magnitude so large reductions
are judged relative to their size. Parameter gradients share one scale, the
largest gradient of the module: a parameter whose true gradient is zero (a bias
before a training-mode BatchNorm, a bias inside a softmax) carries float32
cancellation noise proportional to the other gradients (measured: BAM 3.7e-4
apart where the largest gradient is in the hundreds). Every override says why
it exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


DEFAULT: dict[str, Tolerance] = {
    # float32 on CPU: the two frameworks agree to about 1e-6 relative.
    "float32": Tolerance(rtol=1e-5, atol=1e-5),
}

# (module, check) -> Tolerance, for float32. Each entry carries its reason.
OVERRIDES: dict[tuple[str, str], Tolerance] = {}


# timm's ResNet family and legacy SENets against timm 1.0.31's own outputs (tests/test_timm_models.py,
# recipe weights, 2x3x64x64), both packages, judged like the parity checks. Eval mode is within the
# default (worst 1.6e-6, resnet50_gn in Flax). Train mode normalises with the statistics of 2 images
# of 2x2 to 16x16 pixels, and every BatchNorm amplifies the rounding of the one before: timm's own
# float32 logits are 3.6e-4 (resnet101) and 4.2e-3 (ecaresnet269d) away from the same model in
# float64. Measured Flax against timm: at most 6.6e-4 up to 40 blocks (resnet101s), 1.45e-2 beyond
# (resnetrs420, 139 blocks); a wrong layer is off by O(1).
OVERRIDES[("timm.ResNet", "train")] = Tolerance(rtol=0.0, atol=2e-3)
OVERRIDES[("timm.ResNet", "train, over 40 blocks")] = Tolerance(rtol=0.0, atol=5e-2)


def tolerance(module: str, check: str, dtype: str = "float32") -> Tolerance:
    if dtype == "float32" and (module, check) in OVERRIDES:
        return OVERRIDES[(module, check)]
    return DEFAULT[dtype]


# Training parity (parity.devtools.training, `python -m parity train`, tests/test_training.py,
# tests/test_sharding.py): (optimizer or "data_parallel", quantity) -> Tolerance, float32 on
# CPU, judged like the parity checks (atol scaled by max(1, max|torch|)). Measured on the 14
# attention blocks registered so far, in the tiny classifier of parity.devtools.training (loss ~2.3,
# parameters and statistics of order 1): "5 steps" is the test (batch 4, 8x8), "20 steps"
# the command's default (batch 8).
TRAINING: dict[tuple[str, str], Tolerance] = {
    # The optimizer alone, the same 10 gradients (elements from 1e-5 to 10) fed to torch.optim
    # and optax: worst 7.2e-7 (AdamW), 4.8e-7 (SGD, SGD-Nesterov), 2.4e-7 (Adam). A wrong
    # convention is 2.3e-4 (optax's default AdamW decay) to 5.6 (EMA momentum) off.
    **{(opt, "update_rule"): Tolerance(rtol=1e-5, atol=1e-5) for opt in ("sgd", "sgd-nesterov", "adam", "adamw")},
    # Loss of every step: worst 4.8e-7 (5 steps, every optimizer; SGD, 20 steps), 2.4e-6
    # (AdamW, 20 steps). SGD, final parameters: worst 1.8e-7 (5 steps), 2.4e-7 (20 steps);
    # BatchNorm buffers: 7.2e-7 (5 steps) and 3.8e-6 (20 steps), both BAM. SGD-Nesterov:
    # 2.4e-7 and 4.8e-7 (5 steps). Adam/AdamW: these are the floor; see ADAM_STEP_ERROR.
    **{(opt, q): Tolerance(rtol=1e-5, atol=1e-5)
       for opt in ("sgd", "sgd-nesterov", "adam", "adamw") for q in ("loss", "params", "bn_stats")},
    # SGD on gradient-free elements (see training_tolerance): worst 6.0e-8, and 6.0e-7 for the
    # running means they feed (BAM, 20 steps).
    **{(opt, q): Tolerance(rtol=1e-5, atol=1e-5)
       for opt in ("sgd", "sgd-nesterov") for q in ("free_params", "free_bn_stats")},
    # One step with the batch sharded over 8 devices vs one device, every block: loss and
    # logits worst 3.0e-7, gradients 1.6e-7, updated parameters 6.0e-8, BatchNorm buffers
    # 1.2e-7 (only the order of the cross-device sums differs). The statistics of one
    # device's samples alone are 0.04 to 0.25 away: 1e-6 tells global from per-device.
    **{("data_parallel", q): Tolerance(rtol=1e-6, atol=1e-6) for q in ("outputs", "grads", "params", "bn_stats")},
}

# Adam normalises each element's step, so its error is lr times the relative error of that
# element's gradient, and an element whose gradient is ~1e-6 of the largest (float32 rounding
# of the sums behind it is ~1e-8 of the largest) takes steps ~1% off. Adam/AdamW's params and
# bn_stats allow ADAM_STEP_ERROR * lr * steps (at least the table's 1e-5). Measured worst:
# AdamW 4.8e-7 / 8.3e-7 (parameters / statistics, 5 steps); Adam 1.1e-5 (GAM, 5 steps:
# allowed 5e-5); AdamW 7.7e-5 / 2.2e-5 (SequentialPolarizedSelfAttention, 20 steps: allowed
# 2e-4; every other block within 8.5e-6).
ADAM_STEP_ERROR = 1e-2


# A parameter element whose gradient is zero in exact arithmetic (a bias before a
# training-mode BatchNorm, a key bias before a softmax, a unit no sample reaches) gets float32
# rounding noise as its gradient, different in each framework. SGD's step is lr x noise (the
# table above). Adam divides the noise by its own size and moves the element up to lr per step
# with a random sign in each framework: nothing tighter than Adam's own step bound can be
# promised, so Adam/AdamW's free_params and free_bn_stats get `drift` =
# parity.devtools.training.adam_drift_bound (about 2 * lr * steps). Measured: at most 0.25 of it (BAM's
# channel branch, AdamW, 5 steps), 0.26 (20 steps); the running means they feed 0.19.
# The loss does not see these elements; `python -m parity train` lists them.
def training_tolerance(
    optimizer: str, quantity: str, *, adam_travel: float = 0.0, drift: float | None = None
) -> Tolerance:
    """The tolerance for ``quantity`` after training with ``optimizer`` (a key of
    ``parity.devtools.training.OPTIMIZERS``, or ``"data_parallel"``).

    ``adam_travel``: ``lr * steps`` of an Adam-family run (widens params and bn_stats
    by ``ADAM_STEP_ERROR``); ``drift``: an absolute bound computed by the caller
    (Adam on gradient-free elements).
    """
    if drift is not None:
        return Tolerance(rtol=0.0, atol=drift)
    tol = TRAINING[(optimizer, quantity)]
    if quantity in ("params", "bn_stats"):
        return Tolerance(rtol=tol.rtol, atol=max(tol.atol, ADAM_STEP_ERROR * adam_travel))
    return tol


# --- bfloat16 -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bf16Tolerance:
    """Largest normwise relative error ``||got - ref||_2 / ||ref||_2`` allowed against float32."""

    forward: float
    grad_input: float


# bf16 has 8 significant bits: one rounding moves a value by up to u = 2^-8 = 3.9e-3 relative
# and a rounded Gaussian tensor by 1.7e-3 normwise (measured). The error is judged
# normwise (parity.verify.harness.relative_error): a rounding that flips a ReLU or moves a max-pool's
# argmax reroutes single gradient elements wholesale (elementwise max errors of 0.1 to 0.5
# below), which says nothing about the precision of the rest. attn_flax rounds the input on
# entry and every layer's output; autocast keeps the input and elementwise ops in float32 and
# rounds only conv/matmul operands and results, so torch's errors are about half of Flax's
# (0 for ShuffleAttention and SGE, which have no conv or matmul). "worst" is the larger of
# the two frameworks over seeds 0-7 of the first registry case (normwise; the report and the
# tests use seed 0); each tolerance leaves at least 2x margin over it.
BF16: dict[str, Bf16Tolerance] = {
    # Pool -> 2 linears -> sigmoid -> product: four roundings on the longest path. Worst
    # 3.7e-3 forward, 3.8e-3 input gradient (~1 u).
    "SE": Bf16Tolerance(forward=1e-2, grad_input=1e-2),
    # Pool -> 1-D conv -> sigmoid -> product, as SE. Worst 4.0e-3 / 4.0e-3.
    "ECA": Bf16Tolerance(forward=1e-2, grad_input=1e-2),
    # Forward worst 2.8e-3. The gradient goes through two max-pools (spatial per channel,
    # channel-wise per pixel) whose argmax bf16 rounding moves between near-ties: worst 1.4e-2
    # (elementwise 0.14; torch 9.3e-3, 0.10), median 5.7e-3.
    "CBAM": Bf16Tolerance(forward=1e-2, grad_input=3e-2),
    # Pool -> conv -> BatchNorm -> h-swish -> conv -> sigmoid for each of two gates multiplied
    # together: six roundings. Worst 5.3e-3 / 5.6e-3.
    "CoordAttention": Bf16Tolerance(forward=1.5e-2, grad_input=1.5e-2),
    # Q and K are rounded to bf16 before the (float32) energies Q K^T, whose error enters the
    # float32 softmax as absolute logit errors of ~|q||k| u; under autocast the energies are
    # also rounded. Worst 3.8e-3 forward, 7.6e-3 gradient (median 3.5e-3; torch 2.8e-3, 4.8e-3).
    "PositionAttention": Bf16Tolerance(forward=1e-2, grad_input=2e-2),
    # The energy X^T X sums H*W = 64 products (diagonal ~64, the rest ~8). Torch under
    # autocast rounds it to bf16 (a bf16 matmul's output) before the softmax: the logits move
    # by up to 64 u = 0.25 and 8 u = 0.03, the attention weights by a few percent up to ~25%:
    # worst 2.3e-2 forward, 0.11 gradient. attn_flax keeps the energies in float32
    # (preferred_element_type) and only rounds X: worst 4.9e-3, 1.9e-2.
    "ChannelAttention": Bf16Tolerance(forward=6e-2, grad_input=0.25),
    # Position + channel branches; the channel branch dominates: worst 9.7e-3 / 4.8e-2 (torch
    # autocast; attn_flax 4.1e-3 / 1.5e-2).
    "DualAttention": Bf16Tolerance(forward=2.5e-2, grad_input=0.12),
    # A softmax over the H + W criss-cross energies, as PositionAttention over fewer keys.
    # Worst 4.1e-3 / 1.1e-2 (attn_flax; torch 2.8e-3 / 5.4e-3), median 2.7e-3 / 4.4e-3.
    "CrissCrossAttention": Bf16Tolerance(forward=1e-2, grad_input=2.5e-2),
    # Forward worst 3.2e-3: the gate is 1 + sigmoid, so its error is damped. The gradient
    # goes through the five-conv spatial branch, whose ReLUs flip: worst 7.5e-3
    # (torch 6.7e-3), median 3.7e-3.
    "BAM": Bf16Tolerance(forward=1e-2, grad_input=2e-2),
    # Per-pixel MLP gate, then 7x7 conv -> BatchNorm -> ReLU -> 7x7 conv -> BatchNorm gate:
    # worst 5.2e-3 forward. ReLU flips between the two 7x7 convs (49 x C/4 products each):
    # gradient worst 1.8e-2 (torch 1.7e-2), median 5.7e-3.
    "GAM": Bf16Tolerance(forward=1.5e-2, grad_input=4e-2),
    # GroupNorm (float32 statistics) and pooled gates, one product each. Worst 4.0e-3 / 4.3e-3.
    "ShuffleAttention": Bf16Tolerance(forward=1e-2, grad_input=1e-2),
    # Forward worst 3.9e-3. The gradient through the standardisation (t - mean) / std of the
    # group similarities carries the bf16 error of t divided by its spread: worst 6.2e-3.
    "SGE": Bf16Tolerance(forward=1e-2, grad_input=1.5e-2),
    # Two gates in parallel, each conv -> float32 softmax -> einsum (-> LayerNorm) -> sigmoid.
    # Worst 3.5e-3 / 4.7e-3.
    "ParallelPolarizedSelfAttention": Bf16Tolerance(forward=1e-2, grad_input=1e-2),
    # The same gates in series (the spatial gate sees the channel-gated map): worst
    # 5.3e-3 / 7.4e-3.
    "SequentialPolarizedSelfAttention": Bf16Tolerance(forward=1.5e-2, grad_input=2e-2),
    # ResNet-18 with CBAM, 4x3x64x64: 20 conv/BatchNorm layers and 8 CBAMs in series. Logits
    # worst 8.1e-3 (~2 u). The input gradient is ill-conditioned even in float32: perturbing
    # the input by 1e-3 relative noise (half a bf16 rounding) moves the float32 gradient by
    # 4e-2 to 8e-2 normwise (0.06 to 0.19 elementwise) through ReLU and max-pool switches;
    # with every layer rounded, bf16 moves it by a median 0.2, worst 0.30 in both
    # frameworks (torch autocast 0.30). 0.5 still fails an unrelated gradient (~1.4).
    "ResNet": Bf16Tolerance(forward=2e-2, grad_input=0.5),
}


# timm architectures of the report (parity.verify.registry.MODEL_SPECS), eval, 2x3x32x32: 50 or
# more roundings deep. Forward worst 1.1e-2 (ecaresnet50d; torch autocast 9.4e-3). The input
# gradient runs back through every layer in bf16: Flax 0.12-0.15 where torch autocast gives
# 0.08-0.17, and resnet50_gn 0.42 (autocast 0.44: GroupNorm's backward in bf16). Each bound
# is about 1.5x the larger of the two frameworks' errors.
BF16.update({
    "seresnet50": Bf16Tolerance(forward=2e-2, grad_input=0.25),
    "ecaresnet50d": Bf16Tolerance(forward=2e-2, grad_input=0.25),
    "seresnext26d_32x4d": Bf16Tolerance(forward=2e-2, grad_input=0.25),
    "resnet50_gn": Bf16Tolerance(forward=2e-2, grad_input=0.7),
    "legacy_seresnet18": Bf16Tolerance(forward=2e-2, grad_input=0.25),
})


def bf16_tolerance(module: str) -> Bf16Tolerance:
    """The bf16 tolerance of a registered module; every module has its own justified entry."""
    if module not in BF16:
        raise KeyError(f"no bf16 tolerance for {module!r}: add a justified entry to parity.verify.tolerances.BF16")
    return BF16[module]


# timm's attention layers (attn_*.timm), Flax with dtype=bfloat16 against timm's float32 goldens
# (tests/test_timm_layers.py), eval and train, normwise: a few roundings on the longest path.
# Measured on the 25 golden configurations: worst 9.1e-3 (BottleneckAttn: bf16 q/k logits plus
# relative-position logits into a softmax), 7.8e-3 (HaloAttn), 7.5e-3 (BatNonLocalAttn, train),
# the channel and spatial gates 3.2e-3 to 5.3e-3 (about one rounding u = 3.9e-3).
TIMM_LAYERS_BF16_FORWARD = 2e-2
