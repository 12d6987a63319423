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
