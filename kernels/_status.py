"""The status row of ``nan_policy="raise"`` checked on the device (the ``vec`` kernels write it).

A launch with ``check`` > 0 whose batch holds a NaN/inf adds nothing to the totals; its last block
records the batch here instead. The CUDA backend keeps the row in mapped (pinned) host memory and
reads it without waiting for the device (``gpustats.backends.cuda``).
"""

from __future__ import annotations

from numba import cuda

from ._common import device_function

__all__ = ["STATUS_FIELDS", "STATUS_WORDS", "record_nonfinite"]

#: int64 fields of the non-finite status row (``nan_policy="raise"``), see :func:`record_nonfinite`
STATUS_FIELDS = ("first", "first_count", "first_channels", "last", "last_count", "last_channels", "batches", "spare")
STATUS_WORDS = len(STATUS_FIELDS)


@device_function
def record_nonfinite(status, check, bad, mask):
    """Record a batch left out for its non-finite values in ``status`` (int64[8], :data:`STATUS_FIELDS`).

    ``check`` is the batch index + 1, ``bad`` its non-finite count, ``mask`` has bit ``c`` set when
    channel ``c`` holds one. ``last*`` always take this batch; ``first*`` only the first such batch
    (sticky); ``batches`` counts them and is written last, after a system-wide fence, so a host
    that reads ``batches`` first (the CUDA backend keeps the row in mapped, pinned host memory)
    sees the other fields at least as new. Launches into one row are ordered by their stream (one
    accumulator, one stream): plain stores, no atomics.
    """
    status[3] = check
    status[4] = bad
    status[5] = mask
    if status[0] == 0:
        status[1] = bad
        status[2] = mask
        cuda.threadfence_system()
        status[0] = check
    cuda.threadfence_system()
    status[6] += 1
