"""The units :func:`gpustats.sampling.estimate_stats` visits and their sums.

Where they come from: a list of files (or archive members) decoded in a seeded random order, a
map-style dataset indexed in that order, or an iterable taken as it comes. Each yields lists of
units: ``("item", obj)``, ``("bad", path, reason)`` or ``("rows", batch)`` (a batch of several
units). :class:`UnitReducer` turns an item into its images' pixel counts, sums and centred sums of
squares (:func:`row_moments`), with the same layout, channel and scale rules as ``compute_stats``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .batches import BatchAdapter, Chunk, InputError

__all__ = ["Unit", "is_map_style", "list_files", "file_units", "dataset_units", "iterable_units", "UnitReducer",
           "row_moments"]

#: One visited unit: ("item", obj) | ("bad", path, reason) | ("rows", batch of several units).
Unit = tuple


def is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def is_map_style(x: Any) -> bool:
    if isinstance(x, torch.utils.data.IterableDataset):
        return False
    return hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, (dict, str, bytes))


def list_files(source: Any, column: str | None = None, all_extensions: bool = False) -> Any:
    """The file list when ``source`` names files/folders (a ``Segment`` when it names archives), else None."""
    from .sources.listing import extensions_for
    from .sources.segment import Segment
    from .sources.units import StreamUnit, list_units

    if is_pathlike(source):
        source = [source]
    elif not (isinstance(source, (list, tuple)) and source and all(is_pathlike(p) for p in source)):
        return None
    units = list_units(list(source), column=column, extensions=extensions_for(all_extensions))
    if all(is_pathlike(u) and not hasattr(u, "url") for u in units):  # local files (remote ones: a Segment)
        return [os.fspath(u) for u in units]
    streams = [u for u in units if isinstance(u, StreamUnit)]
    if streams:
        fix = ("a tar or TFRecord shard in a store: indexing it would read it all); copy it to a local disk"
               if "://" in streams[0].container else "a compressed tar or TFRecord shard); decompress it to a .tar "
               "or a plain shard (e.g. gunzip), which is indexed")
        raise InputError(f"sampling needs random access to the images, and {streams[0].label} is read only from start "
                         f"to end ({fix}, or drop the sampling for the exact pass")
    return Segment(units, range(len(units)))


def file_units(files: Any, order: np.ndarray, stop: int, batch_size: int, workers: int,
               decode_opts: dict) -> Iterator[list[Unit]]:
    from .sources import iter_decoded

    if not isinstance(files, list):  # archive members and Parquet rows: read at random positions
        picked = [int(i) for i in order[:stop]]
        for records in iter_decoded(files, positions=picked, workers=workers, batch_size=batch_size, **decode_opts):
            yield [("bad", files.name(picked[r.index]), r.bad_reason) if r.array is None else ("item", r.array)
                   for r in records]
        return
    permuted = [files[i] for i in order[:stop]]
    for records in iter_decoded(permuted, workers=workers, batch_size=batch_size, **decode_opts):
        yield [("bad", permuted[r.index], r.bad_reason) if r.array is None else ("item", r.array)
               for r in records]


def dataset_units(dataset: Any, order: np.ndarray, stop: int, batch_size: int,
                  workers: int) -> Iterator[list[Unit]]:
    indices = [int(i) for i in order[:stop]]
    if workers > 0:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                             shuffle=False, num_workers=workers, collate_fn=list)
        for items in loader:
            yield [dataset_unit(item) for item in items]
        return
    for start in range(0, len(indices), batch_size):
        yield [dataset_unit(dataset[i]) for i in indices[start:start + batch_size]]


def dataset_unit(item: Any) -> Unit:
    from .sources import DecodedImage

    if isinstance(item, DecodedImage):  # an ImageFileDataset item
        return ("bad", str(item.index), item.bad_reason) if item.array is None else ("item", item.array)
    return ("item", item)


def iterable_units(iterable: Iterable[Any]) -> Iterator[list[Unit]]:
    for batch in iterable:
        yield [("rows", batch)]


# ============================================================================ per-unit sums

def row_moments(part: torch.Tensor, layout: str, dtype: str, channels: int, scale: float) -> tuple:
    """Per-row (image) pixel count [N], sum [N, C] and centred M2 [N, C] in float64 on ``scale``, and
    for integer data the exact integer totals ``(sum, sum of squares)`` [N, C] (raw units; else None).

    The CPU backend's per-image rule (:func:`gpustats.backends.cpu.image_moments`: exact for
    integers, corrected two-pass float64 for floats), the one rule there is; a sampled CUDA image
    is copied to the host first. Non-finite values are an error (sampling needs finite pixels).
    """
    from .backends.cpu import image_moments

    count, mean, m2, bad, ints = image_moments(Chunk((part.cpu(),), layout, dtype, channels))
    if bad.any():
        raise InputError("an image contains NaN or infinite values; sampling needs finite pixels "
                         "(use compute_stats with nan_policy='omit' for exact statistics)")
    n = count.astype(np.float64)
    return n[:, 0], n * mean / scale, m2 / (scale * scale), ints


class UnitReducer:
    """Adapts items with one :class:`BatchAdapter` (same layout/channel/dtype rules as compute_stats)."""

    def __init__(self, device: Any, layout: str | None, channels: int | None, key: str | None, scale: Any):
        from .options import StatsOptions  # one home for option validation

        try:
            settings = StatsOptions(layout=layout, channels=channels, key=key, scale=scale)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        layout, channels = settings.layout, settings.channels
        self.device = None if device is None else torch.device(device)
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device={device!r} was asked for but CUDA is not available; use device='cpu'")
        self.adapter = BatchAdapter(layout, channels, key)
        self.settings = settings
        self.dtype: str | None = None
        self.scale: float | None = None
        self.calls = 0

    def _chunk(self, obj: Any) -> Chunk:
        from .options import scale_conflict  # one rule for the scale, stated in options.py

        index = self.calls
        chunk = self.adapter.adapt(obj, index)
        if not chunk.parts:  # zero images: contributes nothing, settles nothing
            self.calls += 1
            return chunk
        scale = self.settings.scale_for(chunk.dtype)
        problem = None if self.dtype is None else scale_conflict(
            chunk.dtype, scale, self.dtype, self.scale, item=f"item {index}", earlier="items", every="image")
        if problem:
            raise InputError(problem)
        if self.scale is None:
            self.scale = scale
            self.dtype = chunk.dtype
        self.adapter.commit()
        self.calls += 1
        return chunk

    def rows(self, obj: Any) -> tuple:
        """Per-image moments of every image in ``obj`` (:func:`row_moments`' four values)."""
        chunk = self._chunk(obj)
        pieces = []
        for part in chunk.parts:
            if self.device is not None and part.device != self.device:
                part = part.to(self.device)
            pieces.append(row_moments(part, chunk.layout, chunk.dtype, chunk.channels, self.scale))
        if not pieces:
            c = chunk.channels
            return np.zeros(0), np.zeros((0, c)), np.zeros((0, c)), None
        count, total, m2 = (np.concatenate(p) for p in list(zip(*pieces))[:3])
        ints = None if pieces[0][3] is None else tuple(np.concatenate(p) for p in zip(*(q[3] for q in pieces)))
        if not (np.isfinite(total).all() and np.isfinite(m2).all()):
            raise InputError(f"item {self.calls - 1} contains NaN or infinite values; sampling needs finite "
                             "pixels (use compute_stats with nan_policy='omit' for exact statistics)")
        return count, total, m2, ints
