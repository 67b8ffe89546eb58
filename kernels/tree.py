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

from numba import cuda, float64, int64

from ._blocks import SHARED_SLOTS, make_block_ops
from ._common import (
    is_integer,
    prepare_pixels,
    refuse_extras,
)
from ._thread import make_accumulate, types_for

NAME = "tree"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset()


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads, run=None):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    BT = types_for(dtype_tag)[1]
    SLOTS = SHARED_SLOTS
    accumulate_plain = make_accumulate(dtype_tag, layout, C, run=run)[1]
    block_totals = make_block_ops(threads)[2]

    @cuda.jit
    def partial_kernel(x, shift, part_tally, part_sum, part_min):
        tid = cuda.threadIdx.x
        sh_count = cuda.shared.array(SLOTS, int64)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_ext = cuda.shared.array(SLOTS, float64)
        tally = cuda.local.array(C2, int64)
        bank = cuda.local.array(C2, BT)
        mins = cuda.local.array(C2, float64)
        accumulate_plain(x, shift, tally, bank, mins)
        block_totals(sh_count, sh_sum, sh_ext, tid, tally, bank, mins, C2)
        if tid == 0:
            b = cuda.blockIdx.x
            for k in range(C2):
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


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None):
    """Add the statistics of ``x`` into ``acc``; float totals bitwise reproducible (module docstring)."""
    refuse_extras(NAME, histogram=histogram, cross=cross, per_image=per_image)
    prepared = prepare_pixels(x, layout, dtype_tag, acc, stream, launch)
    if prepared is None:
        return
    x, channels, total, blocks, threads = prepared
    partial_kernel, merge_kernel = _build(dtype_tag, layout, channels, threads, run)
    bank_dtype = "int64" if is_integer(dtype_tag) else "float64"
    part_tally = acc.scratch("tree_tally", (blocks, 2 * channels), "int64")
    part_sum = acc.scratch("tree_sum", (blocks, 2 * channels), bank_dtype)
    part_min = acc.scratch("tree_min", (blocks, 2 * channels), "float64")
    out_sum, out_sumsq = (acc.isum, acc.isumsq) if is_integer(dtype_tag) else (acc.fsum, acc.fsumsq)
    partial_kernel[blocks, threads, stream](x, acc.shift, part_tally, part_sum, part_min)
    merge_kernel[1, channels, stream](
        blocks, part_tally, part_sum, part_min, acc.count, acc.nonfinite, out_sum, out_sumsq, acc.vmin, acc.vmax
    )
