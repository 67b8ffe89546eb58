"""numpy twins of the CPU backend's numba loops: the same functions, the same outputs bit for bit.

Compiling a numba loop costs its first process 1-3 s (measured: gpustats.tuning.LOOP_COMPILE_BUDGET_S);
a call that reduces a few megabytes is done sooner by numpy. :mod:`.cpu_loops` runs these twins
until a loop's numpy time in the process would pass that budget, then the numba loop (compiled,
or loaded from the per-user cache, once). The twins therefore give every output **bit for bit** what
the numba loop gives (tests/test_numpy_loops.py holds them to it on random and adversarial data):

* integer data: exact integers (int64 sums of int64 products, ``np.bincount`` histograms), in any
  order: the same integers;
* float data: the numba loops add in sequence (``s += v``, no reordering: numba does not enable
  fast-math), so the twins add with ``np.add.accumulate`` (sequential by definition), a piece of
  a tile at a time, the running total folded into the piece's first value
  (``total + v0``: also the loop's ``0.0 + v0`` at the start, so a sum of negative zeros is ``+0.0``
  in both); minima and maxima keep the first value that reached them (which sign a zero has), as
  the loops' ``min(lo, v)`` does.

Work goes by tiles of at most :data:`TILE` values: several whole images at once when they are
small (numpy's per-call cost spread over them), pieces of one image in pixel order when it is large,
so memory is a tile's temporaries whatever the input's size. Integer sums are taken in float64 over a
tile (every partial sum an integer below 2**53, so exact in any order: BLAS may reorder) and added
up in int64. A row with a NaN or an infinity goes through a per-channel path that leaves them out.

Signatures are those of :mod:`.cpu_int_loops` and :mod:`.cpu_float_loops` (``x`` is ``[N, C, L]`` when
``cp`` else ``[N, L, C]``; rows ``t, t + nthreads, ...`` are thread ``t``'s share). numpy only:
importing this module loads no numba.

>>> import numpy as np
>>> x = np.array([[[1, 2, 250]]], np.uint8)                    # one image, one channel, 3 values
>>> out = np.zeros((5, 1), np.int64); out[3] = 255
>>> u8_sums(x, True, out, 0, 1)
>>> out[:, 0].tolist()                                          # count, sum, sum of squares, min, max
[3, 253, 62505, 1, 250]
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

__all__ = ["TILE", "float_rows", "hist_float", "hist_u8", "int_rows", "u8_sum_rows", "u8_sums"]

#: values per tile (rows x channels x pixels). Exactness: a tile's float64 integer sums stay below
#: 2**53 (TILE * 65535**2 < 2**51); any value gives the same bits, this one keeps a tile's
#: float64 temporaries at 2 MiB.
TILE = 1 << 18
_EMPTY_MIN, _EMPTY_MAX = 1 << 40, -(1 << 40)


def _dims(x: np.ndarray, cp: bool) -> tuple[int, int, int]:
    return (x.shape[0], x.shape[1], x.shape[2]) if cp else (x.shape[0], x.shape[2], x.shape[1])


def _groups(n_rows: int, channels: int, length: int, t: int, nthreads: int) -> Iterator[tuple[slice, int, int]]:
    """Thread ``t``'s rows in groups: ``(rows, R, step)``, ``rows`` a slice of ``x``'s first axis holding
    ``R`` rows, ``step`` the pixels per tile (a group of several rows is one tile: step = length)."""
    mine = len(range(t, n_rows, nthreads))
    per = max(1, TILE // max(1, channels * length))
    step = max(1, length) if per > 1 else max(1, TILE // max(1, channels))
    for i in range(0, mine, per):
        first, r = t + i * nthreads, min(per, mine - i)
        yield slice(first, first + (r - 1) * nthreads + 1, nthreads), r, step


def _tiles(x: np.ndarray, cp: bool, rows: slice, length: int, step: int) -> Iterator[np.ndarray]:
    """The rows' pixels as ``[R, C, P]`` views, ``step`` pixels at a time, in pixel order."""
    for s in range(0, length, step):
        yield x[rows, :, s:s + step] if cp else x[rows, s:s + step].transpose(0, 2, 1)


# ------------------------------------------------------------------ exact integers
def _u8_hist(tile: np.ndarray, per_row: bool) -> np.ndarray:
    """Counts of a uint8 ``[R, C, P]`` tile: ``[R, C, 256]`` (``per_row``) or ``[C, 256]``; one ``bincount``
    of ``value + 256 * bin-row``."""
    R, C, _ = tile.shape
    groups = R * C if per_row else C
    offsets = (np.arange(groups, dtype=np.intp) * 256).reshape((R, C, 1) if per_row else (1, C, 1))
    counts = np.bincount((tile.astype(np.intp) + offsets).ravel(), minlength=256 * groups)
    return counts.reshape((R, C, 256) if per_row else (C, 256))


def _int_group(x, cp, rows, R, channels, length, step, want_cross, want_hist) -> tuple:
    """Exact ``(total, total_sq, vmin, vmax, cross, hist)`` of a group's rows ([R, C], cross [R, C, C] or
    None, hist [R, C, 256] or None)."""
    total = np.zeros((R, channels), np.int64)
    total_sq = np.zeros((R, channels), np.int64)
    cross = np.zeros((R, channels, channels), np.int64) if want_cross else None
    hist = np.zeros((R, channels, 256), np.int64) if want_hist else None
    vmin = np.full((R, channels), _EMPTY_MIN, np.int64)
    vmax = np.full((R, channels), _EMPTY_MAX, np.int64)
    for tile in _tiles(x, cp, rows, length, step):
        f = tile.astype(np.float64, order="C")
        total += f.sum(axis=2).astype(np.int64)
        if want_cross:
            cross += np.matmul(f, f.transpose(0, 2, 1)).astype(np.int64)
        else:
            total_sq += np.einsum("rcp,rcp->rc", f, f).astype(np.int64)
        if f.shape[2]:
            vmin = np.minimum(vmin, f.min(axis=2).astype(np.int64))
            vmax = np.maximum(vmax, f.max(axis=2).astype(np.int64))
        if want_hist:
            hist += _u8_hist(tile, True)
    if want_cross:
        total_sq = np.ascontiguousarray(np.diagonal(cross, axis1=1, axis2=2))
    return total, total_sq, vmin, vmax, cross, hist


def hist_u8(x, cp, hist, t, nthreads) -> None:
    """:func:`gpustats.backends.cpu_int_loops.hist_u8`: histograms of rows ``t::nthreads`` added into ``hist``."""
    n_rows, channels, length = _dims(x, cp)
    for rows, _, step in _groups(n_rows, channels, length, t, nthreads):
        for tile in _tiles(x, cp, rows, length, step):
            hist += _u8_hist(tile, False)


def u8_sums(x, cp, out, t, nthreads) -> None:
    """:func:`gpustats.backends.cpu_int_loops.u8_sums`: rows ``t::nthreads`` added into ``out`` ([5, C])."""
    n_rows, channels, length = _dims(x, cp)
    for rows, R, step in _groups(n_rows, channels, length, t, nthreads):
        total, total_sq, vmin, vmax, _, _ = _int_group(x, cp, rows, R, channels, length, step, False, False)
        out[0] += R * length
        out[1] += total.sum(axis=0)
        out[2] += total_sq.sum(axis=0)
        out[3] = np.minimum(out[3], vmin.min(axis=0))
        out[4] = np.maximum(out[4], vmax.max(axis=0))


def u8_sum_rows(x, cp, count, total, total_sq, vmin, vmax, t, nthreads) -> None:
    """:func:`gpustats.backends.cpu_int_loops.u8_sum_rows`."""
    int_rows(x, cp, False, False, count, total, total_sq, vmin, vmax, None, None, t, nthreads)


def int_rows(x, cp, want_cross, want_hist, count, total, total_sq, vmin, vmax, cross, hist, t, nthreads) -> None:
    """:func:`gpustats.backends.cpu_int_loops.int_rows`: exact per-row totals (and co-moments, and uint8
    histograms with ``want_hist``) of rows ``t::nthreads``."""
    n_rows, channels, length = _dims(x, cp)
    for rows, R, step in _groups(n_rows, channels, length, t, nthreads):
        got = _int_group(x, cp, rows, R, channels, length, step, want_cross, want_hist)
        count[rows] = length
        total[rows], total_sq[rows], vmin[rows], vmax[rows] = got[:4]
        if want_cross:
            cross[rows] = got[4]
        if want_hist:
            hist[rows] += got[5]


# ------------------------------------------------------------------ floats
class _Fold:
    """Running float64 sums (any shape) that add values one at a time, in order, as ``s += v`` does from
    ``s = 0.0``: each tile's first value is added to the running sum, then ``np.add.accumulate``."""

    def __init__(self, shape: tuple = ()) -> None:
        self.total = np.zeros(shape)

    def add(self, tile: np.ndarray) -> None:
        """Add ``tile`` (float64, summed along its last axis; a private copy: it is overwritten)."""
        if tile.shape[-1]:
            tile[..., 0] += self.total
            self.total = np.add.accumulate(tile, axis=-1, out=tile)[..., -1].copy()


def _first_extreme(tile: np.ndarray, best: np.ndarray, lowest: bool) -> np.ndarray:
    """``best`` updated as ``best = min(best, v)`` (``max``) along ``tile``'s last axis in order: the first
    value that reaches the extreme wins (so a zero keeps the sign of the first zero met)."""
    m = tile.min(axis=-1) if lowest else tile.max(axis=-1)
    better = m < best if lowest else m > best
    first = np.take_along_axis(tile, (tile == m[..., None]).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    return np.where(better, first, best)


def _finish(k, total, corr, d2) -> tuple:
    """``(mean, mean_lo, m2)`` of the corrected two-pass rule, as the numba loop does it for ``k > 0``."""
    mu = total / k
    fix = corr / k
    mean = mu + fix
    back = mean - mu
    lo_part = (mu - (mean - back)) + (fix - back)
    m2 = d2 - corr * corr / k
    return mean, lo_part, np.where(0.0 > m2, 0.0, m2)


def _float_group(x, cp, rows, R, channels, length, step, want_cross, outs, comoment) -> np.ndarray:
    """Moments (and co-moments) of a group's rows into ``outs``/``comoment``; returns which rows held a
    non-finite value (their outputs are then wrong and must be made again by :func:`_float_row`)."""
    s, finite = _Fold((R, channels)), np.ones(R, bool)
    lo, hi = np.full((R, channels), math.inf), np.full((R, channels), -math.inf)
    for tile in _tiles(x, cp, rows, length, step):
        f = tile.astype(np.float64, order="C")
        finite &= np.isfinite(f).all(axis=(1, 2))
        lo, hi = _first_extreme(f, lo, True), _first_extreme(f, hi, False)
        s.add(f)
    mu = s.total / length
    corr, d2 = _Fold((R, channels)), _Fold((R, channels))
    for tile in _tiles(x, cp, rows, length, step):
        d = tile.astype(np.float64, order="C") - mu[..., None]
        corr.add(d.copy())
        d2.add(np.multiply(d, d, out=d))
    mean, lo_part, m2 = _finish(length, s.total, corr.total, d2.total)
    for out, value in zip(outs, (length, mean, lo_part, m2, lo, hi, 0, 0, 0)):
        out[rows] = value
    if want_cross:
        folds = {(a, b): _Fold((R,)) for a in range(channels) for b in range(a, channels)}
        for tile in _tiles(x, cp, rows, length, step):
            dev = tile.astype(np.float64, order="C") - mean[..., None]
            for (a, b), q in folds.items():
                q.add(dev[:, a] * dev[:, b])
        for (a, b), q in folds.items():
            comoment[rows, a, b] = comoment[rows, b, a] = q.total
    return ~finite


def _float_row(x, cp, n, channels, want_cross, outs, comoment) -> None:
    """Row ``n`` one channel at a time, its non-finite values counted and left out (the numba loop's rule)."""
    for c in range(channels):
        v = x[n, c] if cp else x[n, :, c]
        s, k, bad = _Fold(), 0, [0, 0, 0]
        lo = hi = None
        for start in range(0, v.shape[0], TILE):
            p = v[start:start + TILE].astype(np.float64)
            finite = np.isfinite(p)
            bad[0] += int(np.isnan(p).sum())
            bad[1] += int((p == math.inf).sum())
            bad[2] += int((p == -math.inf).sum())
            p = p[finite]
            if p.shape[0]:
                k += p.shape[0]
                lo = _first_extreme(p, np.float64(math.inf) if lo is None else lo, True)
                hi = _first_extreme(p, np.float64(-math.inf) if hi is None else hi, False)
                s.add(p)
        corr, d2 = _Fold(), _Fold()
        mu = s.total / k if k else 0.0
        for start in range(0, v.shape[0], TILE):
            p = v[start:start + TILE].astype(np.float64)
            d = p[np.isfinite(p)] - mu
            corr.add(d.copy())
            d2.add(np.multiply(d, d, out=d))
        moments = _finish(k, s.total, corr.total, d2.total) if k else (0.0, 0.0, max(float(d2.total), 0.0))
        row = (k, *moments, math.inf if lo is None else lo, -math.inf if hi is None else hi, *bad)
        for out, value in zip(outs, row):
            out[n, c] = value
    if want_cross:
        mean = outs[1]
        for a in range(channels):
            for b in range(a, channels):
                q = _Fold()
                va, vb = (x[n, a], x[n, b]) if cp else (x[n, :, a], x[n, :, b])
                for start in range(0, va.shape[0], TILE):
                    q.add((va[start:start + TILE].astype(np.float64) - mean[n, a])
                          * (vb[start:start + TILE].astype(np.float64) - mean[n, b]))
                comoment[n, a, b] = comoment[n, b, a] = q.total


def float_rows(x, cp, want_cross, count, mean, mean_lo, m2, vmin, vmax, nan, posinf, neginf, comoment, t,
               nthreads) -> None:
    """:func:`gpustats.backends.cpu_float_loops.float_rows`, bit for bit."""
    n_rows, channels, length = _dims(x, cp)
    outs = (count, mean, mean_lo, m2, vmin, vmax, nan, posinf, neginf)
    with np.errstate(all="ignore"):  # NaN/inf arithmetic of rows redone below, as the loop's is silent
        for rows, R, step in _groups(n_rows, channels, length, t, nthreads):
            bad = _float_group(x, cp, rows, R, channels, length, step, want_cross, outs, comoment) \
                if length else np.ones(R, bool)
            for i in np.flatnonzero(bad):
                _float_row(x, cp, rows.start + int(i) * rows.step, channels, want_cross, outs, comoment)


def hist_float(x, cp, lo, hi, bins, clip, hist, low_end, high_end, ends) -> tuple[int, int]:
    """:func:`gpustats.backends.cpu_float_loops.hist_float`: the same bins (``int((v - lo) * width)``
    in float64), end counts and ``(#below, #above)``."""
    n_rows, channels, length = _dims(x, cp)
    width = bins / (hi - lo)
    below = above = 0
    for rows, _, step in _groups(n_rows, channels, length, 0, 1):
        for tile in _tiles(x, cp, rows, length, step):
            p = tile.astype(np.float64, order="C")
            chan = np.broadcast_to(np.arange(channels)[None, :, None], p.shape)
            keep = np.isfinite(p)
            p, chan = p[keep], chan[keep]
            low, high = p < lo, p > hi
            below, above = below + int(low.sum()), above + int(high.sum())
            if not clip:
                keep = ~(low | high)
                p, chan, low, high = p[keep], chan[keep], low[keep], high[keep]
            b = np.minimum(((np.clip(p, lo, hi) - lo) * width).astype(np.int64), bins - 1)
            b[low], b[high] = 0, bins - 1
            hist += np.bincount(b + bins * chan, minlength=bins * channels).reshape(channels, bins)
            ends[:, 0] += np.bincount(chan[p <= low_end], minlength=channels)
            ends[:, 1] += np.bincount(chan[p >= high_end], minlength=channels)
    return below, above
