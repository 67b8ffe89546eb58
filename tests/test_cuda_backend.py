"""CUDA backend tests (CudaReducer, compute_stats(device="cuda")): run tests/sim_cuda_backend_cases.py under numba's CUDA simulator, or on a GPU.

numba picks simulator or hardware once, when it is first imported, and other test files of the
same pytest process import numba without the simulator (and some assert that device="cuda" is
refused here). So, unless this process already runs the simulator (NUMBA_ENABLE_CUDASIM=1 set
before pytest started) or has a real GPU, the cases run in a child pytest with
NUMBA_ENABLE_CUDASIM=1 and its report is attached to the failure message.

Run just these:  python -m pytest tests/test_kernels_sim.py -q
Verbose child:   NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/sim_cuda_backend_cases.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cudasim

_HERE = Path(__file__).resolve().parent
_CASES = _HERE / "sim_cuda_backend_cases.py"


def _in_process() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


if _in_process():
    from sim_cuda_backend_cases import *  # noqa: F401,F403  (the cases, collected here)
else:

    def test_kernels_under_the_simulator():
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", str(_CASES), "-q", "-p", "no:cacheprovider", "-x", "-ra"],
            cwd=_HERE.parent, env=env, capture_output=True, text=True, timeout=600,
        )
        report = proc.stdout[-12000:] + proc.stderr[-3000:]
        print(report)
        assert proc.returncode == 0, f"simulator CUDA backend cases failed:\n{report}"
