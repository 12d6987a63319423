"""The parity harness can fail: each trap it guards against is caught when planted."""

import numpy as np
import pytest

import attn_flax
from attn_flax.layers import BatchNorm
from parity.verify.harness import compare, run_case
from parity.verify.registry import SPECS
from parity.verify.tolerances import Tolerance

TOL = Tolerance(rtol=1e-5, atol=1e-5)


def test_compare_passes_within_and_fails_beyond_tolerance():
    ref = {"a": np.linspace(-2, 2, 50)}
    assert compare("c", ref, {"a": ref["a"] + 1e-6}, TOL).passed
    bad = compare("c", ref, {"a": ref["a"] + 1e-3}, TOL)
    assert not bad.passed and bad.worst == "a" and bad.max_abs == pytest.approx(1e-3)


@pytest.mark.parametrize("candidate", [{"a": np.full(3, np.nan)}, {"b": np.zeros(3)}, {"a": np.zeros(4)}])
def test_compare_fails_on_nan_missing_keys_and_shapes(candidate):
    assert not compare("c", {"a": np.zeros(3)}, candidate, TOL).passed


def test_shared_scale_judges_a_zero_gradient_by_its_neighbours():
    ref = {"big": np.array([100.0]), "zero": np.array([0.0])}
    got = {"big": np.array([100.0]), "zero": np.array([5e-4])}
    assert not compare("g", ref, got, TOL).passed
    assert compare("g", ref, got, TOL, shared_scale=True).passed


def test_a_wrong_output_is_caught(monkeypatch):
    original = attn_flax.SE.__call__
    monkeypatch.setattr(attn_flax.SE, "__call__", lambda self, x: original(self, x) * 1.001)
    spec = SPECS["SE"]
    result = run_case(spec, spec.cases[0], calls=False)
    assert not result.checks["eval"].passed and not result.checks["train"].passed
    assert not result.checks["grad_input"].passed


def test_flax_momentum_convention_is_caught(monkeypatch):
    """Copying torch's momentum number into Flax's convention breaks the statistics."""
    original = BatchNorm.__init__

    def flax_convention(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.momentum = 0.9

    monkeypatch.setattr(BatchNorm, "__init__", flax_convention)
    spec = SPECS["CoordAttention"]
    result = run_case(spec, spec.cases[0], calls=False)
    assert not result.checks["bn_stats"].passed
    assert result.checks["train"].passed  # outputs alone would not have shown it
