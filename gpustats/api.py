"""The public entry points: :func:`compute_stats` over any iterable of batches, and the streaming
:class:`Accumulator` for training code.

>>> import torch
>>> from gpustats import compute_stats
>>> batches = [torch.full((2, 3, 5, 5), 51, dtype=torch.uint8), torch.full((1, 3, 5, 5), 102, dtype=torch.uint8)]
>>> r = compute_stats(batches, device="cpu")
>>> [round(v, 4) for v in r.mean.tolist()]  # (2*25*51 + 25*102) / 75 / 255: each pixel counts once
[0.2667, 0.2667, 0.2667]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from .backends import Options, make_reducer
from .batches import BatchAdapter, InputError
from .stats import ChannelStats, Stats, _family

__all__ = ["Accumulator", "compute_stats", "default_scale"]

#: scale="auto": what ToTensor / ToDtype(float32, scale=True) divide by
_AUTO_SCALE = {"uint8": 255.0, "uint16": 65535.0}


def default_scale(dtype: str) -> float:
    """The divisor ``scale="auto"`` uses: 255 for uint8, 65535 for uint16, 1 for everything else."""
    return _AUTO_SCALE.get(dtype, 1.0)


def _process_group_ready(required: bool) -> bool:
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if required and not ready:
        raise InputError("distributed=True but no torch.distributed process group is initialized; call "
                         "torch.distributed.init_process_group() first (torchrun does the environment for you)")
    return ready


class Accumulator:
    """Streaming statistics: ``update(batch)`` per batch, ``result()`` when you want the answer.

    ``device``: ``None`` (CUDA when a GPU and the CUDA backend are usable, else the CPU; the reason
    is in :attr:`cpu_reason`), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (an explicit CUDA device that
    cannot be served raises, it never falls back silently). Other arguments as in
    :func:`compute_stats`. A batch that raises leaves the accumulated state unchanged.

    >>> import numpy as np
    >>> acc = Accumulator(device="cpu")
    >>> acc.update(np.zeros((5, 6, 3), dtype=np.uint8))   # one HWC image
    >>> acc.update([np.ones((2, 2, 3), np.uint8) * 255])  # a list of variable-size images
    >>> acc.result().max.tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        device: Any = None,
        *,
        layout: str | None = None,
        channels: int | None = None,
        key: str | None = None,
        scale: float | str = "auto",
        nan_policy: str = "raise",
        strategy: str = "auto",
        histogram: bool = False,
        hist_bins: int | None = None,
        hist_range: tuple[float, float] | None = None,
        clip: bool = False,
        covariance: bool = False,
        per_image: bool = False,
    ):
        if not (scale == "auto" or (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0)):
            raise ValueError(f"scale must be 'auto' or a positive number, got {scale!r}")
        try:
            self.options = Options(nan_policy=nan_policy, histogram=histogram, hist_bins=hist_bins,
                                   hist_range=None if hist_range is None else tuple(hist_range), clip=clip,
                                   covariance=covariance, per_image=per_image, strategy=strategy)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self._scale_arg = scale
        self._adapter_args = (layout, channels, key)
        self._adapter = BatchAdapter(layout, channels, key)
        self._reducer, self.cpu_reason = make_reducer(device, self.options)
        self._dtype: str | None = None
        self._scale: float | None = None
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
        if self._dtype is not None and _family(self._dtype) != _family(dtype):
            raise InputError(
                f"batch {batch_index} is {dtype} but earlier batches were {self._dtype}: integer and float batches "
                "are reduced differently (integers exactly); convert every batch to one dtype"
            )
        scale = default_scale(dtype) if self._scale_arg == "auto" else float(self._scale_arg)
        if self._scale is not None and scale != self._scale:
            raise InputError(
                f"batch {batch_index} is {dtype} (scale {scale:g}) but earlier batches were {self._dtype} "
                f"(scale {self._scale:g}); convert every batch to one dtype or pass scale=..."
            )
        return scale

    def update(self, batch: Any) -> None:
        """Add one batch (any form :mod:`gpustats.batches` accepts)."""
        index = self.batches
        chunk = self._adapter.adapt(batch, index)
        scale = self._scale_for(chunk.dtype, index)
        self._reducer.update(chunk, scale, index)
        # only now, after success, does the batch count
        self._adapter.commit()
        self._dtype = self._dtype or chunk.dtype
        self._scale = scale
        self.batches += 1

    def state(self) -> ChannelStats:
        """The accumulated :class:`ChannelStats` (for a CUDA device this synchronizes)."""
        return self._reducer.state()

    def load(self, state: ChannelStats) -> None:
        """Start from ``state`` (e.g. a checkpoint); later batches are merged into it."""
        self._reducer.load(state)
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
        self._dtype = self._scale = None
        self.batches = 0


def compute_stats(
    loader: Iterable[Any],
    device: Any = None,
    *,
    layout: str | None = None,
    channels: int | None = None,
    key: str | None = None,
    scale: float | str = "auto",
    ddof: int = 0,
    nan_policy: str = "raise",
    progress: bool = False,
    strategy: str = "auto",
    histogram: bool = False,
    hist_bins: int | None = None,
    hist_range: tuple[float, float] | None = None,
    clip: bool = False,
    covariance: bool = False,
    per_image: bool = False,
    distributed: Any = "auto",
    sample: Any = None,
) -> Stats:
    """Per-channel statistics of every batch ``loader`` yields.

    ``loader``: any iterable (DataLoader, generator, list) of tensors/arrays (NCHW, NHWC, CHW,
    HWC), ``(x, y)`` pairs, dicts (``key=``) or lists of variable-size images. ``layout`` /
    ``channels`` settle an ambiguous channel axis (``channels=3`` also drops alpha). ``scale``:
    divisor of the reported values (``"auto"``: 255 for uint8, 65535 for uint16, else 1).
    ``ddof=0`` gives the population std over all pixels (what ``Normalize`` wants).
    ``nan_policy``: ``"raise"`` | ``"omit"`` | ``"propagate"``. ``histogram``/``covariance``/
    ``per_image`` add exact histograms and percentiles, covariance/PCA and per-image statistics in
    the same pass. ``distributed="auto"`` merges across ``torch.distributed`` ranks when a process
    group is initialized (each rank must see its own shard, e.g. with ``DistributedSampler``); it is
    then a collective: when only some ranks call it, pass ``distributed=False``.
    ``sample=SampleSpec(tolerance=...)`` (:mod:`gpustats.sampling`) estimates mean/std from a
    random subset of images instead and returns a ``SampledStats`` with confidence intervals.
    """
    if sample is not None:
        from .sampling import sample_for_compute_stats

        return sample_for_compute_stats(loader, sample, device=device, layout=layout, channels=channels, key=key,
                                        scale=scale, ddof=ddof, nan_policy=nan_policy, progress=progress,
                                        strategy=strategy, histogram=histogram, hist_bins=hist_bins,
                                        hist_range=hist_range, clip=clip, covariance=covariance,
                                        per_image=per_image, distributed=distributed)
    acc = Accumulator(device, layout=layout, channels=channels, key=key, scale=scale, nan_policy=nan_policy,
                      strategy=strategy, histogram=histogram, hist_bins=hist_bins, hist_range=hist_range,
                      clip=clip, covariance=covariance, per_image=per_image)
    iterable = loader
    if progress:
        from tqdm.auto import tqdm

        iterable = tqdm(loader, desc="gpustats", unit="batch")
    for batch in iterable:
        acc.update(batch)
    if acc.batches == 0 and not distributed:
        raise InputError("the loader yielded no batches: nothing to compute (check the dataset path and sampler)")
    return acc.result(ddof=ddof, distributed=distributed)
