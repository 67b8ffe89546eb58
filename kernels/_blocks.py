"""Block-level combines shared by the strategies: shared-memory trees (sums, mins, Chan merges of
(n, mean, M2)) and the block-private shared-memory histogram.

Every combine has a fixed shape for a given number of threads, so results are bitwise reproducible.
"""

from __future__ import annotations

import functools

from numba import cuda, float64, int64

from ._common import HIST_BINS, device_function

# Elements of one shared combine buffer: a block reduces GROUP = SHARED_SLOTS // threads values per
# pass, so a combine costs ceil(K / GROUP) tree passes rather than K (fewer barriers).
SHARED_SLOTS = 1024


def group_size(threads: int, slots: int = SHARED_SLOTS) -> int:
    return max(1, slots // threads)


@device_function
def _add(a, b):
    return a + b


@device_function
def _min(a, b):
    return min(a, b)


def make_block_tree(threads: int, put, merge, take, slots: int = SHARED_SLOTS):
    """``combine(bufs, tid, vals, k)``: a fixed-shape shared-memory tree over the block.

    The combine of every strategy, for any per-slot state: ``put(bufs, slot, vals, i)`` copies a
    thread's entry ``i`` of ``vals`` into shared slot ``slot`` of ``bufs``, ``merge(bufs, a, b)``
    folds slot ``b`` into slot ``a``, ``take(bufs, slot, vals, i)`` copies back (thread 0 only).
    ``bufs``/``vals`` are whatever those three understand (an array, or a tuple of arrays: the
    Welford strategy combines ``(n, mean, M2)`` triples). The first ``k`` entries are combined,
    ``slots // threads`` per pass (``slots``: the shared buffers' length, :data:`SHARED_SLOTS` unless
    a kernel trades passes for shared memory). Fixed order: bitwise reproducible. All threads of the
    block must call it.
    """
    TPB = threads
    GROUP = group_size(threads, slots)

    @device_function
    def combine(bufs, tid, vals, k):
        base = 0
        while base < k:
            m = min(GROUP, k - base)
            for q in range(m):
                put(bufs, q * TPB + tid, vals, base + q)
            cuda.syncthreads()
            step = TPB // 2
            while step > 0:
                if tid < step:
                    for q in range(m):
                        merge(bufs, q * TPB + tid, q * TPB + tid + step)
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                for q in range(m):
                    take(bufs, q * TPB, vals, base + q)
            cuda.syncthreads()
            base += GROUP

    return combine


@device_function
def _put(buf, slot, vals, i):
    buf[slot] = vals[i]


@device_function
def _take(buf, slot, vals, i):
    vals[i] = buf[slot]


def _make_block_tree(threads: int, op, slots: int = SHARED_SLOTS):
    """``combine(buf, tid, vals, k)``: :func:`make_block_tree` of the element-wise ``op``."""

    @device_function
    def merge(buf, a, b):
        buf[a] = op(buf[a], buf[b])

    return make_block_tree(threads, _put, merge, _take, slots)


@device_function
def chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.: the merge of two ``(n, mean, M2)`` summaries (float64), either may be empty.

    The device form of :func:`gpustats.numerics.chan_merge` (which the host uses for everything
    the kernels hand over); used by the Welford strategy for its runs, threads and blocks.
    """
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    weight_b = float64(n_b) / float64(n)
    return n, mean_a + delta * weight_b, m2_a + m2_b + delta * delta * float64(n_a) * weight_b


@functools.lru_cache(maxsize=None)
def make_block_ops(threads: int, slots: int = SHARED_SLOTS):
    """Shared-memory tree combines over a block of ``threads`` (a power of two).

    ``block_sum(buf, tid, vals, k)`` and ``block_min(buf, tid, vals, k)`` combine the first ``k``
    entries of every thread's local array ``vals`` element-wise across the block; thread 0's
    ``vals`` then holds the block's results (other threads' are left as they were). ``buf`` is a
    shared array of ``slots`` elements of the values' type (:data:`SHARED_SLOTS` by default; fewer
    slots, down to ``threads``, mean more passes and less shared memory per block, the same
    additions in the same order). Fixed order: bitwise reproducible. All threads of the block must
    call them.

    ``block_totals(sh_count, sh_sum, sh_min, tid, tally, bank, mins, k)`` runs the three combines
    of a thread's ``tally``/``bank``/``mins`` (see ``_thread``) in the order every strategy uses.
    """
    block_sum = _make_block_tree(threads, _add, slots)
    block_min = _make_block_tree(threads, _min, slots)

    @device_function
    def block_totals(sh_count, sh_sum, sh_min, tid, tally, bank, mins, k):
        block_sum(sh_count, tid, tally, k)
        block_sum(sh_sum, tid, bank, k)
        block_min(sh_min, tid, mins, k)

    return block_sum, block_min, block_totals


@functools.lru_cache(maxsize=None)
def make_hist_ops(channels: int, threads: int):
    """``(hist_zero, hist_flush)`` for a block-private ``int32[channels * HIST_BINS]`` shared histogram.

    ``hist_zero(private, tid)`` clears it and syncs the block; ``hist_flush(private, tid, out)``
    syncs the block, then adds its non-zero bins into the int64 ``out[c, bin]`` with one global
    atomic per bin. All threads of the block must call them.
    """
    HS = channels * HIST_BINS
    TPB = threads
    BINS = HIST_BINS

    @device_function
    def hist_zero(private, tid):
        i = tid
        while i < HS:
            private[i] = 0
            i += TPB
        cuda.syncthreads()

    @device_function
    def hist_flush(private, tid, out):
        cuda.syncthreads()
        i = tid
        while i < HS:
            h = private[i]
            if h > 0:
                cuda.atomic.add(out, (i // BINS, i % BINS), int64(h))
            i += TPB

    return hist_zero, hist_flush
