"""The ``vec`` strategy's uint8 kernel (dp4a, byte-pair min/max) and the one-launch finish it shares
with the 16/32-bit kernel (per-lane float32 runs: :mod:`._vec_wide`). :mod:`gpustats.kernels.vec`
documents the strategy and launches them; these modules only build them (cached by their arguments).
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float64, int32, int64, uint32

from ._blocks import SHARED_SLOTS, make_block_ops
from ._status import record_nonfinite
from ._common import (
    device_function,
    grid_next,
    simulator_enabled,
)
from ._vector import (
    ONES,
    dp4a,
    even_bytes,
    load4,
    load_cg,
    load_u8,
    max16x2,
    min16x2,
    odd_bytes,
)

#: elements per 16-byte load
VECTOR_WIDTH = {"uint8": 16, "uint16": 8, "float16": 8, "bfloat16": 8, "float32": 4}
#: uint8 vectors a thread may add into its 32-bit sums of squares before one could overflow
U8_FLUSH_VECTORS = (2**32 - 1) // (16 * 255 * 255)


# ----------------------------------------------------------------------------- walking the input


@device_function
def _walk_start(per_row):
    """This thread's index ``t`` and its first (row, vector) of the grid-stride walk over rows of
    ``per_row`` vectors (the x dimension of the grid; y picks the channel in layout CP), with the
    stride split the same way: ``(t, n, j, step_n, step_j)``; :func:`grid_next` advances ``(n, j)``."""
    t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    stride = cuda.gridDim.x * cuda.blockDim.x
    n = t // per_row
    step_n = stride // per_row
    return t, n, t - n * per_row, step_n, stride - step_n * per_row


# ----------------------------------------------------------------------------- one launch


#: an empty channel's min/max in the int64 partials of uint8 launches (float64 ones use inf)
_EMPTY = 1 << 40

@functools.lru_cache(maxsize=None)
def make_finish(channels, threads, integer):
    """``finish(...)``: combine the block, store its partial row, and let the last block merge them all.

    Every block stores one row of partials (``part[row, :]``: counts, sums, mins in three groups of
    2C; int64 for uint8, float64 otherwise), then takes a ticket; the block that takes the last one
    loads every row (``ld.global.cg``: from L2, not a stale L1 line) with a fixed assignment of rows
    to threads, combines with the same fixed tree and adds the result into ``itotals``/``ftotals``.
    One launch, no atomics on the totals, and the order of every addition is fixed by the launch
    configuration, so float totals are bitwise reproducible. The last block resets the ticket.

    ``check`` > 0 (``nan_policy="raise"``: the batch's index + 1) makes the launch all or nothing:
    when the batch holds any non-finite value the last block adds nothing to the totals and records
    the batch in the status row instead (:func:`record_nonfinite`), so a bad batch never enters the
    state and nobody waits for the device to find out. ``check == 0`` adds everything (non-finite
    values counted in ``nonfinite``, as ``nan_policy="omit"`` wants).
    """
    C = channels
    C2 = 2 * C
    INTEGER = bool(integer)
    BT = int64 if INTEGER else float64
    # on a GPU one slot per thread: 3 x threads x 8 bytes of shared memory (6 KiB at 256 threads, against
    # 24 KiB with the other strategies' SHARED_SLOTS), so shared memory never limits the resident blocks;
    # the combines take 2C passes instead of ceil(2C / 4), once per block at the end (same additions, same
    # order). The simulator keeps SHARED_SLOTS: its barriers are slow, the results the same
    # (tests/sim_vec_extras_cases.py checks the one-slot combine on its own)
    SLOTS = SHARED_SLOTS if simulator_enabled() else threads
    block_totals = make_block_ops(threads, SLOTS)[2]

    @device_function
    def store(part, row, tally, bank, mins):
        for k in range(C2):
            part[row, k] = tally[k]
            part[row, C2 + k] = bank[k]
            if INTEGER:
                part[row, 2 * C2 + k] = int64(mins[k]) if mins[k] != math.inf else _EMPTY
            else:
                part[row, 2 * C2 + k] = mins[k]

    @device_function
    def load_row(part, r, tally, bank, mins):
        width = part.shape[1] // 3  # == C2; a run-time bound keeps the compiler from unrolling 3 x C2 loads
        for k in range(width):
            tally[k] += int64(load_cg(part, r, k))
            bank[k] += load_cg(part, r, width + k)
            m = load_cg(part, r, 2 * width + k)
            if INTEGER:
                mins[k] = min(mins[k], float64(m) if m != _EMPTY else math.inf)
            else:
                mins[k] = min(mins[k], m)

    @device_function
    def finish(tid, tally, bank, mins, part, counter, itotals, ftotals, status, check):
        sh_count = cuda.shared.array(SLOTS, int64)  # the block's combine buffers (both combines below)
        sh_sum = cuda.shared.array(SLOTS, BT)
        sh_ext = cuda.shared.array(SLOTS, float64)
        flag = cuda.shared.array(1, int32)
        block_totals(sh_count, sh_sum, sh_ext, tid, tally, bank, mins, C2)
        rows = cuda.gridDim.x * cuda.gridDim.y
        if tid == 0:
            store(part, cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x, tally, bank, mins)
            cuda.threadfence()
            flag[0] = 1 if cuda.atomic.add(counter, 0, 1) == rows - 1 else 0
        cuda.syncthreads()
        if flag[0] == 0:
            return
        for k in range(C2):
            tally[k] = 0
            bank[k] = 0
            mins[k] = math.inf
        r = tid
        while r < rows:
            load_row(part, r, tally, bank, mins)
            r += cuda.blockDim.x
        block_totals(sh_count, sh_sum, sh_ext, tid, tally, bank, mins, C2)
        if tid == 0:
            bad = int64(0)
            mask = int64(0)
            for c in range(C):
                if tally[C + c] > 0:
                    bad += tally[C + c]
                    mask |= int64(1) << c
            if check > 0 and bad > 0:
                record_nonfinite(status, check, bad, mask)
                counter[0] = 0
                return
            for c in range(C):
                itotals[0, c] += tally[c]
                itotals[1, c] += tally[C + c]
                if INTEGER:
                    itotals[2, c] += bank[c]
                    itotals[3, c] += bank[C + c]
                else:
                    ftotals[0, c] += bank[c]
                    ftotals[1, c] += bank[C + c]
                ftotals[2, c] = min(ftotals[2, c], mins[c])
                ftotals[3, c] = max(ftotals[3, c], -mins[C + c])
            counter[0] = 0

    return finish


# ----------------------------------------------------------------------------- uint8


def _u8_ops(C, K):
    """``(take4, flush, tail)`` of the uint8 kernel: one 16-byte vector into a thread's 32-bit sums (dp4a,
    ``K`` channel groups) and byte-pair min/max; the sums into int64; the scalar NHWC tail (one thread)."""

    @device_function
    def take(w, k, s, sq, mn, mx, ones_m, byte_m):
        """Word ``k`` of a vector: sums by dp4a; min/max per byte lane (mn[2k]: bytes 0, 2; mn[2k+1]: 1, 3)."""
        if K == 1:
            s[0] = dp4a(w, ONES, s[0])
            sq[0] = dp4a(w, w, sq[0])
        else:
            for g in range(K):
                s[g] = dp4a(w, ones_m[k * K + g], s[g])
                sq[g] = dp4a(w, w & byte_m[k * K + g], sq[g])
        even = even_bytes(w)
        odd = odd_bytes(w)
        mn[2 * k] = min16x2(mn[2 * k], even)
        mn[2 * k + 1] = min16x2(mn[2 * k + 1], odd)
        mx[2 * k] = max16x2(mx[2 * k], even)
        mx[2 * k + 1] = max16x2(mx[2 * k + 1], odd)

    @device_function
    def take4(words, q, s, sq, mn, mx, ones_m, byte_m):
        w0, w1, w2, w3 = load4(words, q)
        take(w0, 0, s, sq, mn, mx, ones_m, byte_m)
        take(w1, 1, s, sq, mn, mx, ones_m, byte_m)
        take(w2, 2, s, sq, mn, mx, ones_m, byte_m)
        take(w3, 3, s, sq, mn, mx, ones_m, byte_m)

    @device_function
    def flush(s, sq, bank_s, bank_q):
        for g in range(K):
            bank_s[g] += int64(s[g])
            bank_q[g] += int64(sq[g])
            s[g] = 0
            sq[g] = 0

    @device_function
    def tail(bits, tail_start, total, tally, bank, mins):
        for i in range(tail_start, total):  # the scalar tail (NHWC only)
            v = int64(load_u8(bits, i))
            ch = i % C
            tally[ch] += 1
            bank[ch] += v
            bank[C + ch] += v * v
            mins[ch] = min(mins[ch], float64(v))
            mins[C + ch] = min(mins[C + ch], -float64(v))

    return take4, flush, tail


@functools.lru_cache(maxsize=None)
def build_u8(mode, channels, threads):
    C = channels
    C2 = 2 * C  # array sizes must be plain constants: numba-cuda does not fold 2 * C
    K = 1 if mode == "CP" else C  # channel groups in a thread's accumulators
    KM = 4 * K
    LIMIT = U8_FLUSH_VECTORS - 4
    finish = make_finish(C, threads, True)

    take4, flush, tail = _u8_ops(C, K)

    @cuda.jit
    def kernel(words, bits, rows, per_row, rows_per_image, tail_start, total, part, counter, itotals, ftotals,
               status, check):
        tid = cuda.threadIdx.x
        c = cuda.blockIdx.y
        t, n, j, step_n, step_j = _walk_start(per_row)
        s = cuda.local.array(K, uint32)
        sq = cuda.local.array(K, uint32)
        bank_s = cuda.local.array(K, int64)
        bank_q = cuda.local.array(K, int64)
        mn = cuda.local.array(8, uint32)
        mx = cuda.local.array(8, uint32)
        ones_m = cuda.local.array(KM, uint32)
        byte_m = cuda.local.array(KM, uint32)
        tally = cuda.local.array(C2, int64)
        bank = cuda.local.array(C2, int64)
        mins = cuda.local.array(C2, float64)
        phase = (t * 16) % C
        for g in range(K):
            s[g] = 0
            sq[g] = 0
            bank_s[g] = 0
            bank_q[g] = 0
        for k in range(8):
            mn[k] = uint32(0x00FF00FF)
            mx[k] = uint32(0)
        for k in range(4):
            for g in range(K):
                m = 0
                for b in range(4):
                    if (phase + 4 * k + b) % C == g:
                        m |= 0xFF << (8 * b)
                byte_m[k * K + g] = uint32(m)
                ones_m[k * K + g] = uint32(m & ONES)
        for k in range(C2):
            tally[k] = 0
            bank[k] = 0
            mins[k] = math.inf

        # grid-stride walk over (row n, vector j); the vector's index is (n * rows_per_image + c) * per_row + j
        done = int64(0)
        since = 0
        while True:
            n1, j1 = grid_next(n, j, step_n, step_j, per_row)
            n2, j2 = grid_next(n1, j1, step_n, step_j, per_row)
            n3, j3 = grid_next(n2, j2, step_n, step_j, per_row)
            if n3 >= rows:
                break
            take4(words, (n * rows_per_image + c) * per_row + j, s, sq, mn, mx, ones_m, byte_m)
            take4(words, (n1 * rows_per_image + c) * per_row + j1, s, sq, mn, mx, ones_m, byte_m)
            take4(words, (n2 * rows_per_image + c) * per_row + j2, s, sq, mn, mx, ones_m, byte_m)
            take4(words, (n3 * rows_per_image + c) * per_row + j3, s, sq, mn, mx, ones_m, byte_m)
            done += 4
            since += 4
            if since > LIMIT:
                flush(s, sq, bank_s, bank_q)
                since = 0
            n, j = grid_next(n3, j3, step_n, step_j, per_row)
        while n < rows:
            take4(words, (n * rows_per_image + c) * per_row + j, s, sq, mn, mx, ones_m, byte_m)
            done += 1
            n, j = grid_next(n, j, step_n, step_j, per_row)
        flush(s, sq, bank_s, bank_q)

        if done > 0:
            for k in range(4):
                for b in range(4):
                    ch = c if K == 1 else (phase + 4 * k + b) % C
                    lane = 2 * k + (b & 1)
                    half = 16 * (b >> 1)
                    tally[ch] += done
                    mins[ch] = min(mins[ch], float64((mn[lane] >> half) & 0xFF))
                    mins[C + ch] = min(mins[C + ch], -float64((mx[lane] >> half) & 0xFF))
            for g in range(K):
                ch = c if K == 1 else g
                bank[ch] += bank_s[g]
                bank[C + ch] += bank_q[g]
        if t == 0 and c == 0:
            tail(bits, tail_start, total, tally, bank, mins)

        finish(tid, tally, bank, mins, part, counter, itotals, ftotals, status, check)

    return kernel
