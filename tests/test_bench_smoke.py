"""Keep bench/ from rotting: every suite is collected, the CPU ones run once on tiny inputs.

``pytest bench/`` without ``--benchmark-enable`` runs each benchmark body once, untimed; GPU
suites skip with a reason here. Tiny images and corpus (GPUSTATS_BENCH_TINY=1), one size.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.bench
def test_bench_suites_run_tiny(tmp_path):
    env = dict(os.environ, GPUSTATS_BENCH_TINY="1", GPUSTATS_BENCH_SIZES="1MiB", GPUSTATS_BENCH_ROUNDS="1",
               TMPDIR=str(tmp_path))  # the decode corpus is cached under TMPDIR: keep it private
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", "-rs",
                           "-p", "no:hypothesispytest"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 10, tail  # CPU + decode benchmarks really ran
    assert "failed" not in proc.stdout, tail
    if not torch.cuda.is_available():
        for suite in ("bench_kernels", "bench_baselines", "bench_pipeline", "bench_options"):
            assert re.search(rf"SKIPPED \[\d+\] bench/{suite}\.py.*no CUDA GPU", proc.stdout), (suite, tail)
