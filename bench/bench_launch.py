"""Host cost of one ``Accumulator.update`` on the CUDA backend, measured on the CPU with a stand-in driver.

The fixed-cost path's budget is 25 µs of host time per update on a GPU box. Everything it does
on the host runs here, without a GPU: the driver's ``cuLaunchKernel`` is replaced by
:class:`gpustats.kernels._launch.RecordingDriver`, which records the launch (a list append) and
does not run the kernel. So the times below are the host path itself (checks, parameter writes,
the call into the driver), not the driver call's own cost (a few µs on a real GPU: the kit's
``calls`` section measures the whole thing there, ``bench/gpu_calls.py``). Two modes, one file:

* ``NUMBA_ENABLE_CUDASIM=1 python -m pytest bench/bench_launch.py --benchmark-enable`` (group
  ``update``): ``Accumulator(device="cuda").update`` on the same batch through (a) the fast path
  (:meth:`CudaReducer.fast_path`: no batch adapter), (b) the general path with the launcher
  (adapter, chunk, routing; what a batch unlike the previous ones takes), (c) the launcher call
  alone. The simulator only provides the accumulators' arrays (host memory); nothing is simulated
  in the timed code.
* ``python -m pytest bench/bench_launch.py --benchmark-enable`` (group ``marshal``, no GPU needed):
  the per-launch parameter writes of a :class:`ParamBlock` for the ``vec`` kernel's 13 arguments
  vs numba-cuda's own ``_Kernel._prepare_args`` over the same arguments (what its dispatcher does
  at every launch before cuda.core's launch; arrays given as ready device views, so numba's
  ``as_cuda_array``/``to_device`` wrapping -- 100+ µs measured on the H200 host -- is not even
  counted).

Ratios are in each benchmark's ``extra_info`` (same run). Nothing is asserted about time.
"""

from __future__ import annotations

import os

import pytest
import torch

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")

CASES = {"uint8-128x3x32x32": (torch.uint8, (128, 3, 32, 32)), "float32-64x3x224x224": (torch.float32, (64, 3, 224, 224)),
         "uint8-NHWC-256x224x224x3": (torch.uint8, (256, 224, 224, 3))}


def _batch(dtype, shape):
    if dtype == torch.uint8:
        return torch.zeros(shape, dtype=dtype)
    return torch.full(shape, 0.5, dtype=dtype)


_measured: dict = {}


@pytest.mark.benchmark(group="update")
@pytest.mark.parametrize("path", ["fast", "general", "launcher"])
@pytest.mark.parametrize("case", list(CASES))
def test_update_host_cost(benchmark, case, path):
    if not SIM:
        pytest.skip("run with NUMBA_ENABLE_CUDASIM=1: the accumulators' arrays come from the simulator here")
    from gpustats import Accumulator
    from gpustats.kernels import _launch

    dtype, shape = CASES[case]
    x = _batch(dtype, shape)
    layout = "NHWC" if "NHWC" in case else "NCHW"
    acc = Accumulator(device="cuda", layout=layout)
    driver = acc._reducer.driver = _launch.RecordingDriver()
    acc.update(x)  # sets up the accumulators and the launcher (nothing is run: the driver only records)
    assert acc._fast is not None
    if path == "fast":
        def call():
            acc.update(x)
    elif path == "general":
        def call():
            acc._fast = None  # as if the batch did not match the previous ones
            acc.update(x)
    else:
        launcher = next(iter(acc._reducer._launchers.values()))
        n, pixels = shape[0], (shape[2] * shape[3] if layout == "NCHW" else shape[1] * shape[2])
        address = x.data_ptr()

        def call():
            launcher(address, n, pixels, 0, 0)
    benchmark(call)
    driver.launches.clear()
    if benchmark.stats is not None:
        _measured[(case, path)] = benchmark.stats.stats.median
        fast = _measured.get((case, "fast"))
        if fast:
            benchmark.extra_info["vs_fast"] = benchmark.stats.stats.median / fast
    benchmark.extra_info["host_us_budget"] = 25


def _vec_args():
    from gpustats.kernels import vec

    address = 0x7F00_0000_0000
    scalars = [address, address, 128, 768, 3, 393216, 393216]
    arrays = [(address + 0x100000, (396, 18), (144, 8), 8), (address + 0x200000, (1,), (4,), 4),
              (address + 0x300000, (4, 3), (24, 8), 8), (address + 0x400000, (5, 3), (24, 8), 8),
              (address + 0x500000, (8,), (8,), 8)]
    return vec.kernel_argtypes("uint8"), scalars + arrays + [5]


@pytest.mark.benchmark(group="marshal")
@pytest.mark.parametrize("how", ["param-block-writes", "numba-prepare-args"])
def test_marshal_13_arguments(benchmark, how):
    if SIM:
        pytest.skip("numba's _prepare_args is the real CUDA target's: run without NUMBA_ENABLE_CUDASIM")
    from gpustats.kernels import _launch

    argtypes, values = _vec_args()
    if how == "param-block-writes":
        block = _launch.ParamBlock(argtypes)
        for arg in range(7, 12):
            block.set_array(arg, *values[arg])
        slots = [block.slot(k) for k in (0, 1, 2, 3, 4, 5, 6, 12)]
        ints = values[:7] + [values[12]]

        def call():
            for slot, value in zip(slots, ints):
                slot.value = value
    else:
        from numba.cuda.args import ArgHint
        from numba.cuda.dispatcher import _Kernel

        views = {}

        class _Given(ArgHint):  # a ready device view: numba's wrapping/allocation is not counted
            def to_device(self, retr, stream=0):
                return views[id(self)]

        reference_view = _launch.reference_params  # noqa: F841  (same stand-in views as the tests)

        class _Layout:
            def __init__(self, strides):
                self.strides_in_bytes, self.is_contiguous_c, self.is_contiguous_f = tuple(strides), True, False

        class _View:
            def __init__(self, data, shape, strides, itemsize):
                import numpy as np

                self.ptr, self.shape, self.size = data, shape, int(np.prod(shape))
                self.dtype = np.dtype(f"i{itemsize}")
                self._layout = _Layout(strides)

        hints = []
        for v in values:
            if isinstance(v, tuple):
                hint = _Given(v)
                views[id(hint)] = _View(*v)
                hints.append(hint)
            else:
                hints.append(v)

        class _Self:
            extensions = []

        me = _Self()
        prepare = _Kernel._prepare_args

        def call():
            out, retr = [], []
            for ty, v in zip(argtypes, hints):
                prepare(me, ty, v, 0, retr, out)
            return out
    benchmark(call)
    if benchmark.stats is not None:
        _measured[how] = benchmark.stats.stats.median
        if "param-block-writes" in _measured and how != "param-block-writes":
            benchmark.extra_info["vs_param_block"] = benchmark.stats.stats.median / _measured["param-block-writes"]
