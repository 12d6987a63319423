"""``python -m parity report``: the parity table for every registered module."""

from __future__ import annotations

import argparse
import sys
import time

from parity.harness import CHECKS, CaseResult, CheckResult, merge, run_case
from parity.registry import SPECS


def _cell(check: CheckResult | None) -> str:
    if check is None:
        return "-"
    mark = "" if check.passed else " FAIL"
    return f"{check.max_abs:.1e}/{check.max_rel:.1e}{mark}"


def format_table(rows: list[tuple[str, int, dict[str, CheckResult], bool]]) -> str:
    header = ["module", "cases", *CHECKS, "result"]
    body = [
        [name, str(n), *(_cell(checks.get(c)) for c in CHECKS), "pass" if ok else "FAIL"]
        for name, n, checks, ok in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    lines = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]
    return "\n".join(lines)


def run(modules: list[str], seed: int = 0, quick: bool = False) -> tuple[str, list[CaseResult]]:
    rows, results = [], []
    for name in modules:
        spec = SPECS[name]
        cases = spec.cases[:1] if quick else spec.cases
        merged: dict[str, CheckResult] = {}
        for case in cases:
            start = time.perf_counter()
            outcome = run_case(spec, case, seed=seed)
            results.append(outcome)
            for check, value in outcome.checks.items():
                merged[check] = merge(merged.get(check), value)
            status = "ok" if outcome.passed else "FAILED"
            print(f"  {name} [{case.label}] {status} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
        rows.append((name, len(cases), merged, all(c.passed for c in merged.values())))
    return format_table(rows), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity report", description=__doc__)
    parser.add_argument("--modules", nargs="+", default=list(SPECS), choices=list(SPECS), metavar="NAME",
                        help=f"modules to check (default: all of {', '.join(SPECS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="only the default example case of each module")
    args = parser.parse_args(argv)

    import jax

    print(f"parity report: torch vs flax, float32, JAX backend {jax.default_backend()}", file=sys.stderr)
    table, results = run(args.modules, args.seed, args.quick)
    print("cells: max abs diff / max rel diff (|flax - torch| / (|torch| + atol floor)) over all cases")
    print(table)
    failures = [line for r in results for line in r.failures()]
    for line in failures:
        print(line)
    print(f"{len(results) - sum(not r.passed for r in results)} of {len(results)} cases passed")
    return 1 if failures else 0
