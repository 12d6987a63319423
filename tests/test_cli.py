"""attn-convert: torch -> Flax -> torch is bit-identical; every refusal is one line, exit 2, no file."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import attn_torch
import parity
from parity.checkpoint import build_flax
from parity.convert_cli import main, parse_value
from parity.verify.harness import compare, nhwc, randomize_
from parity.verify.registry import SPECS
from parity.verify.tolerances import tolerance

ROOT = Path(__file__).resolve().parents[1]


def _save_torch(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dict(state), path)
    else:
        torch.save(state, path)
    return path


def _load_torch(path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, weights_only=True)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_identical(expected, got):
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


def _assert_refused(code, err, directory, inputs, *fragments):
    lines = err.splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("attn-convert: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in directory.iterdir()) == sorted(inputs), "something was left behind"


MODULES = [  # name, arguments, torch file, Flax checkpoint, torch file back
    ("SE", {"channels": 32, "reduction": 4}, "se.pt", "se.safetensors", "se_back.pt"),
    ("CoordAttention", {"channels": 32, "reduction": 8}, "coord.pth", "coord_orbax", "coord_back.safetensors"),
    ("SGE", {"groups": 4, "channels": 32}, "sge.safetensors", "sge_flax.safetensors", "sge_back.bin"),
    ("CBAM", {"channels": 32, "reduction": 4, "kernel_size": 3}, "cbam.bin", "cbam_orbax", "cbam_back.pt"),
    ("BAM", {"channels": 32, "reduction": 4}, "bam.pt", "bam.safetensors", "bam_back.safetensors"),
]


@pytest.mark.parametrize("name,kwargs,src,flax,back", MODULES, ids=[m[0] for m in MODULES])
def test_torch_to_flax_to_torch_is_bit_identical(tmp_path, capsys, name, kwargs, src, flax, back):
    torch.manual_seed(0)
    state = randomize_(attn_torch.MODULES[name](**kwargs), 1).state_dict()
    args = [a for k, v in kwargs.items() for a in ("--arg", f"{k}={v}")]
    _save_torch(state, tmp_path / src)
    assert _run(capsys, "to-flax", tmp_path / src, tmp_path / flax, "--model", name.lower(), *args) == (0, "")
    assert _run(capsys, "to-torch", tmp_path / flax, tmp_path / back, "--model", name) == (0, "")
    _assert_identical(state, _load_torch(tmp_path / back))
    if back.endswith(".pt"):
        assert list(_load_torch(tmp_path / back)) == list(state)  # torch's key order too


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_registered_module_round_trips_through_files(tmp_path, capsys, name):
    kwargs = SPECS[name].kwargs
    torch.manual_seed(0)
    state = randomize_(attn_torch.MODULES[name](**kwargs), 2).state_dict()
    torch.save(state, tmp_path / "m.pt")
    args = [a for k, v in kwargs.items() for a in ("--arg", f"{k}={v!r}")]
    assert _run(capsys, "to-flax", tmp_path / "m.pt", tmp_path / "m.safetensors", "--model", name, *args)[0] == 0
    assert _run(capsys, "to-torch", tmp_path / "m.safetensors", tmp_path / "back.pt", "--model", name)[0] == 0
    _assert_identical(state, _load_torch(tmp_path / "back.pt"))


def test_half_precision_comes_back_and_float64_is_refused(tmp_path, capsys):
    torch.manual_seed(0)
    state = randomize_(attn_torch.CoordAttention(16, reduction=8), 2).state_dict()
    state = {k: v.to(torch.bfloat16 if "conv" in k else torch.float16) if v.is_floating_point() else v
             for k, v in state.items()}
    state["bn1.num_batches_tracked"] = torch.tensor(2**40)  # beyond int32 is refused, so stay inside
    _save_torch(state, tmp_path / "half.pt")
    code, err = _run(capsys, "to-flax", tmp_path / "half.pt", tmp_path / "half.safetensors", "--model", "CoordAttention",
                     "--arg", "channels=16", "--arg", "reduction=8")
    assert code == 2 and "does not fit the int32 Flax counter" in err
    state["bn1.num_batches_tracked"] = torch.tensor(2**31 - 1)
    _save_torch(state, tmp_path / "half.pt")
    assert _run(capsys, "to-flax", tmp_path / "half.pt", tmp_path / "half.safetensors", "--model", "CoordAttention",
                "--arg", "channels=16", "--arg", "reduction=8")[0] == 0
    assert _run(capsys, "to-torch", tmp_path / "half.safetensors", tmp_path / "back.pt", "--model", "CoordAttention")[0] == 0
    _assert_identical(state, _load_torch(tmp_path / "back.pt"))
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    _save_torch(state, tmp_path / "double.pt")
    code, err = _run(capsys, "to-flax", tmp_path / "double.pt", tmp_path / "double.safetensors", "--model",
                     "CoordAttention", "--arg", "channels=16", "--arg", "reduction=8")
    _assert_refused(code, err, tmp_path, ["half.pt", "half.safetensors", "back.pt", "double.pt"],
                    "dtypes that would lose precision (10)", "'conv1.weight': float64 -> float32")


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(attn_torch.ResNet(18, attention="CBAM", num_classes=10), 4).eval()
    path = tmp_path_factory.mktemp("resnet") / "resnet18_cbam.pt"
    torch.save(model.state_dict(), path)
    return model, path


RESNET_ARGS = ["--model", "resnet", "--arg", "depth=18", "--arg", "attention=cbam", "--arg", "num_classes=10"]


@pytest.mark.parametrize("flax,back", [("r.safetensors", "r_back.pt"), ("r_orbax", "r_back.safetensors")])
def test_resnet18_with_cbam_round_trips(tmp_path, capsys, resnet_checkpoint, flax, back):
    model, src = resnet_checkpoint
    code, err = _run(capsys, "to-flax", src, tmp_path / flax, *RESNET_ARGS, "--progress")
    assert code == 0
    assert "read 154 tensors" in err and f"wrote {tmp_path / flax}" in err  # progress for a large checkpoint
    assert _run(capsys, "to-torch", tmp_path / flax, tmp_path / back, "--model", "ResNet")[0] == 0
    _assert_identical(model.state_dict(), _load_torch(tmp_path / back))


def test_converted_resnet18_runs_in_jax_like_torch(tmp_path, capsys, resnet_checkpoint):
    model, src = resnet_checkpoint
    assert _run(capsys, "to-flax", src, tmp_path / "r.safetensors", *RESNET_ARGS)[0] == 0
    flax_model = build_flax("ResNet", {"depth": 18, "attention": "cbam", "num_classes": 10})
    parity.load_flax(flax_model, tmp_path / "r.safetensors")
    flax_model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.jit(lambda v: flax_model(v))(jnp.asarray(nhwc(x))))
    result = compare("eval", {"output": expected}, {"output": got}, tolerance("ResNet", "eval"))
    assert result.passed, result.describe("ResNet", "checkpoint")


@pytest.fixture
def se_file(tmp_path):
    _save_torch(randomize_(attn_torch.SE(32, reduction=4), 0).state_dict(), tmp_path / "se.pt")
    return tmp_path / "se.pt"


def test_refused_code_running_pickle(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"fc.0.weight": torch.ones(8, 32), "x": _RunsCode(marker)}, tmp_path / "evil.pt")
    code, err = _run(capsys, "to-flax", tmp_path / "evil.pt", tmp_path / "out.safetensors", "--model", "SE",
                     "--arg", "channels=32")
    _assert_refused(code, err, tmp_path, ["evil.pt"], "refused to load", "system", "weights_only=True")
    assert not marker.exists()


@pytest.mark.parametrize("argv,fragments", [
    (["--arg", "channels=64"], ["does not match", "SE", "shape mismatches (2)", "'fc.0.weight': expected (4, 64), got (8, 32)"]),
    (["--arg", "channels=32", "--arg", "reduction=2"], ["'fc.0.weight': expected (16, 32), got (8, 32)"]),
    (["--model", "CBAM", "--arg", "channels=32"], ["missing keys (4): 'ca.se.0.weight'", "unexpected keys (2): 'fc.0.weight', 'fc.2.weight'"]),
    (["--model", "Nope"], ["`model`='Nope' is not one of", "ResNet", "SE"]),
    ([], ["cannot build SE()", "missing 1 required positional argument: 'channels'", "--arg key=value"]),
    (["--arg", "channels=32", "--arg", "colour=1"], ["unexpected keyword argument 'colour'"]),
    (["--arg", "channels"], ["--arg expects key=value"]),
    (["--arg", "channels=32", "--arg", "channels=32"], ["--arg channels is given twice"]),
])
def test_refused_mismatches_and_bad_arguments(tmp_path, capsys, se_file, argv, fragments):
    model = [] if "--model" in argv else ["--model", "SE"]
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "out.safetensors", *model, *argv)
    _assert_refused(code, err, tmp_path, ["se.pt"], *fragments)
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "orbax", *model, *argv)
    _assert_refused(code, err, tmp_path, ["se.pt"], *fragments)


def test_refused_files(tmp_path, capsys, se_file):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep").write_text("x")
    _save_torch(torch.load(se_file, weights_only=True), tmp_path / "torch.safetensors")
    inputs = ["se.pt", "junk.pt", "junk.safetensors", "notes.txt", "busy", "torch.safetensors"]
    se = ["--model", "SE", "--arg", "channels=32", "--arg", "reduction=4"]
    cases = [
        (["to-flax", tmp_path / "junk.pt", tmp_path / "o.safetensors", *se], ["refused to load", "junk.pt", "rejects it"]),
        (["to-flax", tmp_path / "junk.safetensors", tmp_path / "o.safetensors", *se], ["cannot read", "junk.safetensors"]),
        (["to-flax", tmp_path / "notes.txt", tmp_path / "o.safetensors", *se], [".pt, .pth, .bin, .pth.tar or .safetensors"]),
        (["to-flax", tmp_path / "absent.pt", tmp_path / "o.safetensors", *se], ["does not exist"]),
        (["to-flax", se_file, tmp_path / "o.pt", *se], ["a Flax checkpoint is a .safetensors file or an Orbax directory, not .pt"]),
        (["to-flax", se_file, tmp_path / "busy", *se], ["busy exists; give --overwrite"]),
        (["to-flax", se_file, tmp_path / "busy", *se, "--overwrite"], ["neither empty nor an attn-parity Orbax checkpoint"]),
        (["to-flax", se_file, tmp_path / "no" / "o.safetensors", *se], ["does not exist"]),
        (["to-torch", se_file, tmp_path / "o.pt", "--model", "SE"], ["a Flax checkpoint is a .safetensors file or an Orbax directory"]),
        (["to-torch", tmp_path / "junk.safetensors", tmp_path / "o.pt", "--model", "SE"], ["cannot read", "junk.safetensors"]),
        (["to-torch", tmp_path / "torch.safetensors", tmp_path / "o.pt", "--model", "SE"], ["not a Flax checkpoint of attn-parity"]),
        (["to-torch", tmp_path / "busy", tmp_path / "o.pt", "--model", "SE"], ["not a Flax checkpoint directory"]),
        (["to-flax", se_file], ["the following arguments are required"]),
        (["convert", se_file, tmp_path / "o.pt"], ["invalid choice"]),
    ]
    for argv, fragments in cases:
        code, err = _run(capsys, *argv)
        _assert_refused(code, err, tmp_path, inputs, *fragments)
    assert (tmp_path / "busy" / "keep").read_text() == "x"


def test_to_torch_checks_the_model_and_the_file(tmp_path, capsys, se_file):
    assert _run(capsys, "to-flax", se_file, tmp_path / "se.safetensors", "--model", "SE", "--arg", "channels=32",
                "--arg", "reduction=4")[0] == 0
    inputs = ["se.pt", "se.safetensors"]
    code, err = _run(capsys, "to-torch", tmp_path / "se.safetensors", tmp_path / "o.pt", "--model", "ECA")
    _assert_refused(code, err, tmp_path, inputs, "holds a SE checkpoint, but --model is ECA")
    code, err = _run(capsys, "to-torch", tmp_path / "se.safetensors", tmp_path / "o.pt", "--model", "SE", "--arg", "channels=16")
    _assert_refused(code, err, tmp_path, inputs, "does not match", "'fc.layers.0.kernel': expected (16, 4), got (32, 8)")
    code, err = _run(capsys, "to-torch", tmp_path / "se.safetensors", tmp_path / "o.npz", "--model", "SE")
    _assert_refused(code, err, tmp_path, inputs, "o.npz: a torch checkpoint is .pt, .pth, .bin or .safetensors")


def test_small_checkpoints_convert_quietly_and_overwrite_only_when_asked(tmp_path, capsys, se_file):
    argv = ["to-flax", se_file, tmp_path / "se.safetensors", "--model", "SE", "--arg", "channels=32", "--arg", "reduction=4"]
    assert _run(capsys, *argv) == (0, "")
    code, err = _run(capsys, *argv)
    _assert_refused(code, err, tmp_path, ["se.pt", "se.safetensors"], "se.safetensors exists; give --overwrite")
    assert _run(capsys, *argv, "--overwrite") == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["se.pt", "se.safetensors"]


def test_arguments_are_python_literals():
    assert [parse_value(v) for v in ["64", "0.5", "True", "false", "None", "'SE'", "cbam", "(1, 2)"]] == [
        64, 0.5, True, False, None, "SE", "cbam", (1, 2)]


def test_python_dash_m_parity_convert_refuses_in_one_line(tmp_path):
    """A fresh interpreter: the -m entry point, no warnings on stderr, and the pickle never runs."""
    marker = tmp_path / "ran"
    torch.save({"x": _RunsCode(marker)}, tmp_path / "evil.pt")
    done = subprocess.run(
        [sys.executable, "-m", "parity", "convert", "to-flax", str(tmp_path / "evil.pt"), str(tmp_path / "o.safetensors"),
         "--model", "SE", "--arg", "channels=32"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("attn-convert: error: refused to load")
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_console_script_entry_point(tmp_path, se_file):
    """pyproject's `attn-convert` names parity.convert_cli:entry, the one process entry (`python -m parity convert` too)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"attn-convert": "parity.convert_cli:entry"}
    for module in ["parity.convert", "parity.convert_cli"]:  # the old routes point to the one entry
        done = subprocess.run([sys.executable, "-m", module, "to-flax", str(se_file), str(tmp_path / "x.safetensors")],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 1 and done.stderr == "attn-convert: run `attn-convert` or `python -m parity convert`\n"
    command = [sys.executable, "-c", "from parity.convert_cli import entry; entry()"]  # what the script runs
    done = subprocess.run(
        [*command, "to-flax", str(se_file), str(tmp_path / "se.safetensors"), "--model", "SE", "--arg", "channels=32",
         "--arg", "reduction=4"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert (tmp_path / "se.safetensors").is_file()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_timm_hub_checkpoint_converts_by_architecture_name_and_back_bit_for_bit(tmp_path, capsys):
    """timm publishes ``model.safetensors`` with its own keys; ``--model`` takes timm's name."""
    from flax import nnx
    from safetensors.numpy import load_file, save_file

    import attn_flax
    from timm_goldens import load_goldens, recipe_state_dict

    name = "ecaresnet26t"
    manifest = load_goldens()[0]["models"][name]["manifest"]
    hub = tmp_path / "model.safetensors"
    save_file(recipe_state_dict(manifest), str(hub))
    flax_file, back = tmp_path / "flax.safetensors", tmp_path / "back.safetensors"
    assert _run(capsys, "to-flax", hub, flax_file, "--model", name)[0] == 0
    assert _run(capsys, "to-torch", flax_file, back, "--model", name)[0] == 0
    original, returned = load_file(str(hub)), load_file(str(back))
    assert sorted(returned) == sorted(key for key, _, _ in manifest)  # safetensors files keep no order
    for key, value in original.items():
        assert returned[key].dtype == value.dtype and returned[key].tobytes() == value.tobytes(), key
    model = attn_flax.create_model(name, rngs=nnx.Rngs(0))
    parity.load_flax(model, flax_file)  # the Flax file loads into the model built by name
