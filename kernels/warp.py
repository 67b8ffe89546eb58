"""Strategy ``warp``: warp-shuffle reduction (real GPU only).

Same grid-stride register accumulation as ``atomic`` (rule in ``_common``), but the block
combine uses ``cuda.shfl_down_sync`` inside each warp (no shared memory, no barriers), then the
warps' leaders meet in a small shared array, warp 0 shuffles those together, and lane 0 adds
the block's totals into the accumulators with one atomic per quantity per channel.

numba's CUDA simulator has no warp shuffles, so this strategy refuses to run there; the tests
for it are marked ``gpu``. Histograms, co-moments and per-image sums: use ``atomic``.
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float64, int32, int64

from ._common import (
    as_device_array,
    check_input,
    is_integer,
    launch_config,
    not_supported,
    pixels_per_image,
    simulator_enabled,
)
from ._thread import make_thread_ops, run_length, types_for

NAME = "warp"
SUPPORTS_SIMULATOR = False
SUPPORTS = frozenset()

WARP_SIZE = 32
_FULL_MASK = 0xFFFFFFFF


@cuda.jit(device=True, inline=True)
def _warp_sum(value):
    offset = WARP_SIZE // 2
    while offset > 0:
        value += cuda.shfl_down_sync(_FULL_MASK, value, offset)
        offset //= 2
    return value


@cuda.jit(device=True, inline=True)
def _warp_min(value):
    offset = WARP_SIZE // 2
    while offset > 0:
        value = min(value, cuda.shfl_down_sync(_FULL_MASK, value, offset))
        offset //= 2
    return value


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    TPB = threads
    WARPS = TPB // WARP_SIZE
    SLOTS = WARPS * 2 * C
    RT, BT, MT = types_for(dtype_tag)
    CP = layout == "CP"
    RUN = run_length(dtype_tag)
    init, visit, flush, as_mins = make_thread_ops(dtype_tag, layout, C, False, False, False)

    @cuda.jit
    def kernel(x, shift, count, nonfinite, out_sum, out_sumsq, vmin, vmax):
        tid = cuda.threadIdx.x
        lane = tid % WARP_SIZE
        warp = tid // WARP_SIZE
        sh_tally = cuda.shared.array(SLOTS, int64)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_min = cuda.shared.array(SLOTS, float64)
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

        # every lane of every warp is here: full-mask shuffles are safe
        for k in range(2 * C):
            t = _warp_sum(tally[k])
            s = _warp_sum(bank[k])
            m = _warp_min(mins[k])
            if lane == 0:
                sh_tally[warp * 2 * C + k] = t
                sh_sum[warp * 2 * C + k] = s
                sh_min[warp * 2 * C + k] = m
        cuda.syncthreads()
        if warp == 0:
            for k in range(2 * C):
                t = int64(0)
                s = BT(0)
                m = math.inf
                if lane < WARPS:
                    t = sh_tally[lane * 2 * C + k]
                    s = sh_sum[lane * 2 * C + k]
                    m = sh_min[lane * 2 * C + k]
                t = _warp_sum(t)
                s = _warp_sum(s)
                m = _warp_min(m)
                tally[k] = t
                bank[k] = s
                mins[k] = m
            if lane == 0:
                for c in range(C):
                    if tally[c] > 0:
                        cuda.atomic.add(count, c, tally[c])
                        cuda.atomic.add(out_sum, c, bank[c])
                        cuda.atomic.add(out_sumsq, c, bank[C + c])
                        cuda.atomic.min(vmin, c, mins[c])
                        cuda.atomic.max(vmax, c, -mins[C + c])
                    if tally[C + c] > 0:
                        cuda.atomic.add(nonfinite, c, tally[C + c])

    return kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None):
    """Add the statistics of ``x`` into ``acc`` with warp shuffles (real GPU only)."""
    if simulator_enabled():
        raise RuntimeError(
            "strategy 'warp' needs a real GPU: numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) has "
            "no warp shuffles; use 'atomic' or 'tree' under the simulator"
        )
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
    if threads % WARP_SIZE:
        raise ValueError(f"strategy 'warp' needs a multiple of {WARP_SIZE} threads per block, got {threads}")
    kernel = _build(dtype_tag, layout, channels, threads)
    out_sum, out_sumsq = (acc.isum, acc.isumsq) if is_integer(dtype_tag) else (acc.fsum, acc.fsumsq)
    kernel[blocks, threads, stream](x, acc.shift, acc.count, acc.nonfinite, out_sum, out_sumsq, acc.vmin, acc.vmax)
