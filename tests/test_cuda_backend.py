"""CUDA backend tests (CudaReducer, compute_stats(device="cuda")): tests/sim_cuda_backend_cases.py under
numba's CUDA simulator, or on a GPU (see _simulator.py). Verbose child:
NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/sim_cuda_backend_cases.py -q
"""

import pytest
from _simulator import collect

pytestmark = pytest.mark.cudasim
collect(globals(), "sim_cuda_backend_cases")
