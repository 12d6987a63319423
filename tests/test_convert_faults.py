"""attn-convert under faults and hostile files (issue 16): interrupts, full disks, dtypes, bombs, policies."""

import argparse
import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx

import attn_flax
import attn_torch
import parity
import parity.checkpoint as checkpoint
from parity.checkpoint import CheckpointError, read_torch
from parity.convert_cli import main
from parity.verify.harness import randomize_

ROOT = Path(__file__).resolve().parents[1]
SE_ARGS = ["--model", "SE", "--arg", "channels=32", "--arg", "reduction=4"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _cli(*argv, env=None, **kwargs):
    """A real attn-convert process (`python -m parity convert`)."""
    return subprocess.Popen([sys.executable, "-m", "parity", "convert", *map(str, argv)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _one_line(code, err, *fragments, expected_code=2):
    assert code == expected_code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _listing(directory):
    return sorted(p.relative_to(directory).as_posix() for p in Path(directory).rglob("*"))


@pytest.fixture
def se_file(tmp_path):
    torch.manual_seed(0)
    torch.save(randomize_(attn_torch.SE(32, reduction=4), 0).state_dict(), tmp_path / "se.pt")
    return tmp_path / "se.pt"


# -- 1. interrupted writes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_se(tmp_path_factory):
    """SE(1024, reduction=1): two 4 MB weights, large enough for a signal to land mid-write."""
    directory = tmp_path_factory.mktemp("big")
    torch.manual_seed(0)
    torch.save(attn_torch.SE(1024, reduction=1).state_dict(), directory / "se.pt")
    assert main(["to-flax", str(directory / "se.pt"), str(directory / "se.safetensors"), "--model", "SE",
                 "--arg", "channels=1024", "--arg", "reduction=1"]) == 0
    return directory


# (command, source, destination, signal, when): "import" = once the handlers are in place, during the imports;
# a number = that many seconds after the converter's temporary directory appears.
SIGNAL_CASES = [
    ("to-flax", "se.pt", "orbax_out", signal.SIGINT, 0.0),
    ("to-flax", "se.pt", "orbax_out", signal.SIGTERM, 0.03),
    ("to-flax", "se.pt", "orbax_out", signal.SIGHUP, 0.1),
    ("to-flax", "se.pt", "out.safetensors", signal.SIGTERM, 0.0),
    ("to-torch", "se.safetensors", "out.pt", signal.SIGINT, 0.0),
    ("to-torch", "se.safetensors", "out.pt", signal.SIGHUP, 0.01),
    ("to-flax", "se.pt", "out.safetensors", signal.SIGINT, "import"),
    ("to-torch", "se.safetensors", "out.pt", signal.SIGTERM, "import"),
]


def _wait_for_handlers(process):
    """Until the process catches SIGINT, SIGTERM and SIGHUP (before that the interpreter itself is starting)."""
    wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:  # no /proc: give the interpreter time to start
            time.sleep(1.0)
            return
        caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
        if caught & wanted == wanted:
            return
        time.sleep(0.001)


def _interrupt(directory, command, src, dst, signum, when, results):
    inputs = sorted(os.listdir(directory))
    process = _cli(command, directory / src, directory / dst, "--model", "SE", "--arg", "channels=1024",
                   "--arg", "reduction=1")
    if when == "import":
        _wait_for_handlers(process)
        time.sleep(0.05)
    else:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if any(name.startswith(checkpoint.TEMP_PREFIX) for name in os.listdir(directory)):
                break
            time.sleep(0.0005)
        time.sleep(when)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    results.append((command, dst, signum, when, process.returncode, err, inputs, sorted(os.listdir(directory))))


def test_signals_mid_write_leave_the_directory_as_it_was(tmp_path, big_se):
    """Real signals to real CLI processes at several timings (run side by side to keep the test short)."""
    results, threads = [], []
    for i, case in enumerate(SIGNAL_CASES):
        directory = tmp_path / f"run{i}"
        directory.mkdir()
        for name in ("se.pt", "se.safetensors"):
            os.link(big_se / name, directory / name)
        threads.append(threading.Thread(target=_interrupt, args=(directory, *case, results)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    interrupted = 0
    for command, dst, signum, when, code, err, before, after in results:
        case = f"{command} -> {dst}, {signal.Signals(signum).name} at {when}: {err!r}"
        assert len(err.splitlines()) <= 1 and "Traceback" not in err, case
        if code == 0:  # the signal came after the rename: the run had finished
            assert after == sorted(before + [dst]) and err == "", case
            continue
        interrupted += 1
        assert code == 128 + signum, case
        assert err == f"attn-convert: interrupted by {signal.Signals(signum).name}; nothing written\n", case
        assert after == before, case
    assert interrupted >= len(SIGNAL_CASES) // 2, results


def _signal_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs at the next bytecode


@pytest.mark.parametrize("dst,writer", [("o.safetensors", "_write_safetensors"), ("o_orbax", "_save_orbax"),
                                        ("o.pt", None)])
def test_a_signal_inside_each_writer_takes_the_cleanup_path(tmp_path, capsys, monkeypatch, se_file, dst, writer):
    """Deterministic: the signal arrives while the library writes (Orbax: waited for, then cleaned up)."""
    if dst.endswith(".pt"):
        assert _run(capsys, "to-flax", se_file, tmp_path / "se.safetensors", *SE_ARGS)[0] == 0
        import torch as torch_module

        real = torch_module.save

        def interrupted_save(obj, file, *args, **kwargs):
            file.write(b"partial")
            _signal_self(signal.SIGTERM)
            return real(obj, file, *args, **kwargs)

        monkeypatch.setattr(torch_module, "save", interrupted_save)
        argv = ["to-torch", tmp_path / "se.safetensors", tmp_path / dst, "--model", "SE"]
    else:
        real = getattr(checkpoint, writer)

        def interrupted(*args, **kwargs):
            _signal_self(signal.SIGINT if writer == "_save_orbax" else signal.SIGHUP)
            return real(*args, **kwargs)

        monkeypatch.setattr(checkpoint, writer, interrupted)
        argv = ["to-flax", se_file, tmp_path / dst, *SE_ARGS]
    before = _listing(tmp_path)
    code, err = _run(capsys, *argv)
    assert code in (128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGHUP), err
    assert err.startswith("attn-convert: interrupted by SIG") and len(err.splitlines()) == 1
    time.sleep(0.2)  # no writer thread is left to recreate anything
    assert _listing(tmp_path) == before


def test_the_temporary_is_created_inside_the_guarded_region(tmp_path, capsys, monkeypatch, se_file):
    real_mkdir = os.mkdir

    def mkdir_then_signal(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if Path(path).name.startswith(checkpoint.TEMP_PREFIX):
            _signal_self(signal.SIGINT)

    monkeypatch.setattr(os, "mkdir", mkdir_then_signal)
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "o.safetensors", *SE_ARGS)
    assert code == 130 and "interrupted by SIGINT" in err
    assert _listing(tmp_path) == ["se.pt"]


def test_temporaries_say_where_they_come_from(tmp_path, monkeypatch):
    seen = []
    real = checkpoint._write_safetensors

    def spy(arrays, out, meta):
        seen.append(out)
        return real(arrays, out, meta)

    monkeypatch.setattr(checkpoint, "_write_safetensors", spy)
    parity.save_flax(attn_flax.SE(8, 2, rngs=nnx.Rngs(0)), tmp_path / "m.safetensors")
    assert seen[0].parent.name.startswith(".attn-convert-m.safetensors-") and seen[0].parent.name.endswith(".tmp")
    assert seen[0].parent.parent == tmp_path and _listing(tmp_path) == ["m.safetensors"]


# -- 2. one line on stderr; progress only when asked --------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs where the platform allows mounting one (root on Linux)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}); "
                    "test_a_full_disk_simulated covers the messages")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_disk):
    torch.save(attn_torch.SE(512, reduction=1).state_dict(), tmp_path / "se.pt")  # 2 MB of weights
    args = ["--model", "SE", "--arg", "channels=512", "--arg", "reduction=1"]
    assert main(["to-flax", str(tmp_path / "se.pt"), str(tmp_path / "se.safetensors"), *args]) == 0
    runs = [_cli("to-flax", tmp_path / "se.pt", tiny_disk / "orbax_out", *args),
            _cli("to-flax", tmp_path / "se.pt", tiny_disk / "o.safetensors", *args),
            _cli("to-torch", tmp_path / "se.safetensors", tiny_disk / "o.pt", "--model", "SE")]
    for process, name in zip(runs, ["orbax_out", "o.safetensors", "o.pt"]):
        _, err = process.communicate(timeout=120)
        _one_line(process.returncode, err, f"cannot write {tiny_disk / name}: No space left on device")
    assert _listing(tiny_disk) == []


def test_a_full_disk_simulated(tmp_path, capsys, monkeypatch, se_file):
    """Portable: every write fails with ENOSPC, also inside torch.save (which hides it in a RuntimeError)."""
    assert _run(capsys, "to-flax", se_file, tmp_path / "se.safetensors", *SE_ARGS)[0] == 0

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint._RecordingFile, "write", lambda self, data: (setattr(self, "error", OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC))), full())[1])
    code, err = _run(capsys, "to-torch", tmp_path / "se.safetensors", tmp_path / "o.pt", "--model", "SE")
    _one_line(code, err, f"cannot write {tmp_path / 'o.pt'}: No space left on device")
    assert "enforce fail" not in err
    monkeypatch.setattr(checkpoint, "_write_safetensors", full)
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "o.safetensors", *SE_ARGS)
    _one_line(code, err, "No space left on device")
    assert _listing(tmp_path) == ["se.pt", "se.safetensors"]


def test_a_file_size_limit_is_one_line(tmp_path, se_file):
    """A real kernel refusal without mounting anything: RLIMIT_FSIZE in the child (EFBIG)."""
    torch.save(attn_torch.SE(256, reduction=1).state_dict(), tmp_path / "se.pt")

    limited = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024)); "
               "os.execv(sys.executable, [sys.executable, '-m', 'parity', 'convert', *sys.argv[1:]])")
    done = subprocess.run([sys.executable, "-c", limited, "to-flax", tmp_path / "se.pt", tmp_path / "out",
                           "--model", "SE", "--arg", "channels=256", "--arg", "reduction=1"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    process, err = done, done.stderr
    _one_line(process.returncode, err, f"cannot write {tmp_path / 'out'}: File too large")
    assert _listing(tmp_path) == ["se.pt"]


def test_a_read_only_directory_is_one_line_about_dst(tmp_path, capsys, monkeypatch, se_file):
    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "o.safetensors", *SE_ARGS)
    _one_line(code, err, f"cannot write {tmp_path / 'o.safetensors'}: Permission denied")
    assert checkpoint.TEMP_PREFIX not in err


def test_a_truncated_orbax_source_is_one_line(tmp_path, capsys, se_file):
    assert _run(capsys, "to-flax", se_file, tmp_path / "orbax_in", *SE_ARGS)[0] == 0
    data = [p for p in (tmp_path / "orbax_in").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:
        path.write_bytes(path.read_bytes()[:10])
    process = _cli("to-torch", tmp_path / "orbax_in", tmp_path / "o.pt", "--model", "SE")
    _, err = process.communicate(timeout=120)
    _one_line(process.returncode, err, "cannot read the Orbax checkpoint", "damaged or incomplete")
    assert "Event loop is closed" not in err and not (tmp_path / "o.pt").exists()


def test_help_exits_zero(capsys):
    assert main(["to-flax", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


def test_progress_only_when_asked_or_on_a_terminal(tmp_path, capsys, monkeypatch, se_file):
    assert _run(capsys, "to-flax", se_file, tmp_path / "a.safetensors", *SE_ARGS) == (0, "")
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "b.safetensors", *SE_ARGS, "--progress")
    assert code == 0 and "read 2 tensors" in err and "wrote" in err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    import parity.convert_cli as cli

    monkeypatch.setattr(cli, "PROGRESS_MIN_TENSORS", 2)
    terminal = Terminal()
    assert main(["to-flax", str(se_file), str(tmp_path / "c.safetensors"), *SE_ARGS], stderr=terminal) == 0
    assert "read 2 tensors" in terminal.getvalue()


# -- 3. no silent value changes -------------------------------------------------------------------------


def _flax_file(tmp_path, capsys, se_file, name="se.safetensors"):
    assert _run(capsys, "to-flax", se_file, tmp_path / name, *SE_ARGS)[0] == 0
    return checkpoint.read_safetensors(tmp_path / name)


def test_recorded_torch_dtypes_that_would_truncate_are_refused(tmp_path, capsys, se_file):
    arrays, meta = _flax_file(tmp_path, capsys, se_file)
    meta["torch_dtypes"] = json.dumps({"fc.0.weight": "int8"})
    checkpoint._write_safetensors(arrays, tmp_path / "int8.safetensors", meta)
    code, err = _run(capsys, "to-torch", tmp_path / "int8.safetensors", tmp_path / "o.pt", "--model", "SE")
    _one_line(code, err, "torch_dtypes would change 1 tensors", "'fc.0.weight'", "not all exact in int8")
    assert not (tmp_path / "o.pt").exists()


def test_float64_in_a_flax_file_is_refused_not_rounded(tmp_path, capsys, se_file):
    arrays, meta = _flax_file(tmp_path, capsys, se_file)
    arrays = {k: v.astype(np.float64) + 1e-12 for k, v in arrays.items()}
    checkpoint._write_safetensors(arrays, tmp_path / "f64.safetensors", meta)
    code, err = _run(capsys, "to-torch", tmp_path / "f64.safetensors", tmp_path / "o.pt", "--model", "SE")
    _one_line(code, err, "dtypes that would lose precision (2)", "'fc.layers.0.kernel': float64 -> float32")
    module = attn_flax.SE(32, 4, rngs=nnx.Rngs(0))
    with pytest.raises(parity.ConversionError, match="float64 -> float32"):
        parity.load_flax(module, tmp_path / "f64.safetensors")


def test_bfloat16_nan_payloads_come_back_bit_for_bit(tmp_path, capsys):
    state = randomize_(attn_torch.SE(8, reduction=2), 0).state_dict()
    bits = torch.tensor([0xFFC1, 0x7F81, 0x7FA1, 0x3F80], dtype=torch.int32).to(torch.int16)
    weight = state["fc.0.weight"].to(torch.bfloat16)
    weight.view(torch.int16).view(-1)[:4] = bits
    state = {"fc.0.weight": weight, "fc.2.weight": state["fc.2.weight"].to(torch.bfloat16)}
    torch.save(state, tmp_path / "bf16.pt")
    se8 = ["--model", "SE", "--arg", "channels=8", "--arg", "reduction=2"]
    assert _run(capsys, "to-flax", tmp_path / "bf16.pt", tmp_path / "f.safetensors", *se8) == (0, "")
    assert _run(capsys, "to-torch", tmp_path / "f.safetensors", tmp_path / "back.pt", "--model", "SE") == (0, "")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for key, value in state.items():
        assert back[key].dtype == torch.bfloat16
        assert torch.equal(back[key].view(torch.int16), value.view(torch.int16)), key


def test_narrow_exact_keeps_bits_and_refuses_loss():
    from parity.convert import ConversionError, narrow_exact

    wide = np.array([0xFFC10000, 0x7F810000, 0x3F800000], np.uint32).view(np.float32)
    assert narrow_exact(wide, ml_dtypes.bfloat16).view(np.uint16).tolist() == [0xFFC1, 0x7F81, 0x3F80]
    with pytest.raises(ConversionError, match="low 16 bits"):
        narrow_exact(np.array([1.1], np.float32), ml_dtypes.bfloat16)
    with pytest.raises(ConversionError, match="do not fit int32"):
        narrow_exact(np.array([2**40]), np.int32)
    assert narrow_exact(np.array([0.5, -2.0], np.float32), np.float16).dtype == np.float16


def test_to_torch_refuses_to_narrow_a_float64_flax_module():
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        module = attn_flax.SE(8, reduction=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        with pytest.raises(parity.ConversionError, match=r"'fc.0.weight': float64 -> float32"):
            parity.to_torch(module)
        assert parity.to_torch(module, dtype=torch.float64).fc[0].weight.dtype == torch.float64


# -- 4. no half-written modules -------------------------------------------------------------------------


def test_load_state_dict_validates_every_value_before_writing_any():
    module = attn_flax.SE(32, reduction=4, rngs=nnx.Rngs(0))
    before = parity.state_dict(module)
    state = {k: np.ones_like(v) for k, v in before.items()}
    state["fc.2.weight"] = np.full(state["fc.2.weight"].shape, "x")  # strings: not numeric
    with pytest.raises(parity.ConversionError, match=r"not numeric arrays \(1\): 'fc.2.weight' \(<U1\)"):
        parity.load_state_dict(module, state)
    state["fc.2.weight"] = np.array([[None] * 8] * 32, dtype=object)
    with pytest.raises(parity.ConversionError, match=r"'fc.2.weight' \(object\)"):
        parity.load_state_dict(module, state)
    after = parity.state_dict(module)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- 5. no process-wide side effects ----------------------------------------------------------------------


def test_the_umask_is_read_without_being_set(tmp_path, monkeypatch):
    mask = os.umask(0o027)
    os.umask(mask)
    try:
        os.umask(0o027)

        def forbidden(*args):
            raise AssertionError("os.umask changes the mask of every thread")

        monkeypatch.setattr(os, "umask", forbidden)
        assert checkpoint.current_umask() == 0o027
        path = parity.save_flax(attn_flax.SE(8, 2, rngs=nnx.Rngs(0)), tmp_path / "m.safetensors")
        assert path.stat().st_mode & 0o777 == 0o640
        monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
        assert checkpoint.current_umask() == 0o027  # the fallback asks a child process
    finally:
        monkeypatch.undo()
        os.umask(mask)


# -- 6. untrusted names ---------------------------------------------------------------------------------


def test_key_names_are_escaped_and_lists_capped(tmp_path, capsys, se_file):
    state = torch.load(se_file, weights_only=True)
    state["\x1b[2J\x1b[31mred"] = torch.zeros(1)
    for i in range(30):
        state[f"extra.{i}"] = torch.zeros(1)
    torch.save(state, tmp_path / "evil.pt")
    code, err = _run(capsys, "to-flax", tmp_path / "evil.pt", tmp_path / "o.safetensors", *SE_ARGS)
    line = _one_line(code, err, "unexpected keys (31)", r"'\x1b[2J\x1b[31mred'", "... and 11 more")
    assert "extra.25" not in line
    from parity.convert import Expected, check_state

    many = {f"k{i}": np.zeros(1) for i in range(100_000)}
    with pytest.raises(parity.ConversionError) as info:
        check_state("x", {"a": Expected((1,), np.dtype(np.float32))}, many)
    assert len(str(info.value)) < 2_000 and "... and 99980 more" in str(info.value)


def test_a_path_with_escapes_is_printed_escaped(tmp_path, capsys, se_file):
    code, err = _run(capsys, "to-flax", tmp_path / "no\x1b]0;title\x07.pt", tmp_path / "o.safetensors", *SE_ARGS)
    _one_line(code, err, r"\x1b]0;title\x07", "does not exist")


# -- 7. decompression bombs -------------------------------------------------------------------------------


def _bomb(tmp_path, megabytes):
    """A torch zip whose data record inflates from a few kB to `megabytes` of zeros."""
    honest = tmp_path / "honest.pt"
    torch.save({"w": torch.zeros(megabytes * 2**18)}, honest)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(honest) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    honest.unlink()
    return bomb


def test_a_decompression_bomb_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    bomb = _bomb(tmp_path, 64)
    assert bomb.stat().st_size < 2**20
    assert torch.load(bomb, weights_only=True)["w"].numel() == 64 * 2**18  # torch itself inflates it

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch.load ran on a bomb")

    monkeypatch.setattr(torch, "load", must_not_run)
    code, err = _run(capsys, "to-flax", bomb, tmp_path / "o.safetensors", *SE_ARGS)
    _one_line(code, err, "refused to load", "is compressed", "decompression bomb")
    assert _listing(tmp_path) == ["bomb.pt"]


def test_overlapping_zip_records_are_refused(tmp_path):
    path = tmp_path / "overlap.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as archive:
        names = [i.filename for i in archive.infolist()]
    real = zipfile.ZipFile.infolist

    def inflated(self):
        infos = real(self)
        for info in infos:
            if info.filename == names[-1]:
                info.file_size = info.compress_size = 10 * path.stat().st_size
        return infos

    import unittest.mock

    with unittest.mock.patch.object(zipfile.ZipFile, "infolist", inflated):
        with pytest.raises(CheckpointError, match="overlapping records"):
            checkpoint.check_zip_records(path)


# -- 8. explicit policies ------------------------------------------------------------------------------------


def test_an_existing_destination_needs_overwrite_and_keeps_mode_and_symlink(tmp_path, capsys, se_file):
    real = tmp_path / "real.safetensors"
    real.write_text("old")
    real.chmod(0o600)
    (tmp_path / "link.safetensors").symlink_to(real.name)
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "link.safetensors", *SE_ARGS)
    _one_line(code, err, "link.safetensors exists; give --overwrite")
    assert real.read_text() == "old"
    assert _run(capsys, "to-flax", se_file, tmp_path / "link.safetensors", *SE_ARGS, "--overwrite") == (0, "")
    assert (tmp_path / "link.safetensors").is_symlink() and real.stat().st_mode & 0o777 == 0o600
    assert checkpoint.read_flax_metadata(real)["model"] == "SE"
    assert _run(capsys, "to-flax", se_file, tmp_path / "orbax_out", *SE_ARGS) == (0, "")
    code, err = _run(capsys, "to-flax", se_file, tmp_path / "orbax_out", *SE_ARGS)
    _one_line(code, err, "orbax_out exists; give --overwrite")
    assert _run(capsys, "to-flax", se_file, tmp_path / "orbax_out", *SE_ARGS, "--overwrite") == (0, "")
    assert sorted(p.name for p in (tmp_path / "orbax_out").iterdir()) == ["attn_parity.json", "state"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "orbax_out", "real.safetensors", "se.pt"]


def test_source_and_destination_must_differ(tmp_path, capsys, se_file):
    assert _run(capsys, "to-flax", se_file, tmp_path / "f.safetensors", *SE_ARGS)[0] == 0
    os.link(tmp_path / "f.safetensors", tmp_path / "hard.safetensors")
    (tmp_path / "sym.safetensors").symlink_to("f.safetensors")
    original = (tmp_path / "f.safetensors").read_bytes()
    for dst in ["f.safetensors", "sym.safetensors", "hard.safetensors"]:
        code, err = _run(capsys, "to-torch", tmp_path / "f.safetensors", tmp_path / dst, "--model", "SE",
                         "--format", "safetensors", "--overwrite")
        _one_line(code, err, "SRC and DST are the same")
    assert _run(capsys, "to-flax", se_file, tmp_path / "d", *SE_ARGS)[0] == 0
    code, err = _run(capsys, "to-torch", tmp_path / "d", tmp_path / "d" / "x.pt", "--model", "SE")
    _one_line(code, err, "lie inside one another")
    assert (tmp_path / "f.safetensors").read_bytes() == original


@pytest.mark.parametrize("dst,fragments", [
    ("out.npz", ["cannot tell the Flax format", "safetensors: a .safetensors file", "orbax:", "--format"]),
    ("-", ["standard output"]),
    ("out.pt", ["not .pt"]),
])
def test_unknown_output_formats_are_refused_with_the_list(tmp_path, capsys, se_file, dst, fragments):
    code, err = _run(capsys, "to-flax", se_file, tmp_path / dst if dst != "-" else dst, *SE_ARGS)
    _one_line(code, err, *fragments)
    assert _listing(tmp_path) == ["se.pt"]


def test_extensions_are_case_insensitive_and_format_overrides(tmp_path, capsys, se_file):
    os.rename(se_file, tmp_path / "SE.PT")
    assert _run(capsys, "to-flax", tmp_path / "SE.PT", tmp_path / "OUT.SAFETENSORS", *SE_ARGS) == (0, "")
    assert (tmp_path / "OUT.SAFETENSORS").is_file()
    assert _run(capsys, "to-torch", tmp_path / "OUT.SAFETENSORS", tmp_path / "BACK.PTH", "--model", "SE") == (0, "")
    assert _run(capsys, "to-flax", tmp_path / "SE.PT", tmp_path / "x.npz", *SE_ARGS, "--format", "orbax") == (0, "")
    assert (tmp_path / "x.npz" / "attn_parity.json").is_file()
    assert _run(capsys, "to-torch", tmp_path / "x.npz", tmp_path / "y.weights", "--model", "SE",
                "--format", "safetensors") == (0, "")
    assert read_torch(tmp_path / "BACK.PTH").keys() == {"fc.0.weight", "fc.2.weight"}


def _timm_training_checkpoint(path, state, ema):
    """What timm's train.py (CheckpointSaver) writes: weights nested, DataParallel prefixes, args as a Namespace."""
    torch.save({"epoch": 3, "arch": "se", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "version": 2,
                "args": argparse.Namespace(model="se", lr=0.1), "metric": 0.5,
                "state_dict_ema": {f"module.{k}": v for k, v in ema.items()}}, path)


def test_checkpoints_as_timm_writes_them(tmp_path, capsys):
    torch.manual_seed(0)
    state = randomize_(attn_torch.SE(32, reduction=4), 0).state_dict()
    ema = {k: v + 1 for k, v in state.items()}
    _timm_training_checkpoint(tmp_path / "checkpoint-3.pth.tar", state, ema)
    code, err = _run(capsys, "to-flax", tmp_path / "checkpoint-3.pth.tar", tmp_path / "a.safetensors", *SE_ARGS)
    assert code == 0, err
    assert "note: read the tensors under 'state_dict' (also there: 'state_dict_ema'; pick another with --key" in err
    assert "note: stripped the 'module.' prefix" in err
    code, err = _run(capsys, "to-flax", tmp_path / "checkpoint-3.pth.tar", tmp_path / "b.safetensors", *SE_ARGS,
                     "--key", "state_dict_ema")
    assert code == 0 and "read the tensors under" not in err
    for name, expected in [("a", state), ("b", ema)]:
        assert _run(capsys, "to-torch", tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pt", "--model", "SE")[0] == 0
        back = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert all(torch.equal(back[k], v) for k, v in expected.items())
    # as timm publishes them: model.safetensors and pytorch_model.bin, flat
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    for src in ["model.safetensors", "pytorch_model.bin"]:
        assert _run(capsys, "to-flax", tmp_path / src, tmp_path / f"{src}.flax.safetensors", *SE_ARGS) == (0, ""), src


def test_unknown_nesting_lists_the_top_level_keys(tmp_path, capsys, se_file):
    state = torch.load(se_file, weights_only=True)
    torch.save({"weights_a": state, "weights_b": state, "step": 3}, tmp_path / "nested.pt")
    code, err = _run(capsys, "to-flax", tmp_path / "nested.pt", tmp_path / "o.safetensors", *SE_ARGS)
    _one_line(code, err, "top-level keys: 'weights_a', 'weights_b', 'step'", "--key NAME")
    code, err = _run(capsys, "to-flax", tmp_path / "nested.pt", tmp_path / "o.safetensors", *SE_ARGS, "--key", "nope")
    _one_line(code, err, "no top-level key 'nope'", "'weights_a'")
    assert _run(capsys, "to-flax", tmp_path / "nested.pt", tmp_path / "o.safetensors", *SE_ARGS,
                "--key", "weights_b") == (0, "")


def test_a_partial_module_prefix_is_not_stripped(tmp_path):
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "p.pt")
    state, notes = checkpoint.read_torch_checkpoint(tmp_path / "p.pt")
    assert list(state) == ["module.a", "b"] and notes == []


# -- 9. messages ------------------------------------------------------------------------------------------------


def test_integer_keys_are_refused_in_words(tmp_path, capsys):
    torch.save({0: torch.zeros(8, 32), 1: torch.zeros(32, 8)}, tmp_path / "ints.pt")
    code, err = _run(capsys, "to-flax", tmp_path / "ints.pt", tmp_path / "o.safetensors", *SE_ARGS)
    _one_line(code, err, "state dict keys must be strings", "0 (int), 1 (int)")
    module = attn_flax.SE(32, 4, rngs=nnx.Rngs(0))
    with pytest.raises(parity.ConversionError, match=r"keys that are not strings \(1\): 0 \(int\)"):
        parity.load_state_dict(module, {0: np.zeros((8, 32), np.float32)}, strict=False)


def test_an_unusable_jax_platform_is_named(tmp_path, se_file):
    process = _cli("to-flax", se_file, tmp_path / "o.safetensors", *SE_ARGS, env={"JAX_PLATFORMS": "nosuchplatform"})
    _, err = process.communicate(timeout=120)
    _one_line(process.returncode, err, "JAX cannot start the platforms JAX_PLATFORMS='nosuchplatform'",
              "set it to cpu")


@pytest.mark.parametrize("key,value,fragment", [
    ("args", "{not json", "metadata 'args' is not valid JSON"),
    ("args", "[1, 2]", "metadata 'args' is not a JSON object but list"),
    ("torch_dtypes", "{\"fc.0.weight\": \"nonsense\"}", "is not a dtype"),
])
def test_malformed_metadata_names_the_file(tmp_path, capsys, se_file, key, value, fragment):
    arrays, meta = _flax_file(tmp_path, capsys, se_file)
    meta[key] = value
    checkpoint._write_safetensors(arrays, tmp_path / "bad.safetensors", meta)
    code, err = _run(capsys, "to-torch", tmp_path / "bad.safetensors", tmp_path / "o.pt", "--model", "SE")
    _one_line(code, err, str(tmp_path / "bad.safetensors"), fragment)


# -- 10. JAX-only users --------------------------------------------------------------------------------------------


def test_safetensors_and_orbax_work_without_torch(tmp_path):
    code = f"""
import sys
sys.modules["torch"] = None
from flax import nnx
import numpy as np
import attn_flax, parity
m = attn_flax.CoordAttention(16, reduction=8, rngs=nnx.Rngs(0))
for name in ["m.safetensors", "m_orbax"]:
    parity.save_flax(m, {str(tmp_path)!r} + "/" + name)
    fresh = attn_flax.CoordAttention(16, reduction=8, rngs=nnx.Rngs(1))
    parity.load_flax(fresh, {str(tmp_path)!r} + "/" + name)
    assert np.array_equal(np.asarray(fresh.conv1.kernel[...]), np.asarray(m.conv1.kernel[...]))
from parity.convert_cli import main
directory = {str(tmp_path)!r}
assert main(["to-torch", directory + "/m.safetensors", directory + "/t.safetensors", "--model", "CoordAttention"]) == 0
assert main(["to-flax", directory + "/t.safetensors", directory + "/again.safetensors", "--model", "CoordAttention",
             "--arg", "channels=16", "--arg", "reduction=8"]) == 0
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_jax_extra_brings_safetensors_and_orbax():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].split("<")[0] for req in extras["jax"]}
    assert {"jax", "flax", "safetensors", "orbax-checkpoint"} <= names
