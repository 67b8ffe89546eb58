"""The CPU backend's numba loops for float data (imported on first use, never by ``import gpustats``).

* :func:`float_rows` gives per-image float64 ``(count, mean, M2)`` by two passes over each row (a
  row is one image and stays in cache), plus co-moments; rows are merged with Chan's formula by
  the caller. Non-finite values are counted and left out.
* :func:`hist_float`: a histogram over the user's bins and range, with exact counts at its ends.

The integer loops (uint8 histograms and sums, exact integer rows, RGBX rows) are
:mod:`.cpu_int_loops`. Every loop of both takes a 3-D array ``x`` and a flag ``cp``: ``x`` is
``[N, C, L]`` when ``cp`` else ``[N, L, C]``. No loop opens a numba parallel region: each runs in
the calling thread and does the share ``t`` of ``nthreads`` it is given, and
:func:`gpustats.backends.cpu.in_threads` runs the shares in Python threads (the loops release the
GIL). So numba's threading layer never starts (forking decode workers stays safe, and no parallel
variant of a loop is compiled: the first call compiles each loop once). Inner loops index slices
from 0: numba then proves the index non-negative and drops its wrap-around check (loops over
``range(start, stop)`` on ``x`` itself ran at half the speed).

Compiled code is cached on disk in a per-user folder, never next to these files (:mod:`._cpu_jit`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._cpu_jit import cached_jit, dims

__all__ = ["float_rows", "hist_float"]


@njit(inline="always", nogil=True)
def _float_row(x, n, cp, channels, length, want_cross, count, mean, mean_lo, m2, vmin, vmax, nan, posinf, neginf,
               comoment):  # pragma: no cover - compiled
    """One row (image) ``n`` of :func:`float_rows`; the mean as ``mean + mean_lo`` (a double-double)."""
    for c in range(channels):
        k = 0
        s = 0.0
        lo = math.inf
        hi = -math.inf
        bad_nan = 0
        bad_pos = 0
        bad_neg = 0
        for i in range(length):
            v = np.float64(x[n, c, i] if cp else x[n, i, c])
            if math.isfinite(v):
                k += 1
                s += v
                lo = min(lo, v)
                hi = max(hi, v)
            elif math.isnan(v):
                bad_nan += 1
            elif v > 0:
                bad_pos += 1
            else:
                bad_neg += 1
        mu = s / k if k > 0 else 0.0
        d2 = 0.0
        corr = 0.0
        for i in range(length):
            v = np.float64(x[n, c, i] if cp else x[n, i, c])
            if math.isfinite(v):
                d = v - mu
                d2 += d * d
                corr += d
        # corrected two-pass (Chan, Golub & LeVeque 1983): removes the rounding of mu; the corrected
        # mean is kept as mu + lo exactly (TwoSum), so an offset of 1e8 costs the merges nothing
        lo_part = 0.0
        if k > 0:
            fix = corr / k
            total = mu + fix
            back = total - mu
            lo_part = (mu - (total - back)) + (fix - back)
            mu = total
            d2 -= corr * corr / k
        count[n, c] = k
        mean[n, c] = mu
        mean_lo[n, c] = lo_part
        m2[n, c] = max(d2, 0.0)
        vmin[n, c] = lo
        vmax[n, c] = hi
        nan[n, c] = bad_nan
        posinf[n, c] = bad_pos
        neginf[n, c] = bad_neg
    if want_cross:
        for a in range(channels):
            for b in range(a, channels):
                q = 0.0
                for i in range(length):
                    if cp:
                        va = np.float64(x[n, a, i])
                        vb = np.float64(x[n, b, i])
                    else:
                        va = np.float64(x[n, i, a])
                        vb = np.float64(x[n, i, b])
                    q += (va - mean[n, a]) * (vb - mean[n, b])
                comoment[n, a, b] = q
                comoment[n, b, a] = q


@cached_jit(nogil=True)
def float_rows(x, cp, want_cross, count, mean, mean_lo, m2, vmin, vmax, nan, posinf, neginf, comoment, t,
               nthreads):  # pragma: no cover
    """Per-row float64 (count, mean + mean_lo, M2) by two passes; non-finite values counted and skipped.
    Rows ``t, t + nthreads, ...`` (thread ``t`` of ``nthreads``, as :func:`int_rows`).

    ``comoment`` ([N, C, C]) is filled only when ``want_cross`` and the row is all finite.
    """
    n_rows, channels, length = dims(x, cp)
    for n in range(t, n_rows, nthreads):
        _float_row(x, n, cp, channels, length, want_cross, count, mean, mean_lo, m2, vmin, vmax, nan, posinf, neginf,
                   comoment)


@cached_jit(nogil=True)
def hist_float(x, cp, lo, hi, bins, clip, hist, low_end, high_end, ends):  # pragma: no cover
    """Histogram over [lo, hi] (last bin closed, like numpy); returns (#below, #above) outside.

    ``ends[c]`` ([C, 2]) counts the values at or below ``low_end`` and at or above ``high_end``
    (the range's lowest and highest value, ``numerics.range_ends``; outside values only with ``clip``).
    """
    n_rows, channels, length = dims(x, cp)
    width = bins / (hi - lo)
    below = 0
    above = 0
    for n in range(n_rows):
        for c in range(channels):
            for i in range(length):
                v = np.float64(x[n, c, i] if cp else x[n, i, c])
                if not math.isfinite(v):
                    continue
                if v < lo:
                    below += 1
                    if not clip:
                        continue
                    b = 0
                elif v > hi:
                    above += 1
                    if not clip:
                        continue
                    b = bins - 1
                else:
                    b = int((v - lo) * width)
                    if b >= bins:
                        b = bins - 1
                hist[c, b] += 1
                if v <= low_end:
                    ends[c, 0] += 1
                if v >= high_end:
                    ends[c, 1] += 1
    return below, above
