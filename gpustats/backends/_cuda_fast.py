"""The CUDA backend's fixed-cost path and its NaN/inf check on the device (helpers of :mod:`.cuda`).

* :class:`FastPath`: what :meth:`~gpustats.backends.cuda.CudaReducer.fast_path` hands to
  :class:`gpustats.Accumulator`: a plain contiguous 4-D tensor like the batches before it goes
  straight to the ``vec`` launcher (:class:`gpustats.kernels.vec.Launcher`): a few attribute reads,
  the parameter writes, one ``cuLaunchKernel``; no batch adapter, no chunk, no numba object.
* :func:`recorded_nonfinite`: the error for batches the ``vec`` kernels left out under
  ``nan_policy="raise"`` (their status row, read without waiting for the device).
* :func:`vec_reads`: whether the ``vec`` kernels will read a part (and so can check it themselves).
* :func:`launcher_for` / :func:`fast_path_for`: a reducer's launchers and fast path, made once per
  accumulator (the reducer's ``_launchers`` and ``_fast``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..numerics import FLOAT_DTYPES as _FLOAT_DTYPES

__all__ = ["FAST_DTYPES", "TORCH_DTYPES", "FastPath", "current_raw_stream", "fast_path_for", "launcher_for",
           "recorded_nonfinite", "vec_reads"]

FAST_DTYPES = ("uint8", "float16", "bfloat16", "float32")
TORCH_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def current_raw_stream(index: int) -> int:
    """torch's current stream handle on device ``index`` (the cheap accessor triton uses, else the public one)."""
    getter = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if getter is not None:
        return int(getter(index))
    return int(torch.cuda.current_stream(index).cuda_stream)  # pragma: no cover - older torch


class FastPath:
    """:meth:`~gpustats.backends.cuda.CudaReducer.fast_path`'s callable: a contiguous 4-D tensor like the batches before it, to the
    ``vec`` launcher with nothing else in between (no adapter, no chunk, no numba call)."""

    __slots__ = ("reducer", "launcher", "acc", "layout", "nchw", "channels", "dtype", "torch_dtype", "device",
                 "check", "bound", "simulator", "index")

    def __init__(self, reducer, launcher, layout: str, channels: int, dtype: str):
        self.reducer, self.launcher, self.acc = reducer, launcher, reducer._acc
        self.layout, self.nchw, self.channels, self.dtype = layout, layout == "NCHW", channels, dtype
        self.torch_dtype = TORCH_DTYPES[dtype]
        self.simulator, self.index = reducer.simulator, reducer._index
        self.device = -1 if reducer.simulator else reducer._index  # x.get_device() of a batch we take
        self.check = dtype != "uint8" and reducer.options.nan_policy == "raise"
        self.bound = reducer._k.max_elements_before_flush(dtype)

    def matches(self, acc, layout: str, channels: int, dtype: str) -> bool:
        return acc is self.acc and layout == self.layout and channels == self.channels and dtype == self.dtype

    def __call__(self, x: torch.Tensor, batch_index: int) -> bool:
        r = self.reducer
        if (x.dtype != self.torch_dtype or x.dim() != 4 or x.get_device() != self.device or r._acc is not self.acc
                or not x.is_contiguous()):
            return False
        n, a, b, c = x.shape
        if self.nchw:
            channels, pixels = a, b * c
        else:
            channels, pixels = c, a * b
        elements = n * pixels
        if channels != self.channels or elements == 0 or r._since_flush + elements > self.bound:
            return False
        if r._status is not None:
            r._raise_recorded_nonfinite()
        stream = 0 if self.simulator else current_raw_stream(self.index)
        if not self.launcher(x.data_ptr(), n, pixels, stream, batch_index + 1 if self.check else 0):
            return False
        r._since_flush += elements
        r.batches += 1
        r.kernel_launches += 1
        r.launcher_launches += 1
        r.fast_updates += 1
        r.strategy = "vec"
        return True


def recorded_nonfinite(row, seen: int):
    """``(NonFiniteError or None, bad batches seen)`` from a status row (fields in
    :data:`gpustats.kernels.vec.STATUS_FIELDS`) of which ``seen`` bad batches were already reported."""
    found = int(row[6])  # written last by the kernel, after a system fence: read it first
    if found <= seen:
        return None, seen
    first, first_count, first_mask, last, last_count, last_mask = (int(row[k]) for k in range(6))
    new = found - seen
    if seen == 0:
        batch, count, mask = first - 1, first_count, first_mask
        more = f"; {new - 1} later batch(es) with non-finite values were left out too (the last: batch {last - 1})"
    else:
        batch, count, mask = last - 1, last_count, last_mask
        more = f"; {new - 1} earlier batch(es) with non-finite values since the last error were left out too"
    channels = [c for c in range(64) if mask >> c & 1]
    from .cpu import NonFiniteError

    return NonFiniteError(
        f"batch {batch} has {count} non-finite values (NaN or inf) in channel(s) {channels}; it was left out of "
        f"the statistics (found on the GPU without waiting for it: reported at the next update() or at "
        f"state()){more if new > 1 else ''}; pass nan_policy='omit' to leave such values out or "
        "nan_policy='propagate' to get NaN/inf results"
    ), found


def vec_reads(part, chunk, *, on_gpu: bool) -> bool:
    """Whether the vec kernels will read ``part`` (so they can check it for NaN/inf themselves): its
    device copy is C-contiguous (a CUDA tensor as it is; host tensors are staged contiguous) and
    16-byte aligned, with NCHW rows a multiple of the vector width. ``on_gpu``: ``part`` is a CUDA
    tensor read in place (its own strides and address count), not a host tensor to be staged."""
    if on_gpu and not part.is_contiguous():
        return False
    from ..kernels import vec

    shape = tuple(int(n) for n in part.shape)
    itemsize = part.element_size()
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    info = vec._Input(shape, tuple(strides), np.dtype(f"u{itemsize}"), part.data_ptr() if on_gpu else 0)
    return vec.plan(info, chunk.layout, chunk.dtype) is not None


def launcher_for(reducer, dtype: str, layout: str):
    """``reducer``'s :class:`gpustats.kernels.vec.Launcher` for (dtype, layout) into its accumulators, made
    once (None: no driver, a dtype/layout vec does not read, or the driver path failed to set up -- the
    reason is then in ``reducer.launcher_error`` and numba's launch runs instead)."""
    if reducer.driver is None or reducer._acc is None:
        return None
    key = (dtype, layout)
    if key in reducer._launchers:
        return reducer._launchers[key]
    status = reducer._status_row() if dtype in _FLOAT_DTYPES and reducer.options.nan_policy == "raise" else None
    try:
        with reducer._device_context():
            launcher = reducer._k.vec.Launcher(reducer._acc, dtype, layout, drv=reducer.driver, device=reducer._index,
                                               status=status)
        if not reducer.simulator:
            launcher.launch.context = _primary_context(reducer)
    except ValueError:  # a dtype/layout the vec kernels do not read
        launcher = None
    except Exception as exc:  # cuda.core / cuda-bindings refused something: numba's launch, with the reason kept
        reducer.launcher_error = f"{type(exc).__name__}: {exc}"[:500]
        launcher = None
    reducer._launchers[key] = launcher
    return launcher


def _primary_context(reducer) -> int:
    """The reducer's device's primary context handle (launches check it is current: several GPUs)."""
    if reducer._context is None:
        with reducer._device_context():
            handle = reducer._cuda.current_context().handle
        try:
            reducer._context = int(handle)
        except TypeError:  # a ctypes handle (older numba-cuda)
            reducer._context = int(handle.value or 0)
    return reducer._context


def fast_path_for(reducer, layout: str, channels: int, dtype: str):
    """:meth:`gpustats.backends.cuda.CudaReducer.fast_path` (see there), or None where it does not apply."""
    opts = reducer.options
    if (reducer.driver is None or reducer._acc is None or layout not in ("NCHW", "NHWC")
            or reducer._requested not in ("auto", "vec") or dtype not in FAST_DTYPES
            or opts.per_image or opts.covariance or opts.histogram
            or (dtype in _FLOAT_DTYPES and opts.nan_policy == "propagate")
            or reducer._key is None or reducer._key[0] != dtype or reducer._key[1] != channels):
        return None
    fast = reducer._fast
    if fast is not None and fast.matches(reducer._acc, layout, channels, dtype):
        return fast
    launcher = launcher_for(reducer, dtype, "CP" if layout == "NCHW" else "PC")
    if launcher is None:
        return None
    reducer._fast = FastPath(reducer, launcher, layout, channels, dtype)
    return reducer._fast
