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

from ._blocks import SHARED_SLOTS, make_block_ops, make_hist_ops
from ._common import (
    HIST_BINS,
    as_device_array,
    check_input,
    device_function,
    is_integer,
    launch_config,
    pixels_per_image,
)
from ._thread import make_accumulate, make_add_totals, types_for

NAME = "atomic"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset({"histogram", "cross", "per_image"})

# Shared-memory histogram counters are int32: a block must see fewer than this many pixels.
_MAX_PIXELS_PER_BLOCK = 1 << 30


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads, histogram, cross, per_image, run=None):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    BT = types_for(dtype_tag)[1]
    HIST = bool(histogram)
    HS = C * HIST_BINS if HIST else 1
    CROSS = bool(cross)
    CC = C * C if CROSS else 1
    PER_IMAGE = bool(per_image)
    SLOTS = SHARED_SLOTS
    block_sum, _, block_totals = make_block_ops(threads)
    hist_zero, hist_flush = make_hist_ops(C, threads)
    add_totals = make_add_totals(C)

    @device_function
    def image_done(n, img_tally, img_bank, image_out):
        """Combine the block's sums of image ``n`` and store them (block n owns the image: no atomics).
        The bank type is the outputs' (int64 for integer input: exact; float64 for float input)."""
        sh_count, sh_sum, img_count, img_sum, img_sumsq = image_out
        tid = cuda.threadIdx.x
        block_sum(sh_count, tid, img_tally, C)
        block_sum(sh_sum, tid, img_bank, C2)
        if tid == 0:
            for c in range(C):
                img_count[n, c] += img_tally[c]
                img_sum[n, c] += img_bank[c]
                img_sumsq[n, c] += img_bank[C + c]

    accumulate = make_accumulate(dtype_tag, layout, C, HIST, CROSS, image_done if PER_IMAGE else None, run)[0]

    @cuda.jit
    def kernel(x, shift, count, nonfinite, out_sum, out_sumsq, vmin, vmax, hist, out_cross,
               img_count, img_sum, img_sumsq):
        tid = cuda.threadIdx.x
        sh_count = cuda.shared.array(SLOTS, int64)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_ext = cuda.shared.array(SLOTS, float64)
        sh_hist = cuda.shared.array(HS, int32)
        tally = cuda.local.array(C2, int64)
        bank = cuda.local.array(C2, BT)
        mins = cuda.local.array(C2, float64)
        cross_bank = cuda.local.array(CC, BT)
        if HIST:
            hist_zero(sh_hist, tid)
        accumulate(x, shift, tally, bank, mins, cross_bank, sh_hist,
                   (sh_count, sh_sum, img_count, img_sum, img_sumsq))

        block_totals(sh_count, sh_sum, sh_ext, tid, tally, bank, mins, C2)
        if CROSS:
            block_sum(sh_sum, tid, cross_bank, CC)
        if tid == 0:
            add_totals(tally, bank, mins, count, nonfinite, out_sum, out_sumsq, vmin, vmax)
            if CROSS:
                for i in range(C):
                    for j in range(i, C):
                        cuda.atomic.add(out_cross, (i, j), cross_bank[i * C + j])
        if HIST:
            hist_flush(sh_hist, tid, hist)

    return kernel


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None):
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
    kernel = _build(dtype_tag, layout, channels, threads, bool(histogram), bool(cross), per_image is not None, run)
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
