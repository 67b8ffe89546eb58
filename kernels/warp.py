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

from numba import cuda, float64, int64

from ._common import (
    device_function,
    is_integer,
    prepare_pixels,
    refuse_extras,
    simulator_enabled,
)
from ._thread import make_accumulate, make_add_totals, types_for

NAME = "warp"
SUPPORTS_SIMULATOR = False
SUPPORTS = frozenset()

WARP_SIZE = 32
_FULL_MASK = 0xFFFFFFFF


@device_function
def _warp_sum(value):
    offset = WARP_SIZE // 2
    while offset > 0:
        value += cuda.shfl_down_sync(_FULL_MASK, value, offset)
        offset //= 2
    return value


@device_function
def _warp_min(value):
    offset = WARP_SIZE // 2
    while offset > 0:
        value = min(value, cuda.shfl_down_sync(_FULL_MASK, value, offset))
        offset //= 2
    return value


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads, run=None):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    TPB = threads
    WARPS = TPB // WARP_SIZE
    SLOTS = WARPS * 2 * C
    BT = types_for(dtype_tag)[1]
    accumulate_plain = make_accumulate(dtype_tag, layout, C, run=run)[1]
    add_totals = make_add_totals(C)

    @cuda.jit
    def kernel(x, shift, count, nonfinite, out_sum, out_sumsq, vmin, vmax):
        tid = cuda.threadIdx.x
        lane = tid % WARP_SIZE
        warp = tid // WARP_SIZE
        sh_tally = cuda.shared.array(SLOTS, int64)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_min = cuda.shared.array(SLOTS, float64)
        tally = cuda.local.array(C2, int64)
        bank = cuda.local.array(C2, BT)
        mins = cuda.local.array(C2, float64)
        accumulate_plain(x, shift, tally, bank, mins)

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
                add_totals(tally, bank, mins, count, nonfinite, out_sum, out_sumsq, vmin, vmax)

    return kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None):
    """Add the statistics of ``x`` into ``acc`` with warp shuffles (real GPU only)."""
    if simulator_enabled():
        raise RuntimeError(
            "strategy 'warp' needs a real GPU: numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) has "
            "no warp shuffles; use 'atomic' or 'tree' under the simulator"
        )
    refuse_extras(NAME, histogram=histogram, cross=cross, per_image=per_image)
    prepared = prepare_pixels(x, layout, dtype_tag, acc, stream, launch)
    if prepared is None:
        return
    x, channels, total, blocks, threads = prepared
    if threads % WARP_SIZE:
        raise ValueError(f"strategy 'warp' needs a multiple of {WARP_SIZE} threads per block, got {threads}")
    kernel = _build(dtype_tag, layout, channels, threads, run)
    out_sum, out_sumsq = (acc.isum, acc.isumsq) if is_integer(dtype_tag) else (acc.fsum, acc.fsumsq)
    kernel[blocks, threads, stream](x, acc.shift, acc.count, acc.nonfinite, out_sum, out_sumsq, acc.vmin, acc.vmax)
