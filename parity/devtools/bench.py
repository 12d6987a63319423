"""``python -m parity bench``: attn_flax under jax.jit against attn_torch, eager and compiled.

For each registered module and each shape, in one process and interleaved
(A B C ... A B C ..., so drift and background load hit every variant alike), it
times after warm-up:

* ``flax_eval``: ``jax.jit`` eval forward, with the CPU kernels (``attn_flax.cpu_kernels``);
* ``flax_train``: ``jax.jit`` training step, forward + backward with parameter and
  input gradients and the BatchNorm statistics update, with the CPU kernels;
* ``plain_eval`` / ``plain_train``: the same, traced with the CPU kernels off (the plain
  formulation, which every other platform runs);
* ``torch_eval`` / ``torch_train``: attn_torch eager, the same work;
* ``compile_eval``: attn_torch under ``torch.compile`` (compile time reported apart);
* ``R``: one read plus one write of the input tensor (``dst.copy_(src)``), the floor
  for a memory-bound module.

Each round runs every variant back to back: first untimed, until at least
``settle_ms`` have passed since the switch (and at least one call), then ``burst``
timed calls. On a small CPU the calls after switching framework compete with the
other runtime's worker threads, which keep spinning for a while after their last op; a
user's loop runs one framework, so the steady state is the number that matters
(``--settle-ms 0`` keeps just the first call untimed).

Alongside the times it counts minor page faults per call (``ru_minflt``): a variant whose
buffers the C allocator hands back to the OS between calls pays for fresh pages on every
call. The allocator, OpenMP and XLA
variables in the environment (``TIMING_ENVIRONMENT``) are recorded with the
results (see the README's benchmark section).

``--compiler-options attn_flax`` compiles the Flax variants with
``attn_flax.compiler_options()`` (on CPU: XLA's own convolutions instead of YNNPACK's); the
default is ``jax.jit``'s own settings.

Prints the median of N rounds with the interquartile spread, the ratios
torch/Flax and Flax/R; writes JSON and, when matplotlib is installed, a PNG chart.
Runs on whatever JAX backend is present and says which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from parity.devtools import parse_shape

DEFAULT_SHAPES = ("32x256x28x28", "8x64x56x56")
# timm architectures, benchmarked at ImageNet's resolution.
DEFAULT_MODELS = ("seresnet50", "ecaresnet50d")
MODEL_SHAPE = "8x3x224x224"
# Environment variables that change timings (allocator, XLA, OpenMP); recorded with the results.
TIMING_ENVIRONMENT = ("MALLOC_", "XLA_FLAGS", "OMP_", "KMP_", "LD_PRELOAD", "JAX_")
VARIANTS = ("flax_eval", "plain_eval", "torch_eval", "compile_eval", "flax_train", "plain_train", "torch_train", "R")


@dataclass
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> "Timing":
        ms = sorted(s * 1e3 for s in seconds)
        quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
        return cls(statistics.median(ms), quartiles[0], quartiles[2])

    def __str__(self) -> str:
        return f"{self.median_ms:.2f}±{(self.q3_ms - self.q1_ms) / 2:.2f}"


@dataclass
class Row:
    module: str
    shape: tuple[int, int, int, int]
    timings: dict[str, Timing] = field(default_factory=dict)
    faults_per_call: dict[str, float] = field(default_factory=dict)
    compile_s: float | None = None
    error: str | None = None
    kernels: list[str] = field(default_factory=list)  # the CPU kernels the module's forward calls

    def ratio(self, numerator: str, denominator: str) -> float | None:
        a, b = self.timings.get(numerator), self.timings.get(denominator)
        return a.median_ms / b.median_ms if a and b and b.median_ms > 0 else None


COMPILER_OPTIONS = ("none", "attn_flax")


def add_compiler_options_argument(parser: argparse.ArgumentParser) -> None:
    """``--compiler-options none|attn_flax``, shared by ``bench`` and ``profile``."""
    parser.add_argument("--compiler-options", default="none", choices=COMPILER_OPTIONS,
                        help="none: jax.jit's defaults; attn_flax: jit with attn_flax.compiler_options() "
                             "(on CPU, XLA's own convolutions instead of YNNPACK's)")


def compiler_options_for(choice: str) -> dict[str, str]:
    """The Flax ``jax.jit`` compiler options that ``--compiler-options choice`` stands for."""
    import attn_flax

    return attn_flax.compiler_options() if choice == "attn_flax" else {}


def build_variants(name: str, shape: tuple[int, int, int, int], dtype: str, compile_torch: bool,
              compiler_options: dict[str, str] | None = None
              ) -> tuple[dict[str, Callable[[], None]], float | None, list[str]]:
    """Build the timed callables for one module and shape; returns them, the compile time and
    the CPU kernels the module calls.

    ``compiler_options`` go to the ``jax.jit`` of both Flax variants (``attn_flax.compiler_options()``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    import attn_torch
    from attn_flax.cpu_kernels import set_cpu_kernels
    from parity.convert import to_flax
    from parity.verify.harness import nhwc, randomize_
    from parity.verify.registry import SPECS

    def build() -> torch.nn.Module:
        if name in SPECS:
            return attn_torch.MODULES[name](**SPECS[name].kwargs_at(shape[1]))
        return attn_torch.create_model(name)  # a timm architecture

    torch_module = randomize_(build(), seed=0)
    flax_module = to_flax(torch_module)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal(shape, dtype=np.float32)
    x_t = torch.from_numpy(x_np)
    with torch.no_grad():
        cot_t = torch.from_numpy(rng.standard_normal(tuple(torch_module.eval()(x_t).shape), dtype=np.float32))
    jax_dtype = jnp.dtype(dtype)
    x_j = jnp.asarray(nhwc(x_np), jax_dtype)
    cot_j = jnp.asarray(nhwc(cot_t.numpy()), jax_dtype)

    flax_module.eval()
    graph, state = nnx.split(flax_module)
    eval_jit = jax.jit(lambda s, v: nnx.merge(graph, s, copy=True)(v), compiler_options=compiler_options)

    flax_module.train()
    graph_t, params, rest = nnx.split(flax_module, nnx.Param, ...)

    def loss(p, r, v, cotangent):  # the cotangent an argument: closed over, XLA would embed it as a constant
        model = nnx.merge(graph_t, p, r, copy=True)
        y = model(v)
        return jnp.vdot(y.astype(jnp.float32), cotangent.astype(jnp.float32)), nnx.state(model, nnx.Not(nnx.Param))

    grad_jit = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True), compiler_options=compiler_options)
    # Compiled ahead, so that each variant holds the path it was traced with.
    eval_fn = eval_jit.lower(state, x_j).compile()
    grad_fn = grad_jit.lower(params, rest, x_j, cot_j).compile()
    with set_cpu_kernels(False):
        plain_eval_jit = jax.jit(lambda s, v: nnx.merge(graph, s, copy=True)(v), compiler_options=compiler_options)
        plain_eval_fn = plain_eval_jit.lower(state, x_j).compile()
        plain_grad_fn = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True),
                                compiler_options=compiler_options).lower(params, rest, x_j, cot_j).compile()

    torch_train = build()
    torch_train.load_state_dict(torch_module.state_dict())
    torch_train.train()
    torch_module.eval()

    def torch_eval() -> None:
        with torch.no_grad():
            torch_module(x_t)

    def torch_step() -> None:
        torch_train.zero_grad(set_to_none=True)
        xg = x_t.detach().requires_grad_()
        (torch_train(xg) * cot_t).sum().backward()

    from attn_flax.cpu_kernels import kernels_used

    used = sorted(kernels_used(lambda s, v: nnx.merge(graph, s, copy=True)(v), state, x_j))
    ablations: dict[str, Callable[[], None]] = {}
    for kernel in used if len(used) > 1 else ():  # what each kernel gains, where a module calls several
        with set_cpu_kernels(False, kernels=(kernel,)):
            without_eval = jax.jit(lambda s, v: nnx.merge(graph, s, copy=True)(v),
                                   compiler_options=compiler_options).lower(state, x_j).compile()
            without_grad = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True),
                                   compiler_options=compiler_options).lower(params, rest, x_j, cot_j).compile()
        ablations[f"without:{kernel}_eval"] = lambda f=without_eval: f(state, x_j).block_until_ready()
        ablations[f"without:{kernel}_train"] = lambda f=without_grad: jax.block_until_ready(f(params, rest, x_j, cot_j))
    destination = torch.empty_like(x_t)
    variants: dict[str, Callable[[], None]] = {
        "flax_eval": lambda: eval_fn(state, x_j).block_until_ready(),
        "plain_eval": lambda: plain_eval_fn(state, x_j).block_until_ready(),
        "torch_eval": torch_eval,
        "flax_train": lambda: jax.block_until_ready(grad_fn(params, rest, x_j, cot_j)),
        "plain_train": lambda: jax.block_until_ready(plain_grad_fn(params, rest, x_j, cot_j)),
        "torch_train": torch_step,
        "R": lambda: destination.copy_(x_t),
        **ablations,
    }
    compile_s = None
    if compile_torch:
        compiled = torch.compile(torch_module)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(x_t)
        compile_s = time.perf_counter() - start

        def compiled_eval() -> None:
            with torch.no_grad():
                compiled(x_t)

        variants["compile_eval"] = compiled_eval
    return variants, compile_s, used


def bench_one(name: str, shape: tuple[int, int, int, int], dtype: str, reps: int, warmup: int,
              compile_torch: bool, burst: int = 2, settle_ms: float = 50.0,
              compiler_options: dict[str, str] | None = None) -> Row:
    if burst < 1:
        raise ValueError(f"`burst` must be at least 1 timed call per round, got {burst}")
    if settle_ms < 0:
        raise ValueError(f"`settle_ms` must be non-negative, got {settle_ms}")
    row = Row(name, shape)
    try:
        variants, row.compile_s, row.kernels = build_variants(name, shape, dtype, compile_torch, compiler_options)
    except (ValueError, MemoryError, RuntimeError) as error:  # e.g. a shape a module rejects
        row.error = f"{type(error).__name__}: {error}".splitlines()[0]
        return row
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    faults: dict[str, int] = dict.fromkeys(variants, 0)
    for _ in range(reps):
        for key, fn in variants.items():
            _settle(fn, settle_ms / 1e3)
            for _ in range(burst):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - start)
                faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    row.timings = {k: Timing.of(v) for k, v in samples.items()}
    row.faults_per_call = {k: faults[k] / len(samples[k]) for k in variants}
    return row


def _settle(fn: Callable[[], None], seconds: float) -> None:
    """Untimed calls until ``seconds`` have passed, at least one (see the module docstring)."""
    deadline = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < deadline:
        fn()


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_faults(row: Row, variant: str) -> str:
    """Minor page faults per call, in thousands (a 4 KiB page each)."""
    count = row.faults_per_call.get(variant)
    return "-" if count is None else f"{count / 1e3:.1f}k"


def format_table(rows: list[Row]) -> str:
    header = ["module", "shape", *VARIANTS, "plain/flax eval", "plain/flax train", "torch/flax eval", "compile/flax eval", "torch/flax train", "flax_eval/R", "compile_s",
              "faults flax/torch eval", "faults flax/torch train"]
    body = []
    for r in rows:
        shape = "x".join(map(str, r.shape))
        if r.error:
            body.append([r.module, shape, r.error] + [""] * (len(header) - 3))
            continue
        cells = [str(r.timings[v]) if v in r.timings else "-" for v in VARIANTS]
        body.append([r.module, shape, *cells,
                     _fmt_ratio(r.ratio("plain_eval", "flax_eval")),
                     _fmt_ratio(r.ratio("plain_train", "flax_train")),
                     _fmt_ratio(r.ratio("torch_eval", "flax_eval")),
                     _fmt_ratio(r.ratio("compile_eval", "flax_eval")),
                     _fmt_ratio(r.ratio("torch_train", "flax_train")),
                     _fmt_ratio(r.ratio("flax_eval", "R")),
                     "-" if r.compile_s is None else f"{r.compile_s:.1f}",
                     f"{_fmt_faults(r, 'flax_eval')}/{_fmt_faults(r, 'torch_eval')}",
                     f"{_fmt_faults(r, 'flax_train')}/{_fmt_faults(r, 'torch_train')}"])
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def environment() -> dict[str, str]:
    import jax
    import torch

    device = jax.devices()[0]
    return {
        "jax_backend": jax.default_backend(),
        "jax_device": getattr(device, "device_kind", str(device)),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "cpu_count": str(os.cpu_count()),
        "machine": platform.machine(),
        "python": platform.python_version(),
        **{k: v for k, v in os.environ.items() if k.startswith(TIMING_ENVIRONMENT)},
    }


def write_chart(rows: list[Row], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    good = [r for r in rows if not r.error]
    labels = [f"{r.module}\n{'x'.join(map(str, r.shape))}" for r in good]
    fig, ax = plt.subplots(figsize=(max(8, len(good) * 0.9), 4.5))
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        values = [r.timings[variant].median_ms if variant in r.timings else 0 for r in good]
        ax.bar([j + i * width for j in range(len(good))], values, width, label=variant)
    ax.set_xticks([j + 0.4 for j in range(len(good))], labels, rotation=60, fontsize=7)
    ax.set_ylabel("median ms (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True



# --- docs/benchmarks.md, written from the results ------------------------------------------------

@dataclass(frozen=True)
class Goal:
    key: str
    text: str
    numerator: str  # the variant that must be slower (torch), divided by
    denominator: str  # the Flax variant
    target: float


GOALS = (
    Goal("eval", "Flax jit eval at least as fast as torch eager", "torch_eval", "flax_eval", 1.0),
    Goal("compile", "Flax jit eval at least as fast as `torch.compile`", "compile_eval", "flax_eval", 1.0),
    Goal("train", "Flax training step at least 2x faster than torch eager", "torch_train", "flax_train", 2.0),
)
# A CPU kernel is kept where it makes a module at least this much faster at one benchmark shape.
KERNEL_GAIN = 1.10

# One short, measured reason per (module, goal) miss; a miss without one says so.
REASONS: dict[tuple[str, str], str] = {
    **{(m, g): "a few full-size passes; XLA:CPU's single reductions and elementwise passes cost more "
               "than torch's" for m in ("SE", "ECA", "SGE", "ShuffleAttention") for g in ("eval", "compile")},
    **{(m, "train"): "a handful of full-size passes where a call's fixed cost weighs"
       for m in ("SE", "ECA", "SGE", "ShuffleAttention")},
    ("CBAM", "compile"): "torch.compile fuses the gate, pooling and residual into fewer passes",
    ("CBAM", "eval"): "the 7x7 gate and the two channel reductions as separate XLA:CPU passes",
    **{("CoordAttention", g): "fresh pages for its temporaries on every call (the faults column; see the "
                              "allocator note below)" for g in ("eval", "compile", "train")},
    ("SequentialPolarizedSelfAttention", "train"): "fresh pages for the step's temporaries on every call (the "
                                                   "faults column)",
    **{(m, "eval"): "fresh pages for XLA:CPU's temporaries on every call (tens of thousands of faults per "
                    "call); with an allocator that keeps its memory, seresnet50 eval is 1.03x torch eager"
       for m in ("seresnet50", "ecaresnet50d")},
    **{(m, "compile"): "XLA:CPU's convolutions (YNNPACK fusions) against Inductor's, plus fresh pages on every call"
       for m in ("seresnet50", "ecaresnet50d")},
    **{(m, "train"): "XLA:CPU's convolution gradients: YNNPACK fusions take 54% of the step and layout copies and "
                     "transposes around them 25% (python -m parity profile seresnet50 --train); not page faults "
                     "(0.56 with an allocator that keeps its memory)" for m in ("seresnet50", "ecaresnet50d")},
    ("PositionAttention", "eval"): "both frameworks are at the floor of their matrix products",
    ("PositionAttention", "compile"): "both frameworks are at the floor of their matrix products",
    ("PositionAttention", "train"): "the step's matrix products alone, at the fastest product rate measured "
                                    "on this CPU, take longer than half of torch's step",
    ("DualAttention", "train"): "its PositionAttention branch (see there)",
    ("DualAttention", "eval"): "its PositionAttention branch (see there)",
    ("DualAttention", "compile"): "its PositionAttention branch (see there)",
    **{("CrissCrossAttention", g): "fresh pages of its temporaries on every call, and its small batched "
                                   "products" for g in ("eval", "compile", "train")},
    **{(m, g): "XLA:CPU's YNNPACK convolutions (attn_flax.compiler_options() swaps them for XLA's own)"
       for m in ("BAM", "GAM") for g in ("eval", "compile", "train")},
    **{(m, g): "small projections and reductions where torch's fused kernels win"
       for m in ("ParallelPolarizedSelfAttention", "SequentialPolarizedSelfAttention") for g in ("compile",)},
}

METHOD = """\
`python -m parity bench [--modules ...] [--shapes NxCxHxW ...] [--reps N] [--burst K]
[--settle-ms S] [--compiler-options none|attn_flax]` times, in one process and interleaved:
attn_flax under `jax.jit` with the CPU kernels (`flax_*`) and with the plain formulation
(`plain_*`, traced with `set_cpu_kernels(False)`), each as eval forward and as training step
(parameter and input gradients, BatchNorm update); attn_torch eager and under `torch.compile`
(compile time apart); and R, one read plus one write of the input (`copy_`). Each round runs
every variant back to back: untimed calls for at least S ms (default 50), then K timed calls
(default 2), so that each framework is timed in its steady state. Cells are medians with half
the interquartile range, in ms. Ratios above 1 favour the Flax variant in the denominator.
Faults are minor page faults per call, in thousands: fresh 4 KiB pages that the C allocator
handed back to the OS since the last call, each costing time on every call."""


def _kernel_rows(rows: list[Row]) -> dict[str, list[tuple[Row, float | None, float | None]]]:
    """kernel -> [(row, eval gain, train gain)] over the rows whose module calls it: the time
    without that kernel (the plain form where it is the module's only one) over the time with all."""
    table: dict[str, list[tuple[Row, float | None, float | None]]] = {}
    for r in rows:
        if r.error:
            continue
        for kernel in r.kernels:
            without = "plain" if len(r.kernels) == 1 else f"without:{kernel}"
            table.setdefault(kernel, []).append((r, r.ratio(f"{without}_eval", "flax_eval"),
                                                 r.ratio(f"{without}_train", "flax_train")))
    return table


def kept_kernels(rows: list[Row]) -> dict[str, bool]:
    """Each kernel benchmarked: kept when it gains at least ``KERNEL_GAIN`` somewhere."""
    return {kernel: any((e or 0) >= KERNEL_GAIN or (t or 0) >= KERNEL_GAIN for _, e, t in entries)
            for kernel, entries in _kernel_rows(rows).items()}


def markdown(rows: list[Row], env: dict[str, str], reps: int, burst: int) -> str:
    shape_of = lambda r: "x".join(map(str, r.shape))  # noqa: E731
    good = [r for r in rows if not r.error]
    lines = ["# Benchmarks", "",
             "Generated by `python -m parity bench --markdown docs/benchmarks.md` from the run's results "
             "(`--from-json` rewrites it from a saved run); edit `parity/devtools/bench.py`, not this page.", "",
             "## Method", "", METHOD, "",
             "## Current table", "",
             f"JAX backend {env.get('jax_backend')} ({env.get('jax_device')}), jax {env.get('jax')}, "
             f"torch {env.get('torch')} with {env.get('torch_threads')} threads, {env.get('cpu_count')} CPUs "
             f"({env.get('machine')}), {reps} rounds of {burst} timed calls; float32. "
             "A ratio on a shared 2-core VM moves by up to 40% between runs.", ""]
    columns = [*VARIANTS, "plain/flax eval", "plain/flax train", "torch/flax eval", "compile/flax eval",
               "torch/flax train", "faults flax/torch eval", "faults flax/torch train"]
    lines.append("| module | shape | " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * (len(columns) + 2))
    for r in rows:
        if r.error:
            lines.append(f"| {r.module} | {shape_of(r)} | {r.error} |" + " |" * (len(columns) - 1))
            continue
        cells = [str(r.timings[v]) if v in r.timings else "-" for v in VARIANTS]
        ratios = [_fmt_ratio(r.ratio(a, b)) for a, b in (("plain_eval", "flax_eval"), ("plain_train", "flax_train"),
                  ("torch_eval", "flax_eval"), ("compile_eval", "flax_eval"), ("torch_train", "flax_train"))]
        faults = [f"{_fmt_faults(r, f'flax_{m}')}/{_fmt_faults(r, f'torch_{m}')}" for m in ("eval", "train")]
        lines.append(f"| {r.module} | {shape_of(r)} | " + " | ".join(cells + ratios + faults) + " |")
    lines += ["", "## CPU kernels", "",
              f"Each kernel of `attn_flax/cpu_kernels.py` stays where it makes a module at least "
              f"{KERNEL_GAIN:.2f}x faster at one benchmark shape (eval or training step). The ratios are the "
              "module's time without the kernel (the plain form of that one operation) over its time with "
              "every kernel.", ""]
    kept = kept_kernels(good)
    for kernel, entries in sorted(_kernel_rows(good).items()):
        gains = ", ".join(f"{r.module} {shape_of(r)} eval {_fmt_ratio(e)}, train {_fmt_ratio(t)}"
                          for r, e, t in entries)
        lines.append(f"- `{kernel}`: {'kept' if kept[kernel] else 'no gain of ' + format(KERNEL_GAIN, '.2f') + 'x'}"
                     f" ({gains})")
    lines += ["", "## Goals", ""]
    for goal in GOALS:
        met, missed = [], []
        for r in good:
            ratio = r.ratio(goal.numerator, goal.denominator)
            if ratio is None:
                continue
            (met if ratio >= goal.target else missed).append((r, ratio))
        lines.append(f"- **{goal.text}** (ratio {goal.numerator}/{goal.denominator} >= {goal.target:g}). "
                     f"Met {len(met)} of {len(met) + len(missed)}: "
                     + (", ".join(f"{r.module} {shape_of(r)} ({ratio:.2f})" for r, ratio in met) or "none") + ".")
        for r, ratio in missed:
            reason = REASONS.get((r.module, goal.key), "no measured reason recorded yet")
            lines.append(f"  - missed: {r.module} {shape_of(r)} ({ratio:.2f}): {reason}")
    lines += ["", "On CPU, an allocator that keeps its memory (e.g. `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 "
              "MALLOC_TRIM_THRESHOLD_=68719476736`, or tcmalloc or jemalloc) removes the page faults that "
              "XLA:CPU's large temporaries otherwise take on every call; a library cannot set it for its user.", ""]
    return "\n".join(lines)


def rows_from_json(path: str) -> tuple[list[Row], dict]:
    with open(path) as f:
        data = json.load(f)
    rows = []
    for raw in data["rows"]:
        timings = {k: Timing(**v) for k, v in raw.pop("timings").items()}
        rows.append(Row(**{**raw, "shape": tuple(raw["shape"]), "timings": timings}))
    return rows, data


def main(argv: list[str] | None = None) -> int:
    from parity.verify.registry import SPECS

    benchable = [n for n, s in SPECS.items() if s.channels_arg is not None]
    parser = argparse.ArgumentParser(prog="python -m parity bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", default=benchable, choices=benchable, metavar="NAME")
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), metavar="TIMM_NAME",
                        help=f"timm architectures (attn_torch.list_models()), timed at --model-shape "
                             f"(default: {' '.join(DEFAULT_MODELS)}; none: --models)")
    parser.add_argument("--model-shape", type=parse_shape, default=parse_shape(MODEL_SHAPE), metavar="NxCxHxW")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                        metavar="NxCxHxW")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="dtype of the Flax computation (torch runs float32)")
    parser.add_argument("--reps", type=int, default=20, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--burst", type=int, default=2, help="timed calls per variant per round (default 2)")
    parser.add_argument("--settle-ms", type=float, default=50.0,
                        help="untimed calls per variant per round before the timed ones, for at least this "
                             "long and at least one call (default 50)")
    add_compiler_options_argument(parser)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--json", default="bench_results/bench.json", help="where to write the JSON results")
    parser.add_argument("--png", default="bench_results/bench.png", help="chart (needs matplotlib)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the benchmark page (docs/benchmarks.md)")
    parser.add_argument("--from-json", metavar="PATH",
                        help="run nothing: write --markdown from a saved --json of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        if not args.markdown:
            parser.error("--from-json needs --markdown PATH")
        rows, data = rows_from_json(args.from_json)
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, data["environment"], data["reps"], data["burst"]))
        print(f"wrote {args.markdown}", file=sys.stderr)
        return 0
    if args.burst < 1:
        parser.error(f"--burst must be at least 1 (timed calls per variant per round), got {args.burst}")
    if args.settle_ms < 0:
        parser.error(f"--settle-ms must be non-negative, got {args.settle_ms}")
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")

    env = environment()
    options = compiler_options_for(args.compiler_options)
    print(f"bench: JAX backend {env['jax_backend']} ({env['jax_device']}), torch {env['torch']} "
          f"with {env['torch_threads']} threads, {args.reps} interleaved rounds of {args.burst} "
          f"timed calls after {args.settle_ms:g} ms of untimed ones; Flax compiler options {options or 'none'}",
          file=sys.stderr)
    from attn_common.timm_models import model_entry

    for model in args.models:
        model_entry(model)  # an unknown name fails now, with close matches, not after an hour
    jobs = [(name, shape) for name in args.modules for shape in args.shapes]
    jobs += [(model, args.model_shape) for model in args.models]
    rows = []
    for name, shape in jobs:
        start = time.perf_counter()
        rows.append(bench_one(name, shape, args.dtype, args.reps, args.warmup, not args.no_compile,
                              args.burst, args.settle_ms, options))
        print(f"  {name} {'x'.join(map(str, shape))} done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(f"times in ms, median±half-IQR; JAX backend {env['jax_backend']} ({env['jax_device']})"
          + (f"; Flax compiled with {options}" if options else ""))
    print(format_table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"environment": env, "dtype": args.dtype, "reps": args.reps, "burst": args.burst, "settle_ms": args.settle_ms,
                   "compiler_options": options,
                   "rows": [asdict(r) for r in rows]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, env, args.reps, args.burst))
    charted = write_chart(rows, args.png)
    print(f"wrote {args.json}" + (f" and {args.png}" if charted else " (no matplotlib: no chart)"), file=sys.stderr)
    return 1 if any(r.error for r in rows) else 0
