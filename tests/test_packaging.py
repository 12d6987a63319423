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

    flax_only = {"compiler_options", "cpu_kernels_enabled", "set_cpu_kernels"}  # the CPU-kernel layer: nothing to match in torch
    assert sorted(attn_torch.__all__) == sorted(set(attn_flax.__all__) - flax_only)
    assert flax_only <= set(attn_flax.__all__)
    for name, cls in attn_torch.MODULES.items():
        timm_family = ".timm." in cls.__module__  # exported from attn_torch.timm / attn_flax.timm
        assert getattr(attn_torch.timm if timm_family else attn_torch, cls.__name__) is cls
        flax_cls = attn_flax.MODULES[name]
        assert getattr(attn_flax.timm if timm_family else attn_flax, flax_cls.__name__) is flax_cls


def test_every_package_reports_the_distribution_version():
    import attn_common
    import attn_flax
    import attn_torch
    import parity
    from attn_common._version import __version__

    assert [attn_common.__version__, attn_torch.__version__, attn_flax.__version__, parity.__version__] == [__version__] * 4


def test_wheel_ships_type_markers_license_and_version(tmp_path):
    """Built from a copy of the sources, so the checkout gets no build/ or egg-info."""
    import shutil
    import zipfile
    from pathlib import Path

    pytest.importorskip("setuptools")
    from attn_common._version import __version__

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, source / name)
    packages = ("attn_common", "attn_torch", "attn_flax", "parity")
    for package in packages:
        shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("attn_parity-*.whl")
    assert wheel.name.startswith(f"attn_parity-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"{package}/py.typed" for package in packages} <= names
    assert any(name.endswith("licenses/LICENSE") for name in names)
