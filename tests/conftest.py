"""Test-session set-up shared by every test file."""

import os

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
    # The simulator cases' child pytest: guard the simulator's shared-array allocation against
    # its thread race (see _simulator.make_shared_arrays_thread_safe).
    from _simulator import make_shared_arrays_thread_safe

    make_shared_arrays_thread_safe()
