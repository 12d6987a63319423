"""``python -m parity report``: the parity tables for every registered module.

The float32 table compares attn_torch and attn_flax on every registry case. The
bf16 table (skip it with ``--no-bf16``) runs the first case of each module in eval
mode with attn_flax at ``dtype=jnp.bfloat16`` and attn_torch under
``torch.autocast("cpu", dtype=torch.bfloat16)``, and gives each one's forward and
input-gradient error against the float32 torch module (``parity.verify.harness.run_bf16``).
"""

from __future__ import annotations

import argparse
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


def run_bf16_table(modules: list[str], seed: int = 0) -> tuple[str, list[Bf16Result]]:
    results = []
    for name in modules:
        start = time.perf_counter()
        result = run_bf16(ALL_SPECS[name], seed=seed)
        results.append(result)
        status = "ok" if result.passed else "FAILED"
        print(f"  bf16 {name} [{result.case}] {status} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    return format_bf16_table(results), results


def run(modules: list[str], seed: int = 0, quick: bool = False) -> tuple[str, list[CaseResult]]:
    rows, results = [], []
    for name in modules:
        spec = ALL_SPECS[name]
        cases = spec.cases[:1] if quick else spec.cases
        merged: dict[str, CheckResult] = {}
        for case in cases:
            start = time.perf_counter()
            outcome = run_case(spec, case, seed=seed)
            results.append(outcome)
            for check, value in outcome.checks.items():
                merged[check] = merge(merged.get(check), value)
            status = "ok" if outcome.passed else "FAILED"
            print(f"  {name} [{case.label}] {status}, paths {'+'.join(outcome.paths)} "
                  f"({time.perf_counter() - start:.1f}s)", file=sys.stderr)
        rows.append((name, len(cases), merged, all(c.passed for c in merged.values())))
    return format_table(rows), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity report", description=__doc__)
    parser.add_argument("--modules", nargs="+", default=list(ALL_SPECS), choices=list(ALL_SPECS), metavar="NAME",
                        help=f"modules and timm architectures to check (default: all of {', '.join(ALL_SPECS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="only the default example case of each module")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="skip the bf16 table (attn_flax dtype=bfloat16 and torch autocast vs float32)")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="compile every program afresh (default: reuse JAX's persistent cache, "
                             "see parity.verify.xla_cache)")
    args = parser.parse_args(argv)

    import jax

    from parity.verify.xla_cache import enable_compilation_cache

    cache = enable_compilation_cache() if args.cache else None
    print(f"parity report: torch vs flax, float32, JAX backend {jax.default_backend()}, "
          f"Flax paths {' and '.join(PATHS)} (plain alone where a module calls no CPU kernel), "
          f"calls eager, jit and under grad"
          f"{f', compilation cache {cache}' if cache else ''}", file=sys.stderr)
    table, results = run(args.modules, args.seed, args.quick)
    print("cells: max abs diff / max rel diff (|flax - torch| / (|torch| + atol floor)) over all cases")
    print(table)
    failures = [line for r in results for line in r.failures()]
    for line in failures:
        print(line)
    print(f"{len(results) - sum(not r.passed for r in results)} of {len(results)} cases passed")
    if args.bf16:
        start = time.perf_counter()
        table, bf16_results = run_bf16_table(args.modules, args.seed)
        print()
        print("bf16: attn_flax dtype=bfloat16 (float32 parameters) and attn_torch under torch.autocast('cpu', "
              "bfloat16), each vs the float32 torch module; first case, eval mode")
        print("cells: normwise ||x - ref||_2 / ||ref||_2 (elementwise max|x - ref| / max|ref|); "
              "the tolerance bounds the normwise error")
        print(table)
        bf16_failures = [line for r in bf16_results for line in r.failures()]
        for line in bf16_failures:
            print(line)
        passed = len(bf16_results) - sum(not r.passed for r in bf16_results)
        print(f"{passed} of {len(bf16_results)} modules passed in bf16 ({time.perf_counter() - start:.1f}s)")
        failures += bf16_failures
    return 1 if failures else 0
