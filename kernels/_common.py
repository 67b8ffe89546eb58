"""Shared pieces of the reduction strategies: dtypes, decoding, launch config, block combines.

The one accumulator rule (docs/design.md, "The state and its numeric rules"), stated here once and cited
by every strategy:

* Integer input (uint8, uint16) is reduced exactly: per-thread int64 sums of ``x`` and ``x*x``
  (and ``x_i*x_j`` for co-moments), int64 block combines and int64 totals. No float ever touches
  an integer sum, so every strategy, batch split and launch configuration gives the same bits.
* Float input is first shifted by the caller's per-channel reference ``shift[c]`` (float64, split
  into a float32 ``hi + lo`` pair so the subtraction stays in float32 and loses nothing to the
  offset), then summed in the *run type* (:func:`run_type`: float32 for 16/32-bit input, float64
  for float64 input) over at most :data:`RUN_LENGTH` pixels per thread, then flushed into float64
  thread registers; everything from there on (block combine, partials, totals) is float64.
  The ``welford`` strategy keeps Welford ``(n, mean, M2)`` of the same shifted values instead of
  sums, in the run type over the same runs, merged with Chan's formula (:func:`chan`) from there on.
* Min/max are tracked in the run type (exact for every input type) and stored as float64.
* Non-finite float values (NaN, +-inf) are counted in ``nonfinite`` and excluded from the count,
  the sums, min and max.

Kernels are compiled lazily and cached by their factory's arguments (strategy, dtype tag,
layout, channel count, options and threads per block), see each strategy's ``_build``.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def _numpy_2_5_shim() -> None:
    """numba-cuda <= 0.30 registers an overload of ``np.row_stack`` when it first compiles a kernel,
    and NumPy 2.5 removed that name, so every compile fails with AttributeError (seen on the GPU
    image with numba-cuda 0.30.4 and numpy 2.5.2). Give numpy a ``row_stack`` of its own (a
    distinct function, so ``np.vstack``'s overloads are untouched) until numba-cuda checks the
    NumPy version there, as numba 0.68 already does.
    """
    if not hasattr(np, "row_stack"):

        def row_stack(tup, *, dtype=None, casting="same_kind"):
            return np.vstack(tup, dtype=dtype, casting=casting)

        np.row_stack = row_stack


_numpy_2_5_shim()

from numba import cuda, float32, float64, int32, int64  # noqa: E402  (after the shim)

DTYPE_TAGS = ("uint8", "uint16", "float16", "bfloat16", "float32", "float64")
INTEGER_TAGS = ("uint8", "uint16")
LAYOUTS = ("CP", "PC")
MAX_CHANNELS = 16
HIST_BINS = 256

# Pixels a thread sums in the run type before flushing into float64 registers. Small under the
# simulator so the tests exercise the flush path on tiny inputs.
_RUN_LENGTH_GPU = 256
_RUN_LENGTH_SIM = 4

_INT64_MAX = np.iinfo(np.int64).max
_MAX_INT_VALUE = {"uint8": 255, "uint16": 65535}

# 2**(e - 134) for a bfloat16 biased exponent e: (128 + mantissa) * POW2[e] is the exact value.
_BF16_POW2 = np.ldexp(1.0, np.arange(256) - 134)


def simulator_enabled() -> bool:
    """True when numba.cuda is the simulator (``NUMBA_ENABLE_CUDASIM=1`` at import time)."""
    return cuda.jit.__module__.startswith("numba.cuda.simulator")


RUN_LENGTH = _RUN_LENGTH_SIM if simulator_enabled() else _RUN_LENGTH_GPU


def _device_function_decorator():
    """``cuda.jit(device=True, ...)`` inlined by NVVM (``forceinline``) where numba-cuda has it.

    NVVM-level inlining compiles several times faster than numba's IR-level ``inline=True`` and
    gives the same code: every kernel here relies on its device functions being inlined, so that
    the small local arrays they fill become registers.
    """
    import inspect

    if simulator_enabled():
        return cuda.jit(device=True)
    try:
        params = inspect.signature(cuda.jit).parameters
    except (TypeError, ValueError):  # pragma: no cover - a wrapped jit
        params = {}
    if "forceinline" in params:
        return cuda.jit(device=True, forceinline=True)
    return cuda.jit(device=True, inline=True)  # pragma: no cover - numba-cuda < 0.15


_DEVICE_JIT = _device_function_decorator()


def _typed_as_values(dispatcher):
    """Type a device function's constant arguments as plain values: one compile per argument *types*.

    numba types a constant argument (``take(w0, 0, ...)``, ``combine(..., 6)``, ``visit(..., True)``) as
    a literal and compiles the device function once per *value*: the vec kernels compiled their
    per-word helpers 8 times each (4 word indices x checked or not), 138 of the 380 device-function
    compiles of tests/test_kernels_ptx.py. NVVM inlines every device function (``forceinline``) and then
    folds the same constants itself, so the code is the same (the normalized PTX and ptxas's registers of
    all 30 kernels, before and after: bench/ptx_dump.py, bench/results/cpu-2core-2026-12-05-ptx-literals.json).
    numba's typing looks
    the call up through the dispatcher's ``get_call_template``; this instance's lookup drops the literal
    types first (a literal converts to its value's type when the call is lowered). Left as it is when
    numba-cuda's dispatcher has no such method.
    """
    from numba.core import types

    original = getattr(dispatcher, "get_call_template", None)
    if original is None:  # pragma: no cover - another numba-cuda
        return dispatcher

    def get_call_template(args, kws):
        return original(tuple(types.unliteral(a) for a in args), {k: types.unliteral(v) for k, v in kws.items()})

    dispatcher.get_call_template = get_call_template
    return dispatcher


def device_function(fn):
    """Decorator for every device function of the kernels: ``cuda.jit(device=True, forceinline=True)``
    (:func:`_device_function_decorator`), compiled once per argument types (:func:`_typed_as_values`)."""
    dispatcher = _DEVICE_JIT(fn)
    return dispatcher if simulator_enabled() else _typed_as_values(dispatcher)


def is_integer(dtype_tag: str) -> bool:
    check_dtype_tag(dtype_tag)
    return dtype_tag in INTEGER_TAGS


def check_dtype_tag(dtype_tag: str) -> None:
    if dtype_tag not in DTYPE_TAGS:
        raise ValueError(f"unsupported dtype_tag {dtype_tag!r}; expected one of {DTYPE_TAGS}")


def run_type(dtype_tag: str):
    """numba type of the short-run float accumulators (the one place this is decided)."""
    return float64 if dtype_tag == "float64" else float32


def max_elements_before_flush(dtype_tag: str) -> int:
    """Elements per channel an :class:`Accumulators` can absorb before an int64 sum may overflow.

    For integer input this bounds ``isumsq`` (and ``cross``): ``floor((2**63 - 1) / max**2)``,
    about 1.4e14 for uint8 and 2.1e9 for uint16. The caller must ``to_host()`` the totals into
    Python ints and ``reset()`` the accumulators before passing this many elements per channel.
    For float input only the int64 ``count`` can overflow; the bound is 2**62.
    """
    check_dtype_tag(dtype_tag)
    if dtype_tag in _MAX_INT_VALUE:
        return _INT64_MAX // (_MAX_INT_VALUE[dtype_tag] ** 2)
    return 2**62


def channels_of(x, layout: str) -> int:
    check_layout(layout)
    return int(x.shape[1] if layout == "CP" else x.shape[2])


def pixels_per_image(x, layout: str) -> int:
    return int(x.shape[2] if layout == "CP" else x.shape[1])


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unsupported layout {layout!r}; expected 'CP' ([N, C, L]) or 'PC' ([N, L, C])")


def as_device_array(x, stream=0):
    """A numba device array view of ``x`` (zero-copy for ``__cuda_array_interface__`` objects).

    The view is made with ``sync=False``: the kernels are launched on ``stream``, which the
    caller makes the producer's stream (torch's current stream), so no host synchronization is
    needed or done. A host numpy array is copied to the device (a convenience for tests and the
    simulator).
    """
    if hasattr(x, "copy_to_host") and hasattr(x, "shape"):  # numba device array (or simulated)
        return x
    if hasattr(x, "__cuda_array_interface__"):
        if not hasattr(cuda, "as_cuda_array"):
            raise TypeError("the numba CUDA simulator cannot view __cuda_array_interface__ objects; pass numpy arrays")
        return cuda.as_cuda_array(x, sync=False)
    if isinstance(x, np.ndarray):
        return cuda.to_device(x, stream=stream)
    raise TypeError(
        f"expected a CUDA array (numba device array or an object with __cuda_array_interface__), "
        f"got {type(x).__name__}"
    )


def check_input(x, layout: str, dtype_tag: str, acc) -> int:
    """Validate shapes and dtypes; returns the channel count."""
    check_layout(layout)
    check_dtype_tag(dtype_tag)
    if len(x.shape) != 3:
        raise ValueError(
            f"kernels take a 3-D array ([N, C, L] for layout 'CP', [N, L, C] for 'PC'), got shape {tuple(x.shape)}"
        )
    channels = channels_of(x, layout)
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"{channels} channels; kernels support 1..{MAX_CHANNELS}")
    if channels != acc.channels:
        raise ValueError(f"input has {channels} channels but the accumulators were made for {acc.channels}")
    if acc.integer != is_integer(dtype_tag):
        kind = "integer" if acc.integer else "float"
        raise ValueError(f"{dtype_tag} input into {kind} accumulators; make them with integer={is_integer(dtype_tag)}")
    width = np.dtype(x.dtype).itemsize
    expected = {"uint8": 1, "uint16": 2, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype_tag]
    if width != expected:
        raise ValueError(f"dtype_tag {dtype_tag!r} needs {expected}-byte elements, got {x.dtype}")
    return channels


# ----------------------------------------------------------------------------- launch config


@functools.lru_cache(maxsize=None)
def device_limits(device_id: int):
    """(threads per block, resident blocks per SM, SM count) for the current device."""
    if simulator_enabled():
        # 8 threads a block: the simulator runs every CUDA thread as a Python thread, so fewer make the
        # tests about twice as fast; no kernel but ``warp`` (real GPUs only) assumes a 32-thread warp, and
        # the tests' explicit ``launch=(blocks, threads)`` cover other block sizes
        return 8, 1, 2
    dev = cuda.get_current_device()
    max_threads = int(dev.MAX_THREADS_PER_BLOCK)
    threads = 1 << (min(256, max_threads).bit_length() - 1)  # power of two, <= 256
    per_sm = max(1, int(getattr(dev, "MAX_THREADS_PER_MULTI_PROCESSOR", 2048)) // threads)
    return threads, per_sm, int(dev.MULTIPROCESSOR_COUNT)


def current_device_id() -> int:
    if simulator_enabled():
        return 0
    return int(cuda.get_current_device().id)


def launch_config(work_items: int, launch=None):
    """(blocks, threads) for a grid-stride loop over ``work_items`` pixels (or images).

    Threads per block: the largest power of two <= min(256, device limit); blocks: enough to fill
    every SM with resident blocks, no more than there is work. ``launch=(blocks, threads)``
    overrides (threads must be a power of two); tests use it to hit block and grid edges.
    """
    if launch is not None:
        blocks, threads = int(launch[0]), int(launch[1])
        if threads < 1 or threads & (threads - 1):
            raise ValueError(f"threads per block must be a power of two, got {threads}")
        return max(1, blocks), threads
    threads, per_sm, sms = device_limits(current_device_id())
    wanted = max(1, -(-work_items // threads))
    return max(1, min(per_sm * sms, wanted)), threads


def prepare_pixels(x, layout: str, dtype_tag: str, acc, stream=0, launch=None):
    """Checked device view and launch of a grid-stride pass over every pixel of ``x``.

    Returns ``(x, channels, total, blocks, threads)`` (``total`` = images * pixels), or None when
    ``x`` has no pixels (nothing to launch).
    """
    x = as_device_array(x, stream)
    channels = check_input(x, layout, dtype_tag, acc)
    total = int(x.shape[0]) * pixels_per_image(x, layout)
    if total == 0:
        return None
    blocks, threads = launch_config(total, launch)
    return x, channels, total, blocks, threads


# ----------------------------------------------------------------------------- device helpers


@functools.lru_cache(maxsize=None)
def make_load(layout: str):
    """Device function ``load(x, n, c, l)`` for the layout."""
    check_layout(layout)
    if layout == "CP":

        @device_function
        def load(x, n, c, l):
            return x[n, c, l]

    else:

        @device_function
        def load(x, n, c, l):
            return x[n, l, c]

    return load


@functools.lru_cache(maxsize=None)
def make_decode(dtype_tag: str):
    """Device function turning a stored element into its value.

    Integers come back as int64 (masked to their width, so int8/int16 views of the same bits
    work); floats as the run type. bfloat16 arrives as 16-bit patterns and is decoded exactly;
    float16 arrives as float16 (``<f2``).
    """
    check_dtype_tag(dtype_tag)
    if dtype_tag == "uint8":

        @device_function
        def decode(v):
            return int64(v) & 0xFF

    elif dtype_tag == "uint16":

        @device_function
        def decode(v):
            return int64(v) & 0xFFFF

    elif dtype_tag == "float16":

        @device_function
        def decode(v):
            return float32(v)

    elif dtype_tag == "bfloat16":
        pow2_host = _BF16_POW2

        @device_function
        def decode(v):
            pow2 = cuda.const.array_like(pow2_host)
            bits = int32(v) & 0xFFFF
            exponent = (bits >> 7) & 0xFF
            mantissa = bits & 0x7F
            if exponent == 255:
                value = math.inf if mantissa == 0 else math.nan
            elif exponent == 0:
                value = float64(mantissa) * pow2[1]
            else:
                value = float64(128 + mantissa) * pow2[exponent]
            if bits & 0x8000:
                value = -value
            return float32(value)

    elif dtype_tag == "float32":

        @device_function
        def decode(v):
            return float32(v)

    else:

        @device_function
        def decode(v):
            return float64(v)

    return decode


@device_function
def grid_start(pixels):
    """This thread's first pixel of the grid-stride loop over the flattened [N, L] pixel grid.

    Returns ``(p, stride, n, l, step_n, step_l)``: flat index ``p = n * pixels + l`` and the
    stride split the same way, so :func:`grid_next` advances ``(n, l)`` without a division.
    ``pixels`` must be positive.
    """
    p = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = p // pixels
    l = p - n * pixels
    step_n = stride // pixels
    return p, stride, n, l, step_n, stride - step_n * pixels


@device_function
def grid_next(n, l, step_n, step_l, pixels):
    """``(n, l)`` advanced by one grid stride (see :func:`grid_start`)."""
    n += step_n
    l += step_l
    if l >= pixels:
        l -= pixels
        n += 1
    return n, l


def not_supported(strategy: str, what: str):
    return NotImplementedError(
        f"strategy {strategy!r} does not compute {what}; use strategy 'atomic' (the CUDA backend "
        f"routes there automatically when {what} is asked for)"
    )


def refuse_extras(strategy: str, *, histogram=False, cross=False, per_image=None) -> None:
    """Raise :func:`not_supported` for the first extra asked of a strategy that lacks it."""
    if histogram:
        raise not_supported(strategy, "histograms")
    if cross:
        raise not_supported(strategy, "co-moments (cross=True)")
    if per_image is not None:
        raise not_supported(strategy, "per-image sums")
