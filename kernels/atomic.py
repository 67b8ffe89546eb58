"""Strategy ``atomic``: grid-stride loop, per-thread registers, one atomic per block per channel.

Each thread walks the pixels ``gid, gid + stride, ...`` of the flattened [N, L] pixel grid,
accumulating in registers (rule in ``_common``). The block then combines its threads' values
with a shared-memory tree and thread 0 adds the block's totals into the :class:`Accumulators`
with one atomic per quantity per channel. The only strategy that also computes co-moments
(``cross=True``) and per-image sums (``per_image=PerImage``); it also fuses the uint8
histogram (privatized per block in shared memory).

With ``per_image`` the loop is organised block-per-image instead (block b reduces images b,
b + gridDim, ...), so each image's sums are combined in the block and stored without atomics.

Float totals are not bitwise reproducible run to run (atomic order); integer totals are exact.
"""

from __future__ import annotations

import functools

from numba import cuda, float64, int32, int64

from ._common import (
    HIST_BINS,
    SHARED_SLOTS,
    as_device_array,
    check_input,
    is_integer,
    launch_config,
    make_block_ops,
    pixels_per_image,
)
from ._thread import make_thread_ops, run_length, types_for

NAME = "atomic"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset({"histogram", "cross", "per_image"})

# Shared-memory histogram counters are int32: a block must see fewer than this many pixels.
_MAX_PIXELS_PER_BLOCK = 1 << 30


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads, histogram, cross, per_image):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    TPB = threads
    RT, BT, MT = types_for(dtype_tag)
    HIST = bool(histogram)
    HS = C * HIST_BINS if HIST else 1
    BINS = HIST_BINS
    CROSS = bool(cross)
    CC = C * C if CROSS else 1
    PER_IMAGE = bool(per_image)
    CP = layout == "CP"
    RUN = run_length(dtype_tag)
    SLOTS = SHARED_SLOTS
    init, visit, flush, as_mins = make_thread_ops(dtype_tag, layout, C, HIST, CROSS, PER_IMAGE)
    block_sum, block_min = make_block_ops(TPB)

    @cuda.jit
    def kernel(x, shift, count, nonfinite, out_sum, out_sumsq, vmin, vmax, hist, out_cross,
               img_count, img_sum, img_sumsq):
        tid = cuda.threadIdx.x
        sh_count = cuda.shared.array(SLOTS, int64)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_ext = cuda.shared.array(SLOTS, float64)
        sh_hist = cuda.shared.array(HS, int32)
        hi = cuda.local.array(C, RT)
        lo = cuda.local.array(C, RT)
        tally = cuda.local.array(C2, int64)
        run = cuda.local.array(C2, RT)
        bank = cuda.local.array(C2, BT)
        extreme = cuda.local.array(C2, MT)
        current = cuda.local.array(C, RT)
        current_ok = cuda.local.array(C, int32)
        cross_run = cuda.local.array(CC, RT)
        cross_bank = cuda.local.array(CC, BT)
        img_tally = cuda.local.array(C, int64)
        img_run = cuda.local.array(C2, RT)
        img_bank = cuda.local.array(C2, BT)
        mins = cuda.local.array(C2, float64)
        init(shift, hi, lo, tally, run, bank, extreme, cross_run, cross_bank, img_tally, img_run, img_bank)
        if HIST:
            i = tid
            while i < HS:
                sh_hist[i] = 0
                i += TPB
            cuda.syncthreads()

        images = x.shape[0]
        pixels = x.shape[2] if CP else x.shape[1]
        since_flush = 0
        if PER_IMAGE:
            n = cuda.blockIdx.x
            while n < images:
                l = tid
                while l < pixels:
                    visit(x, n, l, hi, lo, tally, run, extreme, current, current_ok, cross_run,
                          img_tally, img_run, sh_hist)
                    since_flush += 1
                    if since_flush == RUN:
                        flush(run, bank, cross_run, cross_bank, img_run, img_bank)
                        since_flush = 0
                    l += TPB
                flush(run, bank, cross_run, cross_bank, img_run, img_bank)
                since_flush = 0
                block_sum(sh_count, tid, img_tally, C)
                block_sum(sh_sum, tid, img_bank, 2 * C)
                if tid == 0:
                    for c in range(C):
                        img_count[n, c] += img_tally[c]
                        img_sum[n, c] += float64(img_bank[c])
                        img_sumsq[n, c] += float64(img_bank[C + c])
                for c in range(C):
                    img_tally[c] = 0
                    img_bank[c] = 0
                    img_bank[C + c] = 0
                n += cuda.gridDim.x
        else:
            total = images * pixels
            stride = cuda.gridDim.x * TPB
            p = cuda.blockIdx.x * TPB + tid
            if pixels > 0:
                n = p // pixels
                l = p - n * pixels
                step_n = stride // pixels
                step_l = stride - step_n * pixels
                while p < total:
                    visit(x, n, l, hi, lo, tally, run, extreme, current, current_ok, cross_run,
                          img_tally, img_run, sh_hist)
                    since_flush += 1
                    if since_flush == RUN:
                        flush(run, bank, cross_run, cross_bank, img_run, img_bank)
                        since_flush = 0
                    p += stride
                    n += step_n
                    l += step_l
                    if l >= pixels:
                        l -= pixels
                        n += 1
        flush(run, bank, cross_run, cross_bank, img_run, img_bank)

        as_mins(extreme, mins)
        block_sum(sh_count, tid, tally, 2 * C)
        block_sum(sh_sum, tid, bank, 2 * C)
        block_min(sh_ext, tid, mins, 2 * C)
        if CROSS:
            block_sum(sh_sum, tid, cross_bank, CC)
        if tid == 0:
            for c in range(C):
                if tally[c] > 0:
                    cuda.atomic.add(count, c, tally[c])
                    cuda.atomic.add(out_sum, c, bank[c])
                    cuda.atomic.add(out_sumsq, c, bank[C + c])
                    cuda.atomic.min(vmin, c, mins[c])
                    cuda.atomic.max(vmax, c, -mins[C + c])
                if tally[C + c] > 0:
                    cuda.atomic.add(nonfinite, c, tally[C + c])
            if CROSS:
                for i in range(C):
                    for j in range(i, C):
                        cuda.atomic.add(out_cross, (i, j), cross_bank[i * C + j])
        if HIST:
            cuda.syncthreads()
            i = tid
            while i < HS:
                h = sh_hist[i]
                if h > 0:
                    cuda.atomic.add(hist, (i // BINS, i % BINS), int64(h))
                i += TPB

    return kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None):
    """Add the statistics of ``x`` into ``acc`` in one pass (see module docstring).

    ``per_image`` is a :class:`~gpustats.kernels.accumulators.PerImage` with one row per image
    of ``x`` (``acc.per_image(x.shape[0])``). ``launch=(blocks, threads)`` overrides the launch
    configuration (tests, benchmarks).
    """
    x = as_device_array(x, stream)
    channels = check_input(x, layout, dtype_tag, acc)
    if histogram and (dtype_tag != "uint8" or not acc.histogram):
        raise ValueError("histogram=True needs uint8 input and Accumulators made with histogram=True")
    if cross and not acc.has_cross:
        raise ValueError("cross=True needs Accumulators made with cross=True")
    images = int(x.shape[0])
    pixels = pixels_per_image(x, layout)
    if per_image is not None and (per_image.images != images or per_image.channels != channels):
        raise ValueError(
            f"per_image outputs are [{per_image.images}, {per_image.channels}] but the input has "
            f"{images} images of {channels} channels; make them with acc.per_image({images})"
        )
    if images * pixels == 0:
        return
    if per_image is not None:
        blocks, threads = launch_config(images * 1, launch)
        blocks = min(blocks, images)
    else:
        blocks, threads = launch_config(images * pixels, launch)
    if histogram:
        per_block = -(-images * pixels // blocks)
        if per_image is not None:
            per_block = -(-images // blocks) * pixels
        if per_block >= _MAX_PIXELS_PER_BLOCK:
            blocks = -(-images * pixels // (_MAX_PIXELS_PER_BLOCK - 1))
            if per_image is not None:
                blocks = images
    kernel = _build(dtype_tag, layout, channels, threads, bool(histogram), bool(cross), per_image is not None)
    integer = is_integer(dtype_tag)
    out_sum, out_sumsq = (acc.isum, acc.isumsq) if integer else (acc.fsum, acc.fsumsq)
    if per_image is None:
        dummy = acc.scratch("per_image_placeholder", (1, 1), "int64")
        dummy_f = acc.scratch("per_image_placeholder_f", (1, 1), "float64")
        img = (dummy, dummy_f, dummy_f)
    else:
        img = (per_image.img_count, per_image.img_sum, per_image.img_sumsq)
    kernel[blocks, threads, stream](
        x, acc.shift, acc.count, acc.nonfinite, out_sum, out_sumsq, acc.vmin, acc.vmax, acc.hist, acc.cross, *img
    )
