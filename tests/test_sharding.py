"""Data parallel: a training step with the batch sharded over 8 devices equals the single-device step.

The step runs in a subprocess with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), so this test process
keeps its single device. ``parity.devtools.training.data_parallel_check`` shards the
batch with ``NamedSharding(mesh, P("data"))``, replicates the model and the
optimizer state, and compares loss, logits, gradients, updated parameters and
BatchNorm buffers with the same step on one device: BatchNorm's batch mean is a
plain mean over the global batch axis, so GSPMD makes it a cross-device mean,
like torch's ``SyncBatchNorm``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import attn_torch
from parity.verify.registry import SPECS
from parity.verify.tolerances import training_tolerance
from parity.devtools.training import is_network

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8


def _has_batchnorm(name: str) -> bool:
    spec = SPECS[name]
    return any(True for _ in attn_torch.MODULES[name](**spec.kwargs_for(spec.cases[0])).buffers())


# The first registered block with a BatchNorm of its own and the first without one
# (every model has the stem's BatchNorm). `python -m parity train --all --data-parallel`
# with XLA_FLAGS set checks every module.
_BLOCKS = [name for name in SPECS if not is_network(name)]
MODULES = [next(n for n in _BLOCKS if _has_batchnorm(n)), next(n for n in _BLOCKS if not _has_batchnorm(n))]

SCRIPT = """
import json, sys
import jax
from parity.devtools.training import data_parallel_check
out = {"devices": [d.platform for d in jax.devices()], "results": {}}
for name in sys.argv[1:]:
    r = data_parallel_check(name, "sgd")
    out["results"][name] = {
        "devices": r.devices,
        "checks": {k: [c.max_abs, c.passed] for k, c in r.checks.items()},
        "failures": r.failures(),
        "batch_sharded": r.batch_sharded,
        "replicated": r.replicated,
        "local_vs_global": r.local_vs_global,
    }
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def sharded_results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *MODULES], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_subprocess_has_eight_cpu_devices(sharded_results):
    assert sharded_results["devices"] == ["cpu"] * DEVICES


def test_this_process_keeps_one_device():
    import jax

    assert len(jax.devices()) == 1


def test_modules_cover_a_batchnorm_block():
    assert any(_has_batchnorm(n) for n in MODULES) and len(MODULES) >= 2


@pytest.mark.parametrize("name", MODULES)
def test_sharded_step_equals_single_device_step(sharded_results, name):
    r = sharded_results["results"][name]
    assert r["devices"] == DEVICES
    assert r["batch_sharded"], "the logits were not split over the devices"
    assert r["replicated"], "a parameter, statistic or optimizer state lost its replication"
    assert {"outputs", "grads", "params", "bn_stats"} <= set(r["checks"])
    assert not r["failures"], "\n".join(r["failures"])


@pytest.mark.parametrize("name", MODULES)
def test_batchnorm_sees_the_global_batch(sharded_results, name):
    """Statistics of one device's samples alone are far outside the tolerance that the
    sharded step meets: the sharded BatchNorm used the global batch."""
    r = sharded_results["results"][name]
    assert r["checks"]["bn_stats"][1]
    assert r["local_vs_global"] > 1000 * training_tolerance("data_parallel", "bn_stats").atol
