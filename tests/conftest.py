import os

# Tests run on the CPU with one device unless a test starts its own subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from parity.verify.xla_cache import enable_compilation_cache  # noqa: E402

# The parity report compiles the same programs: reuse them.
enable_compilation_cache()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one intra-op thread each avoids oversubscription.
    import torch

    torch.set_num_threads(1)

# The longest tests first, so that no worker is left running one alone at the end.
LONGEST_FIRST = (
    "tests/test_timm_models.py::test_matches_timm",
    "tests/test_parity.py::test_parity[ResNet",
    "tests/test_parity.py::test_timm_architecture_rows",
    "tests/test_cpu_kernels.py::test_an_error_planted_in_a_kernel_fails_the_harness",
    "tests/test_examples.py",
    "tests/test_timm_layers.py::test_torch_and_flax_agree_off_the_goldens",
    "tests/test_custom_gradients.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)
