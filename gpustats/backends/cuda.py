"""The CUDA backend: numba kernels (``gpustats.kernels``) reducing into device accumulators.

* Torch CUDA tensors are reduced in place, zero-copy, on torch's current stream of their device;
  nothing waits for the device until :meth:`CudaReducer.state` (or an integer-overflow flush, or
  one of the checks listed under "Synchronizations" below).
* CPU tensors go through two pinned staging buffers: the host copy into one overlaps the
  transfer/reduction of the other; transfers run on a side stream and the reduction waits for
  them with an event. Data crosses the bus in its own dtype (8-bit stays 8-bit).
* Under numba's simulator (``NUMBA_ENABLE_CUDASIM=1``, no GPU) CPU tensors are staged as numpy
  arrays into simulated device arrays, so the real kernels run in CI on tiny inputs.

What runs where (strategy ``"auto"``, :data:`AUTO_STRATEGY`): ``vec`` for uint8, float16, bfloat16
and float32 (measured fastest on an H200), ``hist8`` when uint8 histograms are asked for, ``atomic``
when co-moments or per-image sums are; uint16 -> ``atomic`` and float64 -> ``tree`` (not measured).
A batch of several variable-size images (``Chunk`` parts) is joined into one strip on the device
and reduced in one launch, unless per-image sums need the images apart.
Requests the kernels do not cover -- int8/int16 data, histograms of non-uint8 data,
``nan_policy="propagate"`` on float data -- are reduced by the CPU backend for that batch and
counted in ``fallback_batches`` (``kernel_launches`` counts the kernel path).

Fixed cost per update (``vec`` on a GPU with cuda-bindings): the kernel is launched by a
:class:`gpustats.kernels.vec.Launcher` (one ``cuLaunchKernel``, a parameter block built once per
accumulator, the cubin cached per user across processes), and :meth:`CudaReducer.fast_path` lets
:class:`gpustats.Accumulator` send a plain contiguous 4-D CUDA tensor like the batches before it
straight there (:mod:`._cuda_fast`). Under the simulator or without cuda-bindings numba's own
launch runs the same kernels with the same arguments.

``nan_policy="raise"`` (the default) on float data, exactly:

* Batches the ``vec`` kernels read (float16, bfloat16, float32 with strategy ``auto``/``vec``,
  a C-contiguous, 16-byte-aligned batch; NCHW rows a multiple of 8 / 4 elements) are checked in
  the same pass, without a synchronization: if the batch holds any NaN/inf, the kernel adds
  nothing to the totals and records the batch (its index, its count, its channels) in a status
  row in mapped (pinned) host memory. **Such a batch never enters the state.**
* The error (:class:`~gpustats.backends.cpu.NonFiniteError`, an ``InputError`` naming the batch,
  the count and the channels) is raised by the first of these calls that sees the record: every
  ``update()`` reads the row first, without waiting (the kernel writes it when the bad batch has
  been reduced, so usually the next ``update()`` raises), and ``state()``/``result()`` wait for the
  device anyway, so they raise for certain when no ``update()`` did. The call that raises adds
  nothing of its own: an ``update()`` that raises did not add its batch (pass it again after
  handling the error), and the state then holds exactly the batches whose ``update()`` returned,
  minus the bad ones; ``state()`` raises after merging them, and calling it again returns that
  state. Each bad batch is reported once; when several were found at one check the message names
  the first and says how many.
* Other float batches under ``"raise"`` (float64, co-moments, per-image sums, an explicit
  strategy other than ``vec``, strided or misaligned views, ragged NCHW rows) are checked before
  anything is accumulated, with one small torch reduction and one synchronization, and the error
  is raised by that ``update()`` itself.

Synchronizations before ``state()``: the check just described for batches ``vec`` does not read;
uint16 totals flushed before they could overflow int64; per-image float outputs read back at
``state()``. The first float batch's per-channel shift (the mean of its finite values) is computed
on the device by torch and copied into the accumulator on the same stream (no synchronization).
uint8 batches, and float batches through ``vec`` under either policy, add no synchronization.
"""

from __future__ import annotations

import numpy as np
import torch

from ..batches import Chunk, InputError
from ..numerics import FLOAT_DTYPES as _FLOAT_DTYPES, moments_from_shifted_mean, moments_from_shifted_sums
from ..stats import ChannelStats, ImageMoments
from ..tuning import AUTO_HISTOGRAM_STRATEGY, AUTO_STRATEGY  # strategy="auto": measured on an H200 (see there)
from . import BackendUnavailable, Options, Reducer
from ._cuda_fast import current_raw_stream, fast_path_for, launcher_for, recorded_nonfinite, vec_reads

__all__ = ["CudaReducer"]

_KERNEL_DTYPES = ("uint8", "uint16", "float16", "bfloat16", "float32", "float64")


def _load_kernels():
    try:
        from numba import cuda

        from .. import kernels
    except Exception as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailable(f"the CUDA kernels cannot be loaded ({exc}); pip install 'gpustats[cuda]' (numba-cuda)") from exc
    return cuda, kernels


class CudaReducer(Reducer):
    """Reduce canonical chunks with the numba CUDA kernels; state lives on the device until asked."""

    name = "cuda"

    def __init__(self, device: torch.device, options: Options):
        self._cuda, self._k = _load_kernels()
        self.device = device
        self.options = options
        self.simulator = self._k.simulator_enabled()
        requested = options.strategy
        if requested != "auto":
            self._k.get_strategy(requested)  # clear error for unknown names
            if self.simulator and requested not in self._k.SIMULATOR_STRATEGIES:
                raise BackendUnavailable(
                    f"strategy {requested!r} needs a real GPU (the numba simulator has no warp shuffles); "
                    f"choose one of {list(self._k.SIMULATOR_STRATEGIES)}"
                )
        self._requested = requested
        self.strategy = requested
        self._index = 0 if self.simulator else (device.index if device.index is not None else torch.cuda.current_device())
        from ..kernels import _launch

        #: the fixed-cost launcher's driver (None: numba's launch; tests may set a stand-in)
        self.driver = _launch.driver()
        self._cpu = None
        self._staging = None
        self._after_reduce = None
        self._numba_streams: dict = {}
        self._context = None
        self.kernel_launches = 0  # reduce() calls on the kernel path (tests use it to prove it ran)
        self.fallback_batches = 0  # batches the kernels do not cover, reduced by the CPU backend
        self.launcher_launches = 0  # kernel launches through the fixed-cost launcher (no numba dispatch)
        self.fast_updates = 0  # updates taken by fast_path() (no batch adapter, no chunk)
        self.launcher_error = None  # why the fixed-cost launcher could not be set up, if it could not
        self.reset()

    # ------------------------------------------------------------------ Reducer interface
    def reset(self) -> None:
        self._state, self._acc, self._key, self._launchers, self._fast = ChannelStats.empty(), None, None, {}, None
        self._pending_images = []
        self._since_flush = 0
        self._status = None  # nan_policy="raise": the vec kernels' status row (mapped host memory)
        self._bad_seen = 0  # bad batches already reported from it
        self.batches = 0

    def load(self, state: ChannelStats) -> None:
        self.reset()
        self._state = state

    def state(self) -> ChannelStats:
        self._flush()
        self._raise_recorded_nonfinite()  # after the flush: the state holds every good batch
        return self._state

    def update(self, chunk: Chunk, scale: float, batch_index: int) -> None:
        if not chunk.parts:
            return
        self._raise_recorded_nonfinite()  # an earlier batch was left out: say so before this one counts
        if not self._kernels_cover(chunk):
            self._update_on_cpu(chunk, scale, batch_index)
            return
        opts = self.options
        integer = chunk.dtype in ("uint8", "uint16")
        strategy = self._pick_strategy(chunk)
        if len(chunk.parts) > 1 and not opts.per_image:
            chunk = self._joined(chunk)  # variable-size images: one launch per batch, not one per size
        check_here = not integer and opts.nan_policy == "raise"
        on_device = (check_here and strategy == "vec" and len(chunk.parts) == 1  # else: checked here, one sync
                     and vec_reads(chunk.parts[0], chunk, on_gpu=chunk.parts[0].is_cuda and not self.simulator))
        if check_here and not on_device:
            self._raise_on_nonfinite(chunk, batch_index)  # before touching any state
        histogram = bool(opts.histogram and chunk.dtype == "uint8")
        key = (chunk.dtype, chunk.channels, float(scale), histogram, bool(opts.covariance))
        if self._acc is not None and key != self._key:
            self._flush()
            self._acc, self._key, self._launchers = None, None, {}
        elif self._acc is not None and self._since_flush + chunk.elements > self._k.max_elements_before_flush(chunk.dtype):
            self._flush()
        with self._device_context():
            raw_stream = self._raw_stream()
            stream = self._numba_stream(raw_stream)
            if self._acc is None:
                self._acc = self._k.Accumulators.zeros(
                    chunk.channels, integer=integer, histogram=histogram, cross=bool(opts.covariance), stream=stream
                )
                self._key = key
                if not integer:
                    self._set_shift(chunk, stream)
            reduce = self._k.get_strategy(strategy).reduce
            status = self._status_row() if on_device else None
            launcher = self._launcher(chunk.dtype, chunk.layout) if strategy == "vec" else None
            for part, address in self._reduce_parts(chunk, stream):
                try:
                    images = self._acc.per_image(int(part.shape[0])) if opts.per_image else None
                    if launcher is not None and address is not None and launcher(
                            address, int(part.shape[0]), int(part.shape[2 if chunk.layout == "CP" else 1]),
                            raw_stream, batch_index + 1 if on_device else 0):
                        self.launcher_launches += 1
                    elif on_device:
                        if not reduce(part, chunk.layout, chunk.dtype, self._acc, stream=stream, status=status,
                                      check=batch_index + 1):
                            # the tree kernels (this view cannot be read with 16-byte loads) cannot leave a
                            # batch out: check it first (one sync), then reduce
                            self._raise_on_nonfinite(chunk, batch_index)
                            reduce(part, chunk.layout, chunk.dtype, self._acc, stream=stream)
                    else:
                        reduce(part, chunk.layout, chunk.dtype, self._acc, histogram=histogram,
                               cross=bool(opts.covariance), per_image=images, stream=stream)
                    self.kernel_launches += 1
                    if images is not None:
                        self._pending_images.append((self.batches, images))
                finally:
                    if self._after_reduce is not None:  # a staged part: its buffer is free once this ran
                        event, on_stream = self._after_reduce
                        event.record(on_stream)
                        self._after_reduce = None
        self.strategy = strategy
        self._since_flush += chunk.elements
        self.batches += 1

    def fast_path(self, layout: str, channels: int, dtype: str):
        """A callable ``fast(x, batch_index) -> bool`` for :class:`gpustats.Accumulator`, or None.

        It takes a plain torch tensor ``x`` -- 4-D, C-contiguous, ``layout`` ("NCHW"/"NHWC"),
        ``channels``, ``dtype``, on this reducer's device -- straight to the ``vec`` launcher and
        returns True; anything else (or a batch that would need a flush) returns False, having done
        nothing, and the caller takes the general path. Offered once the general path has set up
        the accumulators for these batches, on a GPU with cuda-bindings (or a test stand-in).
        """
        return fast_path_for(self, layout, channels, dtype)

    def _status_row(self):
        """The status row the vec kernels record left-out batches in (mapped host memory, int64[8])."""
        if self._status is None:
            row = self._cuda.mapped_array(self._k.vec.STATUS_WORDS, dtype=np.int64)
            row[:] = 0
            self._status, self._bad_seen = row, 0
        return self._status

    def _raise_recorded_nonfinite(self) -> None:
        """Raise for bad batches the kernels recorded since the last report (reads mapped memory: no wait)."""
        if self._status is None:
            return
        error, self._bad_seen = recorded_nonfinite(self._status, self._bad_seen)
        if error is not None:
            raise error

    def _launcher(self, dtype: str, layout: str):
        """The accumulator's :class:`gpustats.kernels.vec.Launcher` for (dtype, layout), or None
        (no driver, or an input vec does not read): :func:`._cuda_fast.launcher_for`."""
        return launcher_for(self, dtype, layout)

    # ------------------------------------------------------------------ routing
    def _kernels_cover(self, chunk: Chunk) -> bool:
        opts = self.options
        if chunk.dtype not in _KERNEL_DTYPES or not 1 <= chunk.channels <= self._k.MAX_CHANNELS:
            return False
        if opts.histogram and chunk.dtype != "uint8":
            return False
        if chunk.dtype in _FLOAT_DTYPES and opts.nan_policy == "propagate":
            return False
        return True

    def _pick_strategy(self, chunk: Chunk) -> str:
        opts = self.options
        needs = "per_image" if opts.per_image else ("cross" if opts.covariance else None)
        if self._requested == "auto":
            if needs:
                return "atomic"
            if opts.histogram and chunk.dtype == "uint8":
                return AUTO_HISTOGRAM_STRATEGY
            return AUTO_STRATEGY[chunk.dtype]
        name = self._requested
        if needs and not self._k.strategy_supports(name, needs):
            raise InputError(f"strategy={name!r} cannot compute {needs.replace('cross', 'covariance')}; "
                             "use strategy='atomic' or 'auto'")
        if opts.histogram and chunk.dtype == "uint8" and not self._k.strategy_supports(name, "histogram"):
            raise InputError(f"strategy={name!r} cannot compute histograms; use strategy='hist8', 'atomic' or 'auto'")
        if name == "hist8" and chunk.dtype != "uint8":
            raise InputError(f"strategy='hist8' reduces uint8 data only (batch {self.batches} is {chunk.dtype}); "
                             "use strategy='auto'")
        return name

    @staticmethod
    def _joined(chunk: Chunk) -> Chunk:
        """The chunk's parts (images of different sizes) as one strip ``[1, C, sum L]`` / ``[1, sum L, C]``.

        Statistics without per-image sums do not care where a pixel sits, so the parts are joined on
        their own device (one copy, cheap beside a kernel launch per part) and reduced in one launch.
        """
        parts = [p.detach() for p in chunk.parts]
        if chunk.layout == "PC":
            joined = torch.cat([p.reshape(1, -1, chunk.channels) for p in parts], dim=1)
        else:
            joined = torch.cat([p.transpose(0, 1).reshape(chunk.channels, -1) for p in parts], dim=1)[None]
        return Chunk((joined,), chunk.layout, chunk.dtype, chunk.channels)

    def _update_on_cpu(self, chunk: Chunk, scale: float, batch_index: int) -> None:
        if self._cpu is None:
            from .cpu import CpuReducer

            self._cpu = CpuReducer(torch.device("cpu"), self.options)
        cpu_chunk = Chunk(tuple(p.detach().cpu() for p in chunk.parts), chunk.layout, chunk.dtype, chunk.channels)
        batch_state = self._cpu.reduce_chunk(cpu_chunk, scale, batch_index)
        self._flush()
        self._state = self._state.merge(batch_state)
        self.fallback_batches += 1
        self.batches += 1

    # ------------------------------------------------------------------ devices and streams
    def _device_context(self):
        if self.simulator:
            return self._cuda.gpus[0]
        return self._cuda.gpus[self._index]

    def _raw_stream(self) -> int:
        """torch's current stream on this device, as the driver's handle (0 under the simulator)."""
        return 0 if self.simulator else current_raw_stream(self._index)

    def _numba_stream(self, raw: int):
        """numba's view of stream ``raw``, made once per stream (numba's streams are not free)."""
        if self.simulator:
            return 0
        if raw not in self._numba_streams:
            self._numba_streams[raw] = self._cuda.external_stream(raw)
        return self._numba_streams[raw]

    def _reduce_parts(self, chunk: Chunk, stream):
        """Yield ``(array, address)`` per part: what the kernels' ``reduce`` takes (the CUDA tensor itself,
        zero-copy; a staged device buffer; numpy under the simulator) and, when that is C-contiguous,
        its device address for the fixed-cost launcher (else None)."""
        for part in chunk.parts:
            part = part.detach()
            if chunk.dtype == "bfloat16":
                part = part.view(torch.int16)  # bit patterns; the kernels decode bfloat16 exactly
            if part.dtype == getattr(torch, "uint16", None):
                part = part.view(torch.int16)  # same bits; the kernels mask to 16 bits
            if part.device.type == "cuda":
                if not self.simulator and part.device.index != self._index:
                    raise InputError(
                        f"batch {self.batches} is on {part.device} but this Accumulator reduces on cuda:{self._index}; "
                        f"pass device='{part.device}' or move the batch with .to('cuda:{self._index}')"
                    )
                if not self.simulator:
                    yield part, (part.data_ptr() if part.is_contiguous() else None)
                    continue
            if self.simulator:
                host = (part if part.device.type == "cpu" else part.cpu()).numpy()
                yield host, (host.ctypes.data if host.flags.c_contiguous else None)
            else:
                staged = self._stage(part, stream)
                yield staged, int(staged.device_ctypes_pointer.value or 0)

    def _stage(self, part: torch.Tensor, stream):
        """Copy a CPU tensor to the device on a side stream, double-buffered (returns a device array).

        Pageable memory is first copied into one of two pinned buffers (the other one's transfer and
        reduction run meanwhile). Pinned, contiguous tensors (``pin_memory=True`` loaders) are
        transferred straight from their own memory, with no host copy; the tensor is kept alive
        until its transfer is known to be done. As with ``tensor.to("cuda", non_blocking=True)``,
        such a tensor must not be written to before the next ``update``/``state``.
        """
        cuda = self._cuda
        if part.dtype == getattr(torch, "uint16", None):
            part = part.view(torch.int16)
        direct = part.is_contiguous() and part.is_pinned()
        host = part.numpy() if direct else part.contiguous().numpy()
        if self._staging is None:
            self._staging = {"slot": 0, "copy_stream": cuda.stream(), "slots": [None, None]}
        st = self._staging
        slot = st["slot"]
        st["slot"] ^= 1
        entry = st["slots"][slot]
        if entry is None or entry["device"].nbytes < host.nbytes:
            if entry is not None and entry["copied"] is not None:
                entry["copied"].synchronize()
            entry = {"pinned": None, "device": cuda.device_array(max(host.nbytes, 1 << 20), dtype=np.uint8),
                     "copied": None, "reduced": None, "source": None}
            st["slots"][slot] = entry
        if entry["copied"] is not None:
            entry["copied"].synchronize()  # the last transfer from this slot's host memory is done
            entry["source"] = None
        if entry["reduced"] is not None:
            entry["reduced"].wait(st["copy_stream"])  # the last reduction of this device buffer is done
        if direct:
            flat = host.reshape(-1).view(np.uint8)
            entry["source"] = part
        else:
            if entry["pinned"] is None or entry["pinned"].nbytes < host.nbytes:
                entry["pinned"] = cuda.pinned_array(max(host.nbytes, 1 << 20), dtype=np.uint8)
            flat = entry["pinned"][: host.nbytes]
            flat[:] = host.reshape(-1).view(np.uint8)
        dev = entry["device"][: host.nbytes]
        dev.copy_to_device(flat, stream=st["copy_stream"])
        copied = cuda.event()
        copied.record(st["copy_stream"])
        entry["copied"] = copied
        copied.wait(stream)  # the reduction waits for the copy (numba: event.wait(stream))
        reduced = cuda.event()
        entry["reduced"] = reduced
        view = dev.view(host.dtype).reshape(host.shape)
        # recorded right after the caller's reduction is queued: the generator resumes after it
        self._after_reduce = (reduced, stream)
        return view

    # ------------------------------------------------------------------ numerics glue
    def _raise_on_nonfinite(self, chunk: Chunk, batch_index: int) -> None:
        """The synchronizing check of batches the vec kernels do not read (module docstring)."""
        from .cpu import check_nonfinite

        axis = (0, 2) if chunk.layout == "CP" else (0, 1)
        bad = None
        for part in chunk.parts:
            counts = (~torch.isfinite(part)).sum(dim=axis)
            bad = counts if bad is None else bad + counts
        check_nonfinite(bad.cpu().numpy(), batch_index)

    @staticmethod
    def _first_batch_shift(chunk: Chunk) -> torch.Tensor:
        """Per-channel reference: the mean of the first batch's finite values (0 where it has none),
        float64 on the batch's device (no synchronization)."""
        axis = (0, 2) if chunk.layout == "CP" else (0, 1)
        total = torch.zeros(chunk.channels, dtype=torch.float64, device=chunk.parts[0].device)
        count = torch.zeros(chunk.channels, dtype=torch.float64, device=chunk.parts[0].device)
        for part in chunk.parts:
            x = part.detach().double()
            ok = torch.isfinite(x)
            total += torch.where(ok, x, torch.zeros_like(x)).sum(dim=axis)
            count += ok.sum(dim=axis).double()
        mean = total / count.clamp(min=1)
        return torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))

    def _set_shift(self, chunk: Chunk, stream) -> None:
        """Set the new accumulators' shift from the first batch, on the device for CUDA batches: torch
        computes it on its current stream and the copy into the totals is queued on the same stream."""
        shift = self._first_batch_shift(chunk)
        if shift.device.type != "cuda":
            self._acc.set_shift(shift.numpy())  # host batches (staged) and the simulator: no device to wait for
            return
        self._acc.shift.copy_to_device(self._cuda.as_cuda_array(shift.contiguous(), sync=False), stream=stream)

    def _flush(self) -> None:
        """Move the device totals into the host state (syncs) and zero the accumulators for what comes next.

        Every numeric rule is :mod:`gpustats.numerics`': integer totals are exact
        (``ChannelStats.from_integer_sums``); float sums of ``x - shift`` become a summary with
        :func:`~gpustats.numerics.moments_from_shifted_sums`, except under the ``welford`` strategy,
        whose device ``(n, mean, M2)`` is taken as it is (an accumulator of a reducer with an explicit
        strategy is only ever fed by that strategy); the batch state is then Chan-merged into the
        host state (:func:`~gpustats.numerics.chan_merge`, inside ``ChannelStats.merge``).
        """
        if self._acc is None:
            return
        acc, key, pending = self._acc, self._key, self._pending_images
        self._pending_images, self._since_flush = [], 0
        dtype, channels, scale, histogram, covariance = key
        host = acc.to_host()
        images = self._images(pending, dtype, channels, host["shift"]) if self.options.per_image else None
        count = [int(v) for v in host["count"]]
        if dtype in ("uint8", "uint16"):
            cross = None
            if covariance:
                cross = [[int(v) for v in row] for row in host["cross"]]
            batch_state = ChannelStats.from_integer_sums(
                count, [int(v) for v in host["isum"]], [int(v) for v in host["isumsq"]], host["vmin"], host["vmax"],
                dtype=dtype, scale=scale, hist=host["hist"] if histogram else None,
                hist_range=(0.0, 256.0) if histogram else None, cross=cross, images=images,
            )
        else:
            if self._requested == "welford":  # its own (n, mean, M2); the accumulators' sums only mirror it
                w = self._k.get_strategy("welford").moments_of(acc)
                moments = moments_from_shifted_mean(w["count"], host["shift"], w["mean"], w["m2"])
            else:
                moments = moments_from_shifted_sums(host["count"], host["shift"], host["fsum"], host["fsumsq"],
                                                    host["cross"] if covariance else None)
            batch_state = ChannelStats.from_moments(
                moments.count, moments.mean, moments.m2, host["vmin"], host["vmax"], dtype=dtype, scale=scale,
                nonfinite=host["nonfinite"], comoment=moments.comoment, images=images, mean_lo=moments.mean_lo,
            )
        acc.reset()  # zeroed for the next batches (the shift stays), so its launchers stay valid
        self._state = self._state.merge(batch_state)

    def _images(self, pending, dtype: str, channels: int, shift) -> ImageMoments:
        """Per-image aggregates of the pending launches' per-image sums (the CPU backend's rules:
        exact integer rows for uint8/uint16, so the state is bitwise equal to the CPU's). ``shift`` is
        the accumulators' (the same for every launch into them)."""
        integer = dtype in ("uint8", "uint16")
        rows = [self._image_rows(images, None if integer else np.asarray(shift)) for _, images in pending]
        if not rows:
            return ImageMoments.empty(channels, exact=integer)
        columns = [np.concatenate(parts) for parts in zip(*rows)]
        return ImageMoments.from_integer_rows(*columns) if integer else ImageMoments.from_images(*columns)

    @staticmethod
    def _image_rows(images, shift):
        """One launch's rows [K, C]: ``(count, total, total_sq)`` for integers (the kernel's exact int64
        totals), ``(count, mean, M2, mean_lo)`` for floats (sums of ``x - shift``)."""
        got = images.to_host()
        c, s, q = got["img_count"], got["img_sum"], got["img_sumsq"]
        if shift is None:
            return c, s.astype(np.int64), q.astype(np.int64)
        rows = moments_from_shifted_sums(c, shift[None, :], s, q)
        return rows.count, rows.mean, rows.m2, rows.mean_lo
