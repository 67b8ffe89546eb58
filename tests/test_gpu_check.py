"""bench/gpu_check.sh in its dry run (numba simulator, tiny sizes): every section runs and is written.

The real run needs a GPU; this keeps the script, its sections and its report from rotting on the
CPU-only machines where CI runs. It checks the shape of what is written and that the simulated
kernels computed the right numbers, not any timing, and that the kit leaves the interpreter as it
found it (no ``pip install`` unless asked). The dry run itself is kept short: two quick tests, a
sweep that covers every strategy, dtype and layout once, the measuring sections in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from _once import shared_folder

ROOT = Path(__file__).resolve().parent.parent


def _installed_files() -> dict:
    """The interpreter's record of the gpustats distribution (file -> mtime), empty when not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution("gpustats")
    except metadata.PackageNotFoundError:
        return {}
    return {str(f): dist.locate_file(f).stat().st_mtime_ns for f in (dist.files or []) if dist.locate_file(f).exists()}


def _dry_run_into(folder):
    out = folder / "out"
    out.mkdir()
    env = dict(os.environ, GPUSTATS_GPU_CHECK_DRY_RUN="1", PYTHON=sys.executable, GPUSTATS_GPU_CHECK_BUDGET_S="400")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.pop("GPUSTATS_GPU_CHECK_INSTALL", None)
    before = _installed_files()
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    (folder / "proc.json").write_text(json.dumps({
        "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
        "installed_before": before, "installed_after": _installed_files()}))


@pytest.fixture(scope="module")
def dry_run(request):
    """The GPU check's dry run (about a minute), once per session (tests/_once.py): its output folder and
    the process's return code, output and the installed files before and after."""
    folder = shared_folder(request, "gpu_check_dry_run", _dry_run_into)
    return folder / "out", types.SimpleNamespace(**json.loads((folder / "proc.json").read_text()))


def test_dry_run_writes_every_section(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"gpu_check.json", "gpu_check.md", "install.log", "tests.log"} <= set(files), files
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["dry_run"] is True and doc["schema"] == "gpustats-gpu-check/1"
    for section in ("machine", "tests", "sweep", "baselines", "roofline", "calls", "engine", "pipeline", "decode", "sync",
                    "elapsed_s", "skipped", "summary"):
        assert section in doc, section
    for section in ("machine", "sweep", "calls", "engine", "pipeline", "decode", "sync"):
        assert "error" not in doc[section], (section, doc[section].get("error"), doc[section].get("traceback"))
    assert doc["machine"]["probe_sum_ok"] is True and doc["machine"]["simulator"] is True
    assert doc["elapsed_s"] < doc["budget_s"]


def test_dry_run_tests_ran_and_passed(dry_run):
    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    tests = doc["tests"]
    assert tests["passed"] >= 1 and tests["failed"] == 0 and tests["not_run"] == 0, tests


def test_dry_run_sweep_covers_every_simulator_strategy_and_checks_results(dry_run):
    from gpustats.kernels import SIMULATOR_STRATEGIES

    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    rows = doc["sweep"]["rows"]
    # the dry run covers every strategy, dtype and layout at least once (a GPU run: every combination)
    assert {r["strategy"] for r in rows} == set(SIMULATOR_STRATEGIES)
    assert {(r["dtype"], r["layout"]) for r in rows} == {(d, lay) for d in ("uint8", "float16", "bfloat16", "float32")
                                                         for lay in ("NCHW", "NHWC")}
    for row in rows:
        for key in ("strategy", "dtype", "layout", "bytes", "gbps", "roofline_frac", "median_s"):
            assert key in row, key
    checks = doc["sweep"]["checks"]
    assert len(checks) == len(rows)
    assert all(c.get("exact_sum", c.get("mean_ok")) is True for c in checks), checks
    baselines = {r["baseline"] for r in doc["baselines"]["rows"]}
    assert {"torch-var_mean+aminmax", "torch-std_mean", "torch-bincount", "forum-recipe"} <= baselines
    assert doc["roofline"]["rows"] and all(r["roofline_gbps"] > 0 for r in doc["roofline"]["rows"])


def test_dry_run_calls_cover_the_issue_table_through_the_fixed_cost_path(dry_run):
    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    rows = doc["calls"]["rows"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_calls", ROOT / "bench" / "gpu_calls.py")
    gpu_calls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_calls)
    assert [r["case"] for r in rows] == [c[0] for c in gpu_calls.CASES]
    for r in rows:
        assert "error" not in r, r
        for key in ("case", "dtype", "shape", "options", "host_us", "per_update_us", "torch_per_update_us"):
            assert r[key] is not None, (key, r)
        if r["strategy"] == "vec":  # the launcher ran (the stand-in driver runs its kernels): all but the first update
            assert r["fast_updates"] == r["kernel_launches"] - 1 >= 1, r
    cold = doc["calls"]["compile"]["cold"]
    assert [k["dtype"] for k in cold["kernels"]] == ["uint8", "float32"], cold
    md = (dry_run[0] / "gpu_check.md").read_text()
    assert "## Calls" in md and "## Engine" in md
    targets = " | ".join(t["target"] for t in doc["summary"]["targets"])
    for needle in ("host time per update, uint8 128x3x32x32", "per update vs torch", "all three",
                   "nan_policy='omit' / with 'raise'", "nvjpeg decoding, warm", "float32 Accumulator.update"):
        assert needle in targets, needle


def test_dry_run_engine_runs_the_folder_job_cold_and_warm_beside_pillow(dry_run):
    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    engine = doc["engine"]
    assert engine["files"] >= 10 and engine["baselines"]["pillow_processes"]["images_per_s"] > 0
    rows = engine["rows"]
    assert [(r["decoder"], r["cache"]) for r in rows] == [("cpu", "cold"), ("cpu", "warm")]
    for r in rows:
        assert "error" not in r, r
        assert r["images"] == engine["files"] and r["images_per_s"] > 0 and r["decode_only_images_per_s"] > 0, r
        for key in ("decoder", "workers", "images", "cache", "images_per_s", "decode_only_images_per_s"):
            assert key in r, key


def test_dry_run_leaves_the_interpreter_unchanged(dry_run):
    out, proc = dry_run
    log = (out / "install.log").read_text()
    assert "the interpreter is unchanged" in log and "pip install" not in log, log
    assert "\nnumba 0." in log and "\npytest " in log, log  # what is installed, with versions
    assert proc.installed_after == proc.installed_before


def test_dry_run_lists_what_needs_a_gpu_as_skipped_with_reasons(dry_run):
    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    skipped = " | ".join(f"{s['what']}: {s['reason']}" for s in doc["skipped"])
    for needle in ("warp", "pipeline", "nvJPEG", "sync", "decode gpu"):
        assert needle in skipped, (needle, skipped)
    assert all(s["reason"] for s in doc["skipped"])
    assert all(t["met"] is None for t in doc["summary"]["targets"])  # simulator timings prove nothing
    md = (dry_run[0] / "gpu_check.md").read_text()
    assert md.startswith("# gpustats GPU check") and "DRY RUN" in md and "## Skipped" in md
