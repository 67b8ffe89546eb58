"""Launch numba-compiled kernels at a small, fixed host cost: one ``cuLaunchKernel``, nothing marshalled per call.

numba-cuda's dispatcher converts every argument at every launch (``_Kernel._prepare_args``: an
array view per array, a ctypes object per integer, then cuda.core's parameter holder): measured
on an H200 host, 39 µs for 2 arguments, 87 µs for 11, 158 µs when torch tensors are wrapped each
call (numba-cuda issue #477 tracks it). At training-batch sizes that is more than the kernel.
This module does that work once per (kernel, accumulator):

* :class:`ParamBlock` lays out a kernel's parameters exactly as numba-cuda passes them (its ABI,
  replicated from ``_Kernel._prepare_args`` and checked against it and against numba's data model
  in tests/test_launch.py): every argument is flattened into fields, each in its own 8-byte-aligned
  slot of one ctypes buffer, and a ``void*[]`` points at the slots. An integer of numba type ``T``
  is one ``T`` (a Python int is ``int64``); an array of ``ndim`` d is ``meminfo`` (void*, 0),
  ``parent`` (void*, 0), ``nitems`` (intp), ``itemsize`` (intp), ``data`` (void*), ``shape``
  (d x intp) and ``strides`` (d x intp, in bytes). Arrays that live as long as the accumulator
  (totals, partials, the ticket, the status row) are written once; per launch only the integers
  that change (the input's address and sizes) are written, with ``ctypes`` stores.
* :class:`Launch` is one such block bound to a loaded kernel: ``launch(grid_x, grid_y, stream)`` is
  one driver call with the block's address as ``kernelParams``.
* :class:`CudaDriver` is the only code that talks to the driver (cuda-bindings' ``cuLaunchKernel``,
  cuda.core for loading a cubin and for occupancy). Tests and benchmarks pass a stand-in with the
  same methods (``function``, ``launch``, ``blocks_per_sm``, ``sm_count``) that records launches
  (or decodes the block and runs the kernel under the simulator), so all of this is checked
  without a GPU.
* :func:`kernel_function` gets a kernel's loaded function for a fixed signature: from the per-user
  compile cache (:mod:`._cache`) when a previous process compiled it, else compiled by numba-cuda
  (``dispatcher.compile(signature)``), its cubin stored for the next process, then loaded;
  processes that miss the same kernel at once compile it once (:func:`._cache.compiling`).

Under the numba simulator, or where cuda-bindings/cuda.core are missing (older numba-cuda),
:func:`driver` returns None and callers keep numba's own launch.
"""

from __future__ import annotations

import ctypes
import math
import threading
from typing import Any, NamedTuple, Sequence

from . import _cache
from ._common import simulator_enabled

__all__ = ["ParamBlock", "Launch", "CudaDriver", "RecordingDriver", "LaunchError", "driver", "kernel_function",
           "array_fields", "reference_params", "read_params", "resident_blocks"]

_ALIGN = 8


class LaunchError(RuntimeError):
    """The driver refused a launch (the CUDA error name and message are in the text)."""


class Field(NamedTuple):
    arg: int  # index of the kernel argument
    name: str  # "value" for scalars; meminfo, parent, nitems, itemsize, data, shape0.., strides0.. for arrays
    ctype: Any  # the ctypes type the field is stored as (its size is the parameter's size)
    offset: int  # byte offset in the block's buffer


def _scalar_ctype(ty):
    """The ctypes type numba-cuda passes a scalar numba type as (``_prepare_args``), or None."""
    from numba.cuda import types

    if isinstance(ty, types.Boolean):
        return ctypes.c_bool
    if isinstance(ty, types.Integer):
        return getattr(ctypes, f"c_{ty}")
    if ty == types.float64:
        return ctypes.c_double
    if ty == types.float32:
        return ctypes.c_float
    return None


def _fields(argtypes) -> list[tuple[int, str, Any]]:
    """(argument, field name, ctype) of every kernel parameter, in numba-cuda's order."""
    from numba.cuda import types

    out = []
    for i, ty in enumerate(argtypes):
        if isinstance(ty, types.Array):
            names = ["meminfo", "parent", "nitems", "itemsize", "data"]
            names += [f"shape{d}" for d in range(ty.ndim)] + [f"strides{d}" for d in range(ty.ndim)]
            for name in names:
                # meminfo, parent and data are pointers; the rest intp (numba passes Python ints, which
                # cuda.core passes as intptr_t): all pointer-sized
                out.append((i, name, ctypes.c_void_p if name in ("meminfo", "parent", "data") else ctypes.c_ssize_t))
            continue
        ctype = _scalar_ctype(ty)
        if ctype is None:
            raise NotImplementedError(f"argument {i} of type {ty}: only integers, floats, booleans and arrays "
                                      "are laid out (numba's own launch handles the rest)")
        out.append((i, "value", ctype))
    return out


class ParamBlock:
    """A kernel's parameters in one ctypes buffer, laid out once; ``address`` is the ``void**``
    that ``cuLaunchKernel`` takes as ``kernelParams`` (see the module docstring)."""

    def __init__(self, argtypes: Sequence):
        self.argtypes = tuple(argtypes)
        fields, offset = [], 0
        for arg, name, ctype in _fields(self.argtypes):
            offset = -(-offset // _ALIGN) * _ALIGN
            fields.append(Field(arg, name, ctype, offset))
            offset += ctypes.sizeof(ctype)
        self.fields = tuple(fields)
        self._buffer = (ctypes.c_char * max(_ALIGN, offset))()
        base = ctypes.addressof(self._buffer)
        self._slots = [f.ctype.from_buffer(self._buffer, f.offset) for f in fields]
        self._pointers = (ctypes.c_void_p * max(1, len(fields)))(*[base + f.offset for f in fields])
        self.address = ctypes.addressof(self._pointers)
        self._first = {}
        for k, f in enumerate(fields):
            self._first.setdefault(f.arg, k)

    def __len__(self) -> int:
        return len(self.fields)

    def slot(self, arg: int):
        """The ctypes object holding scalar argument ``arg``: ``slot(i).value = v`` writes it (the
        per-launch write: one store, no allocation)."""
        k = self._first[arg]
        if self.fields[k].name != "value":
            raise TypeError(f"argument {arg} is an array; use set_array")
        return self._slots[k]

    def set(self, arg: int, value) -> None:
        self.slot(arg).value = value

    def set_array(self, arg: int, data: int, shape: Sequence[int], strides: Sequence[int], itemsize: int) -> None:
        """Write array argument ``arg`` (device address, shape, byte strides, item size), as numba does."""
        from numba.cuda import types

        ty = self.argtypes[arg]
        if not isinstance(ty, types.Array):
            raise TypeError(f"argument {arg} is {ty}, not an array")
        if len(shape) != ty.ndim or len(strides) != ty.ndim:
            raise ValueError(f"argument {arg} is {ty.ndim}-D, got shape {tuple(shape)} strides {tuple(strides)}")
        k = self._first[arg]
        values = [0, 0, math.prod(int(n) for n in shape), int(itemsize), int(data), *map(int, shape),
                  *map(int, strides)]
        for j, value in enumerate(values):
            self._slots[k + j].value = value

    def values(self) -> list[int | float | bool]:
        """Every field's current value, in parameter order (tests decode the block with it)."""
        return [0 if s.value is None else s.value for s in self._slots]

    def sizes(self) -> list[int]:
        return [ctypes.sizeof(f.ctype) for f in self.fields]

    def raw(self, k: int) -> bytes:
        """The bytes ``cuLaunchKernel`` copies for parameter ``k`` (what ``kernelParams[k]`` points at)."""
        pointer = self._pointers[k]
        return ctypes.string_at(pointer, ctypes.sizeof(self.fields[k].ctype))


def array_fields(arr) -> tuple[int, tuple, tuple, int]:
    """``(data address, shape, byte strides, itemsize)`` of a numba device array (real or simulated),
    a mapped/pinned array, or anything with ``__cuda_array_interface__``."""
    shape = tuple(int(n) for n in arr.shape)
    itemsize = int(arr.dtype.itemsize)
    strides = tuple(int(s) for s in arr.strides)
    pointer = getattr(arr, "device_ctypes_pointer", None)
    if pointer is not None and not simulator_enabled():
        return int(pointer.value or 0), shape, strides, itemsize
    cai = getattr(arr, "__cuda_array_interface__", None)
    if cai is not None and not simulator_enabled():
        return int(cai["data"][0] or 0), shape, strides, itemsize
    host = getattr(arr, "_ary", arr)  # the simulator's arrays are numpy arrays in host memory
    return int(host.ctypes.data), shape, strides, itemsize


def reference_params(argtypes: Sequence, values: Sequence) -> list:
    """What numba-cuda's own ``_Kernel._prepare_args`` passes for ``values`` (tests compare a
    :class:`ParamBlock` with it). Arrays are given as :func:`array_fields` tuples and handed to
    numba as a minimal device-array view, so this runs without a GPU."""
    from numba.cuda.args import ArgHint
    from numba.cuda.dispatcher import _Kernel

    class _Layout:
        def __init__(self, strides, shape, itemsize):
            contiguous_c = list(strides) == _c_strides(shape, itemsize)
            self.strides_in_bytes = tuple(strides)
            self.is_contiguous_c, self.is_contiguous_f = contiguous_c, False

    class _View:  # the attributes _prepare_args reads of a device view (cuda.core StridedMemoryView)
        def __init__(self, data, shape, strides, itemsize):
            import numpy as np

            self.ptr, self.shape, self.size = data, tuple(shape), math.prod(shape)
            self.dtype = np.dtype(f"i{itemsize}") if itemsize in (1, 2, 4, 8) else np.dtype((np.void, itemsize))
            self._layout = _Layout(strides, shape, itemsize)

    class _Given(ArgHint):
        def to_device(self, retr, stream=0):
            return _View(*self.value)

    class _Self:
        extensions = []

    out: list = []
    for ty, value in zip(argtypes, values):
        _Kernel._prepare_args(_Self(), ty, _Given(value) if isinstance(value, tuple) else value, 0, [], out)
    return [v.value if isinstance(v, ctypes._SimpleCData) else v for v in out]


def _c_strides(shape, itemsize) -> list[int]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.insert(0, step)
        step *= int(n)
    return strides


# ----------------------------------------------------------------------------- the driver


class Function(NamedTuple):
    """A loaded kernel: ``handle`` goes to ``cuLaunchKernel``; ``kernel`` (cuda.core) answers occupancy."""

    handle: Any
    kernel: Any
    code: Any  # keeps the loaded library alive
    name: str


class CudaDriver:
    """The driver calls of the fixed-cost launch path (cuda-bindings, cuda.core). Tests use a stand-in."""

    def __init__(self):
        from cuda.bindings import driver as cu

        self._cu = cu
        self._launch = cu.cuLaunchKernel
        self._success = cu.CUresult.CUDA_SUCCESS
        self._streams: dict = {}

    def function(self, dispatcher, argtypes, key_parts: dict, device: int):
        """``(loaded function, compiled now?)`` of ``dispatcher`` for ``argtypes`` (:func:`kernel_function`)."""
        return kernel_function(self, dispatcher, argtypes, key_parts, device=device)

    def current_context(self) -> int:
        err, ctx = self._cu.cuCtxGetCurrent()
        return int(ctx) if err == self._success else 0

    def push_context(self, context: int) -> None:
        (err,) = self._cu.cuCtxPushCurrent(self._cu.CUcontext(context))
        if err != self._success:
            raise LaunchError(f"cuCtxPushCurrent failed: {err!r}")

    def pop_context(self) -> None:
        self._cu.cuCtxPopCurrent()

    def load(self, cubin: bytes, entry: str) -> Function:
        from cuda.core import ObjectCode

        code = ObjectCode.from_cubin(cubin, name=entry)
        kernel = code.get_kernel(entry)
        return Function(self._cu.CUfunction(int(kernel.handle)), kernel, code, entry)

    def param_sizes(self, function: Function) -> list[int] | None:
        """Sizes of the kernel's parameters as the cubin declares them (None if unknown)."""
        try:
            return [int(info.size) for info in function.kernel.arguments_info]
        except Exception:
            return None

    def blocks_per_sm(self, function: Function, threads: int) -> int:
        return int(function.kernel.occupancy.max_active_blocks_per_multiprocessor(threads, 0))

    def sm_count(self, device: int) -> int:
        cu = self._cu
        err, value = cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device)
        if err != self._success:
            raise LaunchError(f"cuDeviceGetAttribute failed: {err!r}")
        return int(value)

    def launch(self, function: Function, grid_x: int, grid_y: int, threads: int, stream: int, params: int) -> None:
        handle = self._streams.get(stream)
        if handle is None:
            if len(self._streams) > 64:
                self._streams.clear()
            handle = self._streams[stream] = self._cu.CUstream(stream)
        (err,) = self._launch(function.handle, grid_x, grid_y, 1, threads, 1, 1, 0, handle, params, 0)
        if err != self._success:
            _, name = self._cu.cuGetErrorName(err)
            raise LaunchError(f"cuLaunchKernel({function.name[:60]}) failed: {name!r} ({err!r})")


_DRIVER_LOCK = threading.Lock()
_DRIVER: list = []


def driver():
    """The process's :class:`CudaDriver`, or None under the simulator or without cuda-bindings/cuda.core
    (callers then keep numba's launch)."""
    if simulator_enabled():
        return None
    with _DRIVER_LOCK:
        if not _DRIVER:
            try:
                _DRIVER.append(CudaDriver())
                import cuda.core  # noqa: F401  (loading cubins)
            except Exception:  # pragma: no cover - depends on the install
                _DRIVER[:] = [None]
        return _DRIVER[0]


# ----------------------------------------------------------------------------- loading and launching

_FUNCTIONS: dict = {}


def kernel_function(drv, dispatcher, argtypes: Sequence, key_parts: dict, *, device: int = 0, cc=None):
    """The loaded function of ``dispatcher`` compiled for ``argtypes``, for device ``device``.

    Looked up in this process first, then in the per-user compile cache (:mod:`._cache`; ``key_parts``
    name the kernel factory and its arguments, the cache adds versions, sources and ``cc``); on a miss
    numba-cuda compiles it (``dispatcher.compile``) and the cubin is stored for the next process (under
    :func:`._cache.compiling`: another process of this machine that misses the same key meanwhile waits
    and loads it).
    Returns ``(function, compiled)`` where ``compiled`` says whether this call compiled.
    """
    if cc is None:
        from numba import cuda

        cc = tuple(cuda.get_current_device().compute_capability)
    key = _cache.kernel_key(key_parts, [str(t) for t in argtypes], cc)
    memo = _FUNCTIONS.get((key, device, id(drv)))
    if memo is not None:
        return memo, False
    compiled = False
    found = _cache.load(key)
    if found is None:
        with _cache.compiling(key):  # a process of this machine compiling the same kernel: wait, then load its cubin
            found = _cache.load(key)
            if found is None:
                overload = dispatcher.compile(tuple(argtypes))
                library = overload._codelibrary
                found = library._entry_name, library.get_cubin(cc=cc)
                _cache.store(key, *found)
                compiled = True
    entry, cubin = found
    function = drv.load(cubin, entry)
    _FUNCTIONS[(key, device, id(drv))] = function
    return function, compiled


class Launch:
    """One kernel with its parameter block: ``launch(grid_x, grid_y, stream)`` is one driver call.

    ``context`` (a CUDA context handle, set by the caller) is checked before each launch: when
    another context is current on this thread (several GPUs), it is pushed around the launch; when
    none is set (None) the current context is used as it is.
    """

    __slots__ = ("driver", "function", "params", "threads", "context", "_address")

    def __init__(self, drv, function, params: ParamBlock, threads: int, context=None):
        self.driver, self.function, self.params, self.threads = drv, function, params, int(threads)
        self.context = context
        self._address = params.address
        sizes = drv.param_sizes(function) if hasattr(drv, "param_sizes") else None
        if sizes is not None and sizes != params.sizes():
            raise LaunchError(f"the kernel declares parameters of sizes {sizes} but the block has {params.sizes()}; "
                              "numba-cuda's argument layout changed: the launcher needs updating")

    def launch(self, grid_x: int, grid_y: int, stream: int) -> None:
        drv, context = self.driver, self.context
        if context is not None and drv.current_context() != context:
            drv.push_context(context)
            try:
                drv.launch(self.function, grid_x, grid_y, self.threads, stream, self._address)
            finally:
                drv.pop_context()
            return
        drv.launch(self.function, grid_x, grid_y, self.threads, stream, self._address)


_RESIDENT: dict = {}


def resident_blocks(drv, function, threads: int, device: int) -> int:
    """Blocks that fill the GPU once (SMs x resident blocks per SM), asked of the driver once per
    (driver, kernel, threads, device)."""
    key = (id(drv), function.name, int(threads), int(device))
    blocks = _RESIDENT.get(key)
    if blocks is None:
        blocks = _RESIDENT[key] = max(1, int(drv.blocks_per_sm(function, threads)) * int(drv.sm_count(device)))
    return blocks


# ----------------------------------------------------------------------------- a stand-in driver


def read_params(argtypes: Sequence, params: int) -> list:
    """Decode the parameter block at ``params`` (a ``void**``, as ``cuLaunchKernel`` gets it) into
    every field's value, reading through the pointers the way the driver does."""
    fields = _fields(argtypes)
    pointers = (ctypes.c_void_p * max(1, len(fields))).from_address(params)
    out = []
    for (_, _, ctype), pointer in zip(fields, pointers):
        value = ctype.from_address(pointer).value
        out.append(0 if value is None else value)
    return out


class RecordingDriver:
    """A stand-in for :class:`CudaDriver` (tests, host-cost benchmarks): ``launch`` records the
    function, grid, block, stream and parameter address instead of launching (``decode=True``: the
    decoded parameter values too). ``function`` returns the dispatcher itself, uncompiled."""

    def __init__(self, blocks_per_sm: int = 4, sms: int = 2, decode: bool = False):
        self._blocks_per_sm, self._sms, self.decode = blocks_per_sm, sms, decode
        self.launches: list = []
        self.loaded: list = []

    def function(self, dispatcher, argtypes, key_parts: dict, device: int):
        fn = Function(handle=len(self.loaded), kernel=dispatcher, code=tuple(argtypes),
                      name=f"{key_parts.get('factory')}-{len(self.loaded)}")
        self.loaded.append((fn, dict(key_parts)))
        return fn, False

    def blocks_per_sm(self, function, threads: int) -> int:
        return self._blocks_per_sm

    def sm_count(self, device: int) -> int:
        return self._sms

    def current_context(self) -> int:
        return 0

    def launch(self, function, grid_x: int, grid_y: int, threads: int, stream: int, params: int) -> None:
        values = read_params(function.code, params) if self.decode else None
        self.launches.append((function, (grid_x, grid_y), threads, stream, params, values))
