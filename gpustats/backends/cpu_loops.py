"""Which implementation runs each CPU loop: numpy until numba's compile pays for itself.

Every CPU loop has two implementations that give the same outputs bit for bit: the numba loop
(:mod:`.cpu_int_loops`, :mod:`.cpu_float_loops`; fast, but its first process compiles it for 1-3 s)
and its numpy twin (:mod:`.cpu_numpy_loops`; 10-50x slower per value, nothing to compile). A
process's first ``compute_stats`` on a few batches is done sooner by numpy than by a compile, and
a long run wants numba. So each loop, per process, in mode ``"auto"`` (the default):

1. runs numba when the loop already ran in this process;
2. else runs the numpy twin, timing it, while the loop's numpy time in this process plus this
   call's (estimated from the values it reads) stays under
   :data:`~gpustats.tuning.LOOP_LOAD_BUDGET_S` (about what importing numba and loading a loop this
   machine compiled before costs), and then under :data:`~gpustats.tuning.LOOP_COMPILE_BUDGET_S` if
   numba's per-user disk cache does not hold the loop (about what compiling it costs);
3. else runs the numba loop: loaded from the disk cache, or compiled (once; the disk cache keeps it
   for every later process).

Rent, then buy: a process spends at most about the price of numba's code in numpy before paying it,
so a short run never loads numba at all (not even ``import numba``) and a long one loses at most
about that price.
Which route ran never changes a result (the twins are bitwise equal, tests/test_numpy_loops.py).

``GPUSTATS_CPU_LOOPS`` (environment) or ``CpuReducer(loops=...)`` chooses ``"numba"`` (always the
compiled loop, as the folder engine's decode workers do: they warm numba up once per machine) or
``"numpy"`` (never numba) instead.

>>> Loops("numpy").get("u8_sums", 10).__module__
'gpustats.backends.cpu_numpy_loops'
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Callable

from ..batches import InputError
from ..tuning import LOOP_COMPILE_BUDGET_S, LOOP_LOAD_BUDGET_S, NUMPY_LOOP_S_PER_VALUE

__all__ = ["ENV", "LOOPS", "Loops", "MODES", "env_mode"]

MODES = ("auto", "numba", "numpy")
ENV = "GPUSTATS_CPU_LOOPS"
#: each loop's numba module
LOOPS = {"u8_sums": "cpu_int_loops", "u8_sum_rows": "cpu_int_loops", "int_rows": "cpu_int_loops",
         "hist_u8": "cpu_int_loops", "float_rows": "cpu_float_loops", "hist_float": "cpu_float_loops"}


def env_mode() -> str:
    """The mode ``GPUSTATS_CPU_LOOPS`` asks for (``"auto"`` when unset); a clear error for anything else."""
    mode = os.environ.get(ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise InputError(f"{ENV}={os.environ[ENV]!r} is not a CPU loop mode: use one of {', '.join(MODES)}")
    return mode


class _Tier:
    """One loop's history in this process: numpy seconds and values so far, and whether numba is ready."""

    __slots__ = ("spent", "values", "numba", "on_disk")

    def __init__(self) -> None:
        self.spent, self.values, self.numba = 0.0, 0, False
        self.on_disk: bool | None = None  # numba's disk cache holds the loop (None: not looked yet)

    def compiled_on_disk(self, name: str) -> bool:
        """Looked once per process (imports numba): another process may compile it meanwhile, no matter."""
        if self.on_disk is None:
            self.on_disk = _compiled_on_disk(_numba_loop(name))
        return self.on_disk

    def rate(self, name: str) -> float:
        """Seconds per value of the numpy twin: measured in this process, else the tuned estimate."""
        return self.spent / self.values if self.values >= 1 << 16 else NUMPY_LOOP_S_PER_VALUE[name]


_TIERS: dict[str, _Tier] = {name: _Tier() for name in LOOPS}
_LOCK = threading.Lock()


def _numba_loop(name: str) -> Callable:
    return getattr(importlib.import_module(f".{LOOPS[name]}", __package__), name)


def _compiled_on_disk(loop: Callable) -> bool:
    """True when numba's disk cache holds a fresh compile of ``loop`` (its index, as numba reads it:
    empty when missing, from another numba or for an edited source). numba's own cache internals,
    read defensively: anything unexpected counts as "not compiled"."""
    cache = getattr(loop, "_cache", None)
    try:
        return bool(cache._cache_file._load_index())  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - no cache, or another numba's layout
        return False


class Loops:
    """The loops of one reducer, in ``mode`` (``None``: :func:`env_mode`)."""

    def __init__(self, mode: str | None = None):
        if mode is not None and mode not in MODES:
            raise ValueError(f"loops={mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode or env_mode()

    def get(self, name: str, values: int) -> Callable:
        """The implementation of loop ``name`` for a call that reads ``values`` values."""
        if self.mode == "numpy":
            from . import cpu_numpy_loops

            return getattr(cpu_numpy_loops, name)
        tier = _TIERS[name]
        if self.mode == "numba" or tier.numba:
            tier.numba = True
            return _numba_loop(name)
        with _LOCK:
            if not tier.numba:
                cost = tier.spent + values * tier.rate(name)
                if cost <= LOOP_LOAD_BUDGET_S or (cost <= LOOP_COMPILE_BUDGET_S and not tier.compiled_on_disk(name)):
                    tier.values += values
                    return _timed(name, tier)
                tier.numba = True
        return _numba_loop(name)


def _timed(name: str, tier: _Tier) -> Callable:
    """The numpy twin of ``name``, adding its run time to ``tier``."""
    from . import cpu_numpy_loops

    twin = getattr(cpu_numpy_loops, name)

    def run(*args):
        started = time.perf_counter()
        try:
            return twin(*args)
        finally:
            elapsed = time.perf_counter() - started
            with _LOCK:
                tier.spent += elapsed

    return run
