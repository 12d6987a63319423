"""The one table of parity tolerances.

A comparison passes when ``|flax - torch| <= atol * max(1, max|torch|) + rtol * |torch|``
elementwise: ``atol`` is scaled by the reference's magnitude so large reductions
are judged relative to their size. Every override says why it exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


DEFAULT: dict[str, Tolerance] = {
    # float32 on CPU: the two frameworks agree to about 1e-6 relative.
    "float32": Tolerance(rtol=1e-5, atol=1e-5),
}

# (module, check) -> Tolerance, for float32. Each entry carries its reason.
OVERRIDES: dict[tuple[str, str], Tolerance] = {}


def tolerance(module: str, check: str, dtype: str = "float32") -> Tolerance:
    if dtype == "float32" and (module, check) in OVERRIDES:
        return OVERRIDES[(module, check)]
    return DEFAULT[dtype]
