"""CUDA backend tests (CudaReducer, compute_stats(device="cuda")): tests/sim_cuda_backend_cases.py
under numba's CUDA simulator, or on a GPU (see _simulator.py).

Run just these:  python -m pytest tests/test_cuda_backend.py -q
Verbose child:   NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/sim_cuda_backend_cases.py -q
"""

from __future__ import annotations

import pytest
from _simulator import in_process, run_in_simulator

pytestmark = pytest.mark.cudasim

if in_process():
    from sim_cuda_backend_cases import *  # noqa: F401,F403  (the cases, collected here)
else:

    def test_cuda_backend_under_the_simulator():
        run_in_simulator("sim_cuda_backend_cases.py")
