"""A stand-in for the fixed-cost launcher's driver that runs the kernels under numba's simulator.

``SimulatorDriver.launch`` decodes the parameter block exactly as the driver would read it (through
the ``void*[]``), rebuilds the arrays from the addresses, shapes and strides found there (under the
simulator "device" arrays live in host memory, so those addresses are real), and launches the
simulated kernel with them. A wrong address, size or stride in the block gives wrong statistics,
so the CUDA backend's fixed-cost path is checked end to end on the CPU.
"""

from __future__ import annotations

import ctypes

import numpy as np

from gpustats.kernels import _launch

_ITEMSIZE = {"uint8": 1, "uint16": 2, "float16": 2, "bfloat16": 2, "float32": 4}


def _array(ty, data: int, shape, strides, itemsize):
    from numba.np.numpy_support import as_dtype

    dtype = as_dtype(ty.dtype)
    assert dtype.itemsize == itemsize, (ty, itemsize)
    span = itemsize + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    buffer = (ctypes.c_char * max(span, 1)).from_address(data)
    return np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)


def rebuild(argtypes, values, dtype_tag: str) -> list:
    """The kernel arguments a decoded vec parameter block stands for (arrays over host memory)."""
    from numba.cuda import types

    args, k = [], 0
    for ty in argtypes:
        if isinstance(ty, types.Array):
            d = ty.ndim
            _, _, nitems, itemsize, data = values[k:k + 5]
            shape = tuple(values[k + 5:k + 5 + d])
            strides = tuple(values[k + 5 + d:k + 5 + 2 * d])
            assert nitems == int(np.prod(shape)), (nitems, shape)
            args.append(_array(ty, data, shape, strides, itemsize))
            k += 5 + 2 * d
        else:
            args.append(values[k])
            k += 1
    # the vec kernels load through the input's address on a GPU; the simulator indexes arrays
    address, total, tail_start = args[0], args[6], args[5]
    size = _ITEMSIZE[dtype_tag]
    bits = np.ndarray((total,), dtype={1: np.uint8, 2: np.uint16, 4: np.uint32}[size],
                      buffer=(ctypes.c_char * max(total * size, 1)).from_address(address))
    words = bits[:tail_start].view(np.uint32)
    return [words, bits, *args[2:]]


class SimulatorDriver(_launch.RecordingDriver):
    """Records like :class:`gpustats.kernels._launch.RecordingDriver`, then runs the launch under the simulator."""

    def __init__(self, blocks_per_sm: int = 1, sms: int = 2):
        super().__init__(blocks_per_sm=blocks_per_sm, sms=sms, decode=True)

    def launch(self, function, grid_x, grid_y, threads, stream, params):
        super().launch(function, grid_x, grid_y, threads, stream, params)
        values = self.launches[-1][-1]
        parts = dict(self.loaded[function.handle][1])
        dtype_tag = parts.get("dtype", "uint8")
        args = rebuild(function.code, values, dtype_tag)
        function.kernel[(grid_x, grid_y), threads](*args)
