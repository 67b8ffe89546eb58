"""Exact states of small uint8 images with numpy alone: the CPU backend's integers without numba.

Loading numba's compiled loops costs a process ~0.4 s (importing numba, then its typing and
lowering registries on the first call), which is a fifth of a 20,000-file run of 32x32 PNGs. A
decode process that only ever meets small images therefore reduces them here: the same exact
integers (sums, minima and maxima along each channel plane, squares and cross products in uint16,
histograms from ``np.bincount``), given to the one state builder of every CPU route
(:func:`~gpustats.backends.int_state.int_state`), so the state is bitwise the one
:class:`~gpustats.backends.cpu.CpuReducer` makes (tested). Per image it costs a few
microseconds more than the numba loops, so processes that reduce many images load numba instead
(:mod:`gpustats.sources.reduce_tasks` decides).

>>> import numpy as np
>>> from gpustats.backends import Options
>>> img = np.array([[[0, 10, 255], [2, 10, 1]]], np.uint8)        # one 1x2 RGB image
>>> s = small_u8_state([img], Options(), 1.0).finalize()
>>> s.mean.tolist(), s.min.tolist(), s.max.tolist()
([1.0, 10.0, 128.0], [0.0, 10.0, 1.0], [2.0, 10.0, 255.0])
"""

from __future__ import annotations

import numpy as np

from ..stats import ChannelStats
from . import Options
from .cpu import SMALL_PART
from .int_state import hist_rows, int_state

__all__ = ["small_u8_state", "is_small_u8", "hist_u8_state"]


def is_small_u8(arrays: list[np.ndarray]) -> bool:
    """True when every array is a small ``[H, W, C]`` uint8 image (one channel count): this module's case."""
    return bool(arrays) and all(a.dtype == np.uint8 and a.ndim == 3 and a.size < SMALL_PART
                                and a.shape[2] == arrays[0].shape[2] for a in arrays)


def small_u8_state(arrays: list[np.ndarray], options: Options, scale: float) -> ChannelStats:
    """The exact state of small ``[H, W, C]`` uint8 images (:func:`is_small_u8`), with the histogram,
    co-moments and per-image statistics ``options`` asks for."""
    C = arrays[0].shape[2]
    if all(a.shape == arrays[0].shape for a in arrays):  # CIFAR-like: [C, N, P] blocks
        step = max(1, _CHUNK // arrays[0].size)
        planes = [np.ascontiguousarray(np.stack(arrays[i:i + step]).reshape(-1, arrays[0].size // C, C)
                                       .transpose(2, 0, 1)) for i in range(0, len(arrays), step)]
    elif not options.per_image:  # the pixels of several images as one "image": [C, 1, P] strips
        planes = [np.ascontiguousarray(np.concatenate([a.reshape(-1, C) for a in group]).T)[:, None, :]
                  for group in _groups(arrays)]
    else:
        planes = [np.ascontiguousarray(a.reshape(-1, C).T)[:, None, :] for a in arrays]
    hist = None
    if options.histogram:
        hist = np.zeros((C, 256), np.int64)
        for plane in planes:
            for c in range(C):
                hist[c] += np.bincount(plane[c].ravel(), minlength=256)
    rows = [_rows(plane, options.covariance) for plane in planes]
    r = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
    return int_state(r, dtype="uint8", scale=scale, covariance=options.covariance, per_image=options.per_image,
                     hist=hist)


def hist_u8_state(hists: np.ndarray, options: Options, scale: float) -> ChannelStats:
    """The exact state of uint8 images given by their histograms (``[N, C, 256]`` int64 counts, one
    per image: what the decoder measured instead of making arrays), with the histogram and per-image
    statistics ``options`` asks for; co-moments need the pixels. Bitwise the state of the images' pixels."""
    if options.covariance:
        raise ValueError("co-moments need the pixels, not their histograms")
    total = hists.sum(axis=0)
    rows = hist_rows(hists if options.per_image else total[None])
    return int_state(rows, dtype="uint8", scale=scale, per_image=options.per_image,
                     hist=total if options.histogram else None)


# values per plane (measured, with the machine: gpustats.tuning.PLANE_VALUES)
from ..tuning import PLANE_VALUES as _CHUNK  # noqa: E402


def _groups(arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
    """``arrays`` in consecutive groups of at most ``_CHUNK`` values (an image larger than that alone)."""
    groups: list[list[np.ndarray]] = [[]]
    size = 0
    for a in arrays:
        if groups[-1] and size + a.size > _CHUNK:
            groups.append([])
            size = 0
        groups[-1].append(a)
        size += a.size
    return groups


def _rows(planes: np.ndarray, cross: bool) -> dict:
    """Exact int64 rows of the images of ``planes`` (uint8 ``[C, N, P]``: channel, image, pixel): count,
    total, total_sq, vmin, vmax ([N, C]) and cross ([N, C, C]; [N, 1, 1] of zeros without ``cross``).

    Sums run along the pixels of one plane (numpy's fast inner loop), squares and cross products in
    uint16 (255 * 255 fits); totals in uint32 where no image can overflow it (P * 65025 < 2**32), else int64."""
    C, n, p = planes.shape
    acc = np.uint32 if p < 65536 else np.int64
    wide = planes.astype(np.uint16)
    products = {}
    for i in range(C):
        for j in range(i, C) if cross else (i,):
            products[i, j] = (wide[i] * wide[j]).sum(axis=1, dtype=acc).astype(np.int64)
    r = {"count": np.full((n, C), p, np.int64), "total": planes.sum(axis=2, dtype=acc).T.astype(np.int64),
         "total_sq": np.stack([products[c, c] for c in range(C)], axis=1),
         "vmin": planes.min(axis=2).T.astype(np.int64), "vmax": planes.max(axis=2).T.astype(np.int64),
         "cross": np.zeros((n, C, C) if cross else (n, 1, 1), np.int64)}
    for (i, j), v in products.items() if cross else ():
        r["cross"][:, i, j] = r["cross"][:, j, i] = v
    return r
