"""Where sampled units come from, for :func:`gpustats.sampling.estimate_stats`: a list of files
(or archive members) decoded in a seeded random order, a map-style dataset indexed in that order,
or an iterable taken as it comes. Each yields lists of units: ``("item", obj)``, ``("bad", path,
reason)`` or ``("rows", batch)`` (a batch of several units).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .batches import InputError

__all__ = ["Unit", "is_map_style", "list_files", "file_units", "dataset_units", "iterable_units"]

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
