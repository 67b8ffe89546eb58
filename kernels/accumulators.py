"""Device-resident accumulators that the reduction kernels add into.

Many batches accumulate on the device with no host synchronization; :meth:`Accumulators.to_host`
is the only place that waits for the device. An :class:`Accumulators` is used on one stream at a
time (the kernels of a strategy's second pass update totals with plain read-modify-writes that
are ordered by the stream).

What each array holds (see ``_common`` for the accumulator rule):

==============  ==============  ===========================================================
name            dtype, shape    contents
==============  ==============  ===========================================================
count           int64[C]        finite elements seen
nonfinite       int64[C]        NaN/inf elements seen (excluded from everything else)
isum, isumsq    int64[C]        integer input: exact sum of x and of x*x
fsum, fsumsq    float64[C]      float input: sum of (x - shift[c]) and of its square
shift           float64[C]      per-channel reference, set by the caller before float input
vmin, vmax      float64[C]      running min / max (start at +inf / -inf)
hist            int64[C, 256]   optional, uint8 input: exact per-channel histogram
itotals         int64[4, C]     count, nonfinite, isum, isumsq (the arrays above are its rows)
ftotals         float64[5, C]   fsum, fsumsq, vmin, vmax, shift (likewise); a kernel that takes
                                these two instead of nine arrays launches with less host work
cross           [C, C]          optional co-moments at the same pixel: int64 sum x_i*x_j for
                                integer input; float64 sum (x_i-shift_i)(x_j-shift_j) for
                                float input. Only the upper triangle (i <= j) is accumulated;
                                ``to_host`` mirrors it. A pixel pair with a non-finite value
                                contributes nothing, so ``cross`` is exact when nonfinite == 0.
==============  ==============  ===========================================================

Per-image outputs (:class:`PerImage`, strategy ``atomic`` only) belong to one launch: image ``n``
of that launch's input adds into row ``n``. ``img_sum``/``img_sumsq`` are exact int64 sums of raw
``x`` and ``x*x`` for integer input (a uint16 image's sum of squares passes 2**53 at 2.1 M pixels,
where float64 would round it; int64 holds 2.1e9 pixels at 65535), float64 sums of ``x - shift[c]``
for float input.

Example (under the simulator or on a GPU)::

    >>> import numpy as np
    >>> from gpustats.kernels import Accumulators, get_strategy
    >>> acc = Accumulators.zeros(1, integer=True)
    >>> get_strategy("atomic").reduce(np.arange(10, dtype=np.uint8).reshape(1, 1, 10), "CP", "uint8", acc)
    >>> int(acc.to_host()["isum"][0])
    45
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._common import HIST_BINS, MAX_CHANNELS


def _zeros(shape, dtype, stream):
    return cuda.to_device(np.zeros(shape, dtype=dtype), stream=stream)


def synchronize(stream):
    if hasattr(stream, "synchronize"):
        stream.synchronize()
    else:
        cuda.synchronize()


class Accumulators:
    """Per-channel device totals; kernels add into them, ``to_host()`` reads them back."""

    def __init__(self, channels: int, *, integer: bool, histogram: bool, cross: bool, stream=0):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"{channels} channels; kernels support 1..{MAX_CHANNELS}")
        if histogram and not integer:
            raise ValueError("histograms are exact 256-bin counts of uint8 data; make them with integer=True")
        self.channels = int(channels)
        self.integer = bool(integer)
        self.histogram = bool(histogram)
        self.has_cross = bool(cross)
        self.stream = stream
        self._scratch_arrays: dict = {}
        c = self.channels
        self.itotals = _zeros((4, c), np.int64, stream)
        ftotals = np.zeros((5, c), np.float64)
        ftotals[2], ftotals[3] = np.inf, -np.inf
        self.ftotals = cuda.to_device(ftotals, stream=stream)
        self.count, self.nonfinite, self.isum, self.isumsq = (self.itotals[k] for k in range(4))
        self.fsum, self.fsumsq, self.vmin, self.vmax, self.shift = (self.ftotals[k] for k in range(5))
        # Kernels take every array; absent optional outputs are 1-element placeholders.
        self.hist = _zeros((c, HIST_BINS) if histogram else (1, 1), np.int64, stream)
        cross_dtype = np.int64 if integer else np.float64
        self.cross = _zeros((c, c) if cross else (1, 1), cross_dtype, stream)

    @classmethod
    def zeros(cls, channels: int, *, integer: bool, histogram: bool = False, cross: bool = False, stream=0):
        """Fresh totals for ``channels`` channels of integer (uint8/uint16) or float input."""
        return cls(channels, integer=integer, histogram=histogram, cross=cross, stream=stream)

    def set_shift(self, shift) -> None:
        """Set the per-channel float reference (e.g. the first batch's mean) before float input."""
        values = np.asarray(shift, dtype=np.float64).reshape(-1)
        if values.shape != (self.channels,):
            raise ValueError(f"shift needs {self.channels} values, got {values.shape[0]}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"shift must be finite, got {values}")
        self.shift.copy_to_device(values, stream=self.stream)

    def reset(self) -> None:
        """Zero every total (keeping ``shift``); used after flushing integer sums to the host."""
        for arr in (self.itotals, self.hist, self.cross, *self._scratch_arrays.values()):
            # scratch too: some strategies keep a running summary there (welford), or a ticket (vec)
            arr.copy_to_device(np.zeros(arr.shape, dtype=arr.dtype), stream=self.stream)
        ftotals = np.zeros((4, self.channels), np.float64)
        ftotals[2], ftotals[3] = np.inf, -np.inf
        self.ftotals[:4].copy_to_device(ftotals, stream=self.stream)  # row 4, the shift, stays

    def per_image(self, images: int) -> "PerImage":
        """Zeroed per-image outputs for a launch over ``images`` images (int64 sums for integer input)."""
        return PerImage.zeros(images, self.channels, integer=self.integer, stream=self.stream)

    def scratch(self, name: str, shape, dtype):
        """A zeroed device work array owned by these accumulators (reused across launches)."""
        key = (name, tuple(shape), np.dtype(dtype).str)
        arr = self._scratch_arrays.get(key)
        if arr is None:
            arr = _zeros(shape, dtype, self.stream)
            self._scratch_arrays[key] = arr
        return arr

    def to_host(self) -> dict:
        """Synchronize and return the totals as numpy arrays (the only sync point).

        Keys: count, nonfinite, vmin, vmax, shift, and isum/isumsq (integer) or fsum/fsumsq
        (float); hist and cross when they were asked for (cross mirrored to a full matrix).
        """
        synchronize(self.stream)
        itotals = self.itotals.copy_to_host()
        ftotals = self.ftotals.copy_to_host()
        out = {"count": itotals[0], "nonfinite": itotals[1], "vmin": ftotals[2], "vmax": ftotals[3],
               "shift": ftotals[4]}
        if self.integer:
            out["isum"], out["isumsq"] = itotals[2], itotals[3]
        else:
            out["fsum"], out["fsumsq"] = ftotals[0], ftotals[1]
        if self.histogram:
            out["hist"] = self.hist.copy_to_host()
        if self.has_cross:
            upper = np.triu(self.cross.copy_to_host())
            out["cross"] = upper + np.triu(upper, 1).T
        return out


class PerImage:
    """Per-image outputs of one launch: ``img_count`` int64[N, C], ``img_sum``/``img_sumsq`` [N, C]:
    int64 for integer input (exact totals), float64 for float input."""

    def __init__(self, images: int, channels: int, stream=0, integer: bool = False):
        self.images = int(images)
        self.channels = int(channels)
        self.stream = stream
        self.integer = bool(integer)
        sums = np.int64 if self.integer else np.float64
        self.img_count = _zeros((self.images, self.channels), np.int64, stream)
        self.img_sum = _zeros((self.images, self.channels), sums, stream)
        self.img_sumsq = _zeros((self.images, self.channels), sums, stream)

    @classmethod
    def zeros(cls, images: int, channels: int, integer: bool = False, stream=0):
        return cls(images, channels, stream, integer)

    def to_host(self) -> dict:
        synchronize(self.stream)
        return {
            "img_count": self.img_count.copy_to_host(),
            "img_sum": self.img_sum.copy_to_host(),
            "img_sumsq": self.img_sumsq.copy_to_host(),
        }
