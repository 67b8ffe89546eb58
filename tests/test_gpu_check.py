"""bench/gpu_check.sh in its dry run (numba simulator, tiny sizes): every section runs and is written.

The real run needs a GPU; this keeps the script, its sections and its report from rotting on the
CPU-only machines where CI runs. It checks the shape of what is written and that the simulated
kernels computed the right numbers, not any timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, GPUSTATS_GPU_CHECK_DRY_RUN="1", PYTHON=sys.executable, GPUSTATS_GPU_CHECK_BUDGET_S="400")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return out, proc


def test_dry_run_writes_every_section(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"gpu_check.json", "gpu_check.md", "install.log", "tests.log"} <= set(files), files
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["dry_run"] is True and doc["schema"] == "gpustats-gpu-check/1"
    for section in ("machine", "tests", "sweep", "baselines", "roofline", "pipeline", "decode", "sync", "elapsed_s",
                    "skipped", "summary"):
        assert section in doc, section
    for section in ("machine", "sweep", "pipeline", "decode", "sync"):
        assert "error" not in doc[section], (section, doc[section].get("error"), doc[section].get("traceback"))
    assert doc["machine"]["probe_sum_ok"] is True and doc["machine"]["simulator"] is True
    assert doc["elapsed_s"] < doc["budget_s"]


def test_dry_run_tests_ran_and_passed(dry_run):
    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    tests = doc["tests"]
    assert tests["passed"] >= 5 and tests["failed"] == 0 and tests["not_run"] == 0, tests


def test_dry_run_sweep_covers_every_simulator_strategy_and_checks_results(dry_run):
    from gpustats.kernels import SIMULATOR_STRATEGIES

    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    rows = doc["sweep"]["rows"]
    for name in SIMULATOR_STRATEGIES:
        for dtype in ("uint8", "float16", "bfloat16", "float32"):
            if name == "hist8" and dtype != "uint8":
                continue
            for layout in ("NCHW", "NHWC"):
                assert any(r["strategy"] == name and r["dtype"] == dtype and r["layout"] == layout for r in rows), \
                    (name, dtype, layout)
    for row in rows:
        for key in ("strategy", "dtype", "layout", "bytes", "gbps", "roofline_frac", "median_s"):
            assert key in row, key
    checks = doc["sweep"]["checks"]
    assert len(checks) == len(rows)
    assert all(c.get("exact_sum", c.get("mean_ok")) is True for c in checks), checks
    baselines = {r["baseline"] for r in doc["baselines"]["rows"]}
    assert {"torch-var_mean+aminmax", "torch-std_mean", "torch-bincount", "forum-recipe"} <= baselines
    assert doc["roofline"]["rows"] and all(r["roofline_gbps"] > 0 for r in doc["roofline"]["rows"])


def test_dry_run_lists_what_needs_a_gpu_as_skipped_with_reasons(dry_run):
    doc = json.loads((dry_run[0] / "gpu_check.json").read_text())
    skipped = " | ".join(f"{s['what']}: {s['reason']}" for s in doc["skipped"])
    for needle in ("warp", "pipeline", "nvJPEG", "sync"):
        assert needle in skipped, (needle, skipped)
    assert all(s["reason"] for s in doc["skipped"])
    assert all(t["met"] is None for t in doc["summary"]["targets"])  # simulator timings prove nothing
    md = (dry_run[0] / "gpu_check.md").read_text()
    assert md.startswith("# gpustats GPU check") and "DRY RUN" in md and "## Skipped" in md
