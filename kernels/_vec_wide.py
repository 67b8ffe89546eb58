"""The ``vec`` strategy's 16/32-bit kernel (uint16, float16, bfloat16, float32): per-lane runs in the
input's own precision (float32 for the floats, int64 for uint16), flushed into float64 (int64) banks
every ``run`` elements. :mod:`gpustats.kernels.vec` documents the strategy and launches it; the uint8
kernel and the finish both share are in :mod:`._vec_kernels`.
"""

from __future__ import annotations

import functools
import math

from numba import cuda, float64, int32, int64, uint32

from ._common import device_function, grid_next, is_integer
from ._thread import types_for
from ._vec_kernels import VECTOR_WIDTH, make_finish, _walk_start
from ._vector import f16_bits, f32_bits, load4, load_u16, load_u32

__all__ = ["build_wide"]


def _wide_decoders(dtype_tag):
    """``(decode16, decode32, all_finite)``: a 16-bit element (float16, bfloat16 or uint16) and a 32-bit one
    as values, and whether four words hold no NaN/inf (one test of their exponent fields)."""
    if dtype_tag == "float16":

        @device_function
        def decode16(h):
            return f16_bits(h)

    elif dtype_tag == "bfloat16":

        @device_function
        def decode16(h):
            return f32_bits(uint32(h) << 16)

    else:

        @device_function
        def decode16(h):
            return int64(h) & 0xFFFF

    @device_function
    def decode32(w):
        return f32_bits(w)

    # exponent bits of each element of a word, and what adding INC to them does: a field that is
    # all ones (NaN/inf) carries into the element's top bit, any other does not
    if dtype_tag == "float32":
        EXP, INC, TOP = 0x7F800000, 0x00800000, 0x80000000
    elif dtype_tag == "float16":
        EXP, INC, TOP = 0x7C007C00, 0x04000400, 0x80008000
    else:
        EXP, INC, TOP = 0x7F807F80, 0x00800080, 0x80008000

    @device_function
    def all_finite(w0, w1, w2, w3):
        flags = ((w0 & EXP) + INC) | ((w1 & EXP) + INC) | ((w2 & EXP) + INC) | ((w3 & EXP) + INC)
        return (flags & TOP) == 0

    return decode16, decode32, all_finite


def _wide_ops(dtype_tag, C, V, RT, BT, MT, decode16, decode32, all_finite):
    """``(take4, flush, tail)``: one 16-byte vector into a thread's ``V`` lanes (checked element by element
    only when its words hold a NaN/inf), the lanes' runs into the banks, the scalar NHWC tail (one thread)."""
    FLOAT = not is_integer(dtype_tag)
    HALF = V == 8

    @device_function
    def visit(v, j, hi, lo, rs, rq, mn, mx, bad, checked):
        if FLOAT:
            if checked:
                ok = math.isfinite(v)
                d = (v - hi[j]) - lo[j]
                d = d if ok else RT(0)
                mn[j] = min(mn[j], v if ok else MT(math.inf))
                mx[j] = max(mx[j], v if ok else MT(-math.inf))
                bad[j] += 0 if ok else 1
            else:
                d = (v - hi[j]) - lo[j]
                mn[j] = min(mn[j], v)
                mx[j] = max(mx[j], v)
            rs[j] += d
            rq[j] += d * d
        else:
            rs[j] += v
            rq[j] += v * v
            mn[j] = min(mn[j], v)
            mx[j] = max(mx[j], v)

    @device_function
    def take(w, k, hi, lo, rs, rq, mn, mx, bad, checked):
        if HALF:
            visit(decode16(w & 0xFFFF), 2 * k, hi, lo, rs, rq, mn, mx, bad, checked)
            visit(decode16(w >> 16), 2 * k + 1, hi, lo, rs, rq, mn, mx, bad, checked)
        else:
            visit(decode32(w), k, hi, lo, rs, rq, mn, mx, bad, checked)

    @device_function
    def take4(words, q, hi, lo, rs, rq, mn, mx, bad):
        w0, w1, w2, w3 = load4(words, q)
        if FLOAT and not all_finite(w0, w1, w2, w3):
            take(w0, 0, hi, lo, rs, rq, mn, mx, bad, True)
            take(w1, 1, hi, lo, rs, rq, mn, mx, bad, True)
            take(w2, 2, hi, lo, rs, rq, mn, mx, bad, True)
            take(w3, 3, hi, lo, rs, rq, mn, mx, bad, True)
        else:
            take(w0, 0, hi, lo, rs, rq, mn, mx, bad, False)
            take(w1, 1, hi, lo, rs, rq, mn, mx, bad, False)
            take(w2, 2, hi, lo, rs, rq, mn, mx, bad, False)
            take(w3, 3, hi, lo, rs, rq, mn, mx, bad, False)

    @device_function
    def flush(since, chan, rs, rq, bad, tally, bank):
        for j in range(V):
            ch = chan[j]
            bank[ch] += BT(rs[j])
            bank[C + ch] += BT(rq[j])
            rs[j] = 0
            rq[j] = 0
            tally[ch] += since - bad[j]
            tally[C + ch] += bad[j]
            bad[j] = 0

    @device_function
    def tail(bits, tail_start, total, ftotals, tally, bank, mins):
        for i in range(tail_start, total):  # the scalar tail (NHWC only), float64 throughout
            ch = i % C
            if HALF:
                v = decode16(load_u16(bits, i))
            else:
                v = decode32(load_u32(bits, i))
            if FLOAT and not math.isfinite(v):
                tally[C + ch] += 1
            else:
                d = BT(v) - BT(ftotals[4, ch]) if FLOAT else BT(v)
                tally[ch] += 1
                bank[ch] += d
                bank[C + ch] += d * d
                mins[ch] = min(mins[ch], float64(v))
                mins[C + ch] = min(mins[C + ch], -float64(v))

    return take4, flush, tail


@functools.lru_cache(maxsize=None)
def build_wide(dtype_tag, mode, channels, threads, run):
    C = channels
    C2 = 2 * C
    V = VECTOR_WIDTH[dtype_tag]
    FLOAT = not is_integer(dtype_tag)
    RT, BT, MT = types_for(dtype_tag)
    RUN = run
    PER_ROW_MODE = mode == "CP"
    finish = make_finish(C, threads, not FLOAT)
    big = math.inf if FLOAT else 2**62
    decode16, decode32, all_finite = _wide_decoders(dtype_tag)
    take4, flush, tail = _wide_ops(dtype_tag, C, V, RT, BT, MT, decode16, decode32, all_finite)

    @cuda.jit
    def kernel(words, bits, rows, per_row, rows_per_image, tail_start, total, part, counter, itotals, ftotals,
               status, check):
        tid = cuda.threadIdx.x
        c = cuda.blockIdx.y
        t, n, j, step_n, step_j = _walk_start(per_row)
        chan = cuda.local.array(V, int32)
        hi = cuda.local.array(V, RT)
        lo = cuda.local.array(V, RT)
        rs = cuda.local.array(V, RT)
        rq = cuda.local.array(V, RT)
        mn = cuda.local.array(V, MT)
        mx = cuda.local.array(V, MT)
        bad = cuda.local.array(V, int32)
        tally = cuda.local.array(C2, int64)
        bank = cuda.local.array(C2, BT)
        mins = cuda.local.array(C2, float64)
        phase = (t * V) % C
        for lane in range(V):
            ch = c if PER_ROW_MODE else (phase + lane) % C
            chan[lane] = ch
            if FLOAT:
                h = RT(ftotals[4, ch])
                hi[lane] = h
                lo[lane] = RT(ftotals[4, ch] - float64(h))
            else:
                hi[lane] = 0
                lo[lane] = 0
            rs[lane] = 0
            rq[lane] = 0
            mn[lane] = big
            mx[lane] = -big
            bad[lane] = 0
        for k in range(C2):
            tally[k] = 0
            bank[k] = 0
            mins[k] = math.inf

        since = 0  # elements per lane since the last flush
        while True:
            n1, j1 = grid_next(n, j, step_n, step_j, per_row)
            if n1 >= rows:
                break
            take4(words, (n * rows_per_image + c) * per_row + j, hi, lo, rs, rq, mn, mx, bad)
            take4(words, (n1 * rows_per_image + c) * per_row + j1, hi, lo, rs, rq, mn, mx, bad)
            since += 2
            if since + 2 > RUN:
                flush(since, chan, rs, rq, bad, tally, bank)
                since = 0
            n, j = grid_next(n1, j1, step_n, step_j, per_row)
        if n < rows:
            take4(words, (n * rows_per_image + c) * per_row + j, hi, lo, rs, rq, mn, mx, bad)
            since += 1
        flush(since, chan, rs, rq, bad, tally, bank)
        for lane in range(V):
            ch = chan[lane]
            mins[ch] = min(mins[ch], float64(mn[lane]))
            mins[C + ch] = min(mins[C + ch], -float64(mx[lane]))

        if t == 0 and c == 0:
            tail(bits, tail_start, total, ftotals, tally, bank, mins)

        finish(tid, tally, bank, mins, part, counter, itotals, ftotals, status, check)

    return kernel
