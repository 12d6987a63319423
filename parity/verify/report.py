"""``python -m parity report``: the parity tables for every registered module.

The float32 table compares attn_torch and attn_flax on every registry case. The cases
run in parallel processes (``--jobs``, default one per CPU core). The
bf16 table (skip it with ``--no-bf16``) runs the first case of each module in eval
mode with attn_flax at ``dtype=jnp.bfloat16`` and attn_torch under
``torch.autocast("cpu", dtype=torch.bfloat16)``, and gives each one's forward and
input-gradient error against the float32 torch module (``parity.verify.harness.run_bf16``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from parity.verify.harness import (
    BF16_CHECKS, BF16_RUNS, CHECKS, PATHS, Bf16Result, CaseResult, CheckResult, merge, run_bf16, run_case,
)
from parity.verify.registry import MODEL_SPECS, SPECS

ALL_SPECS = {**SPECS, **MODEL_SPECS}


def _cell(check: CheckResult | None) -> str:
    if check is None:
        return "-"
    mark = "" if check.passed else " FAIL"
    return f"{check.max_abs:.1e}/{check.max_rel:.1e}{mark}"


def _align(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    lines = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]
    return "\n".join(lines)


def format_table(rows: list[tuple[str, int, dict[str, CheckResult], bool]]) -> str:
    header = ["module", "cases", *CHECKS, "result"]
    body = [
        [name, str(n), *(_cell(checks.get(c)) for c in CHECKS), "pass" if ok else "FAIL"]
        for name, n, checks, ok in rows
    ]
    return _align(header, body)


def _bf16_cell(result: Bf16Result, run: str, check: str) -> str:
    normwise, elementwise = result.errors[(run, check)]
    mark = "" if normwise <= result.limit(check) else " FAIL"
    return f"{normwise:.1e} ({elementwise:.1e}){mark}"


def format_bf16_table(results: list[Bf16Result]) -> str:
    keys = [(run, check) for run in BF16_RUNS for check in BF16_CHECKS]
    header = ["module", *(f"{run} {check}" for run, check in keys), "flax dtype", "tol fwd/grad", "result"]
    body = [
        [r.module, *(_bf16_cell(r, run, check) for run, check in keys), r.flax_dtype,
         f"{r.tol.forward:g}/{r.tol.grad_input:g}", "pass" if r.passed else "FAIL"]
        for r in results
    ]
    return _align(header, body)


def _work(task: tuple[str, str, int, int]) -> tuple[CaseResult | Bf16Result, float]:
    """One unit of the report: ``("case", module, case index, seed)`` or ``("bf16", module, 0, seed)``."""
    kind, name, index, seed = task
    start = time.perf_counter()
    spec = ALL_SPECS[name]
    result = run_case(spec, spec.cases[index], seed=seed) if kind == "case" else run_bf16(spec, seed=seed)
    return result, time.perf_counter() - start


def _start_worker(cache: bool) -> None:
    import torch

    if sys.platform.startswith("linux"):  # end with the report (killed by a timeout, say), not run on alone
        import ctypes
        import signal

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (AttributeError, OSError):  # a libc without prctl: the worker ends when its queue closes
            pass
    torch.set_num_threads(1)  # the workers share the cores
    if cache:
        from parity.verify.xla_cache import enable_compilation_cache

        enable_compilation_cache()


def _progress(task: tuple[str, str, int, int], result: CaseResult | Bf16Result, seconds: float, done: str) -> None:
    status = "ok" if result.passed else "FAILED"
    if task[0] == "bf16":
        print(f"  {done} bf16 {result.module} [{result.case}] {status} ({seconds:.1f}s)", file=sys.stderr)
    else:
        print(f"  {done} {result.module} [{result.case}] {status}, paths {'+'.join(result.paths)} "
              f"({seconds:.1f}s)", file=sys.stderr)


def run_tasks(tasks: list[tuple[str, str, int, int]], jobs: int = 1,
              cache: bool = True) -> list[CaseResult | Bf16Result]:
    """Run report tasks (see :func:`_work`), in ``jobs`` processes when more than one;
    results in task order, progress on stderr as each finishes. The processes start
    with the heaviest work (the registry's networks), so that none is left running alone at the end."""
    jobs = max(1, min(jobs, len(tasks)))
    results: list[CaseResult | Bf16Result | None] = [None] * len(tasks)
    if jobs == 1:
        for i, task in enumerate(tasks):
            results[i], seconds = _work(task)
            _progress(task, results[i], seconds, f"[{i + 1}/{len(tasks)}]")
        return results  # type: ignore[return-value]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    heavy_first = sorted(range(len(tasks)),
                         key=lambda i: (not ALL_SPECS[tasks[i][1]].network, tasks[i][0] == "bf16", i))
    context = multiprocessing.get_context("spawn")  # JAX and torch hold threads: no fork
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(cache,)) as pool:
        futures = {pool.submit(_work, tasks[i]): i for i in heavy_first}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            results[i], seconds = future.result()
            _progress(tasks[i], results[i], seconds, f"[{done}/{len(tasks)}]")
    return results  # type: ignore[return-value]


def table(modules: list[str], results: list[CaseResult]) -> str:
    """The float32 table: one row per module, each check merged over its cases."""
    rows = []
    for name in modules:
        own = [r for r in results if r.module == name]
        merged: dict[str, CheckResult] = {}
        for outcome in own:
            for check, value in outcome.checks.items():
                merged[check] = merge(merged.get(check), value)
        rows.append((name, len(own), merged, all(c.passed for c in merged.values())))
    return format_table(rows)


def default_jobs() -> int:
    """One process per CPU core, at most 4 (each holds a few GB for the ResNet cases)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity report", description=__doc__)
    parser.add_argument("--modules", nargs="+", default=list(ALL_SPECS), choices=list(ALL_SPECS), metavar="NAME",
                        help=f"modules and timm architectures to check (default: all of {', '.join(ALL_SPECS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="only the default example case of each module")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="skip the bf16 table (attn_flax dtype=bfloat16 and torch autocast vs float32)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), metavar="N",
                        help="processes to run the cases in (default: one per CPU core, at most 4; "
                             "1: all in this process)")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="compile every program afresh (default: reuse JAX's persistent cache, "
                             "see parity.verify.xla_cache)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    import jax

    from parity.verify.xla_cache import enable_compilation_cache

    cache = enable_compilation_cache() if args.cache else None
    tasks = [("case", name, index, args.seed) for name in args.modules
             for index in range(1 if args.quick else len(ALL_SPECS[name].cases))]
    if args.bf16:
        tasks += [("bf16", name, 0, args.seed) for name in args.modules]
    jobs = min(args.jobs, len(tasks))
    print(f"parity report: torch vs flax, float32, JAX backend {jax.default_backend()}, "
          f"Flax paths {' and '.join(PATHS)} (plain alone where a module calls no CPU kernel), "
          f"calls eager, jit and under grad; {len(tasks)} tasks in {jobs} process{'es' if jobs > 1 else ''}"
          f"{f', compilation cache {cache}' if cache else ''}", file=sys.stderr)
    start = time.perf_counter()
    outcomes = run_tasks(tasks, jobs, cache=bool(cache))
    results = [r for r in outcomes if isinstance(r, CaseResult)]
    print("cells: max abs diff / max rel diff (|flax - torch| / (|torch| + atol floor)) over all cases")
    print(table(args.modules, results))
    failures = [line for r in results for line in r.failures()]
    for line in failures:
        print(line)
    print(f"{len(results) - sum(not r.passed for r in results)} of {len(results)} cases passed")
    if args.bf16:
        bf16_results = [r for r in outcomes if isinstance(r, Bf16Result)]
        print()
        print("bf16: attn_flax dtype=bfloat16 (float32 parameters) and attn_torch under torch.autocast('cpu', "
              "bfloat16), each vs the float32 torch module; first case, eval mode")
        print("cells: normwise ||x - ref||_2 / ||ref||_2 (elementwise max|x - ref| / max|ref|); "
              "the tolerance bounds the normwise error")
        print(format_bf16_table(bf16_results))
        bf16_failures = [line for r in bf16_results for line in r.failures()]
        for line in bf16_failures:
            print(line)
        passed = len(bf16_results) - sum(not r.passed for r in bf16_results)
        print(f"{passed} of {len(bf16_results)} modules passed in bf16")
        failures += bf16_failures
    print(f"report took {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 1 if failures else 0
