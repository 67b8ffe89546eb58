"""Per-thread accumulation shared by the sum-based strategies (atomic, tree, warp).

A thread's state lives in local arrays that the kernel allocates (numba cannot return arrays
from device functions); :func:`make_thread_ops` builds the device functions that fill them.
The accumulator rule they implement is stated once in ``_common``.

State arrays (C channels; RT = run type, BT = bank type, MT = min/max type, see :func:`types_for`):

* ``tally`` int64[2C]: finite count (``[c]``) and non-finite count (``[C + c]``)
* ``run`` RT[2C]: short-run sums of d and d*d, d = x - shift (x itself for integers)
* ``bank`` BT[2C]: the same sums, flushed from ``run`` every ``RUN_LENGTH`` pixels
* ``extreme`` MT[2C]: min (``[c]``) and max (``[C + c]``)
* ``cross_run`` RT[CC], ``cross_bank`` BT[CC]: co-moments d_i*d_j, upper triangle, CC = C*C
* ``img_tally`` int64[C], ``img_run`` RT[2C], ``img_bank`` BT[2C]: the current image's sums
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float64, int32, int64

from ._common import HIST_BINS, RUN_LENGTH, is_integer, make_decode, make_load, run_type

_INT_MIN_INIT = 2**62


def types_for(dtype_tag: str):
    """(RT, BT, MT): run, bank and min/max numba types for the dtype."""
    if is_integer(dtype_tag):
        return int64, int64, int64
    wt = run_type(dtype_tag)
    return wt, float64, wt


@functools.lru_cache(maxsize=None)
def make_thread_ops(dtype_tag: str, layout: str, channels: int, histogram: bool, cross: bool, per_image: bool):
    """Device functions ``(init, visit, flush, as_mins)`` for one thread's accumulation."""
    C = channels
    INTEGER = is_integer(dtype_tag)
    RT, BT, MT = types_for(dtype_tag)
    HIST = bool(histogram)
    CROSS = bool(cross)
    PER_IMAGE = bool(per_image)
    CC = C * C if CROSS else 1
    BINS = HIST_BINS
    decode = make_decode(dtype_tag)
    load = make_load(layout)
    if INTEGER:
        min_init, max_init = _INT_MIN_INIT, -_INT_MIN_INIT

        @cuda.jit(device=True, inline=True)
        def finite(v):
            return True

        @cuda.jit(device=True, inline=True)
        def shifted(v, hi, lo):
            return v

        @cuda.jit(device=True, inline=True)
        def split_shift(s):
            return int64(0), int64(0)

    else:
        min_init, max_init = math.inf, -math.inf

        @cuda.jit(device=True, inline=True)
        def finite(v):
            return math.isfinite(v)

        @cuda.jit(device=True, inline=True)
        def shifted(v, hi, lo):
            return (v - hi) - lo

        @cuda.jit(device=True, inline=True)
        def split_shift(s):
            hi = RT(s)
            return hi, RT(s - float64(hi))

    @cuda.jit(device=True, inline=True)
    def init(shift, hi, lo, tally, run, bank, extreme, cross_run, cross_bank, img_tally, img_run, img_bank):
        for c in range(C):
            h, low = split_shift(shift[c])
            hi[c] = h
            lo[c] = low
            tally[c] = 0
            tally[C + c] = 0
            run[c] = 0
            run[C + c] = 0
            bank[c] = 0
            bank[C + c] = 0
            extreme[c] = min_init
            extreme[C + c] = max_init
            img_tally[c] = 0
            img_run[c] = 0
            img_run[C + c] = 0
            img_bank[c] = 0
            img_bank[C + c] = 0
        for k in range(CC):
            cross_run[k] = 0
            cross_bank[k] = 0

    @cuda.jit(device=True, inline=True)
    def visit(x, n, l, hi, lo, tally, run, extreme, current, current_ok, cross_run, img_tally, img_run, hist_shared):
        for c in range(C):
            v = decode(load(x, n, c, l))
            if finite(v):
                d = shifted(v, hi[c], lo[c])
                tally[c] += 1
                run[c] += d
                run[C + c] += d * d
                extreme[c] = min(extreme[c], v)
                extreme[C + c] = max(extreme[C + c], v)
                if PER_IMAGE:
                    img_tally[c] += 1
                    img_run[c] += d
                    img_run[C + c] += d * d
                if HIST:
                    cuda.atomic.add(hist_shared, c * BINS + int64(v), int32(1))
                current[c] = d
                current_ok[c] = 1
            else:
                tally[C + c] += 1
                current[c] = 0
                current_ok[c] = 0
        if CROSS:
            for i in range(C):
                if current_ok[i]:
                    for j in range(i, C):
                        if current_ok[j]:
                            cross_run[i * C + j] += current[i] * current[j]

    @cuda.jit(device=True, inline=True)
    def flush(run, bank, cross_run, cross_bank, img_run, img_bank):
        for k in range(2 * C):
            bank[k] += BT(run[k])
            run[k] = 0
            if PER_IMAGE:
                img_bank[k] += BT(img_run[k])
                img_run[k] = 0
        if CROSS:
            for k in range(CC):
                cross_bank[k] += BT(cross_run[k])
                cross_run[k] = 0

    @cuda.jit(device=True, inline=True)
    def as_mins(extreme, mins):
        """min in ``mins[c]`` and -max in ``mins[C + c]`` (float64), so one block_min combines both."""
        for c in range(C):
            mins[c] = float64(extreme[c])
            mins[C + c] = -float64(extreme[C + c])

    return init, visit, flush, as_mins


def run_length(dtype_tag: str) -> int:
    """Pixels between flushes: integers never need one (int64 all the way)."""
    return 1 << 62 if is_integer(dtype_tag) else RUN_LENGTH
