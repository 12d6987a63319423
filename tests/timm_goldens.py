"""timm 1.0.31's goldens for its ResNet family and attention layers (tests/data/timm, see its README).

The weights are not stored: both timm (when the goldens were made) and the tests
build them from the manifest with the NumPy recipe below, the same in any framework.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data" / "timm"


@functools.lru_cache(maxsize=1)
def load_goldens() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)``: the JSON index (manifests, inputs) and the NumPy outputs by ``models/<name>/eval`` etc."""
    meta = json.loads((DATA / "timm_goldens.json").read_text())
    with np.load(DATA / "timm_goldens.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return meta, arrays


def recipe_state_dict(manifest: list[list[Any]]) -> dict[str, np.ndarray]:
    """The recipe weights of a manifest (``[key, shape, dtype]`` rows): per key, ``default_rng(crc32(key))``."""
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
            fan = max(1, int(np.prod(shape[1:])))
            out[key] = (rng.standard_normal(shape) / math.sqrt(fan)).astype(np.float32)
        elif key.endswith("weight"):
            out[key] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def recipe_input(shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """The recipe input: ``default_rng(0).standard_normal(shape)``, float32, NCHW."""
    return np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
