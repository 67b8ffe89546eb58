"""The exact state of integer pixels: the one builder every CPU route calls (numpy only).

uint8 pixels reach a state on the CPU by four routes, which must give the same state bit for bit
(tests/test_pixel_routes.py, tests/test_cpu_small.py, tests/test_api_cpu.py):

=======================  =====================================  ==========================================
route                    code                                   what it measures
=======================  =====================================  ==========================================
numpy (small images)     :func:`.cpu_small.small_u8_state`      totals, one histogram, or per-image rows
Pillow's own histogram   :func:`.cpu_small.hist_u8_state`       one ``[C, 256]`` histogram per image
RGBX view sink           :class:`.cpu.RgbxSink`                 per image: histogram and cross products
numba arrays             :meth:`.cpu.CpuReducer.reduce_chunk`   totals, one histogram, or per-image rows
=======================  =====================================  ==========================================

(Which route a decode worker's batch takes is decided in one place,
:mod:`gpustats.sources.reduce_tasks`, "Routes".) Whatever a route measured becomes **rows**: exact
int64 ``count``, ``total``, ``total_sq``, ``vmin``, ``vmax`` ``[K, C]`` (and ``cross`` ``[K, C, C]``
for co-moments), one row per image or per part of a batch; :func:`int_state` makes the state of
rows, and nothing else makes an integer state on the CPU. Histograms become rows by
:func:`hist_rows` (the one place where moments come from a uint8 histogram), totals by
:func:`sums_rows`. Every value is an exact integer, so the order in which rows are added cannot
change a bit.

>>> import numpy as np
>>> hist = np.zeros((1, 256), np.int64); hist[0, [3, 5]] = [2, 1]     # values 3, 3, 5
>>> rows = hist_rows(hist[None])
>>> [rows[k].tolist() for k in ("count", "total", "total_sq", "vmin", "vmax")]
[[[3]], [[11]], [[43]], [[3]], [[5]]]
>>> s = int_state(rows, dtype="uint8", scale=1.0, hist=hist).finalize()
>>> s.max.tolist(), s.state.hist_range
([5.0], (0.0, 256.0))
"""

from __future__ import annotations

import numpy as np

from ..stats import ChannelStats, ImageMoments

__all__ = ["U8_RANGE", "VALUES", "hist_rows", "int_state", "sums_rows"]

#: the values of uint8's 256 one-value bins, and their range
VALUES = np.arange(256, dtype=np.int64)
U8_RANGE = (0.0, 256.0)
#: ``vmin``/``vmax`` of a row without values (outside every integer dtype's range: min/max ignore it)
EMPTY_MIN, EMPTY_MAX = 1 << 40, -(1 << 40)


def hist_rows(hists: np.ndarray) -> dict:
    """Rows of exact uint8 histograms: ``hists`` ``[K, C, 256]`` int64 counts -> ``count``, ``total``,
    ``total_sq``, ``vmin``, ``vmax`` (int64 ``[K, C]``). Integer arithmetic throughout."""
    hists = np.asarray(hists, np.int64)
    count = hists.sum(axis=-1)
    seen = hists > 0
    return {"count": count, "total": hists @ VALUES, "total_sq": hists @ (VALUES * VALUES),
            "vmin": np.where(count > 0, seen.argmax(axis=-1), EMPTY_MIN),
            "vmax": np.where(count > 0, 255 - seen[..., ::-1].argmax(axis=-1), EMPTY_MAX)}


def sums_rows(sums: np.ndarray) -> dict:
    """One row of exact per-channel totals: ``sums`` ``[5, C]`` int64 (count, sum, sum of squares, min,
    max, as :func:`gpustats.backends.cpu_int_loops.u8_sums` leaves them) -> rows ``[1, C]``."""
    empty = sums[0] == 0
    return {"count": sums[0][None], "total": sums[1][None], "total_sq": sums[2][None],
            "vmin": np.where(empty, EMPTY_MIN, sums[3])[None], "vmax": np.where(empty, EMPTY_MAX, sums[4])[None]}


def _exact_column_sums(rows: np.ndarray) -> list:
    """Sums over axis 0 of int64 ``rows`` as (nested) lists of Python ints: in int64 when no partial
    sum can overflow it, else in Python ints."""
    bound = float(np.abs(rows.astype(np.float64)).max(initial=0.0)) * rows.shape[0]
    if bound < 2.0**62:
        return rows.sum(axis=0).tolist()
    return np.asarray(rows, dtype=object).sum(axis=0).tolist()


def int_state(rows: dict, *, dtype: str, scale: float, covariance: bool = False, per_image: bool = False,
              hist: np.ndarray | None = None, hist_range: tuple | None = None,
              hist_ends: np.ndarray | None = None) -> ChannelStats:
    """The state of integer data from its exact rows (see the module docstring): the totals summed
    exactly, co-moments from ``cross`` (``covariance``), per-image statistics from the rows themselves
    (``per_image``: one row per image), and the histogram ``hist`` when given (its range: ``hist_range``,
    uint8's 256 one-value bins when None)."""
    count = [int(v) for v in rows["count"].sum(axis=0)]
    total, total_sq = _exact_column_sums(rows["total"]), _exact_column_sums(rows["total_sq"])
    cross = _exact_column_sums(rows["cross"]) if covariance else None
    images = ImageMoments.from_integer_rows(rows["count"], rows["total"], rows["total_sq"]) if per_image else None
    if hist is not None and hist_range is None:
        if dtype != "uint8":
            raise ValueError(f"a {dtype} histogram needs its hist_range")
        hist_range = U8_RANGE
    return ChannelStats.from_integer_sums(
        count, total, total_sq, rows["vmin"].min(axis=0).astype(float), rows["vmax"].max(axis=0).astype(float),
        dtype=dtype, scale=scale, hist=hist, hist_range=hist_range, cross=cross, images=images, hist_ends=hist_ends,
    )
