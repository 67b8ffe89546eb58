"""The CPU backend: numba loops over the canonical chunk, exact for integers, float64 for floats.

Each batch becomes a ``ChannelStats`` that the reducer merges (see ``MergingReducer``); nothing
is kept on failure. uint8 moments come from vectorized exact sums (``u8_sums``), or from per-channel
histograms (``hist_u8``) when a histogram is asked for; both read every byte once. Other integers
and per-image/covariance requests use exact per-image integer totals (``int_rows``); floats use
per-image corrected two-pass float64 moments (the mean as a double-double) merged with the
compensated Chan formula (:func:`gpustats.numerics.chan_merge_rows`; docs/design.md, "The state and
its numeric rules").
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..batches import InputError
from ..numerics import INTEGER_DTYPES, Moments, chan_merge_rows, exact_moments, range_ends
from ..stats import ChannelStats, ImageMoments
from . import MergingReducer, Options
from .cpu_loops import Loops
from .int_state import U8_RANGE, hist_rows, int_state, sums_rows

if TYPE_CHECKING:  # torch loads with the first chunk: decode workers reducing small images never import it
    import torch

    from ..batches import Chunk

__all__ = ["CpuReducer", "NonFiniteError", "RgbxSink", "SMALL_PART", "check_nonfinite", "float_hist_spec", "numpy_chunk",
           "image_moments"]


class NonFiniteError(InputError):
    """A batch holds NaN or inf under ``nan_policy="raise"``."""


def check_nonfinite(bad: np.ndarray, batch_index: int) -> None:
    """Raise the ``nan_policy="raise"`` error for per-channel non-finite counts ``bad``."""
    if bad.sum() > 0:
        channels = [int(c) for c in np.nonzero(bad)[0]]
        raise NonFiniteError(
            f"batch {batch_index} has {int(bad.sum())} non-finite values (NaN or inf) in channel(s) {channels}; "
            "pass nan_policy='omit' to leave them out or nan_policy='propagate' to get NaN/inf results"
        )


def float_hist_spec(options: Options, dtype: str) -> tuple[int, float, float]:
    """``(bins, lo, hi)`` for a histogram of non-uint8 data, or a clear error when not given."""
    if options.hist_bins is None or options.hist_range is None:
        raise InputError(
            f"histogram=True on {dtype} data needs hist_bins=... and hist_range=(lo, hi) in raw input units "
            "(only uint8 data has the natural 256 bins)"
        )
    lo, hi = options.hist_range
    return int(options.hist_bins), float(lo), float(hi)


def out_of_range_error(below: int, above: int, lo: float, hi: float, batch_index: int) -> InputError:
    return InputError(
        f"batch {batch_index} has {below} values below and {above} above hist_range=({lo}, {hi}); "
        "widen hist_range or pass clip=True to count them in the edge bins"
    )


#: parts smaller than this (values) are joined into one strip (measured: gpustats.tuning.SMALL_PART)
from ..tuning import SMALL_PART  # noqa: E402


def _coalesce(chunk: Chunk) -> list:
    """The chunk's parts, with the small ones joined into one ``[1, C, P]``/``[1, P, C]`` strip.

    Only valid when image boundaries do not matter (no per-image statistics): a list of many
    small variable-size images then costs one kernel call instead of one per image. Parts are torch
    tensors, or numpy arrays (the decode workers' chunks, :func:`numpy_chunk`); the strip is of the same kind.
    """
    is_small = [math.prod(p.shape) < SMALL_PART for p in chunk.parts]  # values (tensor or array alike)
    small = [p for p, s in zip(chunk.parts, is_small) if s]
    if len(small) < 2:
        return list(chunk.parts)
    large = [p for p, s in zip(chunk.parts, is_small) if not s]
    if isinstance(small[0], np.ndarray):  # numpy_chunk's parts: always "PC"
        return large + [np.concatenate([p.reshape(-1, chunk.channels) for p in small])[None]]
    import torch

    if chunk.layout == "CP":
        strip = torch.cat([p.permute(1, 0, 2).reshape(chunk.channels, -1) for p in small], dim=1).unsqueeze(0)
    else:
        strip = torch.cat([p.reshape(-1, chunk.channels) for p in small], dim=0).unsqueeze(0)
    return large + [strip]


def numpy_chunk(images: list[np.ndarray], stacked: bool = False) -> Chunk | None:
    """A chunk of ``HWC`` uint8 images (``stacked``: one ``[N, H, W, C]`` array) with numpy parts, as
    ``BatchAdapter("HWC")`` (``"NHWC"``) would make it with torch tensors: one ``[1, H*W, C]`` part per
    image (``[N, H*W, C]``), layout ``"PC"``, empty images dropped. The decode workers' batches come this
    way, so that reducing them with numba's loops never imports torch. None when the arrays are anything
    else (the caller then uses the adapter)."""
    from ..batches import Chunk

    rank = 4 if stacked else 3
    if not images or any(a.dtype != np.uint8 or a.ndim != rank for a in images):
        return None
    parts = [a.reshape(a.shape[0], -1, a.shape[3]) if stacked else a.reshape(1, -1, a.shape[2]) for a in images]
    channels = int(parts[0].shape[2])
    if any(int(p.shape[2]) != channels for p in parts):
        return None
    return Chunk(tuple(p for p in parts if p.size > 0), "PC", "uint8", channels)


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` as a read-only view (no copy). The loops only read their input, and numba compiles a loop
    once per argument type, writable and read-only arrays being two: so every input is passed
    read-only, and the loop a process compiled (or warmed up) is the one its decode workers run
    (decoders hand out read-only pixels)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _numpy_parts(chunk: Chunk, widen: bool, keep_images: bool) -> list[np.ndarray]:
    """The chunk's parts as read-only numpy arrays (:func:`readonly`)."""
    parts = list(chunk.parts) if keep_images else _coalesce(chunk)
    if all(isinstance(p, np.ndarray) for p in parts):  # numpy_chunk's parts: uint8, nothing to widen or move
        return [readonly(p) for p in parts]
    import torch

    arrays = []
    for p in parts:
        p = p.detach()
        if p.device.type != "cpu":
            p = p.cpu()
        if widen and p.dtype in (torch.float16, torch.bfloat16):
            p = p.float()  # numba has no half types on the CPU; exact widening
        arrays.append(readonly(p.numpy()))
    return arrays


def _threads(threads: int | None) -> int:
    """``threads``, or numba's thread count setting (``NUMBA_NUM_THREADS``, default: the CPUs this
    process may use): read from numba's configuration (which starts no threads) once numba is loaded,
    else as numba would read it (a call that runs numpy's twins alone does not import numba)."""
    if threads is not None:
        return threads
    if "numba" in sys.modules:
        from numba.core import config

        return max(1, int(config.NUMBA_NUM_THREADS))
    setting = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if setting.isdigit():
        return max(1, int(setting))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# values per thread from which a loop runs in several threads (measured: gpustats.tuning.PER_THREAD)
from ..tuning import HIST_BLOCK  # noqa: E402
from ..tuning import PER_THREAD as _PER_THREAD  # noqa: E402


def in_threads(call: Callable[[int, int], None], threads: int) -> None:
    """``call(t, threads)`` for ``t`` in ``range(threads)``: ``t = 0`` in this thread, the others in
    Python threads, joined before returning (the loops release the GIL, so the threads run in
    parallel; no thread outlives the call, so forking later stays safe). The first error is raised."""
    if threads <= 1:
        call(0, 1)
        return
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            call(t, threads)
        except BaseException as exc:  # pragma: no cover - the loops do not raise
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(t,), name=f"gpustats-cpu-{t}", daemon=True) for t in range(1, threads)]
    for thread in pool:
        thread.start()
    run(0)
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]


def _split(values: int, items: int, threads: int | None) -> int:
    """Threads for a loop over ``values`` values in ``items`` independent work items (rows or blocks)."""
    return max(1, min(_threads(threads), items, values // _PER_THREAD))


def _int_rows(loops: Loops, arrays: list[np.ndarray], cp: bool, channels: int, cross: bool, hist: np.ndarray | None,
              threads: int | None = None) -> dict:
    """Exact per-image int64 rows [K, C] of count, total, total_sq, vmin, vmax (and cross [K, C, C]).

    ``hist`` ([C, 256], uint8 input): the images' histograms are added to it in the same pass.
    """
    rows = {name: [] for name in ("count", "total", "total_sq", "vmin", "vmax", "cross")}
    for a in arrays:
        n = a.shape[0]
        out = [np.zeros((n, channels), np.int64) for _ in range(5)]
        products = np.zeros((n, channels, channels) if cross else (1, 1, 1), np.int64)
        hist_rows = np.zeros((n, channels, 256) if hist is not None else (1, 1, 1), np.int64)
        if a.dtype == np.uint8 and not cross and hist is None:  # sums alone: their own (vectorized) loop
            loop = loops.get("u8_sum_rows", a.size)
            in_threads(lambda t, m: loop(a, cp, *out, t, m), _split(a.size, n, threads))
        else:
            loop = loops.get("int_rows", a.size)
            in_threads(lambda t, m: loop(a, cp, cross, hist is not None, *out, products, hist_rows, t, m),
                       _split(a.size, n, threads))
        for name, arr in zip(rows, [*out, products]):
            rows[name].append(arr)
        if hist is not None:
            hist += hist_rows.sum(axis=0)
    return {name: np.concatenate(v) for name, v in rows.items()}


def _float_rows(loops: Loops, arrays: list[np.ndarray], cp: bool, channels: int, cross: bool,
                threads: int | None = None) -> dict:
    """Per-image float64 rows [K, C]: count, mean, mean_lo, m2, vmin, vmax, nan, posinf, neginf (+ comoment)."""
    names = ("count", "mean", "mean_lo", "m2", "vmin", "vmax", "nan", "posinf", "neginf")
    rows = {name: [] for name in (*names, "comoment")}
    for a in arrays:
        n = a.shape[0]
        out = [np.zeros((n, channels), np.int64 if name in ("count", "nan", "posinf", "neginf") else np.float64)
               for name in names]
        com = np.zeros((n, channels, channels) if cross else (1, 1, 1), np.float64)
        loop = loops.get("float_rows", a.size)
        in_threads(lambda t, m: loop(a, cp, cross, *out, com, t, m), _split(a.size, n, threads))
        for name, arr in zip(rows, [*out, com]):
            rows[name].append(arr)
    return {name: np.concatenate(v) for name, v in rows.items()}


def image_moments(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    """Per-image ``(count, mean, M2, nonfinite, totals)``, each [K, C], raw units, for every image of ``chunk``.

    The CPU backend's own per-image rule: exact integer totals rounded once
    (:func:`~gpustats.numerics.exact_moments`) for integer data, corrected two-pass float64 for
    floats (non-finite values left out and counted in ``nonfinite``). ``totals``: the exact integer
    ``(sum, sum of squares)`` of integer data (int64 [K, C] each), None for floats. Used by sampling.
    """
    cp = chunk.layout == "CP"
    if chunk.dtype in INTEGER_DTYPES:
        parts = _numpy_parts(chunk, widen=False, keep_images=True)
        r = _int_rows(Loops(), parts, cp, chunk.channels, False, None)
        mean, m2 = exact_moments(r["count"], r["total"], r["total_sq"])
        return (r["count"], np.where(r["count"] > 0, mean, 0.0), m2, np.zeros_like(r["count"]),
                (r["total"], r["total_sq"]))
    r = _float_rows(Loops(), _numpy_parts(chunk, widen=True, keep_images=True), cp, chunk.channels, False)
    return r["count"], r["mean"], r["m2"], r["nan"] + r["posinf"] + r["neginf"], None


def _fresh_sums(channels: int) -> np.ndarray:
    """``u8_sums``' empty totals ([5, C]: count, sum, sum of squares 0; min 255; max 0)."""
    sums = np.zeros((5, channels), np.int64)
    sums[3] = 255
    return sums


class RgbxSink:
    """Reduces RGB images held 4 bytes a pixel (``[H, W, 4]`` C-contiguous uint8, the fourth byte not a
    channel: a decoder's pixels read in place, without copying them into 3-byte pixels) one at a time,
    so that each is reduced while its memory is hot and can then be freed (a batch of them held until
    its end measured 20% slower: fresh memory for every image); :meth:`state` is then bitwise
    :meth:`CpuReducer.reduce_chunk`'s state of their RGB pixels as uint8 ``HWC``. For co-moments (with
    any other statistic): without them Pillow's own histogram serves (:mod:`gpustats.sources.reduce_tasks`)."""

    def __init__(self, options: Options):
        if not options.covariance:
            raise ValueError("RgbxSink makes co-moments; without them use CpuReducer.reduce_chunk")
        from . import cpu_int_loops  # numba loads here (without torch: decode workers make sinks)

        self._loops, self.options = cpu_int_loops, options
        self.images = 0
        self.rows: list[list[np.ndarray]] = []  # each image's rows, as _int_rows makes them

    def add(self, image: np.ndarray) -> None:
        self.images += 1
        x = readonly(image.reshape(1, -1, 4))
        row = [np.zeros((1, 3), np.int64) for _ in range(5)] + [np.zeros((1, 3, 3), np.int64)]
        hist = np.zeros((1, 3, 256) if self.options.histogram else (1, 1, 1), np.int64)
        self._loops.rgbx_rows_here(x, self.options.histogram, *row, hist)
        self.rows.append(row + [hist])

    def state(self, scale: float) -> ChannelStats | None:
        """The state of the images added (None when there were none)."""
        opts = self.options
        if not self.images:
            return None
        names = ("count", "total", "total_sq", "vmin", "vmax", "cross", "hist")
        r = {name: np.concatenate([row[i] for row in self.rows]) for i, name in enumerate(names)}
        hist = r.pop("hist").sum(axis=0) if opts.histogram else None
        return int_state(r, dtype="uint8", scale=scale, covariance=True, per_image=opts.per_image, hist=hist)


class CpuReducer(MergingReducer):
    """Reduce batches on the CPU with numba loops, or their numpy twins until numba pays (the strategy
    is always "numba": the twins give the same bits; :mod:`.cpu_loops`)."""

    name = "cpu"
    strategy = "numba"

    def __init__(self, device: torch.device, options: Options, threads: int | None = None, loops: str | None = None):
        """``threads``: threads per call (``None``: numba's thread count setting at each call; 1: one, as
        decode workers do, which are the parallelism themselves). ``loops``: ``"auto"``, ``"numba"`` or
        ``"numpy"`` (:mod:`.cpu_loops`; ``None``: the ``GPUSTATS_CPU_LOOPS`` setting, else ``"auto"``)."""
        super().__init__(device, options)
        self._loops = Loops(loops)  # numba loads with the first loop that needs it, not at import gpustats
        self.threads = threads

    def _blocks(self, a: np.ndarray, cp: bool) -> int:
        """Threads for one uint8 loop over ``a`` (work items: one pixel block of one row)."""
        length = a.shape[2] if cp else a.shape[1]
        return _split(a.size, a.shape[0] * -(-length // HIST_BLOCK), self.threads)

    def _per_thread(self, a: np.ndarray, cp: bool, loop: Callable, first: np.ndarray) -> list[np.ndarray]:
        """``loop(a, cp, out, t, threads)`` in :func:`in_threads`, each thread into its own copy of
        ``first`` (``first`` itself for thread 0); returns the outputs to combine."""
        threads = self._blocks(a, cp)
        outs = [first] + [first.copy() for _ in range(threads - 1)]
        in_threads(lambda t, m: loop(a, cp, outs[t], t, m), threads)
        return outs

    def reduce_chunk(self, chunk: Chunk, scale: float, batch_index: int) -> ChannelStats:
        if chunk.dtype in INTEGER_DTYPES:
            return self._reduce_int(chunk, scale, batch_index)
        return self._reduce_float(chunk, scale, batch_index)

    def _histogram(self, chunk: Chunk, arrays: list[np.ndarray], batch_index: int) -> tuple[np.ndarray, tuple, np.ndarray | None]:
        """Per-channel histogram, its raw range and the exact counts at the range's ends ([C, 2]).

        uint8: 256 exact one-value bins (the end counts are its first and last bins: None);
        other data: the user's bins, and the end counts tracked apart (bins may hold several values).
        """
        cp = chunk.layout == "CP"
        if chunk.dtype == "uint8":
            hist = np.zeros((chunk.channels, 256), np.int64)
            for a in arrays:
                parts = self._per_thread(a, cp, self._loops.get("hist_u8", a.size), np.zeros_like(hist))
                hist += sum(parts)
            return hist, U8_RANGE, None
        bins, lo, hi = float_hist_spec(self.options, chunk.dtype)
        low_end, high_end = range_ends(lo, hi, chunk.dtype)
        hist = np.zeros((chunk.channels, bins), np.int64)
        ends = np.zeros((chunk.channels, 2), np.int64)
        for a in arrays:
            below, above = self._loops.get("hist_float", a.size)(a, cp, lo, hi, bins, self.options.clip, hist,
                                                                 low_end, high_end, ends)
            if (below or above) and not self.options.clip:
                raise out_of_range_error(below, above, lo, hi, batch_index)
        return hist, (lo, hi), ends

    # ----------------------------------------------------------------- integers
    def _reduce_int(self, chunk: Chunk, scale: float, batch_index: int) -> ChannelStats:
        opts, C = self.options, chunk.channels
        cp = chunk.layout == "CP"
        arrays = _numpy_parts(chunk, widen=False, keep_images=opts.per_image)
        rows_needed = opts.per_image or opts.covariance
        if chunk.dtype == "uint8" and not rows_needed and not opts.histogram \
                and all(a.flags.c_contiguous for a in arrays):
            sums = _fresh_sums(C)
            for a in arrays:  # vectorized exact sums: twice the histogram's speed
                for part in self._per_thread(a, cp, self._loops.get("u8_sums", a.size), _fresh_sums(C)):
                    sums[:3] += part[:3]
                    sums[3] = np.minimum(sums[3], part[3])
                    sums[4] = np.maximum(sums[4], part[4])
            return int_state(sums_rows(sums), dtype="uint8", scale=scale)
        if chunk.dtype == "uint8" and not rows_needed:
            # the histogram alone gives exact count, sums, min and max: one fast pass
            hist, _, _ = self._histogram(chunk, arrays, batch_index)
            return int_state(hist_rows(hist[None]), dtype="uint8", scale=scale, hist=hist if opts.histogram else None)
        fused_hist = opts.histogram and chunk.dtype == "uint8"  # built in the same pass as the rows
        hist, hist_range, ends = (None, None, None)
        if opts.histogram and not fused_hist:
            hist, hist_range, ends = self._histogram(chunk, arrays, batch_index)
        if fused_hist:
            hist, hist_range = np.zeros((C, 256), np.int64), U8_RANGE
        r = _int_rows(self._loops, arrays, cp, C, opts.covariance, hist if fused_hist else None, self.threads)
        return int_state(r, dtype=chunk.dtype, scale=scale, covariance=opts.covariance, per_image=opts.per_image,
                         hist=hist, hist_range=hist_range, hist_ends=ends)

    # ----------------------------------------------------------------- floats
    def _reduce_float(self, chunk: Chunk, scale: float, batch_index: int) -> ChannelStats:
        opts, C = self.options, chunk.channels
        cp = chunk.layout == "CP"
        arrays = _numpy_parts(chunk, widen=True, keep_images=opts.per_image)
        r = _float_rows(self._loops, arrays, cp, C, opts.covariance, self.threads)
        nan, pos, neg = (r[n].sum(axis=0) for n in ("nan", "posinf", "neginf"))
        bad = nan + pos + neg
        if opts.nan_policy == "raise":
            check_nonfinite(bad, batch_index)
        hist, hist_range, ends = self._histogram(chunk, arrays, batch_index) if opts.histogram else (None, None, None)
        merged = chan_merge_rows(Moments(r["count"], r["mean"], r["m2"], r["mean_lo"],
                                         r["comoment"] if opts.covariance else None))
        count, mean, m2, mean_lo, comoment = merged
        vmin = r["vmin"].min(axis=0)
        vmax = r["vmax"].max(axis=0)
        images = None
        if opts.per_image:  # every image, counted per channel where it has finite values
            images = ImageMoments.from_images(r["count"], r["mean"], r["m2"], r["mean_lo"])
        if opts.nan_policy == "propagate" and bad.sum() > 0:
            count = count + bad
            inf_mean = np.where(pos > 0, np.inf, -np.inf)
            mean = np.where(bad > 0, np.where((nan > 0) | ((pos > 0) & (neg > 0)), np.nan, inf_mean), mean)
            m2 = np.where(bad > 0, np.nan, m2)
            mean_lo = np.where(bad > 0, 0.0, mean_lo)
            vmin = np.where(nan > 0, np.nan, np.where(neg > 0, -np.inf, vmin))
            vmax = np.where(nan > 0, np.nan, np.where(pos > 0, np.inf, vmax))
            if comoment is not None:
                comoment = np.full_like(comoment, np.nan)
        return ChannelStats.from_moments(
            count, mean, m2, vmin, vmax, dtype=chunk.dtype, scale=scale, nonfinite=bad, hist=hist,
            hist_range=hist_range, comoment=comoment, images=images, mean_lo=mean_lo, hist_ends=ends,
        )
