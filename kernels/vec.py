"""Strategy ``vec``: 16-byte vector loads, narrow register sums, one combine and one write per block.

Built to run at memory bandwidth. Each thread reads its pixels 16 bytes per load
(``ld.global.nc.v4.u32``: uint8 x16, uint16/float16/bfloat16 x8, float32 x4), four (uint8) or two
(wider types) loads in flight per loop turn, and accumulates in registers with the narrowest type
that stays exact (the accumulator rule in ``_common``):

* **uint8**: 32-bit sums and sums of squares built with ``dp4a`` (four byte products per
  instruction), min and max on byte pairs with ``min.u16x2``/``max.u16x2``; the 32-bit sums are
  flushed into int64 every :data:`U8_FLUSH_VECTORS` vectors, before they could overflow. Totals are exact and
  equal to every other strategy's, bit for bit.
* **uint16**: int64 sums per element (exact); **float16 / bfloat16 / float32**: the shifted
  float32 runs of the other strategies (at most ``RUN_LENGTH`` elements per thread and vector
  lane, then float64). A load whose exponent bits show no NaN/inf (the usual case) takes a path
  without per-element checks; otherwise NaN/inf are counted apart and left out.

Two ways to walk the input, both needing a C-contiguous array with a 16-byte-aligned start:

* layout ``CP`` (``[N, C, L]``, NCHW) with ``L`` a multiple of the vector width: a 2-D grid, one
  grid row per channel, so every thread sums a single channel (uint8: one ``dp4a`` per 4 bytes for
  the sum and one for the squares);
* layout ``PC`` (``[N, L, C]``, NHWC): the array is one flat stream; the grid stride is a multiple
  of ``C`` vectors' worth of channels, so each thread sees the same channel in the same lane of
  every vector it loads (uint8: per-channel byte masks for ``dp4a``, at most 4 channels). The
  last ``total % width`` elements (the scalar tail) are added by thread 0.

Anything else (strided or misaligned views, NCHW rows whose length is not a multiple of the
width, float64, uint8 NHWC with more than 4 channels) runs the ``tree`` kernels instead, with the
same results. Blocks combine with the shared-memory tree of ``_common`` and store one row of
partials each; the last block to finish merges the rows in a fixed order into the totals
(:func:`make_finish`), so a call is one launch (the GPU measurements showed host launch work,
not the kernel, dominating a call) and float totals are bitwise reproducible for a fixed launch
configuration. The grid fills the GPU once: the SM count times the resident blocks per SM of the
compiled kernel (occupancy API). No histograms, co-moments or per-image sums (the CUDA backend
routes those to ``atomic``).

``nan_policy="raise"`` without a synchronization: with ``check`` = batch index + 1 the last block
adds nothing when the batch holds a NaN/inf and records it in a status row instead
(``_status.record_nonfinite``); the caller reads the row later (the CUDA backend: mapped host
memory, read without waiting). Only the vector kernels can do this, so ``reduce`` launches nothing
and returns False when ``check`` is asked for an input they cannot read.

Two ways to launch, same kernels and arguments: :func:`reduce` (numba's dispatcher: any input,
the simulator, CI) and :class:`Launcher` (a GPU with cuda-bindings: the kernel compiled once for a
fixed signature, its cubin cached across processes, launched with ``cuLaunchKernel`` from a
parameter block built once per accumulator; per launch only the input's address and sizes are
written -- :mod:`._launch`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import tree
from ._common import (
    current_device_id,
    device_limits,
    as_device_array,
    check_input,
    is_integer,
    launch_config,
    pixels_per_image,
    refuse_extras,
    simulator_enabled,
)
from ._thread import run_length
from ._status import STATUS_FIELDS, STATUS_WORDS
from ._vec_kernels import (
    U8_FLUSH_VECTORS,
    VECTOR_WIDTH,
    build_u8,
    make_finish,
)
from ._vec_wide import build_wide

__all__ = ["NAME", "SUPPORTS", "SUPPORTS_SIMULATOR", "reduce", "plan", "VECTOR_WIDTH", "U8_FLUSH_VECTORS",
           "STATUS_FIELDS", "STATUS_WORDS", "Launcher", "kernel_argtypes", "build_u8", "build_wide", "make_finish"]

NAME = "vec"
SUPPORTS_SIMULATOR = True
SUPPORTS = frozenset()

#: uint8 NHWC: at most this many channels get per-channel byte masks (more: the tree kernels)
U8_PC_MAX_CHANNELS = 4


# ----------------------------------------------------------------------------- host side


class _Input(NamedTuple):
    """What the vec kernels need of an input: no numba array is built for it on a GPU."""

    shape: tuple
    strides: tuple
    dtype: np.dtype
    address: int


def _describe(x) -> _Input | None:
    """Shape, byte strides, dtype and device address of a numba device array or a
    ``__cuda_array_interface__`` object (a torch CUDA tensor), read without a numba view (cheap)."""
    if hasattr(x, "device_ctypes_pointer"):
        return _Input(tuple(x.shape), tuple(x.strides), np.dtype(x.dtype), int(x.device_ctypes_pointer.value or 0))
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        return None
    dtype = np.dtype(cai["typestr"])
    shape = tuple(int(n) for n in cai["shape"])
    strides = cai.get("strides")
    if strides is None:
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    return _Input(shape, tuple(int(v) for v in strides), dtype, int(cai["data"][0] or 0))


def _address(x) -> int:
    if isinstance(x, _Input):
        return x.address
    if hasattr(x, "device_ctypes_pointer"):
        return int(x.device_ctypes_pointer.value or 0)
    return int(np.asarray(x).ctypes.data)  # simulated device array: host memory


def _c_contiguous(x) -> bool:
    expected = np.dtype(x.dtype).itemsize
    for size, stride in zip(reversed(x.shape), reversed(x.strides)):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


def plan(x, layout: str, dtype_tag: str):
    """How ``vec`` reads ``x``: a dict (mode, vectors, rows, per_row, ...) or None (run ``tree``).

    ``x`` is a checked 3-D device array with at least one pixel.
    """
    width = VECTOR_WIDTH.get(dtype_tag)
    if width is None or not _c_contiguous(x) or _address(x) % 16:
        return None
    channels = int(x.shape[1] if layout == "CP" else x.shape[2])
    pixels = pixels_per_image(x, layout)
    images = int(x.shape[0])
    total = images * channels * pixels
    if layout == "CP":
        if pixels % width:
            return None
        per_row = pixels // width
        return {"mode": "CP", "rows": images, "per_row": per_row, "rows_per_image": channels,
                "vectors": total // width, "tail_start": total, "total": total, "width": width}
    if dtype_tag == "uint8" and channels > U8_PC_MAX_CHANNELS:
        return None
    vectors = total // width
    if vectors == 0:
        return None
    return {"mode": "PC", "rows": 1, "per_row": vectors, "rows_per_image": 1, "vectors": vectors,
            "tail_start": vectors * width, "total": total, "width": width}


_GRID_CACHE: dict = {}


def _resident_blocks(kernel, args, threads) -> int:
    """Blocks that fill the GPU once: SMs x resident blocks per SM of the compiled kernel.

    Asked of the occupancy API once per kernel (its argument types are fixed by its build).
    """
    if simulator_enabled():
        return launch_config(10**9)[0]
    key = (id(kernel), threads, current_device_id())
    blocks = _GRID_CACHE.get(key)
    if blocks is None:
        try:
            compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))
            blocks = int(compiled.max_cooperative_grid_blocks(threads))
        except Exception:  # occupancy API unavailable: the usual estimate
            _, per_sm, sms = device_limits(current_device_id())
            blocks = per_sm * sms
        _GRID_CACHE[key] = blocks = max(1, blocks)
    return blocks


def reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None, stream=0, launch=None,
           run=None, status=None, check=0):
    """Add the statistics of ``x`` into ``acc`` with 16-byte loads, in one launch (module docstring).

    ``run`` overrides the float run length (elements per thread lane between float64 flushes;
    tests use the production value under the simulator). ``check`` > 0 (float input under
    ``nan_policy="raise"``: the batch index + 1) leaves the batch out when it holds a NaN/inf and
    records it in ``status`` (int64[:data:`STATUS_WORDS`], fields :data:`STATUS_FIELDS`). Returns
    True when the vector kernels ran, False when they cannot read ``x`` and ``check`` was asked
    (nothing launched: check the batch some other way, then call again without ``check``); without
    ``check`` such inputs run the ``tree`` kernels (returns False too).
    """
    refuse_extras(NAME, histogram=histogram, cross=cross, per_image=per_image)
    info = None if simulator_enabled() else _describe(x)
    if info is None:  # host arrays (tests) and the simulator: a numba device array
        x = as_device_array(x, stream)
        info = None if simulator_enabled() else _describe(x)
    channels = check_input(info or x, layout, dtype_tag, acc)
    if int((info or x).shape[0]) * pixels_per_image(info or x, layout) == 0:
        return True
    how = plan(info or x, layout, dtype_tag)
    if how is None:
        if check:
            return False
        tree.reduce(x, layout, dtype_tag, acc, stream=stream, launch=launch, run=run)
        return False
    width = how["width"]
    threads = launch_config(1, launch)[1] if launch is not None else launch_config(10**9)[1]
    if info is not None:  # a GPU: the kernels load through the input's address
        words = bits = info.address
    else:  # the simulator: views of the array (its loads are Python indexing)
        bits = x.reshape(how["total"]).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize])
        words = bits[: how["vectors"] * width].view(np.uint32)
    grid_y = channels if how["mode"] == "CP" else 1
    if dtype_tag == "uint8":
        kernel = build_u8(how["mode"], channels, threads)
    else:
        kernel = build_wide(dtype_tag, how["mode"], channels, threads, max(2, run_length(dtype_tag, run)))
    part_dtype = "int64" if is_integer(dtype_tag) else "float64"
    counter = acc.scratch("vec_counter", (1,), "int32")
    if status is None:
        status = acc.scratch("vec_status", (STATUS_WORDS,), "int64")  # unused unless check > 0
    args = (words, bits, how["rows"], how["per_row"], how["rows_per_image"], how["tail_start"], how["total"])
    tail = (counter, acc.itotals, acc.ftotals, status, int(check))
    if launch is not None:
        blocks_x = max(1, int(launch[0]))
    else:
        probe = acc.scratch("vec_part", (1, 6 * channels), part_dtype)
        blocks_x = max(1, _resident_blocks(kernel, args + (probe,) + tail, threads) // grid_y)
        blocks_x = min(blocks_x, max(1, -(-how["rows"] * how["per_row"] // threads)))
    if how["mode"] == "PC":  # the grid stride must cover whole pixels: phase fixed per thread
        blocks_x = -(-blocks_x // _pc_step(channels, threads, width)) * _pc_step(channels, threads, width)
    part = acc.scratch("vec_part", (blocks_x * grid_y, 6 * channels), part_dtype)
    kernel[(blocks_x, grid_y), threads, stream](*args, part, *tail)
    return True


def _pc_step(channels: int, threads: int, width: int) -> int:
    """Layout PC: the number of blocks must be a multiple of this, so that the grid stride covers
    whole pixels and every thread sees one channel per vector lane in every vector it loads."""
    return channels // math.gcd(channels, threads * width)


# ----------------------------------------------------------------------------- fixed-cost launches


def kernel_argtypes(dtype_tag: str) -> tuple:
    """The numba signature the :class:`Launcher` compiles the vec kernel of ``dtype_tag`` for."""
    from numba import types

    part = types.int64 if is_integer(dtype_tag) else types.float64
    return ((types.int64,) * 7 + (types.Array(part, 2, "C"), types.Array(types.int32, 1, "C"),
            types.Array(types.int64, 2, "C"), types.Array(types.float64, 2, "C"), types.Array(types.int64, 1, "C"),
            types.int64))


class Launcher:
    """vec launches into one :class:`Accumulators` at a fixed host cost (see :mod:`._launch`).

    Built once per accumulator, dtype and layout: the kernel (compiled for :func:`kernel_argtypes`,
    or loaded from the per-user cache), the grid limit (occupancy, asked once), the partials sized
    for the largest grid, and a parameter block holding the accumulator's arrays. A call writes the
    input's address and sizes into the block and launches: no array is wrapped, nothing allocated,
    nothing synchronized. ``status`` is the row ``check`` > 0 records into (``nan_policy="raise"``);
    None gives a placeholder. ``drv`` is a :class:`._launch.CudaDriver` (or a test stand-in).
    """

    def __init__(self, acc, dtype_tag: str, layout: str, *, drv, device: int = 0, status=None, run=None):
        from . import _launch

        if dtype_tag not in VECTOR_WIDTH:
            raise ValueError(f"the vec kernels do not read {dtype_tag}")
        channels = acc.channels
        if layout == "PC" and dtype_tag == "uint8" and channels > U8_PC_MAX_CHANNELS:
            raise ValueError(f"uint8 NHWC with {channels} channels runs the tree kernels")
        threads = launch_config(10**9)[1]
        width = VECTOR_WIDTH[dtype_tag]
        if dtype_tag == "uint8":
            dispatcher = build_u8(layout, channels, threads)
            parts = {"factory": "vec.build_u8", "mode": layout, "channels": channels, "threads": threads}
        else:
            length = max(2, run_length(dtype_tag, run))
            dispatcher = build_wide(dtype_tag, layout, channels, threads, length)
            parts = {"factory": "vec.build_wide", "dtype": dtype_tag, "mode": layout, "channels": channels,
                     "threads": threads, "run": length}
        argtypes = kernel_argtypes(dtype_tag)
        function, self.compiled = drv.function(dispatcher, argtypes, parts, device)
        self.cp = layout == "CP"
        self.channels, self.threads, self.width = channels, threads, width
        self.grid_y = channels if self.cp else 1
        self.step = 1 if self.cp else _pc_step(channels, threads, width)
        cap = max(1, _launch.resident_blocks(drv, function, threads, device) // self.grid_y)
        self.cap = -(-cap // self.step) * self.step
        part = acc.scratch("vec_part", (self.cap * self.grid_y, 6 * channels), "int64" if is_integer(dtype_tag)
                           else "float64")
        counter = acc.scratch("vec_counter", (1,), "int32")
        if status is None:
            status = acc.scratch("vec_status", (STATUS_WORDS,), "int64")
        params = _launch.ParamBlock(argtypes)
        for arg, arr in zip(range(7, 12), (part, counter, acc.itotals, acc.ftotals, status)):
            params.set_array(arg, *_launch.array_fields(arr))
        self._keep = (part, counter, acc, status)
        self.params = params
        self.launch = _launch.Launch(drv, function, params, threads)
        self._words, self._bits, self._rows, self._per_row, self._rows_per_image, self._tail, self._total = (
            params.slot(k) for k in range(7))
        self._check = params.slot(12)

    def __call__(self, address: int, images: int, pixels: int, stream: int, check: int = 0) -> bool:
        """Queue one launch over the C-contiguous input at device ``address``: ``[images, C, pixels]``
        (layout CP) or ``[images, pixels, C]`` (PC). False, with nothing launched, when the vector
        kernels cannot read it (misaligned, or CP rows not a multiple of the vector width): the
        caller then takes :func:`reduce`."""
        width = self.width
        if address % 16:
            return False
        if self.cp:
            if pixels % width:
                return False
            per_row = pixels // width
            total = images * self.channels * pixels
            rows, rows_per_image, tail, work = images, self.channels, total, images * per_row
        else:
            total = images * pixels * self.channels
            per_row = total // width
            if per_row == 0:
                return False
            rows, rows_per_image, tail, work = 1, 1, per_row * width, per_row
        blocks = -(-work // self.threads)
        if blocks > self.cap:
            blocks = self.cap
        elif self.step > 1:
            blocks = -(-blocks // self.step) * self.step
        self._words.value = address
        self._bits.value = address
        self._rows.value = rows
        self._per_row.value = per_row
        self._rows_per_image.value = rows_per_image
        self._tail.value = tail
        self._total.value = total
        self._check.value = check
        self.launch.launch(blocks, self.grid_y, stream)
        return True
