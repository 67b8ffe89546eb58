"""CUDA kernel tests: tests/sim_kernels_cases.py under numba's CUDA simulator, or on a GPU (see _simulator.py).

Run just these:  python -m pytest tests/test_kernels_sim.py -q
Verbose child:   NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/sim_kernels_cases.py -q
"""

from __future__ import annotations

import pytest
from _simulator import in_process, run_in_simulator

pytestmark = pytest.mark.cudasim

if in_process():
    from sim_kernels_cases import *  # noqa: F401,F403  (the cases, collected here)
else:

    def test_kernels_under_the_simulator():
        run_in_simulator("sim_kernels_cases.py")
