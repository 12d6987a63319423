import os

# Tests run on the CPU with one device unless a test starts its own subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one intra-op thread each avoids oversubscription.
    import torch

    torch.set_num_threads(1)
