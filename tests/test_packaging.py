"""attn_flax imports without torch, attn_torch without jax; the registry is complete."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package,blocked",
    [("attn_flax", ("torch",)), ("attn_torch", ("jax", "jaxlib", "flax"))],
)
def test_package_imports_without_the_other_framework(package, blocked):
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + f"import {package}\n"
        + f"assert {package}.MODULES, 'empty registry'\n"
        + "print(sorted(" + package + ".MODULES))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_public_names_match():
    import attn_flax
    import attn_torch

    flax_only = {"compiler_options"}  # XLA compiler options: nothing to match in torch
    assert sorted(attn_torch.__all__) == sorted(set(attn_flax.__all__) - flax_only)
    assert flax_only <= set(attn_flax.__all__)
    for name, cls in attn_torch.MODULES.items():
        timm_family = ".timm." in cls.__module__  # exported from attn_torch.timm / attn_flax.timm
        assert getattr(attn_torch.timm if timm_family else attn_torch, cls.__name__) is cls
        flax_cls = attn_flax.MODULES[name]
        assert getattr(attn_flax.timm if timm_family else attn_flax, flax_cls.__name__) is flax_cls
