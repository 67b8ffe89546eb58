"""Exact states of small uint8 images with numpy alone: the CPU backend's integers without numba.

Loading numba's compiled loops costs a process ~0.4 s (importing numba, then its typing and
lowering registries on the first call), which is a fifth of a 20,000-file run of 32x32 PNGs. A
decode process that only ever meets small images therefore reduces them here: the same exact
integers (per-channel histograms from ``np.bincount``, sums and sums of squares from them, cross
products in uint16), given to the CPU backend's own state builders, so the state is bitwise the
one :class:`~gpustats.backends.cpu.CpuReducer` makes (tested). Per image it costs a few
microseconds more than the numba loops, so processes that reduce many images load numba instead
(:mod:`gpustats.sources.mapside` decides).

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
from .cpu import _SMALL_PART, _VALUES, int_state_from_rows, u8_state_from_hist

__all__ = ["small_u8_state", "is_small_u8"]

_SQUARES = _VALUES * _VALUES


def is_small_u8(arrays: list[np.ndarray]) -> bool:
    """True when every array is a small ``[H, W, C]`` uint8 image (one channel count): this module's case."""
    return bool(arrays) and all(a.dtype == np.uint8 and a.ndim == 3 and a.size < _SMALL_PART
                                and a.shape[2] == arrays[0].shape[2] for a in arrays)


def small_u8_state(arrays: list[np.ndarray], options: Options, scale: float) -> ChannelStats:
    """The exact state of small ``[H, W, C]`` uint8 images (:func:`is_small_u8`), with the histogram,
    co-moments and per-image statistics ``options`` asks for."""
    C = arrays[0].shape[2]
    if not (options.per_image or options.covariance):
        strip = arrays[0].reshape(-1, C) if len(arrays) == 1 else np.concatenate([a.reshape(-1, C) for a in arrays])
        hist = np.stack([np.bincount(strip[:, c], minlength=256) for c in range(C)]).astype(np.int64)
        return u8_state_from_hist(hist, scale, keep=options.histogram)
    if not options.per_image:  # co-moments of all pixels: one block of one "image"
        blocks = [np.concatenate([a.reshape(1, -1, C) for a in arrays], axis=1)]
    elif all(a.shape == arrays[0].shape for a in arrays):
        blocks = [np.stack(arrays).reshape(len(arrays), -1, C)]  # CIFAR-like: one [N, P, C] block
    else:
        blocks = [a.reshape(1, -1, C) for a in arrays]
    rows = [_rows(block, options.covariance) for block in blocks]
    r = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
    hist = r.pop("hist").sum(axis=0) if options.histogram else None
    return int_state_from_rows(r, dtype="uint8", scale=scale, covariance=options.covariance,
                               per_image=options.per_image, hist=hist,
                               hist_range=(0.0, 256.0) if options.histogram else None)


def _rows(block: np.ndarray, cross: bool) -> dict:
    """Exact int64 rows of the ``[N, P, C]`` uint8 images of ``block``: count, total, total_sq, vmin,
    vmax ([N, C]), cross ([N, C, C]) and each image's histograms ([N, C, 256])."""
    n, p, C = block.shape
    base = (np.arange(n, dtype=np.int32)[:, None, None] * C + np.arange(C, dtype=np.int32)) * 256
    hist = np.bincount((block + base).ravel(), minlength=n * C * 256).reshape(n, C, 256).astype(np.int64)
    seen = hist > 0
    r = {"count": np.full((n, C), p, np.int64), "total": hist @ _VALUES, "total_sq": hist @ _SQUARES,
         "vmin": seen.argmax(axis=2).astype(np.int64), "vmax": 255 - seen[:, :, ::-1].argmax(axis=2).astype(np.int64),
         "cross": np.zeros((n, C, C) if cross else (n, 1, 1), np.int64), "hist": hist}
    if cross:
        for i in range(C):
            r["cross"][:, i, i] = r["total_sq"][:, i]
            for j in range(i + 1, C):  # x_i * x_j <= 65025: exact in uint16
                r["cross"][:, i, j] = r["cross"][:, j, i] = \
                    (block[:, :, i].astype(np.uint16) * block[:, :, j]).sum(axis=1, dtype=np.int64)
    return r
