"""Strategy ``tree``: shared-memory block tree into per-block partials, merged in a fixed order.

Pass 1 is the same grid-stride register accumulation as ``atomic`` (rule in ``_common``); each
block combines its threads with a fixed-shape shared-memory tree and *stores* (no atomics) its
totals in row ``blockIdx.x`` of partial arrays. Pass 2 is a tiny kernel with one thread per
channel that walks the partial rows in block order and adds the result into the accumulators.

Every addition happens in an order fixed by the launch configuration, so float results are
bitwise reproducible run to run on the same device (and across devices given the same
``launch=(blocks, threads)``). Histograms, co-moments and per-image sums are not computed here.
"""

from __future__ import annotations

import functools

from numba import cuda, float64, int32, int64

from ._common import (
    SHARED_SLOTS,
    as_device_array,
    check_input,
    is_integer,
    launch_config,
    make_block_ops,
    not_supported,
    pixels_per_image,
)
from ._thread import make_thread_ops, run_length, types_for

NAME = "tree"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset()


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    TPB = threads
    RT, BT, MT = types_for(dtype_tag)
    CP = layout == "CP"
    RUN = run_length(dtype_tag)
    SLOTS = SHARED_SLOTS
    init, visit, flush, as_mins = make_thread_ops(dtype_tag, layout, C, False, False, False)
    block_sum, block_min = make_block_ops(TPB)

    @cuda.jit
    def partial_kernel(x, shift, part_tally, part_sum, part_min):
        tid = cuda.threadIdx.x
        sh_count = cuda.shared.array(SLOTS, int64)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_ext = cuda.shared.array(SLOTS, float64)
        sh_hist = cuda.shared.array(1, int32)
        hi = cuda.local.array(C, RT)
        lo = cuda.local.array(C, RT)
        tally = cuda.local.array(C2, int64)
        run = cuda.local.array(C2, RT)
        bank = cuda.local.array(C2, BT)
        extreme = cuda.local.array(C2, MT)
        current = cuda.local.array(C, RT)
        current_ok = cuda.local.array(C, int32)
        unused_run = cuda.local.array(C2, RT)
        unused_bank = cuda.local.array(C2, BT)
        unused_tally = cuda.local.array(C, int64)
        mins = cuda.local.array(C2, float64)
        init(shift, hi, lo, tally, run, bank, extreme, unused_run, unused_bank, unused_tally, unused_run, unused_bank)

        images = x.shape[0]
        pixels = x.shape[2] if CP else x.shape[1]
        total = images * pixels
        stride = cuda.gridDim.x * TPB
        p = cuda.blockIdx.x * TPB + tid
        since_flush = 0
        n = p // pixels
        l = p - n * pixels
        step_n = stride // pixels
        step_l = stride - step_n * pixels
        while p < total:
            visit(x, n, l, hi, lo, tally, run, extreme, current, current_ok, unused_run,
                  unused_tally, unused_run, sh_hist)
            since_flush += 1
            if since_flush == RUN:
                flush(run, bank, unused_run, unused_bank, unused_run, unused_bank)
                since_flush = 0
            p += stride
            n += step_n
            l += step_l
            if l >= pixels:
                l -= pixels
                n += 1
        flush(run, bank, unused_run, unused_bank, unused_run, unused_bank)

        as_mins(extreme, mins)
        block_sum(sh_count, tid, tally, 2 * C)
        block_sum(sh_sum, tid, bank, 2 * C)
        block_min(sh_ext, tid, mins, 2 * C)
        if tid == 0:
            b = cuda.blockIdx.x
            for k in range(2 * C):
                part_tally[b, k] = tally[k]
                part_sum[b, k] = bank[k]
                part_min[b, k] = mins[k]

    @cuda.jit
    def merge_kernel(blocks, part_tally, part_sum, part_min, count, nonfinite, out_sum, out_sumsq, vmin, vmax):
        c = cuda.grid(1)
        if c < C:
            t_count = int64(0)
            t_bad = int64(0)
            t_sum = BT(0)
            t_sumsq = BT(0)
            t_min = vmin[c]
            t_max = vmax[c]
            for b in range(blocks):
                t_bad += part_tally[b, C + c]
                if part_tally[b, c] > 0:
                    t_count += part_tally[b, c]
                    t_sum += part_sum[b, c]
                    t_sumsq += part_sum[b, C + c]
                    t_min = min(t_min, part_min[b, c])
                    t_max = max(t_max, -part_min[b, C + c])
            count[c] += t_count
            nonfinite[c] += t_bad
            out_sum[c] += t_sum
            out_sumsq[c] += t_sumsq
            vmin[c] = t_min
            vmax[c] = t_max

    return partial_kernel, merge_kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None):
    """Add the statistics of ``x`` into ``acc``; float totals bitwise reproducible (module docstring)."""
    if histogram:
        raise not_supported(NAME, "histograms")
    if cross:
        raise not_supported(NAME, "co-moments (cross=True)")
    if per_image is not None:
        raise not_supported(NAME, "per-image sums")
    x = as_device_array(x, stream)
    channels = check_input(x, layout, dtype_tag, acc)
    total = int(x.shape[0]) * pixels_per_image(x, layout)
    if total == 0:
        return
    blocks, threads = launch_config(total, launch)
    partial_kernel, merge_kernel = _build(dtype_tag, layout, channels, threads)
    bank_dtype = "int64" if is_integer(dtype_tag) else "float64"
    part_tally = acc.scratch("tree_tally", (blocks, 2 * channels), "int64")
    part_sum = acc.scratch("tree_sum", (blocks, 2 * channels), bank_dtype)
    part_min = acc.scratch("tree_min", (blocks, 2 * channels), "float64")
    out_sum, out_sumsq = (acc.isum, acc.isumsq) if is_integer(dtype_tag) else (acc.fsum, acc.fsumsq)
    partial_kernel[blocks, threads, stream](x, acc.shift, part_tally, part_sum, part_min)
    merge_kernel[1, channels, stream](
        blocks, part_tally, part_sum, part_min, acc.count, acc.nonfinite, out_sum, out_sumsq, acc.vmin, acc.vmax
    )
