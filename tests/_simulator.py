"""Run a file of CUDA cases under numba's CUDA simulator, or in this process on a real GPU.

numba picks simulator or hardware once, when it is first imported, and other test files of the
same pytest process import numba without the simulator (and some assert that device="cuda" is
refused here). So, unless this process already runs the simulator (NUMBA_ENABLE_CUDASIM=1 set
before pytest started) or has a real GPU, the cases run in a child pytest with
NUMBA_ENABLE_CUDASIM=1 and its report is attached to the failure message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def in_process() -> bool:
    """True when the cases can be collected here: simulator already on, or a usable GPU."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def run_in_simulator(cases: str) -> None:
    """Run ``tests/<cases>`` in a child pytest with the simulator on; fail with its report."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(_HERE / cases), "-q", "-p", "no:cacheprovider", "-x", "-ra"],
        cwd=_HERE.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout[-12000:] + proc.stderr[-3000:]
    print(report)
    assert proc.returncode == 0, f"simulator cases {cases} failed:\n{report}"
