"""Strategy ``welford``: per-thread Welford (n, mean, M2), merged with Chan's formula.

Float input: each thread runs Welford's update on ``d = x - shift[c]`` in the run type over at
most ``RUN_LENGTH`` pixels, then Chan-merges the run into float64 (n, mean, M2) registers (the
accumulator rule in ``_common``). Blocks Chan-merge their threads with a fixed shared-memory
tree and store per-block partials; a one-thread-per-channel kernel Chan-merges the blocks in
block order and finally converts into the accumulators' shifted sums::

    fsum += n * mean            (mean is already the mean of x - shift)
    fsumsq += M2 + n * mean**2

Like ``tree`` the result is bitwise reproducible for a fixed launch configuration.

Integer input is summed exactly instead (Welford's divisions would spoil exactness); it runs
the ``tree`` kernels, so all strategies agree to the bit on uint8/uint16.
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float64, int64

from . import tree
from ._common import (
    device_function,
    SHARED_SLOTS,
    grid_next,
    grid_start,
    group_size,
    is_integer,
    make_block_ops,
    make_decode,
    make_load,
    prepare_pixels,
    refuse_extras,
)
from ._thread import make_thread_ops, run_length, types_for

NAME = "welford"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset()


@device_function
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.: merge two (n, mean, M2) summaries (float64), either may be empty."""
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    weight_b = float64(n_b) / float64(n)
    mean = mean_a + delta * weight_b
    m2 = m2_a + m2_b + delta * delta * float64(n_a) * weight_b
    return n, mean, m2


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads, run=None):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    TPB = threads
    GROUP = group_size(threads)
    SLOTS = SHARED_SLOTS
    RT, _, MT = types_for(dtype_tag)
    CP = layout == "CP"
    RUN = run_length(dtype_tag, run)
    decode = make_decode(dtype_tag)
    load = make_load(layout)
    block_sum, block_min = make_block_ops(TPB)[:2]
    as_mins = make_thread_ops(dtype_tag, layout, C, False, False, False)[3]

    @device_function
    def flush(r_n, r_mean, r_m2, w_n, w_mean, w_m2):
        for c in range(C):
            w_n[c], w_mean[c], w_m2[c] = _chan(w_n[c], w_mean[c], w_m2[c], r_n[c], float64(r_mean[c]), float64(r_m2[c]))
            r_n[c] = 0
            r_mean[c] = 0
            r_m2[c] = 0

    @device_function
    def block_chan(sh_n, sh_mean, sh_m2, tid, w_n, w_mean, w_m2):
        base = 0
        while base < C:
            m = min(GROUP, C - base)
            for q in range(m):
                sh_n[q * TPB + tid] = w_n[base + q]
                sh_mean[q * TPB + tid] = w_mean[base + q]
                sh_m2[q * TPB + tid] = w_m2[base + q]
            cuda.syncthreads()
            step = TPB // 2
            while step > 0:
                if tid < step:
                    for q in range(m):
                        a = q * TPB + tid
                        b = a + step
                        sh_n[a], sh_mean[a], sh_m2[a] = _chan(
                            sh_n[a], sh_mean[a], sh_m2[a], sh_n[b], sh_mean[b], sh_m2[b]
                        )
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                for q in range(m):
                    w_n[base + q] = sh_n[q * TPB]
                    w_mean[base + q] = sh_mean[q * TPB]
                    w_m2[base + q] = sh_m2[q * TPB]
            cuda.syncthreads()
            base += GROUP

    @cuda.jit
    def partial_kernel(x, shift, part_n, part_moments, part_min):
        tid = cuda.threadIdx.x
        sh_n = cuda.shared.array(SLOTS, int64)
        sh_mean = cuda.shared.array(SLOTS, float64)
        sh_m2 = cuda.shared.array(SLOTS, float64)
        hi = cuda.local.array(C, RT)
        lo = cuda.local.array(C, RT)
        r_n = cuda.local.array(C, int64)
        r_mean = cuda.local.array(C, RT)
        r_m2 = cuda.local.array(C, RT)
        w_n = cuda.local.array(C, int64)
        w_mean = cuda.local.array(C, float64)
        w_m2 = cuda.local.array(C, float64)
        bad = cuda.local.array(C, int64)
        extreme = cuda.local.array(C2, MT)
        mins = cuda.local.array(C2, float64)
        for c in range(C):
            h = RT(shift[c])
            hi[c] = h
            lo[c] = RT(shift[c] - float64(h))
            r_n[c] = 0
            r_mean[c] = 0
            r_m2[c] = 0
            w_n[c] = 0
            w_mean[c] = 0
            w_m2[c] = 0
            bad[c] = 0
            extreme[c] = math.inf
            extreme[C + c] = -math.inf

        images = x.shape[0]
        pixels = x.shape[2] if CP else x.shape[1]
        total = images * pixels
        since_flush = 0
        p, stride, n, l, step_n, step_l = grid_start(pixels)
        while p < total:
            for c in range(C):
                v = decode(load(x, n, c, l))
                if math.isfinite(v):
                    d = (v - hi[c]) - lo[c]
                    r_n[c] += 1
                    delta = d - r_mean[c]
                    r_mean[c] += delta / RT(r_n[c])
                    r_m2[c] += delta * (d - r_mean[c])
                    extreme[c] = min(extreme[c], v)
                    extreme[C + c] = max(extreme[C + c], v)
                else:
                    bad[c] += 1
            since_flush += 1
            if since_flush == RUN:
                flush(r_n, r_mean, r_m2, w_n, w_mean, w_m2)
                since_flush = 0
            p += stride
            n, l = grid_next(n, l, step_n, step_l, pixels)
        flush(r_n, r_mean, r_m2, w_n, w_mean, w_m2)

        as_mins(extreme, mins)
        block_chan(sh_n, sh_mean, sh_m2, tid, w_n, w_mean, w_m2)
        block_sum(sh_n, tid, bad, C)
        block_min(sh_mean, tid, mins, 2 * C)
        if tid == 0:
            b = cuda.blockIdx.x
            for c in range(C):
                part_n[b, c] = w_n[c]
                part_n[b, C + c] = bad[c]
                part_moments[b, c] = w_mean[c]
                part_moments[b, C + c] = w_m2[c]
                part_min[b, c] = mins[c]
                part_min[b, C + c] = mins[C + c]

    @cuda.jit
    def merge_kernel(blocks, part_n, part_moments, part_min, count, nonfinite, fsum, fsumsq, vmin, vmax):
        c = cuda.grid(1)
        if c < C:
            t_n = int64(0)
            t_mean = float64(0)
            t_m2 = float64(0)
            t_bad = int64(0)
            t_min = vmin[c]
            t_max = vmax[c]
            for b in range(blocks):
                t_bad += part_n[b, C + c]
                if part_n[b, c] > 0:
                    t_n, t_mean, t_m2 = _chan(t_n, t_mean, t_m2, part_n[b, c], part_moments[b, c], part_moments[b, C + c])
                    t_min = min(t_min, part_min[b, c])
                    t_max = max(t_max, -part_min[b, C + c])
            count[c] += t_n
            nonfinite[c] += t_bad
            fsum[c] += float64(t_n) * t_mean
            fsumsq[c] += t_m2 + float64(t_n) * t_mean * t_mean
            vmin[c] = t_min
            vmax[c] = t_max

    return partial_kernel, merge_kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None):
    """Add the statistics of ``x`` into ``acc`` via Welford/Chan (module docstring)."""
    refuse_extras(NAME, histogram=histogram, cross=cross, per_image=per_image)
    if is_integer(dtype_tag):
        tree.reduce(x, layout, dtype_tag, acc, stream=stream, launch=launch, run=run)
        return
    prepared = prepare_pixels(x, layout, dtype_tag, acc, stream, launch)
    if prepared is None:
        return
    x, channels, total, blocks, threads = prepared
    partial_kernel, merge_kernel = _build(dtype_tag, layout, channels, threads, run)
    part_n = acc.scratch("welford_n", (blocks, 2 * channels), "int64")
    part_moments = acc.scratch("welford_moments", (blocks, 2 * channels), "float64")
    part_min = acc.scratch("welford_min", (blocks, 2 * channels), "float64")
    partial_kernel[blocks, threads, stream](x, acc.shift, part_n, part_moments, part_min)
    merge_kernel[1, channels, stream](
        blocks, part_n, part_moments, part_min, acc.count, acc.nonfinite, acc.fsum, acc.fsumsq, acc.vmin, acc.vmax
    )
