"""16-byte vector loads and packed-byte arithmetic for the ``vec`` strategy.

On a GPU each function is one PTX instruction (numba ``intrinsic`` + inline PTX); under the
simulator (``NUMBA_ENABLE_CUDASIM=1``) the same names are plain Python with the same results, so
the ``vec`` kernels run in CI. Every value is a 32-bit word holding 4 bytes (little-endian).

* ``load4(src, q)``: the 16 bytes at ``src + 16 q`` as 4 words, one ``ld.global.nc.v4.u32``;
  ``src`` is a 16-byte-aligned device address (an integer: kernels take the input's address, so a
  launch marshals no array for it) or, under the simulator, a 1-D uint32 array;
* ``load_u8(src, i)``, ``load_u16(src, i)``, ``load_u32(src, i)``: element ``i`` of that width at
  ``src`` as a word (``ld.global.nc.u8/u16/u32``; the simulator: ``src[i]`` of such an array);
* ``dp4a(a, b, c)``: ``c + sum of the 4 byte products of a and b`` (mod 2**32), ``dp4a.u32.u32``;
* ``min16x2(a, b)`` / ``max16x2(a, b)``: min / max of the two 16-bit halves, ``min.u16x2`` /
  ``max.u16x2`` (one instruction on sm_90; byte-wise ``vmin4`` is emulated there with ~16);
* ``even_bytes(w)`` / ``odd_bytes(w)``: bytes 0 and 2 / 1 and 3 of ``w`` as two 16-bit halves
  (``prmt``), so the halves functions above work on bytes;
* ``load_cg(arr, i, j)``: ``arr[i, j]`` read from L2 (``ld.global.cg``), past any stale L1 line:
  for data other blocks of the same launch wrote;
* ``f32_bits(u)``: the float32 whose bits are ``u``; ``f16_bits(u)``: the float16 in the low 16
  bits of ``u``, widened to float32 (exact).

On a GPU these can only be called from a kernel (they are PTX), so the example launches one; it
runs the same under the simulator::

    >>> import numpy as np
    >>> from numba import cuda
    >>> from gpustats.kernels import _vector as V
    >>> @cuda.jit
    ... def demo(out):
    ...     out[0] = V.dp4a(0x01020304, 0x01010101, 10)
    ...     out[1] = V.min16x2(0x00100005, 0x00200001)
    ...     out[2] = V.even_bytes(0x44332211)
    ...     out[3] = V.odd_bytes(0x44332211)
    >>> out = cuda.to_device(np.zeros(4, dtype=np.uint32))
    >>> demo[1, 1](out)
    >>> [hex(int(v)) for v in out.copy_to_host()]
    ['0x14', '0x100001', '0x330011', '0x440022']
"""

from __future__ import annotations

import numpy as np

from ._common import simulator_enabled

__all__ = ["load4", "load_u8", "load_u16", "load_u32", "load_cg", "dp4a", "min16x2", "max16x2", "even_bytes", "odd_bytes", "f32_bits", "f16_bits", "ONES"]

#: ``dp4a(w, ONES, acc)`` adds the four bytes of ``w`` to ``acc``
ONES = 0x01010101
_MASK32 = 0xFFFFFFFF


def _bytes(word):
    return [(int(word) >> (8 * k)) & 0xFF for k in range(4)]


if simulator_enabled():  # ------------------------------------------------------------ simulator

    def load_cg(arr, i, j):
        return arr[i, j]

    def load_u8(src, i):
        return np.uint32(int(src[i]) & 0xFF)

    def load_u16(src, i):
        return np.uint32(int(src[i]) & 0xFFFF)

    def load_u32(src, i):
        return np.uint32(int(src[i]) & _MASK32)

    def load4(words, q):
        i = 4 * int(q)
        return (np.uint32(words[i]), np.uint32(words[i + 1]), np.uint32(words[i + 2]), np.uint32(words[i + 3]))

    def dp4a(a, b, c):
        total = int(c) + sum(x * y for x, y in zip(_bytes(a), _bytes(b)))
        return np.uint32(total & _MASK32)

    def _halves(word):
        return int(word) & 0xFFFF, (int(word) >> 16) & 0xFFFF

    def min16x2(a, b):
        (a0, a1), (b0, b1) = _halves(a), _halves(b)
        return np.uint32(min(a0, b0) | (min(a1, b1) << 16))

    def max16x2(a, b):
        (a0, a1), (b0, b1) = _halves(a), _halves(b)
        return np.uint32(max(a0, b0) | (max(a1, b1) << 16))

    def even_bytes(w):
        return np.uint32(int(w) & 0x00FF00FF)

    def odd_bytes(w):
        return np.uint32((int(w) >> 8) & 0x00FF00FF)

    def f32_bits(u):
        return np.array([int(u) & _MASK32], dtype=np.uint32).view(np.float32)[0]

    def f16_bits(u):
        return np.float32(np.array([int(u) & 0xFFFF], dtype=np.uint16).view(np.float16)[0])

else:  # ---------------------------------------------------------------------------- real GPU
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    _I32 = ir.IntType(32)

    from numba import cuda as _cuda
    from numba import int64 as _int64

    @_cuda.jit(device=True, forceinline=True)
    def load_cg(arr, i, j):
        return _cuda.ldcg(arr, (_int64(i), _int64(j)))

    def _u32(context, builder, value, ty):
        return context.cast(builder, value, ty, types.uint32)

    _I64 = ir.IntType(64)

    def _address(context, builder, src, src_type, index, index_type, scale):
        """``src + scale * index`` as an i64 (``src``: an integer address or a 1-D array's data)."""
        offset = builder.mul(context.cast(builder, index, index_type, types.int64), ir.Constant(_I64, scale))
        if isinstance(src_type, types.Integer):
            base = context.cast(builder, src, src_type, types.uint64)
        else:
            ary = context.make_array(src_type)(context, builder, value=src)
            base = builder.ptrtoint(ary.data, _I64)
        return builder.add(base, offset)

    def _source(src):
        return isinstance(src, types.Integer) or (
            isinstance(src, types.Array) and src.ndim == 1 and src.dtype == types.uint32)

    @intrinsic
    def load4(typingctx, src, q):
        if not (_source(src) and isinstance(q, types.Integer)):
            return None
        result = types.UniTuple(types.uint32, 4)

        def codegen(context, builder, sig, args):
            address = _address(context, builder, args[0], sig.args[0], args[1], sig.args[1], 16)
            fnty = ir.FunctionType(ir.LiteralStructType([_I32] * 4), [_I64])
            asm = ir.InlineAsm(fnty, "ld.global.nc.v4.u32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,l")
            loaded = builder.call(asm, [address])
            values = [builder.extract_value(loaded, k) for k in range(4)]
            return context.make_tuple(builder, result, values)

        return result(src, q), codegen

    def _load_scalar(nbytes):
        def codegen(context, builder, sig, args):
            address = _address(context, builder, args[0], sig.args[0], args[1], sig.args[1], nbytes)
            asm = ir.InlineAsm(ir.FunctionType(_I32, [_I64]), f"ld.global.nc.u{8 * nbytes} $0, [$1];", "=r,l")
            return builder.call(asm, [address])

        def typer(typingctx, src, i):
            if isinstance(src, types.Integer) and isinstance(i, types.Integer):
                return types.uint32(src, i), codegen
            return None

        return intrinsic(typer)

    load_u8 = _load_scalar(1)
    load_u16 = _load_scalar(2)
    load_u32 = _load_scalar(4)

    def _asm_codegen(text, operands):
        def codegen(context, builder, sig, values):
            words = [_u32(context, builder, v, t) for v, t in zip(values, sig.args)]
            constraints = ",".join(["=r"] + ["r"] * operands)
            asm = ir.InlineAsm(ir.FunctionType(_I32, [_I32] * operands), text, constraints)
            return builder.call(asm, words)

        return codegen

    def _words(*args):
        return all(isinstance(t, types.Integer) for t in args)

    def _asm(text, operands):
        """An intrinsic running one PTX instruction on ``operands`` 32-bit words into one word."""
        codegen = _asm_codegen(text, operands)
        if operands == 1:

            def one_word(typingctx, a):
                return (types.uint32(a), codegen) if _words(a) else None

            return intrinsic(one_word)
        if operands == 2:

            def two_words(typingctx, a, b):
                return (types.uint32(a, b), codegen) if _words(a, b) else None

            return intrinsic(two_words)

        def three_words(typingctx, a, b, c):
            return (types.uint32(a, b, c), codegen) if _words(a, b, c) else None

        return intrinsic(three_words)

    dp4a = _asm("dp4a.u32.u32 $0, $1, $2, $3;", 3)
    min16x2 = _asm("min.u16x2 $0, $1, $2;", 2)
    max16x2 = _asm("max.u16x2 $0, $1, $2;", 2)
    even_bytes = _asm("prmt.b32 $0, $1, 0, 0x4240;", 1)
    odd_bytes = _asm("prmt.b32 $0, $1, 0, 0x4341;", 1)

    @intrinsic
    def f32_bits(typingctx, u):
        if not isinstance(u, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(_u32(context, builder, args[0], sig.args[0]), ir.FloatType())

        return types.float32(u), codegen

    @intrinsic
    def f16_bits(typingctx, u):
        if not isinstance(u, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            bits = builder.trunc(_u32(context, builder, args[0], sig.args[0]), ir.IntType(16))
            return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

        return types.float32(u), codegen
