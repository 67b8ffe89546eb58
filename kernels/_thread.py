"""Per-thread accumulation shared by the strategies (atomic, tree, warp: sums; welford: Welford).

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
* ``mins`` float64[2C]: ``extreme`` as min and -max (:func:`make_thread_ops`'s ``as_mins``)
* ``run_n`` int64[C]: finite values in the current run (``welford`` only)

With ``welford=True`` (float input only) the run and bank hold Welford summaries instead of sums:
``run`` is the run's (mean, M2) of d in the run type (``run[c]``, ``run[C + c]``, count ``run_n[c]``),
and a flush Chan-merges it (``_blocks.chan``) into the thread's float64 summary
(n = ``tally[c]``, mean = ``bank[c]``, M2 = ``bank[C + c]``).

:func:`make_accumulate` builds the whole per-thread pass on top of these (state arrays, grid-stride
or block-per-image loop, flushes); a strategy keeps only its block combine and its writes.
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float64, int32, int64

from ._blocks import chan
from ._common import (
    HIST_BINS,
    RUN_LENGTH,
    device_function,
    grid_next,
    grid_start,
    is_integer,
    make_decode,
    make_load,
    run_type,
)

_INT_MIN_INIT = 2**62


def types_for(dtype_tag: str):
    """(RT, BT, MT): run, bank and min/max numba types for the dtype."""
    if is_integer(dtype_tag):
        return int64, int64, int64
    wt = run_type(dtype_tag)
    return wt, float64, wt


def _value_ops(integer: bool, RT):
    """``(min_init, max_init, finite, shifted, split_shift)``: the starting extremes and how a value is
    checked and shifted (integers: always finite, never shifted; floats: by the split shift ``hi + lo``)."""
    if integer:
        min_init, max_init = _INT_MIN_INIT, -_INT_MIN_INIT

        @device_function
        def finite(v):
            return True

        @device_function
        def shifted(v, hi, lo):
            return v

        @device_function
        def split_shift(s):
            return int64(0), int64(0)

    else:
        min_init, max_init = math.inf, -math.inf

        @device_function
        def finite(v):
            return math.isfinite(v)

        @device_function
        def shifted(v, hi, lo):
            return (v - hi) - lo

        @device_function
        def split_shift(s):
            hi = RT(s)
            return hi, RT(s - float64(hi))

    return min_init, max_init, finite, shifted, split_shift


def _bank_ops(C: int, CC: int, BT, WELFORD: bool, PER_IMAGE: bool, CROSS: bool):
    """``(flush, as_mins)``: a thread's short float runs banked in ``BT`` (Welford runs merged by Chan's
    rule), and its extremes as one array of minima."""

    @device_function
    def flush(tally, run, run_n, bank, cross_run, cross_bank, img_run, img_bank):
        if WELFORD:
            for c in range(C):
                if run_n[c] > 0:
                    bank[c], bank[C + c] = chan(tally[c] - run_n[c], bank[c], bank[C + c],
                                                run_n[c], BT(run[c]), BT(run[C + c]))[1:]
                run_n[c] = 0
        for k in range(2 * C):
            if not WELFORD:
                bank[k] += BT(run[k])
            run[k] = 0
            if PER_IMAGE:
                img_bank[k] += BT(img_run[k])
                img_run[k] = 0
        if CROSS:
            for k in range(CC):
                cross_bank[k] += BT(cross_run[k])
                cross_run[k] = 0

    @device_function
    def as_mins(extreme, mins):
        """min in ``mins[c]`` and -max in ``mins[C + c]`` (float64), so one block_min combines both."""
        for c in range(C):
            mins[c] = float64(extreme[c])
            mins[C + c] = -float64(extreme[C + c])

    return flush, as_mins


@functools.lru_cache(maxsize=None)
def make_thread_ops(dtype_tag: str, layout: str, channels: int, histogram: bool, cross: bool, per_image: bool,
                    welford: bool = False):
    """Device functions ``(init, visit, flush, as_mins)`` for one thread's accumulation (sums, or Welford)."""
    C = channels
    INTEGER = is_integer(dtype_tag)
    WELFORD = bool(welford)
    if WELFORD and (INTEGER or histogram or cross or per_image):
        raise ValueError("Welford runs are for float input without extras (integers are summed exactly)")
    RT, BT, MT = types_for(dtype_tag)
    HIST = bool(histogram)
    CROSS = bool(cross)
    PER_IMAGE = bool(per_image)
    CC = C * C if CROSS else 1
    BINS = HIST_BINS
    decode = make_decode(dtype_tag)
    load = make_load(layout)
    min_init, max_init, finite, shifted, split_shift = _value_ops(INTEGER, RT)
    flush, as_mins = _bank_ops(C, CC, BT, WELFORD, PER_IMAGE, CROSS)

    @device_function
    def init(shift, hi, lo, tally, run, run_n, bank, extreme, cross_run, cross_bank, img_tally, img_run, img_bank):
        for c in range(C):
            run_n[c] = 0
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

    @device_function
    def visit(x, n, l, hi, lo, tally, run, run_n, extreme, current, current_ok, cross_run, img_tally, img_run,
              hist_shared):
        for c in range(C):
            v = decode(load(x, n, c, l))
            if finite(v):
                d = shifted(v, hi[c], lo[c])
                tally[c] += 1
                if WELFORD:
                    run_n[c] += 1
                    delta = d - run[c]
                    run[c] += delta / RT(run_n[c])
                    run[C + c] += delta * (d - run[c])
                else:
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

    return init, visit, flush, as_mins


@device_function
def _no_image_done(n, img_tally, img_bank, image_out):
    pass


@functools.lru_cache(maxsize=None)
def make_accumulate(dtype_tag: str, layout: str, channels: int, histogram=False, cross=False, image_done=None,
                    run=None, welford=False):
    """Device functions ``(accumulate, accumulate_plain)``: one thread's whole pass over ``x``.

    ``accumulate(x, shift, tally, bank, mins, cross_bank, hist_shared, image_out)`` declares the
    thread's working state, runs ``init``, the loop (``visit`` per pixel, ``flush`` every
    :func:`run_length` pixels and at the end) and leaves the thread's results in the caller's
    ``tally``, ``bank``, ``mins`` (``as_mins``) and ``cross_bank`` (used when ``cross``);
    ``hist_shared`` is the block's shared histogram (used when ``histogram``).

    Without ``image_done`` the loop is the grid-stride loop over the flattened [N, L] pixels.
    With it (a device function ``image_done(n, img_tally, img_bank, image_out)``) the loop is
    block-per-image: block b walks images b, b + gridDim, ..., its threads striding the image's
    pixels; after each image (flushed) every thread calls ``image_done`` with that image's sums,
    then they are zeroed. ``image_out`` is passed through untouched (a tuple of what
    ``image_done`` needs).

    ``accumulate_plain(x, shift, tally, bank, mins)``: the same without any extra, for strategies
    that only need count, sums, min and max. With ``welford`` (float input, no extras) the thread's
    ``tally[c]``/``bank[c]``/``bank[C + c]`` come back as its Welford ``(n, mean, M2)`` of d (module
    docstring).
    """
    C = channels
    C2 = 2 * C
    RT, BT, MT = types_for(dtype_tag)
    PER_IMAGE = image_done is not None
    CROSS = bool(cross)
    CC = C * C if CROSS else 1
    RUN = run_length(dtype_tag, run)
    CP = layout == "CP"
    done = image_done if PER_IMAGE else _no_image_done
    init, visit, flush, as_mins = make_thread_ops(dtype_tag, layout, C, bool(histogram), CROSS, PER_IMAGE,
                                                  bool(welford))

    @device_function
    def step(x, n, l, since_flush, hi, lo, tally, run, run_n, bank, extreme, current, current_ok, cross_run,
             cross_bank, img_tally, img_run, img_bank, hist_shared):
        """Visit pixel (n, l); flush the runs every ``RUN`` pixels. Returns the pixels since the last flush."""
        visit(x, n, l, hi, lo, tally, run, run_n, extreme, current, current_ok, cross_run, img_tally, img_run,
              hist_shared)
        since_flush += 1
        if since_flush == RUN:
            flush(tally, run, run_n, bank, cross_run, cross_bank, img_run, img_bank)
            since_flush = 0
        return since_flush

    @device_function
    def accumulate(x, shift, tally, bank, mins, cross_bank, hist_shared, image_out):
        hi = cuda.local.array(C, RT)
        lo = cuda.local.array(C, RT)
        run = cuda.local.array(C2, RT)
        run_n = cuda.local.array(C, int64)
        extreme = cuda.local.array(C2, MT)
        current = cuda.local.array(C, RT)
        current_ok = cuda.local.array(C, int32)
        cross_run = cuda.local.array(CC, RT)
        img_tally = cuda.local.array(C, int64)
        img_run = cuda.local.array(C2, RT)
        img_bank = cuda.local.array(C2, BT)
        init(shift, hi, lo, tally, run, run_n, bank, extreme, cross_run, cross_bank, img_tally, img_run, img_bank)

        images = x.shape[0]
        pixels = x.shape[2] if CP else x.shape[1]
        since_flush = 0
        if PER_IMAGE:
            n = cuda.blockIdx.x
            while n < images:
                l = cuda.threadIdx.x
                while l < pixels:
                    since_flush = step(x, n, l, since_flush, hi, lo, tally, run, run_n, bank, extreme, current,
                                       current_ok, cross_run, cross_bank, img_tally, img_run, img_bank, hist_shared)
                    l += cuda.blockDim.x
                flush(tally, run, run_n, bank, cross_run, cross_bank, img_run, img_bank)
                since_flush = 0
                done(n, img_tally, img_bank, image_out)
                for c in range(C):
                    img_tally[c] = 0
                    img_bank[c] = 0
                    img_bank[C + c] = 0
                n += cuda.gridDim.x
        elif pixels > 0:
            p, stride, n, l, step_n, step_l = grid_start(pixels)
            total = images * pixels
            while p < total:
                since_flush = step(x, n, l, since_flush, hi, lo, tally, run, run_n, bank, extreme, current,
                                   current_ok, cross_run, cross_bank, img_tally, img_run, img_bank, hist_shared)
                p += stride
                n, l = grid_next(n, l, step_n, step_l, pixels)
        flush(tally, run, run_n, bank, cross_run, cross_bank, img_run, img_bank)
        as_mins(extreme, mins)

    @device_function
    def accumulate_plain(x, shift, tally, bank, mins):
        unused_cross = cuda.local.array(1, BT)
        unused_hist = cuda.local.array(1, int32)
        accumulate(x, shift, tally, bank, mins, unused_cross, unused_hist, ())

    return accumulate, accumulate_plain


@functools.lru_cache(maxsize=None)
def make_add_totals(channels: int):
    """``add_totals(tally, bank, mins, count, nonfinite, out_sum, out_sumsq, vmin, vmax)``.

    Adds one block's combined ``tally``/``bank``/``mins`` into the accumulators with one atomic
    per quantity per channel (channels with no finite value leave sums, min and max alone).
    """
    C = channels

    @device_function
    def add_totals(tally, bank, mins, count, nonfinite, out_sum, out_sumsq, vmin, vmax):
        for c in range(C):
            if tally[c] > 0:
                cuda.atomic.add(count, c, tally[c])
                cuda.atomic.add(out_sum, c, bank[c])
                cuda.atomic.add(out_sumsq, c, bank[C + c])
                cuda.atomic.min(vmin, c, mins[c])
                cuda.atomic.max(vmax, c, -mins[C + c])
            if tally[C + c] > 0:
                cuda.atomic.add(nonfinite, c, tally[C + c])

    return add_totals


def run_length(dtype_tag: str, run: int | None = None) -> int:
    """Pixels between flushes: integers never need one (int64 all the way); floats ``RUN_LENGTH``.

    ``run`` overrides the float run length (every strategy's ``reduce(..., run=)``): tests use the
    production value, 256, under the simulator, where ``RUN_LENGTH`` is 4.
    """
    if is_integer(dtype_tag):
        return 1 << 62
    return RUN_LENGTH if run is None else max(1, int(run))
