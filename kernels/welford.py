"""Strategy ``welford``: per-thread Welford ``(n, mean, M2)``, merged with Chan's formula all the way.

Float input: each thread runs Welford's update on ``d = x - shift[c]`` in the run type over at
most ``RUN_LENGTH`` pixels, then Chan-merges the run into its float64 ``(n, mean, M2)`` (the
shared thread loop of ``_thread`` with ``welford=True``). Blocks Chan-merge their threads with
the shared fixed-shape block tree (``_blocks.make_block_tree``) and store per-block partials;
a one-thread-per-channel kernel Chan-merges the blocks in block order and then into a running
device summary, :func:`moments_of` ``(n, mean of d, M2)`` per channel. M2 is never a difference
of large sums, so this strategy is a numerically independent check of the sum-based ones: the
CUDA backend builds its state from this summary (``gpustats.numerics.moments_from_shifted_mean``)
and Chan-merges it with everything else (``gpustats.numerics.chan_merge``).

The running summary lives beside the :class:`~gpustats.kernels.Accumulators` (its work arrays,
``acc.scratch``; a fresh ``Accumulators`` starts it empty and ``reset()`` empties it). So that
every strategy keeps the accumulators' documented contract (``count``, ``fsum``/``fsumsq`` of
``d``, ``nonfinite``, ``vmin``/``vmax``, which generic readers such as the benchmarks use), the
merge kernel also adds each launch's summary there in sum form (``n``, ``n*mean``,
``M2 + n*mean**2``); nothing in gpustats reads welford's results from those sums. Like ``tree``
the result is bitwise reproducible for a fixed launch configuration.

Integer input is summed exactly instead (Welford's divisions would spoil exactness); it runs
the ``tree`` kernels, so all strategies agree to the bit on uint8/uint16.
"""

from __future__ import annotations

import functools

from numba import cuda, float64, int64

from . import tree
from ._blocks import SHARED_SLOTS, chan, make_block_ops, make_block_tree
from ._common import (
    device_function,
    is_integer,
    prepare_pixels,
    refuse_extras,
)
from ._thread import make_accumulate
from .accumulators import synchronize

NAME = "welford"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset()


@functools.lru_cache(maxsize=None)
def _make_block_chan(threads: int, channels: int):
    """``block_chan((sh_n, sh_bad, sh_mean, sh_m2), tid, (tally, bank), C)``: the block's Welford summaries.

    Chan-merges every thread's ``(tally[c], bank[c], bank[C + c])`` and adds its non-finite counts
    ``tally[C + c]``; thread 0 gets the block's values.
    """
    C = channels

    @device_function
    def put(bufs, slot, vals, c):
        sh_n, sh_bad, sh_mean, sh_m2 = bufs
        tally, bank = vals
        sh_n[slot] = tally[c]
        sh_bad[slot] = tally[C + c]
        sh_mean[slot] = bank[c]
        sh_m2[slot] = bank[C + c]

    @device_function
    def merge(bufs, a, b):
        sh_n, sh_bad, sh_mean, sh_m2 = bufs
        sh_n[a], sh_mean[a], sh_m2[a] = chan(sh_n[a], sh_mean[a], sh_m2[a], sh_n[b], sh_mean[b], sh_m2[b])
        sh_bad[a] += sh_bad[b]

    @device_function
    def take(bufs, slot, vals, c):
        sh_n, sh_bad, sh_mean, sh_m2 = bufs
        tally, bank = vals
        tally[c] = sh_n[slot]
        tally[C + c] = sh_bad[slot]
        bank[c] = sh_mean[slot]
        bank[C + c] = sh_m2[slot]

    return make_block_tree(threads, put, merge, take)


@functools.lru_cache(maxsize=None)
def _build(dtype_tag, layout, channels, threads, run=None):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    SLOTS = SHARED_SLOTS
    accumulate_welford = make_accumulate(dtype_tag, layout, C, run=run, welford=True)[1]
    block_min = make_block_ops(threads)[1]
    block_chan = _make_block_chan(threads, C)

    @cuda.jit
    def partial_kernel(x, shift, part_n, part_moments, part_min):
        tid = cuda.threadIdx.x
        sh_n = cuda.shared.array(SLOTS, int64)
        sh_bad = cuda.shared.array(SLOTS, int64)
        sh_mean = cuda.shared.array(SLOTS, float64)
        sh_m2 = cuda.shared.array(SLOTS, float64)
        tally = cuda.local.array(C2, int64)
        bank = cuda.local.array(C2, float64)
        mins = cuda.local.array(C2, float64)
        accumulate_welford(x, shift, tally, bank, mins)
        block_chan((sh_n, sh_bad, sh_mean, sh_m2), tid, (tally, bank), C)
        block_min(sh_mean, tid, mins, C2)
        if tid == 0:  # row b: n and non-finite counts, mean and M2 of d, min and -max
            b = cuda.blockIdx.x
            for k in range(C2):
                part_n[b, k] = tally[k]
                part_moments[b, k] = bank[k]
                part_min[b, k] = mins[k]

    @cuda.jit
    def merge_kernel(blocks, part_n, part_moments, part_min, run_count, nonfinite, run_mean, run_m2, vmin, vmax,
                     count, fsum, fsumsq):
        """Blocks in order, then into the running summary ``(run_count, run_mean, run_m2)``; the
        launch's summary is also added to the accumulators in their sum form (``count``, ``fsum``,
        ``fsumsq``), the contract every strategy keeps."""
        c = cuda.grid(1)
        if c < C:
            t_n = int64(0)
            t_mean = float64(0)
            t_m2 = float64(0)
            t_bad = int64(0)
            t_min = vmin[c]
            t_max = vmax[c]
            for b in range(blocks):
                t_bad += part_n[b, C + c]
                if part_n[b, c] > 0:
                    t_n, t_mean, t_m2 = chan(t_n, t_mean, t_m2, part_n[b, c], part_moments[b, c], part_moments[b, C + c])
                    t_min = min(t_min, part_min[b, c])
                    t_max = max(t_max, -part_min[b, C + c])
            run_count[c], run_mean[c], run_m2[c] = chan(run_count[c], run_mean[c], run_m2[c], t_n, t_mean, t_m2)
            nonfinite[c] += t_bad
            vmin[c] = t_min
            vmax[c] = t_max
            count[c] += t_n
            fsum[c] += float64(t_n) * t_mean
            fsumsq[c] += t_m2 + float64(t_n) * t_mean * t_mean

    return partial_kernel, merge_kernel


def _summary(acc):
    """The running device summary of ``acc``: ``(count int64[C], moments float64[2, C])`` (mean of d, M2)."""
    return (acc.scratch("welford_count", (acc.channels,), "int64"),
            acc.scratch("welford_summary", (2, acc.channels), "float64"))


def moments_of(acc) -> dict:
    """Synchronize and return the Welford summary of everything this strategy added into ``acc``.

    ``{"count": int64[C], "mean": float64[C], "m2": float64[C]}`` where ``mean`` is the mean of
    ``x - acc.shift`` (add the shift back on the host: ``numerics.moments_from_shifted_mean``); the empty
    summary (all zeros) when the strategy never reduced float input into ``acc``.
    """
    count, moments = _summary(acc)
    synchronize(acc.stream)
    summary = moments.copy_to_host()
    return {"count": count.copy_to_host(), "mean": summary[0], "m2": summary[1]}


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None):
    """Add the statistics of ``x`` into ``acc`` via Welford/Chan (module docstring)."""
    refuse_extras(NAME, histogram=histogram, cross=cross, per_image=per_image)
    if is_integer(dtype_tag):
        tree.reduce(x, layout, dtype_tag, acc, stream=stream, launch=launch, run=run)
        return
    prepared = prepare_pixels(x, layout, dtype_tag, acc, stream, launch)
    if prepared is None:
        return
    x, channels, total, blocks, threads = prepared
    partial_kernel, merge_kernel = _build(dtype_tag, layout, channels, threads, run)
    part_n = acc.scratch("welford_n", (blocks, 2 * channels), "int64")
    part_moments = acc.scratch("welford_moments", (blocks, 2 * channels), "float64")
    part_min = acc.scratch("welford_min", (blocks, 2 * channels), "float64")
    run_count, summary = _summary(acc)
    partial_kernel[blocks, threads, stream](x, acc.shift, part_n, part_moments, part_min)
    merge_kernel[1, channels, stream](
        blocks, part_n, part_moments, part_min, run_count, acc.nonfinite, summary[0], summary[1], acc.vmin, acc.vmax,
        acc.count, acc.fsum, acc.fsumsq
    )
