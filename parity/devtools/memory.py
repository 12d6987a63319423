"""``python -m parity.devtools.memory``: peak resident memory of DANet's position attention, forward + backward.

Each (framework, path) runs in a fresh Python process that imports only its own
framework, builds the module with random weights and a random input, takes one
training step (forward, then the gradients of ``sum(out * cotangent)`` with
respect to the input and every parameter; Flax under ``jax.jit``, compiled before
the step) and reports its peak resident set size (``VmHWM`` on Linux, see ``peak_rss_bytes``).
The peak covers the whole process (interpreter, framework, input, compiled
program), so the table also gives the peak before the step ("before").

Paths: ``blockwise`` (``memory_efficient=True``) and ``exact``
(``memory_efficient=False``). An exact run whose ``(N, HW, HW)`` float32 matrix
alone would exceed ``--skip-exact-above`` GB is not started (the machine may not
have the memory); its row says how large the matrix is.

    python -m parity.devtools.memory                                  # 8x64x112x112, both frameworks
    python -m parity.devtools.memory --shape 8x64x56x56 --paths blockwise exact
    python -m parity.devtools.memory --module DualAttention --frameworks torch

Exit code 1 when a run fails or a blockwise peak exceeds ``--limit-gb`` (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

from parity.devtools import parse_shape

FRAMEWORKS = ("torch", "flax")
PATHS = {"blockwise": True, "exact": False}  # path -> memory_efficient
MODULES = ("PositionAttention", "DualAttention")
GB = 1e9


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux, ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives ``exec``, so a
    child started from a large process (e.g. a test worker) reported the parent's
    size. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def matrix_bytes(shape: tuple[int, int, int, int]) -> int:
    n, _, h, w = shape
    return 4 * n * (h * w) ** 2


# --- the child process: one framework, one path ---------------------------------------------


def _torch_step(module_name: str, shape: tuple[int, int, int, int], memory_efficient: bool) -> dict:
    import torch

    import attn_torch

    module = attn_torch.MODULES[module_name](shape[1], memory_efficient)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # gamma starts at 0; any value exercises the same computation
        for name, gamma in module.named_parameters():
            if name.endswith("gamma"):
                gamma.fill_(0.5)
    x = torch.randn(shape, generator=gen, requires_grad=True)
    cotangent = torch.randn(shape, generator=gen)
    before = peak_rss_bytes()
    start = time.perf_counter()
    (module(x) * cotangent).sum().backward()
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(x.grad).all()) and all(bool(torch.isfinite(p.grad).all()) for p in module.parameters())
    return {"before": before, "seconds": seconds, "finite": finite, "threads": torch.get_num_threads()}


def _flax_step(module_name: str, shape: tuple[int, int, int, int], memory_efficient: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import attn_flax

    n, c, h, w = shape
    module = attn_flax.MODULES[module_name](c, memory_efficient, rngs=nnx.Rngs(0))
    for path, gamma in nnx.iter_graph(module):  # gamma starts at 0; any value exercises the same program
        if path and path[-1] == "gamma":
            gamma[...] = jnp.full((1,), 0.5, gamma[...].dtype)
    graph, params = nnx.split(module)
    keys = jax.random.split(jax.random.key(0))
    x = jax.random.normal(keys[0], (n, h, w, c))
    cotangent = jax.random.normal(keys[1], (n, h, w, c))

    def loss(p: nnx.State, inputs: jax.Array) -> jax.Array:
        return jnp.vdot(nnx.merge(graph, p)(inputs), cotangent)

    step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    before = peak_rss_bytes()
    start = time.perf_counter()
    grads = jax.block_until_ready(step(params, x))
    seconds = time.perf_counter() - start
    finite = all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(grads))
    return {"before": before, "seconds": seconds, "finite": finite, "backend": jax.default_backend()}


def child(framework: str, path: str, module_name: str, shape: tuple[int, int, int, int]) -> None:
    step = _torch_step if framework == "torch" else _flax_step
    result = step(module_name, shape, PATHS[path])
    result["peak"] = peak_rss_bytes()
    print(json.dumps(result))


# --- the parent: one subprocess per run, then the table -------------------------------------


@dataclass
class Run:
    framework: str
    path: str
    peak: float | None = None  # bytes
    before: float | None = None
    seconds: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        def gb(v: float | None) -> str:
            return "-" if v is None else f"{v / GB:.2f}"

        seconds = "-" if self.seconds is None else f"{self.seconds:.1f}"
        return [self.framework, self.path, gb(self.peak), gb(self.before), seconds, self.note]


def measure(framework: str, path: str, module_name: str, shape: tuple[int, int, int, int], timeout: float) -> Run:
    command = [sys.executable, "-m", "parity.devtools.memory", "--child", framework, path,
               "--module", module_name, "--shape", "x".join(map(str, shape))]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Run(framework, path, note=f"timed out after {timeout:.0f} s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        reason = "killed (out of memory?)" if done.returncode < 0 else f"exit {done.returncode}"
        return Run(framework, path, note=f"failed, {reason}: {last[:120]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    note = "" if result["finite"] else "non-finite gradients"
    return Run(framework, path, result["peak"], result["before"], result["seconds"], note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity.devtools.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=parse_shape, default=(8, 64, 112, 112), help="NxCxHxW (default 8x64x112x112)")
    parser.add_argument("--module", choices=MODULES, default="PositionAttention")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--limit-gb", type=float, default=2.0, help="largest blockwise peak that passes (default 2)")
    parser.add_argument("--skip-exact-above", type=float, default=4.0, metavar="GB",
                        help="do not start an exact run whose attention matrix exceeds this (default 4)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run (default 1800)")
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.module, args.shape)
        return 0

    shape = args.shape
    label = "x".join(map(str, shape))
    matrix = matrix_bytes(shape)
    print(f"{args.module} forward + backward at {label} (NCHW; Flax gets NHWC), float32; "
          f"one (N, HW, HW) attention matrix: {matrix / GB:.2f} GB", file=sys.stderr)
    runs = []
    plan = [(f, p) for f in args.frameworks for p in args.paths]
    for i, (framework, path) in enumerate(plan, 1):
        if path == "exact" and matrix > args.skip_exact_above * GB:
            runs.append(Run(framework, path, note=f"not run: the matrix alone is {matrix / GB:.1f} GB "
                                                  f"(> --skip-exact-above {args.skip_exact_above:g})"))
            print(f"[{i}/{len(plan)}] {framework} {path}: skipped", file=sys.stderr)
            continue
        print(f"[{i}/{len(plan)}] {framework} {path} ...", file=sys.stderr, flush=True)
        run = measure(framework, path, args.module, shape, args.timeout)
        status = run.note or f"peak {run.peak / GB:.2f} GB in {run.seconds:.1f} s"
        print(f"[{i}/{len(plan)}] {framework} {path}: {status}", file=sys.stderr, flush=True)
        runs.append(run)

    header = ["framework", "path", "peak RSS (GB)", "before step (GB)", "step (s)", "note"]
    rows = [header] + [r.cells() for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"\n{args.module} {label}, limit {args.limit_gb:g} GB for the blockwise path")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    failed = [r for r in runs if r.note.startswith(("failed", "timed out", "non-finite"))]
    over = [r for r in runs if r.path == "blockwise" and r.peak is not None and r.peak > args.limit_gb * GB]
    return 1 if failed or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
