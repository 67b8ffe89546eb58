"""CUDA kernel tests: tests/sim_kernels_cases.py and sim_vec_extras_cases.py under numba's CUDA simulator, or
on a GPU (see _simulator.py).

Run just these:  python -m pytest tests/test_kernels_sim.py -q
Verbose child:   NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/sim_kernels_cases.py tests/sim_vec_extras_cases.py -q
"""

import pytest
from _simulator import collect

pytestmark = pytest.mark.cudasim
collect(globals(), ["sim_kernels_cases", "sim_vec_extras_cases"], shards=2)
