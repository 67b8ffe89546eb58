"""Every numeric rule of gpustats, stated once; the state, the backends and the results call these.

Names follow scikit-learn's ``_incremental_mean_and_var``: ``old_`` (what was accumulated),
``new_`` (what is added), ``updated_`` (the merge of both).

* **Chan's merge** (:func:`chan_merge`, :func:`chan_merge_rows`) combines float64 summaries
  ``(count, mean, M2)`` and co-moment matrices (Chan, Golub & LeVeque, 1979)::

      n = n_old + n_new;  d = mean_new - mean_old
      mean = mean_old + d * n_new / n
      M2   = M2_old + M2_new + d**2 * n_old * n_new / n
      C    = C_old + C_new + outer(d, d) * n_old * n_new / n

  It is *compensated*: a mean is carried as ``mean + mean_lo`` (``mean_lo`` is the rounding error
  of ``mean``, a double-double), and deviations are taken from a per-channel reference (the
  first non-empty summary's mean), so data at an offset of 1e8 with a spread of 1e-2 loses no
  precision to being split into images or batches.
* **Exact integer moments** (:func:`exact_moments`): mean, M2 or variance of integer data from
  exact Python-int totals in rational arithmetic, rounded once to float64.
* **Shifted sums** (:func:`moments_from_shifted_sums`): ``(count, mean, M2)`` from sums of
  ``x - shift`` and of its square (the CUDA kernels' float totals, per batch or per image);
  :func:`moments_from_shifted_mean` adds the shift back to a summary of ``x - shift`` (Welford).
* **Per-image values** (:func:`image_values_exact`, :func:`image_values`): each image's mean and
  std (ddof 0 and 1) per channel; :func:`exact_value_sums` keeps exact sums of such float64
  values, so their image-weighted aggregates can be rounded once.
* **Histogram bins** (:func:`hist_bin_index`, :func:`bin_value_spans`, :func:`range_ends`) and
  percentiles read from a histogram (:func:`hist_percentile`).

Example
-------
>>> import numpy as np
>>> old = Moments.of(np.array([[1.0], [2.0], [3.0]]))   # one channel, three values
>>> new = Moments.of(np.array([[4.0], [5.0]]))
>>> updated = chan_merge(old, new)
>>> int(updated.count[0]), float(updated.mean[0]), float(updated.m2[0])
(5, 3.0, 10.0)
>>> mean, m2 = exact_moments([4], [10], [30])      # the values 1, 2, 3, 4
>>> float(mean[0]), float(m2[0])
(2.5, 5.0)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

from .tuning import EXACT_VECTOR_FROM as _VECTOR_FROM  # elements from which the int64 path beats a loop

__all__ = [
    "StatsError", "INTEGER_DTYPES", "FLOAT_DTYPES", "Moments", "two_sum", "chan_merge", "chan_merge_rows", "exact_moments",
    "moments_from_shifted_sums", "moments_from_shifted_mean", "image_values_exact", "image_values", "exact_value_sums", "SUM_BITS",
    "hist_bin_index", "bin_value_spans", "range_ends", "hist_percentile", "PERCENTILE_METHODS",
    "frozen",
]

#: exact sums of float64 values are kept as Python ints in units of 2**-SUM_BITS (every float64 is
#: an integer multiple of 2**-1074), their squares in units of 2**-(2 * SUM_BITS)
SUM_BITS = 1074


def frozen(arr: Any, dtype: Any = np.float64) -> Any:
    """A read-only copy of ``arr`` as ``dtype`` (None stays None): the arrays of every immutable value
    (:class:`~gpustats.ChannelStats`, :class:`~gpustats.stats.ImageMoments`, :class:`~gpustats.SampledStats`)."""
    if arr is None:
        return None
    out = np.array(arr, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


#: integer dtypes, reduced exactly (their squares' sums fit int64 per kernel call)
INTEGER_DTYPES = ("uint8", "int8", "uint16", "int16")
#: float dtypes (bfloat16 and float16 are widened inside the kernels)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

PERCENTILE_METHODS = ("linear", "lower", "higher", "nearest", "midpoint", "inverted_cdf")


class StatsError(ValueError):
    """A state or result cannot be built or combined as asked; the message says why and what to do."""


# ====================================================================== Chan's merge
class Moments(NamedTuple):
    """A float64 summary of values: ``count``, ``mean`` (+ ``mean_lo``, its rounding error), ``m2``.

    Arrays broadcast; a leading axis of rows is merged by :func:`chan_merge_rows`. ``comoment``
    ([..., C, C], optional) needs one count for every channel (``count[..., 0]`` is used).
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    mean_lo: np.ndarray
    comoment: np.ndarray | None = None

    @staticmethod
    def of(values: np.ndarray) -> "Moments":
        """Two-pass float64 summary of ``values`` [P, C] (each column a channel): a reference."""
        x = np.asarray(values, dtype=np.float64)
        mean = x.mean(axis=0)
        return Moments(np.full(x.shape[1], x.shape[0], np.int64), mean, ((x - mean) ** 2).sum(axis=0),
                       np.zeros(x.shape[1]))


def two_sum(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth); ``e`` 0 where not finite."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = a + b
        bb = s - a
        e = (a - (s - bb)) + (b - bb)
    return s, np.where(np.isfinite(e), e, 0.0)


def chan_merge_rows(rows: Moments) -> Moments:
    """Merge the summaries along axis 0 of every field (Chan's formula for many groups at once).

    Deviations are taken from a per-channel reference ``ref`` (the mean of the first row with a
    non-zero count) and include ``mean_lo``; the result's mean is ``ref + grand`` as a
    double-double. Rows with count 0 are the identity. Where the total count is 0 the result is
    the empty summary (mean 0, M2 0).
    """
    count = np.asarray(rows.count)
    if count.shape[0] == 0:  # no rows: the empty summary
        zeros = np.zeros(count.shape[1:])
        comoment = None if rows.comoment is None else np.zeros(np.shape(rows.comoment)[1:])
        return Moments(np.zeros(count.shape[1:], np.int64), zeros, zeros, zeros, comoment)
    n = count.astype(np.float64)
    mean = np.asarray(rows.mean, dtype=np.float64)
    has = count > 0
    total = count.sum(axis=0)
    first = np.argmax(has, axis=0)[None]
    ref = np.take_along_axis(np.broadcast_to(mean, has.shape), first, axis=0)[0]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        dev = np.where(has, (mean - ref) + rows.mean_lo, 0.0)
        grand = np.where(total > 0, (n * dev).sum(axis=0) / np.where(total > 0, total, 1), 0.0)
        resid = np.where(has, dev - grand, 0.0)
        m2 = np.where(has, rows.m2, 0.0).sum(axis=0) + (n * resid * resid).sum(axis=0)
    updated_mean, updated_lo = two_sum(ref, grand)
    nonempty = total > 0
    comoment = None
    if rows.comoment is not None:
        weight = n[..., 0] if n.ndim > 1 else n
        comoment = np.asarray(rows.comoment).sum(axis=0) + np.einsum("r,ri,rj->ij", weight, resid, resid)
    return Moments(total, np.where(nonempty, updated_mean, 0.0), np.where(nonempty, m2, 0.0),
                   np.where(nonempty, updated_lo, 0.0), comoment)


def chan_merge(old: Moments, new: Moments) -> Moments:
    """The summary of ``old``'s and ``new``'s values together (:func:`chan_merge_rows` of the two)."""
    comoment = None if old.comoment is None else np.stack([old.comoment, new.comoment])
    rows = Moments(*(np.stack(np.broadcast_arrays(a, b)) for a, b in zip(old[:4], new[:4])), comoment)
    return chan_merge_rows(rows)


# ====================================================================== exact integer moments
def exact_moments(count: Any, total: Any, total_sq: Any, *, other_total: Any = None, ddof: int | None = None,
                  scale: Any = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and M2 (or variance) of integer data from exact totals, each rounded once to float64.

    ``mean = s / (n * scale)``; with ``ddof=None`` the second result is
    ``M2 = (n*q - s*t) / (n * scale**2)`` (``t = other_total``, default ``s``: with the cross sums
    ``q = sum(x_i * x_j)`` and ``t = sum(x_j)`` it is the co-moment), else the variance
    ``(n*q - s*t) / (n * (n - ddof) * scale**2)``. Arguments are Python ints or int arrays of one
    shape (element-wise); ``scale`` any exact number (float, int, Fraction). Undefined values are
    NaN: the mean where ``n == 0``, the variance where ``n <= ddof``; M2 is 0 where ``n == 0``.
    """
    scale = Fraction(scale)
    num, den = scale.numerator, scale.denominator
    ints = [np.asarray(a) for a in (count, total, total_sq, total if other_total is None else other_total)]
    if all(a.dtype.kind == "i" or (a.dtype.kind == "u" and a.dtype.itemsize < 8) for a in ints) \
            and num < _SMALL and den < _SMALL and max(a.size for a in ints) >= _VECTOR_FROM:
        ints = np.broadcast_arrays(*(a.astype(np.int64) for a in ints))
        mean, second, rest = _exact_moments_int64(*ints, ddof, num, den)
    else:
        shape = np.broadcast_shapes(*(a.shape for a in ints))
        mean = np.full(shape, np.nan)
        second = np.full(shape, np.nan if ddof is not None else 0.0)
        rest = np.ones(shape, bool)
    if rest.any():  # what int64 and float64 division cannot give exactly: rational arithmetic on Python ints
        arrays = np.broadcast_arrays(*(np.asarray(a, dtype=object) for a in
                                       (count, total, total_sq, total if other_total is None else other_total)))
        for idx in np.ndindex(*rest.shape):
            if not rest[idx]:
                continue
            n, s, q, t = (int(a[idx]) for a in arrays)
            if n > 0:
                mean[idx] = (s * den) / (n * num)  # int / int: correctly rounded, like float(Fraction)
            centred = (n * q - s * t) * den * den
            if ddof is None and n > 0:
                second[idx] = centred / (n * num * num)
            elif ddof is not None and n > ddof:
                second[idx] = centred / (n * (n - ddof) * num * num)
    return mean, second


#: below this, integers and their float64 images are equal, and the quotient of two of them in
#: float64 is the correctly rounded rational (IEEE division), as Python's ``int / int`` is
_EXACT = float(2**53)
_SMALL = 1 << 20  # a scale's numerator and denominator small enough for the int64 path


def _exact_moments_int64(n: np.ndarray, s: np.ndarray, q: np.ndarray, t: np.ndarray, ddof: int | None,
                         num: int, den: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`exact_moments` element-wise in int64 and float64 where that is exact, and the mask of
    the elements left for rational arithmetic: where an int64 product could overflow, or a numerator
    or denominator reaches 2**53 (its float64 image would be rounded before dividing).

    Each bound is tested in float64 before the int64 product it guards; a product of float64 values
    that are exact integers rounds to at least 2**53 exactly when the true product is at least 2**53."""
    nf, sf, qf, tf = (a.astype(np.float64) for a in (n, s, q, t))
    lower = 0 if ddof is None else ddof
    exact = (nf >= 0) & (np.abs(nf * qf) < 2.0**62) & (np.abs(sf * tf) < 2.0**62)  # int64 holds n*q - s*t
    exact &= (np.abs(sf) * den < _EXACT) & (nf * num < _EXACT)  # the mean's numerator and denominator
    exact &= nf * np.maximum(nf - lower, 0) * num * num < _EXACT  # the second's denominator
    n0, s0, q0, t0 = (np.where(exact, a, 0) for a in (n, s, q, t))
    raw = n0 * q0 - s0 * t0
    exact &= np.abs(raw.astype(np.float64)) * (den * den) < _EXACT  # the second's numerator
    raw = np.where(exact, raw, 0)
    wanted = exact & (n0 > lower)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(exact & (n0 > 0), (s0 * den).astype(np.float64) / (n0 * num).astype(np.float64), np.nan)
        below = (n0 if ddof is None else n0 * np.maximum(n0 - ddof, 0)) * (num * num)
        second = np.where(wanted, (raw * (den * den)).astype(np.float64) / np.where(wanted, below, 1).astype(np.float64),
                          0.0 if ddof is None else np.nan)
    return mean, second, ~exact


# ====================================================================== shifted sums
def moments_from_shifted_sums(count: Any, shift: Any, fsum: Any, fsumsq: Any, cross: Any = None) -> Moments:
    """Summary of values ``x`` from float64 sums of ``d = x - shift`` and ``d*d`` (and ``d_i*d_j``).

    ``mean = shift + fsum / n`` (as a double-double), ``M2 = max(fsumsq - n * (fsum/n)**2, 0)``,
    co-moments ``cross - outer(fsum, fsum / n)``. Element-wise over any matching shapes (the
    kernels' per-channel totals or per-image rows); count 0 gives the empty summary.
    """
    n = np.asarray(count).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dmean = np.where(n > 0, np.asarray(fsum) / np.where(n > 0, n, 1.0), 0.0)
    comoment = None if cross is None else np.asarray(cross) - np.outer(fsum, dmean)
    return moments_from_shifted_mean(count, shift, dmean, np.maximum(np.asarray(fsumsq) - n * dmean * dmean, 0.0),
                                     comoment)


def moments_from_shifted_mean(count: Any, shift: Any, shifted_mean: Any, m2: Any, comoment: Any = None) -> Moments:
    """Summary of values ``x`` from the summary ``(count, mean, M2)`` of ``d = x - shift`` (e.g. the
    Welford kernels'): ``mean = shift + mean_d`` as a double-double; count 0 gives the empty summary."""
    count = np.asarray(count)
    mean, mean_lo = two_sum(shift, shifted_mean)
    nonempty = count > 0
    return Moments(count, np.where(nonempty, mean, 0.0), np.where(nonempty, m2, 0.0), np.where(nonempty, mean_lo, 0.0),
                   comoment)


# ====================================================================== per-image values
def image_values_exact(count: Any, total: Any, total_sq: Any) -> np.ndarray:
    """Per-image ``[mean, std ddof=0, std ddof=1]`` ([3, K, C]) of integer images from exact totals [K, C].

    Means and variances are rounded once (:func:`exact_moments`), stds are their square roots.
    An image with no value in a channel is NaN there; one with a single value has std 0 with
    ddof 0 and no std with ddof 1 (NaN: one value has no sample spread), so it is left out of the
    ddof-1 aggregates instead of counting as 0.
    """
    mean, var0 = exact_moments(count, total, total_sq, ddof=0)
    var1 = exact_moments(count, total, total_sq, ddof=1)[1]  # NaN where count <= 1
    return np.stack([mean, np.sqrt(np.maximum(var0, 0.0)), np.sqrt(np.maximum(var1, 0.0))])


def image_values(rows: Moments) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``[mean, std ddof=0, std ddof=1]`` ([3, K, C]) and their ``lo`` parts, from float rows.

    ``rows`` holds one summary per image ([K, C]); the same conventions as
    :func:`image_values_exact` (NaN where an image has no finite value in the channel, and for the
    ddof-1 std where it has only one).
    """
    n = np.asarray(rows.count).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        std0 = np.sqrt(np.maximum(rows.m2, 0.0) / n)
        std1 = np.where(n > 1, np.sqrt(np.maximum(rows.m2, 0.0) / np.maximum(n - 1, 1)), np.nan)
    values = np.where(n > 0, np.stack([np.asarray(rows.mean, np.float64), std0, std1]), np.nan)
    lo = np.zeros_like(values)
    lo[0] = np.where(n > 0, rows.mean_lo, 0.0)
    return values, lo


def exact_value_sums(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact sums over axis 0 of float64 ``values`` [K, ...], NaN entries left out.

    Returns ``(count, sums, sumsqs)``: int64 counts and object arrays of Python ints, the sums of
    the values in units of ``2**-SUM_BITS`` and of their squares in units of ``2**-(2*SUM_BITS)``.
    Sums of integers are associative: any split and order of the values gives the same ints.
    """
    x = np.asarray(values, dtype=np.float64)
    flat = x.reshape(x.shape[0], -1)
    valid = ~np.isnan(flat)
    if not np.isfinite(flat[valid]).all():
        raise StatsError("per-image values must be finite to be summed exactly; an image's mean or std overflowed")
    counts = valid.sum(axis=0).astype(np.int64)
    sums = np.zeros(flat.shape[1], dtype=object)
    sumsqs = np.zeros(flat.shape[1], dtype=object)
    for start in range(0, flat.shape[0], _ROWS):  # int64 partial sums hold _ROWS values
        part, ok = flat[start:start + _ROWS], valid[start:start + _ROWS]
        column = np.broadcast_to(np.arange(flat.shape[1]), part.shape)[ok]
        for j, shift, total, square in _grouped_sums(part[ok], column):
            sums[j] += total << shift if shift >= 0 else total >> -shift
            sumsqs[j] += square << (2 * shift) if shift >= 0 else square >> (-2 * shift)
    shape = x.shape[1:]
    return counts.reshape(shape), sums.reshape(shape), sumsqs.reshape(shape)


_ROWS = 256  # values summed per int64 partial sum (each below 2**54): 256 * 2**54 < 2**63


def _grouped_sums(v: np.ndarray, column: np.ndarray):
    """``(column, shift, sum of m, sum of m*m)`` per column and binary exponent of the finite values ``v``,
    written ``v = m * 2**(shift - SUM_BITS)`` with ``m`` an integer of at most 53 bits: values of one
    exponent share ``shift``, so their ``m`` are added in int64 (``m*m`` as three 27-bit-split parts),
    and only one Python-int shift per group remains. Zeros add nothing and are left out."""
    frac, exp = np.frexp(v)
    m = np.ldexp(frac, 53).astype(np.int64)  # exact: frac has at most 53 significant bits
    keep = m != 0
    if not keep.any():
        return
    m, exp, column = m[keep], exp[keep], column[keep]
    shift = exp.astype(np.int64) - 53 + SUM_BITS  # may be negative for subnormals (m then ends in zeros)
    key = column * 4096 + (shift + 2048)
    order = np.argsort(key, kind="stable")
    key, m = key[order], m[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    a = np.abs(m)
    hi, lo = a >> 27, a & ((1 << 27) - 1)  # m*m = hi*hi << 54 + 2*hi*lo << 27 + lo*lo, each sum in int64
    parts = [np.add.reduceat(x, starts).tolist() for x in (m, hi * hi, 2 * hi * lo, lo * lo)]
    for k, total, hh, hl, ll in zip(key[starts].tolist(), *parts):
        yield k // 4096, k % 4096 - 2048, total, (hh << 54) + (hl << 27) + ll


# ====================================================================== histograms
def hist_bin_index(values: Any, lo: float, hi: float, bins: int) -> np.ndarray:
    """The bin of each value of ``[lo, hi]``: ``int((v - lo) * (bins / (hi - lo)))`` in float64, the
    last bin closed (``v == hi`` counts in it), like ``numpy.histogram`` (the CPU kernel's rule)."""
    v = np.asarray(values, dtype=np.float64)
    width = bins / (hi - lo)
    return np.minimum(((v - lo) * width).astype(np.int64), bins - 1)


def range_ends(lo: float, hi: float, dtype: str | None) -> tuple[float, float]:
    """The lowest and highest value a histogram over ``[lo, hi]`` can hold (what saturates there).

    Integer dtypes: the smallest and largest integers in ``[lo, hi]`` that the dtype holds (uint8's
    natural range ``[0, 256)``: 0 and 255); float data: ``lo`` and ``hi``.
    """
    if dtype in INTEGER_DTYPES:
        info = np.iinfo(np.dtype(dtype))
        return float(max(math.ceil(lo), info.min)), float(min(math.floor(hi), info.max))
    return float(lo), float(hi)


def bin_value_spans(bins: int, lo: float, hi: float, dtype: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(first, last)``: per bin the smallest and largest value it can hold ([bins] float64 each).

    Integer dtypes: the integers of the dtype's range that :func:`hist_bin_index` puts in the bin
    (a bin that can hold none gets ``first > last``); a bin is one value wide when first == last.
    Float data: the bin's edges.
    """
    if dtype in INTEGER_DTYPES:
        low, high = range_ends(lo, hi, dtype)
        ints = np.arange(int(low), int(high) + 1, dtype=np.int64)
        if ints.size == 0:
            return np.ones(bins), np.zeros(bins)
        index = hist_bin_index(ints, lo, hi, bins)
        starts = np.searchsorted(index, np.arange(bins), side="left")
        stops = np.searchsorted(index, np.arange(bins), side="right")
        first = np.where(stops > starts, ints[np.minimum(starts, ints.size - 1)], 1.0).astype(np.float64)
        last = np.where(stops > starts, ints[np.maximum(stops - 1, 0)], 0.0).astype(np.float64)
        return first, last
    edges = np.linspace(lo, hi, bins + 1)
    return edges[:-1].copy(), edges[1:].copy()


def hist_percentile(counts: np.ndarray, first: np.ndarray, last: np.ndarray, vmin: float, vmax: float,
                    q: float, method: str = "linear") -> float:
    """numpy's percentile ``method`` on the sample a histogram row describes (raw units).

    The k-th smallest value is read in its bin: the bin's ``h`` values are spread evenly from the
    bin's smallest to its largest possible value (``first``/``last``, clamped to the data's
    ``vmin``/``vmax``), so it is exact where every bin holds one value and otherwise off by at
    most one bin width (the true value lies in the same bin). NaN when the row is empty.
    """
    if method not in PERCENTILE_METHODS:
        raise StatsError(f"unknown percentile method {method!r}; use one of {', '.join(PERCENTILE_METHODS)}")
    cum = np.cumsum(counts)
    n = int(cum[-1]) if cum.size else 0
    if n == 0:
        return math.nan
    nonzero = np.flatnonzero(counts)
    lo_bin, hi_bin = int(nonzero[0]), int(nonzero[-1])
    # the extremes lie in the outermost non-empty bins (values clipped into them read as its end)
    vmin = max(vmin, float(first[lo_bin])) if math.isfinite(vmin) else math.nan
    vmax = min(vmax, float(last[hi_bin])) if math.isfinite(vmax) else math.nan

    def kth(k: int) -> float:  # 0-based k-th smallest value
        b = int(np.searchsorted(cum, k + 1))
        h = int(counts[b])
        j = k - (int(cum[b]) - h)
        a, z = float(first[b]), float(last[b])
        if b == lo_bin and not math.isnan(vmin):
            a = vmin
        if b == hi_bin and not math.isnan(vmax):
            z = vmax
        if h == 1:  # the single value of an outermost bin is that extreme
            return a if b == lo_bin else (z if b == hi_bin else (a + z) / 2)
        return a + (z - a) * (j / (h - 1))

    quantile = q / 100.0  # numpy's order of operations, so one-value bins give numpy's bits
    if method == "inverted_cdf":
        return kth(min(max(int(math.ceil(n * quantile)) - 1, 0), n - 1))
    h = (n - 1) * quantile
    below = int(math.floor(h))
    if method == "lower":
        return kth(below)
    if method == "higher":
        return kth(int(math.ceil(h)))
    if method == "nearest":
        return kth(int(np.around(h)))
    a, b = kth(below), kth(min(below + 1, n - 1))
    t = (0.0 if h == below else 0.5) if method == "midpoint" else h - below
    return _lerp(a, b, t)


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between neighbours (exact at both ends, monotone)."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t
