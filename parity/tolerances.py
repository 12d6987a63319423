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


def tolerance(module: str, check: str, dtype: str = "float32") -> Tolerance:
    if dtype == "float32" and (module, check) in OVERRIDES:
        return OVERRIDES[(module, check)]
    return DEFAULT[dtype]


# Training parity (parity.training, `python -m parity train`, tests/test_training.py,
# tests/test_sharding.py): (optimizer or "data_parallel", quantity) -> Tolerance, float32 on
# CPU, judged like the parity checks (atol scaled by max(1, max|torch|)). Measured on the 14
# attention blocks registered so far, in the tiny classifier of parity.training (loss ~2.3,
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
# parity.training.adam_drift_bound (about 2 * lr * steps). Measured: at most 0.25 of it (BAM's
# channel branch, AdamW, 5 steps), 0.26 (20 steps); the running means they feed 0.19.
# The loss does not see these elements; `python -m parity train` lists them.
def training_tolerance(
    optimizer: str, quantity: str, *, adam_travel: float = 0.0, drift: float | None = None
) -> Tolerance:
    """The tolerance for ``quantity`` after training with ``optimizer`` (a key of
    ``parity.training.OPTIMIZERS``, or ``"data_parallel"``).

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
