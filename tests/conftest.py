"""Test-session set-up shared by every test file."""

import atexit
import os
import sys

# Bytecode caches on, for this session and every process it starts, whatever PYTHONDONTWRITEBYTECODE says
# (container images often set it): the suite starts about eighty Python processes (simulator children,
# CLI runs, torchrun ranks, decode workers), and without the caches each of them compiles every gpustats
# module it imports again, and each pytest (the two workers, their children) rewrites every test module's
# asserts again (collection: 10.3 s instead of 4.7 s a pytest on the 2-core VM). The caches go to
# __pycache__ folders next to the sources, which git ignores.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
    # The simulator cases' child pytest: guard the simulator's shared-array allocation against
    # its thread race (see _simulator.make_shared_arrays_thread_safe).
    # Its block manager sleeps between looks at its threads instead of spinning (_simulator.pace_block_manager),
    # and device functions skip its per-call module swap where the launch already holds it (fast_device_calls).
    from _simulator import fast_device_calls, make_shared_arrays_thread_safe, pace_block_manager

    make_shared_arrays_thread_safe()
    pace_block_manager()
    fast_device_calls()



def _exit_without_teardown() -> None:
    """A pytest-xdist worker's last exit handler (registered first, so it runs after every other one, once
    its reports are sent): end the process without the interpreter's teardown. Freeing torch's and numba's
    native state took 1-5 s per worker on the 2-core VM, and the controller waits for every worker to exit
    before it ends the run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def pytest_configure(config):
    """In a pytest-xdist worker: the pytest runs a test starts (simulator shards, the benchmark smoke run, the
    GPU check's dry run) are not workers of this session, so they must not inherit its worker variables
    (bench/gpu_check_plugin.py, for one, reads PYTEST_XDIST_WORKER and then leaves its report to a controller
    that does not exist). Tests that need the worker's id have xdist's ``worker_id`` fixture. The worker ends
    without the interpreter's teardown (:func:`_exit_without_teardown`)."""
    if hasattr(config, "workerinput"):
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
            os.environ.pop(name, None)
        atexit.register(_exit_without_teardown)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the README's command) on a machine of 2 to 4 CPUs: one worker more than CPUs. Many tests
    wait on processes they start (ranks meeting, a rank's timeout, servers, a worker's exit), and the idle
    core time that leaves is filled by the extra worker: on the 2-core VM, three pairs of runs side by side
    took 173.5/135.3/135.4 s with three workers against 179.3/145.1/137.7 s with two (bench/README.md).
    Larger machines keep xdist's count (one per CPU), as does ``PYTEST_XDIST_AUTO_NUM_WORKERS`` when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus + 1 if 2 <= cpus <= 4 else None


def pytest_addoption(parser):
    parser.addoption("--sim-shard", default="0/1", metavar="I/K",
                     help="run every K-th test from the I-th (tests/_simulator.py's children)")


def pytest_collection_modifyitems(config, items):
    """``--sim-shard=i/k`` (a simulator child of tests/_simulator.py): keep
    every k-th case from the i-th (neighbouring cases are alike, so each shard gets a fair share of the work)."""
    index, count = (int(v) for v in config.getoption("--sim-shard").split("/"))
    if count == 1:
        return
    kept = [item for i, item in enumerate(items) if i % count == index]
    dropped = [item for i, item in enumerate(items) if i % count != index]
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
