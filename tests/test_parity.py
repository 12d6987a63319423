"""Parity of every registered module: torch vs flax, every case and every check."""

import pytest

import attn_flax
import attn_torch
from parity.verify.harness import CHECKS, PATHS, run_case
from parity.verify.registry import MODEL_SPECS, SPECS

CASES = [(spec, case) for spec in SPECS.values() for case in spec.cases]


def test_both_packages_register_the_same_modules():
    assert set(attn_torch.MODULES) == set(attn_flax.MODULES)
    # The timm family (attn_*.timm) is checked against timm's goldens (tests/test_timm_*.py).
    assert {n for n, c in attn_torch.MODULES.items() if ".timm." not in c.__module__} == set(SPECS)


@pytest.mark.parametrize("spec,case", CASES, ids=[f"{s.name}-{c.label}" for s, c in CASES])
def test_parity(spec, case):
    result = run_case(spec, case)
    expected = {"grad_input", "grad_param", *case.modes}
    assert expected <= set(result.checks) <= set(CHECKS), f"checks not run: {expected - set(result.checks)}"
    # A module with buffers has its running statistics compared after the training step.
    has_buffers = any(True for _ in spec.torch_module(case).buffers())
    assert ("bn_stats" in result.checks) == (has_buffers and "train" in case.modes)
    assert result.passed, "\n".join(result.failures())
    assert result.paths in (PATHS, ("plain",))


def test_both_paths_run_where_a_module_calls_a_kernel():
    spec = SPECS["CBAM"]
    assert run_case(spec, spec.cases[0], modes=("eval",), calls=False).paths == PATHS
    spec = SPECS["SE"]  # Linear layers only: one program either way
    assert run_case(spec, spec.cases[0], modes=("eval",), calls=False).paths == ("plain",)


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_timm_architecture_rows(name):
    """The report's timm rows, float32: every call and path (their bf16 rows run in the report)."""
    spec = MODEL_SPECS[name]
    result = run_case(spec, spec.cases[0])
    assert result.passed and result.paths == PATHS, "\n".join(result.failures())
