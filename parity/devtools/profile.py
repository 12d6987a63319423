"""``python -m parity profile``: where a module's jitted Flax call spends its time, op by op.

Runs the benchmark's ``flax_eval`` or ``flax_train`` callable (``parity.devtools.bench``) under
``jax.profiler`` and prints, for each compiled XLA operation (fusion, dot, convolution,
copy, ...), the time it ran summed over the runtime's threads, per call, largest first, with
the wall time per call. This is how the slow pieces behind the benchmark's misses were
found (a fused transpose, a reduction fused into a full-size loop, per-element coefficient
logic); the names match the ops of ``jax.jit(...).lower(...).compile().as_text()``.

The trace (``xplane.pb``) is written under ``--trace-dir`` (a temporary folder by default,
removed afterwards) and can be opened in TensorBoard or Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

# Events of the runtime itself rather than of an operation of the program.
RUNTIME_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "Await", "end: ")


def op_times(trace_dir: str, calls: int) -> list[tuple[str, float]]:
    """``(op name, ms per call summed over threads)`` from the trace in ``trace_dir``, largest first."""
    from jax.profiler import ProfileData

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir!r}: the profiler wrote no trace")
    totals: collections.Counter[str] = collections.Counter()
    for plane in ProfileData.from_file(max(paths, key=os.path.getmtime)).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if not any(marker in event.name for marker in RUNTIME_EVENTS):
                    totals[event.name] += event.duration_ns
    return [(name, ns / 1e6 / calls) for name, ns in totals.most_common()]


def profile(name: str, shape: tuple[int, int, int, int], variant: str, calls: int, warmup: int,
            dtype: str = "float32", trace_dir: str | None = None, compiler_options: dict[str, str] | None = None
            ) -> tuple[float, list[tuple[str, float]]]:
    """Wall ms per call and the per-op times of ``variant`` (``flax_eval``/``flax_train``) of ``name``."""
    import jax

    from parity.devtools.bench import build_variants

    if calls < 1:
        raise ValueError(f"`calls` must be at least 1, got {calls}")
    variants, _, _ = build_variants(name, shape, dtype, compile_torch=False, compiler_options=compiler_options)
    fn = variants[variant]
    for _ in range(warmup):
        fn()
    with tempfile.TemporaryDirectory() as scratch:
        directory = trace_dir or scratch
        jax.profiler.start_trace(directory)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        wall_ms = (time.perf_counter() - start) * 1e3 / calls
        jax.profiler.stop_trace()
        return wall_ms, op_times(directory, calls)


def main(argv: list[str] | None = None) -> int:
    from parity.devtools import parse_shape
    from parity.devtools.bench import add_compiler_options_argument, compiler_options_for
    from parity.verify.registry import SPECS

    benchable = [n for n, s in SPECS.items() if s.channels_arg is not None]
    parser = argparse.ArgumentParser(prog="python -m parity profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from attn_common.timm_models import MODELS

    parser.add_argument("module", choices=benchable + list(MODELS), metavar="MODULE",
                        help=f"one of: {', '.join(benchable)}, or a timm architecture (seresnet50, ...)")
    parser.add_argument("--shape", type=parse_shape, default=parse_shape("32x256x28x28"), metavar="NxCxHxW")
    parser.add_argument("--train", action="store_true", help="the training step instead of the eval forward")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--calls", type=int, default=10, help="profiled calls (default 10)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="ops to list (default 15)")
    parser.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temporary folder)")
    add_compiler_options_argument(parser)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be at least 1, got {args.calls}")
    variant = "flax_train" if args.train else "flax_eval"
    print(f"profile: {args.module} {'x'.join(map(str, args.shape))} {variant}, {args.warmup} warm-up calls, "
          f"{args.calls} profiled", file=sys.stderr)
    options = compiler_options_for(args.compiler_options)
    wall_ms, ops = profile(args.module, args.shape, variant, args.calls, args.warmup, args.dtype, args.trace_dir,
                           options)
    print(f"{args.module} {'x'.join(map(str, args.shape))} {variant}: {wall_ms:.2f} ms per call (wall, "
          f"profiler on); ops by time summed over threads, ms per call:")
    width = max([len(name) for name, _ in ops[:args.top]] + [2])
    for name, ms in ops[:args.top]:
        print(f"  {name:<{width}}  {ms:8.3f}")
    if len(ops) > args.top:
        print(f"  ... {len(ops) - args.top} more ops, {sum(ms for _, ms in ops[args.top:]):.3f} ms together")
    return 0


if __name__ == "__main__":
    sys.exit(main())
