"""The benchmark runs end to end on a tiny shape (speed goals are never tested here)."""

import json
import time

import pytest

from parity.devtools import bench


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    page = tmp_path / "benchmarks.md"
    code = bench.main(["--models", "--modules", "SE", "CoordAttention", "--shapes", "2x16x5x7", "--reps", "2",
                       "--warmup", "1", "--no-compile", "--json", str(out), "--png", str(tmp_path / "b.png"),
                       "--markdown", str(page)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["environment"]["jax_backend"] == "cpu"
    rows = {r["module"]: r for r in data["rows"]}
    assert set(rows) == {"SE", "CoordAttention"}
    for row in rows.values():
        assert row["error"] is None
        assert set(row["timings"]) == {"flax_eval", "plain_eval", "torch_eval", "flax_train", "plain_train", "torch_train", "R"}
        assert all(t["median_ms"] > 0 for t in row["timings"].values())
    printed = capsys.readouterr().out
    assert "torch/flax eval" in printed and "CoordAttention" in printed
    text = page.read_text()
    assert "## CPU kernels" in text and "`conv_general_dilated`" in text  # CoordAttention's 1x1 convolutions
    assert "| CoordAttention | 2x16x5x7 |" in text and "## Goals" in text
    assert rows["CoordAttention"]["kernels"] == ["conv_general_dilated"] and rows["SE"]["kernels"] == []
    again = tmp_path / "again.md"
    assert bench.main(["--from-json", str(out), "--markdown", str(again)]) == 0
    assert again.read_text() == text


def test_bench_with_torch_compile(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--models", "--modules", "ECA", "--shapes", "1x8x4x4", "--reps", "1", "--warmup", "1",
                       "--json", str(out), "--png", str(tmp_path / "b.png")]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert "compile_eval" in row["timings"] and row["compile_s"] > 0


def test_bench_reports_a_rejected_shape_as_an_error(tmp_path):
    out = tmp_path / "bench.json"
    # SGE with 4 groups cannot split 18 channels: the row carries the ValueError, exit code 1.
    code = bench.main(["--models", "--modules", "SGE", "--shapes", "1x18x4x4", "--reps", "1", "--warmup", "1",
                       "--no-compile", "--json", str(out), "--png", str(tmp_path / "b.png")])
    row = json.loads(out.read_text())["rows"][0]
    assert code == 1 and "ValueError" in row["error"]


def test_bench_counts_page_faults_and_rejects_a_burst_without_timed_calls(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--models", "--modules", "SE", "--shapes", "1x16x4x4", "--reps", "1", "--warmup", "1", "--burst", "2",
                       "--settle-ms", "1", "--no-compile", "--json", str(out), "--png", str(tmp_path / "b.png")]) == 0
    data = json.loads(out.read_text())
    assert data["burst"] == 2 and data["settle_ms"] == 1
    faults = data["rows"][0]["faults_per_call"]
    assert set(faults) == set(data["rows"][0]["timings"]) and all(f >= 0 for f in faults.values())
    assert "faults flax/torch eval" in capsys.readouterr().out
    for bad, message in ((["--burst", "0"], "--burst must be at least 1"),
                         (["--settle-ms", "-1"], "--settle-ms must be non-negative")):
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--models", "--modules", "SE", *bad, "--json", str(out)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_bench_compiles_flax_with_the_library_options_on_request(tmp_path, capsys):
    import attn_flax

    out = tmp_path / "bench.json"
    assert bench.main(["--models", "--modules", "GAM", "--shapes", "1x32x4x4", "--reps", "1", "--warmup", "1",
                       "--compiler-options", "attn_flax", "--no-compile", "--json", str(out),
                       "--png", str(tmp_path / "b.png")]) == 0
    data = json.loads(out.read_text())
    assert data["compiler_options"] == attn_flax.compiler_options() != {}
    assert data["rows"][0]["error"] is None
    assert "Flax compiled with" in capsys.readouterr().out


def test_settle_calls_until_the_time_has_passed_and_at_least_once():
    calls = []
    bench._settle(lambda: calls.append(time.perf_counter()), 0.0)
    assert len(calls) == 1
    calls.clear()
    start = time.perf_counter()
    bench._settle(lambda: (calls.append(None), time.sleep(0.002)), 0.02)
    assert time.perf_counter() - start >= 0.02 and 2 <= len(calls) <= 11


def test_profile_lists_the_compiled_ops_by_time(tmp_path, capsys):
    from parity.devtools import profile

    code = profile.main(["SE", "--shape", "2x16x4x4", "--calls", "2", "--warmup", "1", "--trace-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "SE 2x16x4x4 flax_eval" in out and "ms per call" in out
    assert profile.main(["GAM", "--shape", "1x32x4x4", "--calls", "1", "--warmup", "1",
                         "--compiler-options", "attn_flax"]) == 0
    wall_ms, ops = profile.profile("SE", (2, 16, 4, 4), "flax_train", calls=2, warmup=1)
    assert wall_ms > 0 and ops and all(ms >= 0 for _, ms in ops)
    assert not any(marker in name for name, _ in ops for marker in profile.RUNTIME_EVENTS)
    with pytest.raises(SystemExit) as exit_:
        profile.main(["SE", "--calls", "0"])
    assert exit_.value.code == 2 and "--calls must be at least 1" in capsys.readouterr().err
