"""The timm goldens in tests/data/timm (see its README) and the NumPy recipe that rebuilds
their weights and inputs in any framework, without timm installed."""

from __future__ import annotations

import functools
import json
import math
import pathlib
import zlib
from typing import Any, Sequence

import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "timm"


@functools.lru_cache(maxsize=1)
def load_goldens() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)``: the JSON (``layers``/``models`` entries) and the output arrays
    keyed ``layers/<label>/eval`` etc. (NCHW outputs)."""
    meta = json.loads((DATA / "timm_goldens.json").read_text())
    with np.load(DATA / "timm_goldens.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return meta, arrays


def recipe_state_dict(manifest: Sequence[Sequence[Any]]) -> dict[str, np.ndarray]:
    """The golden weights for a manifest ``[[key, shape, dtype], ...]``: per key,
    ``default_rng(crc32(key))`` draws float32 (BatchNorm statistics too;
    ``num_batches_tracked`` 0)."""
    out = {}
    for key, shape, dtype in manifest:
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        shape = tuple(shape)
        if dtype == "int64":
            out[key] = np.zeros(shape, np.int64)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("running_mean"):
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) >= 2:
            draws = rng.standard_normal(shape)
            draws /= math.sqrt(max(1, int(np.prod(shape[1:]))))  # in place: no second float64 temporary
            out[key] = draws.astype(np.float32)
        elif key.endswith("weight"):
            out[key] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def recipe_input(shape: Sequence[int]) -> np.ndarray:
    """The golden input: ``default_rng(0).standard_normal(shape)``, float32, NCHW."""
    return np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
