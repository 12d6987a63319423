"""A persistent cache of XLA programs for the parity report and the tests.

Every parity case compiles a few small programs (the forward and the
gradients of one module at one shape); compiling them is most of the cost of a
case on a CPU. The report and the test suite compile the same programs, so
with a shared on-disk cache the second of them, and every rerun, skips the
compiler. The cache is keyed by the program, the JAX version and the device:
it can make a run faster, never change a result. The key also holds the cache's own
path (XLA records a directory inside it in the compile options), so a cache copied
to another path starts cold.
"""

from __future__ import annotations

import os

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "attn-parity", "xla")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache for every program, however quick
    to compile. ``JAX_COMPILATION_CACHE_DIR``, when set, wins; ``path`` (default
    ``~/.cache/attn-parity/xla``) otherwise. Returns the directory, or ``None``
    if it cannot be created (the run then simply compiles everything)."""
    import jax

    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or path or DEFAULT_DIR
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
