"""Run a file of CUDA cases under numba's CUDA simulator, or in this process on a real GPU.

numba picks simulator or hardware once, when it is first imported, and other test files of the
same pytest process import numba without the simulator (and some assert that device="cuda" is
refused here). So, unless this process already runs the simulator (NUMBA_ENABLE_CUDASIM=1 set
before pytest started) or has a real GPU, the cases run in a child pytest with
NUMBA_ENABLE_CUDASIM=1 and its report is attached to the failure message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Sequence

_HERE = Path(__file__).resolve().parent


def in_process() -> bool:
    """True when the cases can be collected here: simulator already on, or a usable GPU."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return True
    from gpustats.backends import no_driver_reason

    if no_driver_reason() is not None:  # no NVIDIA driver: told without importing numba.cuda (a second)
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def collect(namespace: dict, cases: str | Sequence[str], shards: int = 1) -> None:
    """In a test file's ``namespace``: the cases of ``tests/<case>.py`` (one name or several) themselves
    when they can run here (simulator on, or a GPU), else ``shards`` tests that each run every
    ``shards``-th case under the simulator in a child (several children, so that pytest-xdist runs them
    side by side; several case files share each child's start-up)."""
    files = [cases] if isinstance(cases, str) else list(cases)
    if in_process():
        for name in files:
            module = __import__(name)
            namespace.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return
    for shard in range(shards):
        def test_cases_under_the_simulator(shard=shard):
            run_in_simulator([f"{name}.py" for name in files], shard, shards)

        name = f"test_{files[0]}_under_the_simulator" + (f"_{shard + 1}_of_{shards}" if shards > 1 else "")
        test_cases_under_the_simulator.__name__ = name
        namespace[name] = test_cases_under_the_simulator


class SimulatorSkips(UserWarning):
    """Cases of a simulator child that skipped (GPU-only cases): shown in the parent's warnings summary."""


def run_in_simulator(cases: str | Sequence[str], shard: int = 0, shards: int = 1) -> None:
    """Run ``tests/<cases>`` (every ``shards``-th case from ``shard``: conftest.py selects them) in a child
    pytest with the simulator on; fail with its report. The child's skips (cases that need a real GPU)
    become one :class:`SimulatorSkips` warning per reason, so the parent's summary shows them."""
    files = [cases] if isinstance(cases, str) else list(cases)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *(str(_HERE / f) for f in files), "-q", "-p", "no:cacheprovider", "-x",
         "-p", "no:hypothesispytest",  # no case uses it; its summary hook imports hypothesis (seconds per child)
         "-ra", f"--sim-shard={shard}/{shards}"],
        cwd=_HERE.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout[-12000:] + proc.stderr[-3000:]
    print(report)
    label = ", ".join(files) + (f" (shard {shard + 1} of {shards})" if shards > 1 else "")
    assert proc.returncode == 0, f"simulator cases {label} failed:\n{report}"
    for count, where, reason in re.findall(r"^SKIPPED \[(\d+)\] ([^:]+:\d+): (.*)$", proc.stdout, flags=re.M):
        warnings.warn(SimulatorSkips(f"{count} simulator case(s) of {label} skipped at {where}: {reason}"))


def make_shared_arrays_thread_safe() -> None:
    """Serialize the simulator's ``cuda.shared.array`` allocation (a simulator race, not ours).

    numba-cuda's simulator (checked on 0.30.4) runs each CUDA thread of a block as a Python thread
    and keys a block's shared arrays by their call site: ``FakeCUDAShared.array`` does
    ``get(key)``, then ``np.empty`` and a store when the key is missing, with no lock. Two threads
    that both miss the key each get their own array, so the block's "shared" memory is split and
    a tree combine reads uninitialized values (seen as garbage counts and a wrong min in about one
    run in eight of the atomic uint8 case). Real GPUs are unaffected. Holding a lock over the
    lookup makes every thread of the block see the one array, as on hardware.
    """
    import threading
    import warnings

    import numpy as np
    from numba import cuda

    if not cuda.jit.__module__.startswith("numba.cuda.simulator"):
        return
    try:
        from numba.cuda.simulator import kernelapi

        FakeCUDAShared = kernelapi.FakeCUDAShared
        as_dtype, Type = kernelapi.numpy_support.as_dtype, kernelapi.types.Type
    except (ImportError, AttributeError) as exc:
        warnings.warn(f"numba's simulator changed ({exc}); shared arrays are not guarded: kernel cases may flake")
        return
    if getattr(FakeCUDAShared.array, "_gpustats_locked", False):
        return
    original = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # errors and dynamic shared memory: unchanged
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, Type):
            dtype = as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # the simulator's key (file, line)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[key] = res
        return res

    array._gpustats_locked = True
    FakeCUDAShared.array = array


#: seconds the simulator's block manager sleeps between two looks at its threads (pace_block_manager)
POLL_S = 1e-4


def pace_block_manager() -> None:
    """Let the simulator's block manager sleep between looks at its threads instead of spinning.

    numba-cuda's simulator (checked on 0.30.4) runs a block's CUDA threads as Python threads and its
    ``BlockManager.run`` polls them in a busy loop (``is_alive`` and ``syncthreads_blocked`` of every
    thread, again and again) until all have finished, releasing them together when all wait in
    ``syncthreads``. The spinning thread takes its share of the GIL from the threads doing the work:
    in a profile of the CUDA backend's cases, 12 of 27 s went to the loop. This is the same loop with
    a sleep of :data:`POLL_S` per round (the GIL is free meanwhile): the same barrier rule, the same
    exceptions, only the polling pace differs. Left alone (with a warning) if the simulator changed.
    """
    import time
    import warnings

    from numba import cuda

    if not cuda.jit.__module__.startswith("numba.cuda.simulator"):
        return
    try:
        from numba.cuda.simulator import kernel as sim_kernel

        manager, thread_class = sim_kernel.BlockManager, sim_kernel.BlockThread
        import numpy as np
    except (ImportError, AttributeError) as exc:
        warnings.warn(f"numba's simulator changed ({exc}); its block manager is left spinning")
        return
    if getattr(manager.run, "_gpustats_paced", False):
        return

    def run(self, grid_point, *args):
        threads, livethreads, blockedthreads = set(), set(), set()
        for block_point in np.ndindex(*self._block_dim):
            def target():
                self._f(*args)

            t = thread_class(target, self, grid_point, block_point, self._debug)
            t.start()
            threads.add(t)
            livethreads.add(t)
        while livethreads:
            for t in livethreads:
                if t.syncthreads_blocked:
                    blockedthreads.add(t)
                elif t.exception:
                    for t_other in threads:
                        t_other.abort = True
                        t_other.syncthreads_blocked = False
                        t_other.syncthreads_event.set()
                    raise t.exception[0].with_traceback(t.exception[1])
            if livethreads == blockedthreads:
                for t in blockedthreads:
                    t.syncthreads_blocked = False
                    t.syncthreads_event.set()
                blockedthreads = set()
            livethreads = set([t for t in livethreads if t.is_alive()])
            if livethreads:
                time.sleep(POLL_S)
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    run._gpustats_paced = True
    manager.run = run


def fast_device_calls() -> None:
    """Let device functions skip the simulator's module swap when their module is already swapped for the launch.

    numba-cuda's simulator (checked on 0.30.4) runs a device function by swapping the ``cuda`` name in its
    module's globals for the launch's fake module (``swapped_cuda_module``): a lock, a reference count, and
    a scan of the module's globals whenever the count returns to zero, on every call of every thread.
    With the kernels' small device functions that was about a third of a simulator child's Python time (a
    ``py-spy --gil`` profile). Here each launch holds the modules whose device functions earlier launches
    called swapped for its whole length (the same swap, entered once), and a call into one of those modules
    runs the function directly: its ``cuda`` is this launch's fake module either way. Calls into modules not
    seen before take the simulator's own path. Left alone (with a warning) if the simulator changed.
    """
    import contextlib
    import warnings

    from numba import cuda

    if not cuda.jit.__module__.startswith("numba.cuda.simulator"):
        return
    try:
        from numba.cuda.simulator import kernel as sim_kernel
        from numba.cuda.simulator import kernelapi

        fake_kernel, push, swapped = sim_kernel.FakeCUDAKernel, sim_kernel._push_kernel_context, kernelapi.swapped_cuda_module
        sim_kernel._kernel_context  # noqa: B018  (the launch's fake module, read by the calls)
    except (ImportError, AttributeError) as exc:
        warnings.warn(f"numba's simulator changed ({exc}); device functions keep its module swap per call")
        return
    if getattr(fake_kernel.__call__, "_gpustats_fast", False):
        return
    original_call = fake_kernel.__call__
    seen: dict = {}  # id(module globals) -> a device function of that module
    held: set = set()  # ids of the module globals the running launch holds swapped

    def call(self, *args):
        if self._device or sim_kernel._kernel_context is not None:
            key = id(self.fn.__globals__)
            if key in held:
                return self.fn(*args)
            seen.setdefault(key, self.fn)
        return original_call(self, *args)

    @contextlib.contextmanager
    def push_and_hold(module):
        with push(module), contextlib.ExitStack() as stack:
            known = dict(seen)
            for fn in known.values():
                stack.enter_context(swapped(fn, module))
            held.update(known)
            try:
                yield
            finally:
                held.clear()

    call._gpustats_fast = True
    fake_kernel.__call__ = call
    sim_kernel._push_kernel_context = push_and_hold
