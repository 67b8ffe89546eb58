"""The streaming :class:`Accumulator`: ``update(batch)`` per batch, ``result()`` when you want the answer.

Training code keeps one, :func:`gpustats.compute_stats` runs one over a loader, and the folder
engine runs one on the GPU when nvJPEG decodes there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .backends import make_reducer
from .batches import BatchAdapter, InputError
from .options import StatsOptions, scale_conflict
from .stats import ChannelStats, Stats, dtype_family

__all__ = ["Accumulator"]


def _process_group_ready(required: bool) -> bool:
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if required and not ready:
        raise InputError("distributed=True but no torch.distributed process group is initialized; call "
                         "torch.distributed.init_process_group() first (torchrun does the environment for you)")
    return ready


def _common_dtype(old: str, new: str) -> str:
    """The integer dtype that holds both ``old`` and ``new`` exactly (``float32`` when none of ours does)."""
    import numpy as np

    from .numerics import INTEGER_DTYPES

    common = np.promote_types(old, new).name
    return common if common in INTEGER_DTYPES else "float32"


class Accumulator:
    """Streaming statistics: ``update(batch)`` per batch, ``result()`` when you want the answer.

    ``device``: ``None`` (CUDA when a GPU and the CUDA backend are usable, else the CPU; the reason
    is in :attr:`cpu_reason`), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (an explicit CUDA device that
    cannot be served raises, it never falls back silently). ``options``: the fields of
    :class:`~gpustats.options.StatsOptions` (``layout``, ``channels``, ``key``, ``scale``,
    ``nan_policy``, ``strategy``, ``histogram``, ``hist_bins``, ``hist_range``, ``clip``,
    ``covariance``, ``per_image``), as in :func:`gpustats.compute_stats`. A batch that raises leaves
    the accumulated state unchanged.

    >>> import numpy as np
    >>> acc = Accumulator(device="cpu")
    >>> acc.update(np.zeros((5, 6, 3), dtype=np.uint8))   # one HWC image
    >>> acc.update([np.ones((2, 2, 3), np.uint8) * 255])  # a list of variable-size images
    >>> acc.result().max.tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, device: Any = None, **options: Any):
        unknown = set(options) - set(StatsOptions.names())
        if unknown:
            raise TypeError(f"Accumulator() got unexpected keyword argument(s) {', '.join(sorted(unknown))}; "
                            f"options: {', '.join(StatsOptions.names())}")
        try:
            self.settings = StatsOptions(**options)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.options = self.settings.reduce  # what the backend computes
        self._adapter_args = (self.settings.layout, self.settings.channels, self.settings.key)
        self._adapter = BatchAdapter(*self._adapter_args)
        self._reducer, self.cpu_reason = make_reducer(device, self.options)
        self._dtype: str | None = None
        self._scale: float | None = None
        self._fast = None  # the backend's fixed-cost path for batches like the last one (CUDA), or None
        self.batches = 0  # batches accepted so far

    # ------------------------------------------------------------- properties
    @property
    def device(self) -> str:
        return str(self._reducer.device)

    @property
    def backend(self) -> str:
        return self._reducer.name

    @property
    def strategy(self) -> str:
        return self._reducer.strategy

    # ------------------------------------------------------------- updates
    def _scale_for(self, dtype: str, batch_index: int) -> float:
        if self._dtype is not None and dtype_family(self._dtype) != dtype_family(dtype):
            raise InputError(
                f"batch {batch_index} is {dtype} but earlier batches were {self._dtype}: integer and float batches "
                "are reduced differently (integers exactly); convert every batch to one dtype"
            )
        if self._dtype is not None and dtype != self._dtype and dtype_family(dtype) == "int":
            raise InputError(
                f"batch {batch_index} is {dtype} but earlier batches were {self._dtype}; one Accumulator takes one "
                f"integer dtype (its histogram, range and exact sums are that dtype's): convert every batch to one "
                f"dtype ({_common_dtype(self._dtype, dtype)} holds both exactly)"
            )
        scale = self.settings.scale_for(dtype)
        problem = None if self._scale is None else scale_conflict(
            dtype, scale, self._dtype, self._scale, item=f"batch {batch_index}", earlier="batches", every="batch")
        if problem:
            raise InputError(problem)
        return scale

    def update(self, batch: Any) -> None:
        """Add one batch (any form :mod:`gpustats.batches` accepts).

        On a CUDA device under ``nan_policy="raise"``, a float batch holding NaN/inf is left out by the
        kernel and reported by the next ``update()`` (which then adds nothing) or by ``state()`` /
        ``result()``; :mod:`gpustats.backends.cuda` says exactly when.
        """
        index = self.batches
        fast = self._fast
        if fast is not None and type(batch) is torch.Tensor and fast(batch, index):
            self.batches += 1  # a tensor like the last batch, taken as it is (see CudaReducer.fast_path)
            return
        chunk = self._adapter.adapt(batch, index)
        if not chunk.parts:  # zero images (or zero pixels): contributes nothing, settles nothing
            self.batches += 1
            return
        scale = self._scale_for(chunk.dtype, index)
        self._reducer.update(chunk, scale, index)
        # only now, after success, does the batch count
        self._adapter.commit()
        self._dtype = self._dtype or chunk.dtype
        self._scale = scale
        self.batches += 1
        self._fast = self._fast_path()

    def _fast_path(self):
        """The backend's fixed-cost path for 4-D tensors read as the batches so far were, when it has one."""
        make = getattr(self._reducer, "fast_path", None)
        settled = self._adapter.settled(4) if make is not None else None
        if settled is None:
            return None
        layout, channels = settled
        return make(layout, channels, self._dtype)

    def state(self) -> ChannelStats:
        """The accumulated :class:`ChannelStats` (for a CUDA device this synchronizes)."""
        return self._reducer.state()

    def load(self, state: ChannelStats) -> None:
        """Start from ``state`` (e.g. a checkpoint); later batches are merged into it."""
        self._reducer.load(state)
        self._fast = None
        if not state.is_empty:
            self._dtype = state.dtype
            self._scale = state.scale

    def result(self, ddof: int = 0, distributed: Any = False) -> Stats:
        """Finalize the accumulated state (see :meth:`ChannelStats.finalize`).

        ``distributed``: ``"auto"`` merges the state across ``torch.distributed`` ranks when a
        process group is initialized; ``True`` requires one; ``False`` (default) does not merge.
        """
        state = self.state()
        if distributed not in (False, None, "auto", True):
            raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
        if distributed and _process_group_ready(required=distributed is True):
            from .distributed import all_reduce_stats

            state = all_reduce_stats(state)
        if state.is_empty:
            raise InputError("no data was reduced: the loader yielded no batches, or every batch was empty")
        return dataclasses.replace(state.finalize(ddof), device=self.device, strategy=self.strategy)

    def reset(self) -> None:
        """Forget everything (the device and options stay)."""
        self._reducer.reset()
        self._adapter = BatchAdapter(*self._adapter_args)
        self._fast = None
        self._dtype = self._scale = None
        self.batches = 0
