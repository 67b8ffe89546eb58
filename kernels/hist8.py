"""Strategy ``hist8``: exact per-channel 256-bin histograms of uint8 data.

Each block keeps a private ``int32[C, 256]`` histogram in shared memory (shared-memory atomics,
so contention stays inside the block), walks its grid-stride slice of pixels, then flushes the
non-zero bins into a per-launch ``int64[C, 256]`` scratch histogram with one global atomic per
bin. A second one-thread-per-channel kernel adds the scratch histogram into ``acc.hist`` (when
asked for), derives the launch's count, sum, sum of squares, min and max from it exactly, and
zeroes the scratch for the next launch. uint8 data only; no non-finite values exist there.
"""

from __future__ import annotations

import functools

from numba import cuda, float64, int32, int64

from ._blocks import make_hist_ops
from ._common import (
    HIST_BINS,
    grid_next,
    grid_start,
    make_decode,
    make_load,
    prepare_pixels,
    refuse_extras,
)

NAME = "hist8"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset({"histogram"})

# Shared counters are int32: a block must see fewer than this many pixels per launch.
_MAX_PIXELS_PER_BLOCK = 1 << 30


@functools.lru_cache(maxsize=None)
def _build(layout, channels, threads):
    C = channels
    BINS = HIST_BINS
    HS = C * HIST_BINS
    CP = layout == "CP"
    decode = make_decode("uint8")
    load = make_load(layout)
    hist_zero, hist_flush = make_hist_ops(C, threads)

    @cuda.jit
    def hist_kernel(x, scratch):
        tid = cuda.threadIdx.x
        private = cuda.shared.array(HS, int32)
        hist_zero(private, tid)
        images = x.shape[0]
        pixels = x.shape[2] if CP else x.shape[1]
        total = images * pixels
        p, stride, n, l, step_n, step_l = grid_start(pixels)
        while p < total:
            for c in range(C):
                cuda.atomic.add(private, c * BINS + decode(load(x, n, c, l)), int32(1))
            p += stride
            n, l = grid_next(n, l, step_n, step_l, pixels)
        hist_flush(private, tid, scratch)

    @cuda.jit
    def finish_kernel(scratch, keep_hist, hist, count, isum, isumsq, vmin, vmax):
        c = cuda.grid(1)
        if c < C:
            t_count = int64(0)
            t_sum = int64(0)
            t_sumsq = int64(0)
            lowest = int64(-1)
            highest = int64(-1)
            for b in range(BINS):
                h = scratch[c, b]
                if h > 0:
                    if keep_hist:
                        hist[c, b] += h
                    t_count += h
                    t_sum += h * b
                    t_sumsq += h * (b * b)
                    if lowest < 0:
                        lowest = b
                    highest = b
                    scratch[c, b] = 0
            if t_count > 0:
                count[c] += t_count
                isum[c] += t_sum
                isumsq[c] += t_sumsq
                vmin[c] = min(vmin[c], float64(lowest))
                vmax[c] = max(vmax[c], float64(highest))

    return hist_kernel, finish_kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None):
    """Histogram ``x`` (uint8) and add count/sums/min/max (and the histogram if asked) into ``acc``.

    ``run`` is accepted for the common signature and unused (integer input needs no float runs).
    """
    if dtype_tag != "uint8":
        raise ValueError(f"strategy 'hist8' needs uint8 input, got {dtype_tag}; use 'atomic' or 'tree'")
    refuse_extras(NAME, cross=cross, per_image=per_image)
    if histogram and not acc.histogram:
        raise ValueError("histogram=True needs Accumulators made with histogram=True")
    prepared = prepare_pixels(x, layout, dtype_tag, acc, stream, launch)
    if prepared is None:
        return
    x, channels, total, blocks, threads = prepared
    blocks = max(blocks, -(-total // (_MAX_PIXELS_PER_BLOCK - 1)))
    hist_kernel, finish_kernel = _build(layout, channels, threads)
    scratch = acc.scratch("hist8_launch", (channels, HIST_BINS), "int64")
    hist_kernel[blocks, threads, stream](x, scratch)
    finish_kernel[1, channels, stream](
        scratch, bool(histogram), acc.hist, acc.count, acc.isum, acc.isumsq, acc.vmin, acc.vmax
    )
