"""The CPU backend's numba loops for integer data: uint8 histograms, vectorized exact uint8 sums,
exact per-image rows, and rows of RGB pixels held 4 bytes each (RGBX).

torch has no fast exact reduction for uint8 on the CPU (``x.float()`` then ``mean``/``std`` moves
4x the bytes and runs at ~0.2 GB/s on two cores), so these loops read each byte once.

One file, so that numba's on-disk cache of each loop is invalidated with the code it inlines
(numba checks only the cached function's own file).

* :func:`hist_u8`: per-channel 256-bin histograms (uint32 bins per thread, flushed into int64);
* :func:`u8_sums`: exact count, sum, sum of squares, min and max in 16 uint32 lanes per channel,
  which the compiler vectorizes (twice the histogram's speed), for moments without a histogram;
* :func:`int_rows`: exact per-image (row) totals and cross products of any integer dtype; for uint8
  a row's totals come from its histogram and the RGB cross products ride along the histogram's
  pass (:func:`_u8_row`), chosen by dtype at compile time; :func:`u8_sum_rows`: uint8 rows without
  histogram or co-moments, from the vectorized sums;
* :func:`rgbx_rows_here`: those rows with co-moments for RGB pixels held 4 bytes each (a decoder's
  memory read in place).

Each loop runs in the calling thread and does the share ``t`` of ``nthreads`` of the work it is
given (``0, 1``: all of it); :func:`gpustats.backends.cpu.in_threads` runs the shares in Python
threads (the loops release the GIL). Layout and ``cp`` as in :mod:`.cpu_float_loops`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._cpu_jit import BLOCK, cached_jit, dims

__all__ = ["hist_u8", "int_rows", "rgbx_rows_here", "u8_sum_rows", "u8_sums"]


@njit(nogil=True)
def _hist_block(x, n, cp, start, stop, channels, p):  # pragma: no cover - compiled
    """Add pixels ``start:stop`` of row ``n`` into ``p`` ([C, 256] uint32).

    The loops run over slices from 0: numba then knows the index is not negative and emits no
    wrap-around check (``range(start, stop)`` on ``x`` itself ran at half the speed)."""
    if cp:
        for c in range(channels):
            row = x[n, c, start:stop]
            pc = p[c]
            for i in range(row.shape[0]):
                pc[row[i]] += 1
    elif channels == 3:
        seg = x[n, start:stop]
        for i in range(seg.shape[0]):
            p[0, seg[i, 0]] += 1
            p[1, seg[i, 1]] += 1
            p[2, seg[i, 2]] += 1
    else:
        seg = x[n, start:stop]
        for i in range(seg.shape[0]):
            for c in range(channels):
                p[c, seg[i, c]] += 1


@njit(nogil=True)
def _hist_thread(x, cp, t, nthreads, items, nblocks, length, channels, out):  # pragma: no cover - compiled
    """Thread ``t``'s share of :func:`hist_u8`'s work items into ``out`` ([C, 256] int64), counted in
    uint32 bins (fast, small) that are flushed every 16 blocks, long before they could overflow."""
    p = np.zeros((channels, 256), np.uint32)
    k = 0
    for item in range(t, items, nthreads):
        start = (item % nblocks) * BLOCK
        _hist_block(x, item // nblocks, cp, start, min(start + BLOCK, length), channels, p)
        k += 1
        if k == 16 or item + nthreads >= items:
            k = 0
            for c in range(channels):
                for b in range(256):
                    out[c, b] += p[c, b]
                    p[c, b] = 0


@cached_jit(nogil=True)
def hist_u8(x, cp, hist, t, nthreads):  # pragma: no cover - compiled
    """Per-channel 256-bin histograms of uint8 ``x`` added into ``hist`` ([C, 256] int64): the share of
    thread ``t`` of ``nthreads`` (work items ``t, t + nthreads, ...``; ``0, 1``: all of it). Each thread
    adds into its own ``hist`` (:func:`gpustats.backends.cpu.in_threads`)."""
    n_rows, channels, length = dims(x, cp)
    nblocks = (length + BLOCK - 1) // BLOCK
    _hist_thread(x, cp, t, nthreads, n_rows * nblocks, nblocks, length, channels, hist)


@njit(nogil=True)
def _u8_sums_flat(flat, channels, out, first):  # pragma: no cover - compiled
    """Add the exact count, sum, sum of squares, min and max of pixel-interleaved uint8 ``flat``
    (value ``i`` in channel ``first + i % channels``) into ``out`` ([5, C] int64: rows count, s, q, min,
    max). One signature for both layouts (``first``: the channel of a channel-plane), so numba compiles
    this loop, the slowest of all to compile, once.

    16 lanes per channel of uint32 partial sums (at most 32,768 steps: 32,768 * 255**2 < 2**32) and
    uint8 extremes, which the compiler turns into vector instructions: twice the histogram's speed."""
    width = 16 * channels
    steps = flat.shape[0] // width
    acc_s = np.zeros(width, np.uint32)
    acc_q = np.zeros(width, np.uint32)
    lo = np.full(width, 255, np.uint8)
    hi = np.zeros(width, np.uint8)
    done = 0
    while done < steps:
        m = min(steps - done, 32768)
        blk = flat[done * width:(done + m) * width]
        for j in range(m):
            row = blk[j * width:(j + 1) * width]
            for k in range(width):
                v = row[k]
                acc_s[k] += np.uint32(v)
                acc_q[k] += np.uint32(v) * np.uint32(v)
                lo[k] = min(lo[k], v)
                hi[k] = max(hi[k], v)
        for k in range(width):
            out[1, first + k % channels] += acc_s[k]
            out[2, first + k % channels] += acc_q[k]
            acc_s[k] = 0
            acc_q[k] = 0
        done += m
    if steps:
        for k in range(width):
            c = first + k % channels
            out[3, c] = min(out[3, c], lo[k])
            out[4, c] = max(out[4, c], hi[k])
    tail = flat[steps * width:]
    for i in range(tail.shape[0]):
        c = first + i % channels
        v = np.int64(tail[i])
        out[1, c] += v
        out[2, c] += v * v
        out[3, c] = min(out[3, c], v)
        out[4, c] = max(out[4, c], v)
    for c in range(channels):
        out[0, first + c] += flat.shape[0] // channels


@njit(nogil=True)
def _sums_thread(x, cp, t, nthreads, items, nblocks, length, channels, out):  # pragma: no cover - compiled
    """Thread ``t``'s share of :func:`u8_sums` (work items as in :func:`hist_u8`) into ``out``."""
    for item in range(t, items, nthreads):
        n = item // nblocks
        start = (item % nblocks) * BLOCK
        stop = min(start + BLOCK, length)
        for c in range(channels if cp else 1):  # one call of the loop (it is inlined: compiled once)
            flat = x[n, c, start:stop] if cp else x[n, start:stop].reshape(-1)
            _u8_sums_flat(flat, 1 if cp else channels, out, c)


@cached_jit(nogil=True)
def u8_sums(x, cp, out, t, nthreads):  # pragma: no cover - compiled
    """Exact per-channel count, sum, sum of squares, min and max of C-contiguous uint8 ``x`` added into
    ``out`` ([5, C] int64; min/max rows start at 255/0, or hold earlier values): thread ``t``'s share
    of ``nthreads``, as in :func:`hist_u8`."""
    n_rows, channels, length = dims(x, cp)
    nblocks = (length + BLOCK - 1) // BLOCK
    _sums_thread(x, cp, t, nthreads, n_rows * nblocks, nblocks, length, channels, out)


@njit(nogil=True)
def _u8_row(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist):  # pragma: no cover - compiled
    """One uint8 row of :func:`int_rows` (with a histogram or co-moments; :func:`u8_sum_rows` makes rows
    without them): its histogram (the fast loop of :func:`hist_u8`) gives count, sums, min and max
    exactly; covariance adds one pass for the products of different channels."""
    out = hist[n] if want_hist else np.zeros((channels, 256), np.int64)
    fused = want_cross and channels == 3 and not cp
    if fused:
        q01, q02, q12 = _u8_hist_products3(x[n], out)
    else:
        nblocks = (length + BLOCK - 1) // BLOCK
        _hist_thread(x[n:n + 1], cp, 0, 1, nblocks, nblocks, length, channels, out)
    _row_from_hist(out, n, length, count, total, total_sq, vmin, vmax)
    if want_cross and channels == 3:  # RGB: the three products in one pass
        if not fused:
            q01, q02, q12 = _u8_products3(x[n, 0], x[n, 1], x[n, 2])
        _set_cross3(cross, n, total_sq, q01, q02, q12)
    elif want_cross:
        for a in range(channels):
            cross[n, a, a] = total_sq[n, a]
            for b in range(a + 1, channels):
                q = _u8_products(x[n, a] if cp else x[n, :, a], x[n, b] if cp else x[n, :, b])
                cross[n, a, b] = q
                cross[n, b, a] = q


@njit(nogil=True)
def _row_from_hist(out, n, length, count, total, total_sq, vmin, vmax):  # pragma: no cover - compiled
    """Row ``n``'s exact count, sums, min and max from its histogram ``out`` ([C, 256]): the rule of
    :func:`gpustats.backends.int_state.hist_rows`, compiled into the histogram's pass (numpy's, after
    the pass, cost as much again on 32x32 images); the routes' states are held bitwise equal by tests."""
    for c in range(out.shape[0]):
        s = 0
        q = 0
        lo = 1 << 40
        hi = -(1 << 40)
        for b in range(256):
            k = out[c, b]
            if k:
                lo = min(lo, b)
                hi = b
                s += k * b
                q += k * b * b
        count[n, c] = length
        total[n, c] = s
        total_sq[n, c] = q
        vmin[n, c] = lo
        vmax[n, c] = hi


@njit(nogil=True)
def _set_cross3(cross, n, total_sq, q01, q02, q12):  # pragma: no cover - compiled
    cross[n, 0, 0], cross[n, 1, 1], cross[n, 2, 2] = total_sq[n, 0], total_sq[n, 1], total_sq[n, 2]
    cross[n, 0, 1] = cross[n, 1, 0] = q01
    cross[n, 0, 2] = cross[n, 2, 0] = q02
    cross[n, 1, 2] = cross[n, 2, 1] = q12


@cached_jit(nogil=True)
def rgbx_rows_here(x, want_hist, count, total, total_sq, vmin, vmax, cross, hist):  # pragma: no cover - compiled
    """:func:`int_rows` (in this thread) with co-moments for RGB images held 4 bytes a pixel (``x``: [N, L, 4] uint8, the
    fourth byte not a channel: Pillow's own layout, read in place); the outputs have 3 channels."""
    for n in range(x.shape[0]):
        out = hist[n] if want_hist else np.zeros((3, 256), np.int64)
        q01, q02, q12 = _u8_hist_products3(x[n], out)  # reads bytes 0..2 of each pixel
        _row_from_hist(out, n, x.shape[1], count, total, total_sq, vmin, vmax)
        _set_cross3(cross, n, total_sq, q01, q02, q12)


@njit(nogil=True)
def _u8_products(u, v):  # pragma: no cover - compiled
    """Exact sum of ``u * v`` over two uint8 vectors: uint32 partial sums per 65536 values (at most
    65536 * 255**2 < 2**32), which the compiler vectorizes, added into an int64."""
    total = 0
    for start in range(0, u.shape[0], BLOCK):
        a = u[start:start + BLOCK]
        b = v[start:start + BLOCK]
        part = np.uint32(0)
        for i in range(a.shape[0]):
            part += np.uint32(a[i]) * np.uint32(b[i])
        total += np.int64(part)
    return total


@njit(nogil=True)
def _u8_products3(r, g, b):  # pragma: no cover - compiled
    """:func:`_u8_products` of ``(r, g)``, ``(r, b)`` and ``(g, b)`` in one pass."""
    q01 = q02 = q12 = 0
    for start in range(0, r.shape[0], BLOCK):
        rr = r[start:start + BLOCK]
        gg = g[start:start + BLOCK]
        bb = b[start:start + BLOCK]
        p01 = p02 = p12 = np.uint32(0)
        for i in range(rr.shape[0]):
            vr = np.uint32(rr[i])
            vg = np.uint32(gg[i])
            vb = np.uint32(bb[i])
            p01 += vr * vg
            p02 += vr * vb
            p12 += vg * vb
        q01 += np.int64(p01)
        q02 += np.int64(p02)
        q12 += np.int64(p12)
    return q01, q02, q12


@njit(nogil=True)
def _u8_hist_products3(seg, out):  # pragma: no cover - compiled
    """Histogram ([3, 256] int64 ``out``) and the products of :func:`_u8_products3` of an [L, 3] image (or
    [L, 4]: the fourth value of each pixel is not read), in one pass (the products ride along the
    histogram's increments)."""
    q01 = q02 = q12 = 0
    p = np.zeros((3, 256), np.uint32)
    for start in range(0, seg.shape[0], BLOCK):
        blk = seg[start:start + BLOCK]
        p01 = p02 = p12 = np.uint32(0)
        for i in range(blk.shape[0]):
            vr = blk[i, 0]
            vg = blk[i, 1]
            vb = blk[i, 2]
            p[0, vr] += 1
            p[1, vg] += 1
            p[2, vb] += 1
            p01 += np.uint32(vr) * np.uint32(vg)
            p02 += np.uint32(vr) * np.uint32(vb)
            p12 += np.uint32(vg) * np.uint32(vb)
        q01 += np.int64(p01)
        q02 += np.int64(p02)
        q12 += np.int64(p12)
        for c in range(3):  # flushed every block: bins stay far below 2**32
            for v in range(256):
                out[c, v] += p[c, v]
                p[c, v] = 0
    return q01, q02, q12


@njit(inline="always", nogil=True)
def _int_row(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist):  # pragma: no cover - compiled
    """One row (image) ``n`` of :func:`int_rows`."""
    for c in range(channels):
        s = 0
        q = 0
        lo = 1 << 40
        hi = -(1 << 40)
        for i in range(length):
            v = np.int64(x[n, c, i] if cp else x[n, i, c])
            s += v
            q += v * v
            lo = min(lo, v)
            hi = max(hi, v)
            if want_hist:
                hist[n, c, v] += 1
        count[n, c] = length
        total[n, c] = s
        total_sq[n, c] = q
        vmin[n, c] = lo
        vmax[n, c] = hi
    if want_cross and channels == 3:  # RGB: all six products in one pass, in registers
        q00 = q01 = q02 = q11 = q12 = q22 = 0
        for i in range(length):
            r = np.int64(x[n, 0, i] if cp else x[n, i, 0])
            g = np.int64(x[n, 1, i] if cp else x[n, i, 1])
            b = np.int64(x[n, 2, i] if cp else x[n, i, 2])
            q00 += r * r
            q01 += r * g
            q02 += r * b
            q11 += g * g
            q12 += g * b
            q22 += b * b
        cross[n, 0, 0], cross[n, 1, 1], cross[n, 2, 2] = q00, q11, q22
        cross[n, 0, 1] = cross[n, 1, 0] = q01
        cross[n, 0, 2] = cross[n, 2, 0] = q02
        cross[n, 1, 2] = cross[n, 2, 1] = q12
    elif want_cross:
        for a in range(channels):
            for b in range(a, channels):
                q = _int_products(x[n, a] if cp else x[n, :, a], x[n, b] if cp else x[n, :, b])
                cross[n, a, b] = q
                cross[n, b, a] = q


@njit(nogil=True)
def _int_products(u, v):  # pragma: no cover - compiled
    """Exact sum of ``u * v`` over two integer vectors, in int64."""
    q = 0
    for i in range(u.shape[0]):
        q += np.int64(u[i]) * np.int64(v[i])
    return q


def _row(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist):
    """One row of :func:`int_rows`, chosen by dtype when numba compiles the caller: uint8 rows come from
    their histogram or vectorized sums (:func:`_u8_row`), other integers from :func:`_int_row`."""


@overload(_row, jit_options={"nogil": True})
def _row_for_dtype(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross,
                   hist):  # pragma: no cover - compile-time dispatch
    row = _u8_row if x.dtype == types.uint8 else _int_row

    def impl(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist):
        row(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist)

    return impl


@cached_jit(nogil=True)
def u8_sum_rows(x, cp, count, total, total_sq, vmin, vmax, t, nthreads):  # pragma: no cover - compiled
    """Exact per-row count, sum, sum of squares, min and max of uint8 ``x`` (per-image statistics without
    a histogram or co-moments): :func:`u8_sums`' vectorized loop row by row, rows as in :func:`int_rows`.
    Its own loop, so that a call with a histogram or co-moments does not compile this one."""
    n_rows, channels, length = dims(x, cp)
    nblocks = (length + BLOCK - 1) // BLOCK
    sums = np.zeros((5, channels), np.int64)
    for n in range(t, n_rows, nthreads):
        sums[:] = 0
        sums[3, :] = 255
        _sums_thread(x[n:n + 1], cp, 0, 1, nblocks, nblocks, length, channels, sums)
        for c in range(channels):
            count[n, c] = length
            total[n, c] = sums[1, c]
            total_sq[n, c] = sums[2, c]
            vmin[n, c] = sums[3, c] if length else 1 << 40
            vmax[n, c] = sums[4, c] if length else -(1 << 40)


@cached_jit(nogil=True)
def int_rows(x, cp, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist, t, nthreads):  # pragma: no cover
    """Exact per-row totals: all outputs are [N, C] (cross: [N, C, C]) int64; rows ``t, t + nthreads, ...``
    (thread ``t`` of ``nthreads``; each row is written by one thread only).

    With ``want_hist`` (uint8 input) the 256-bin histograms ([N, C, 256]) are built in the same
    loop as the sums. Per-channel scalar accumulators keep this loop in registers: a fused
    all-channels-per-pixel loop with array accumulators measured 2.5x slower.
    """
    n_rows, channels, length = dims(x, cp)
    for n in range(t, n_rows, nthreads):
        _row(x, n, cp, channels, length, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist)
