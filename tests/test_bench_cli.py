"""`gpustats bench`: the CLI runs, prints the table and writes JSON of the documented shape.

Timings are not asserted (the machine may be busy); only that every number is present and
positive, and that the baselines compute what they claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpustats import benchmark
from gpustats.benchmark import MIB, bench_id, forum_recipe, image_batches, numpy_two_pass, parse_sizes, size_label

ROOT = Path(__file__).resolve().parent.parent
ROW_NUMBERS = ("bytes", "gbps", "median_s", "min_s", "max_s", "speedup")


def _run_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``gpustats bench ARGS`` in this process (a process of its own would import torch again: seconds)."""
    from gpustats.cli import main

    capsys.readouterr()
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["gpustats", "bench", *args], code, out, err)


@pytest.mark.bench
def test_bench_cpu_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    proc = _run_cli(capsys, "--device", "cpu", "--quick", "--repeats", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["schema"] == "gpustats-bench/1"
    assert data["device"] == "cpu" and data["quick"] is True
    machine = data["machine"]
    for key in ("cpu_model", "cpu_usable", "torch", "numba", "numpy", "commit", "python"):
        assert key in machine, key
    assert machine["cpu_usable"] >= 1
    rows = data["rows"]
    seen = {(r["method"], r["dtype"], r["layout"]) for r in rows}
    for dtype in ("uint8", "float32"):
        for method in ("gpustats-cpu", "forum-recipe", "numpy-f64-2pass"):
            assert (method, dtype, "NCHW") in seen, (method, dtype)
    for r in rows:
        for key in ROW_NUMBERS:
            assert isinstance(r[key], (int, float)) and r[key] > 0, (r["id"], key, r[key])
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["gbps"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
        assert r["id"] == bench_id(r["method"], r["dtype"], r["layout"], r["bytes"])
        if r["method"] == "forum-recipe":
            assert r["speedup"] == pytest.approx(1.0)
    assert data["summary"]["cpu_vs_forum_uint8_NCHW"]["speedup"] > 0
    # the table is printed with the machine line
    assert "forum-recipe" in proc.stdout and "GB/s" in proc.stdout and proc.stdout.startswith("CPU ")


def test_bench_cuda_that_cannot_run_says_why(capsys):
    """Without a GPU, or on one with the numba simulator on (true on both kinds of machine)."""
    if torch.cuda.is_available():
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        proc = subprocess.run([sys.executable, "-m", "gpustats", "bench", "--device", "cuda", "--quick"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert "simulator" in proc.stderr
    else:
        proc = _run_cli(capsys, "--device", "cuda", "--quick")
    assert proc.returncode == 2
    assert "--device cpu" in proc.stderr


def test_sizes_and_ids():
    assert parse_sizes("1MiB, 256MiB,1GiB", ()) == [MIB, 256 * MIB, 1 << 30]
    assert parse_sizes("8", ()) == [8 * MIB]
    assert parse_sizes(None, (5,)) == [5]
    with pytest.raises(ValueError, match="1GiB"):
        parse_sizes("lots", ())
    assert bench_id("hist8", "uint8", "NCHW", 256 * MIB) == "hist8-uint8-NCHW-256MiB"
    assert size_label(1 << 30) == "1GiB"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_baselines_compute_what_they_claim(layout):
    batches = image_batches("uint8", layout, 3 * 16 * 16 * 10, batch_images=4, hw=16)
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    stacked = torch.cat(batches).numpy().astype(np.float64)
    axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    mean, std = numpy_two_pass(batches, layout)
    np.testing.assert_allclose(mean, stacked.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(std, stacked.std(axis=axes), rtol=1e-12)
    # the forum recipe averages per-batch values (what people paste): close, not exact
    fmean, fstd = forum_recipe(batches, layout)
    per_batch = [b.numpy().astype(np.float64) / 255 for b in batches]
    np.testing.assert_allclose(fmean.numpy(), np.mean([p.mean(axis=axes) for p in per_batch], axis=0), rtol=1e-5)
    np.testing.assert_allclose(fstd.numpy(), np.mean([p.std(axis=axes, ddof=1) for p in per_batch], axis=0), rtol=1e-5)
    # the CPU backend row measures the real thing: same numbers as the reference
    from gpustats import compute_stats

    result = compute_stats(batches, device="cpu", distributed=False)
    np.testing.assert_allclose(result.mean * 255, mean, rtol=1e-12)
    np.testing.assert_allclose(result.std * 255, std, rtol=1e-9)


def test_table_lists_every_row():
    rows = [{"strategy": "numba", "dtype": "uint8", "layout": "NCHW", "size": "8MiB", "gbps": 0.5,
             "roofline_frac": None, "speedup": 7.0, "baseline": "forum-recipe"},
            {"strategy": "hist8", "dtype": "uint8", "layout": "NHWC", "size": "1GiB", "gbps": 1234.5,
             "roofline_frac": 0.5, "speedup": 3.0, "baseline": "torch-+bincount"}]
    table = benchmark.format_table(rows).splitlines()
    assert table[0].split()[:5] == ["strategy", "dtype", "layout", "size", "GB/s"]
    assert "7.00x" in table[2] and "-" in table[2]
    assert "50.0%" in table[3] and "1234.5" in table[3]
