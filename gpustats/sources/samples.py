"""Iterables of samples: Hugging Face datasets (streaming or not) and any iterable of dicts holding images.

``compute_stats(load_dataset(..., streaming=True), key="image")`` runs the folder engine
(:func:`~gpustats.sources.engine.run_folder`) over the samples, as over the images of a folder: the
same conversion to RGB (or L), the same exact integer state (bitwise the state of a folder of the
same images), bad images listed, ``workers``, ``checkpoint`` and the rest of its options. A sample's
image, ``sample[key]`` (or the sample itself without ``key``), may be:

* a PIL image (what the ``datasets`` ``Image`` feature decodes to);
* encoded bytes, or a dict ``{"bytes": ..., "path": ...}`` as the ``Image`` feature stores it
  (``decode=False``, Parquet files of the Hub); without bytes, the ``path`` is read: a local file, or a
  remote URL (:mod:`.remote`);
* a path (``str`` or ``os.PathLike``) or a URL.

This process iterates the samples (an iterable has one order, and no random access) and hands
``batch_size`` of them at a time to ``workers`` decode processes, which decode and reduce them
(:mod:`.streamed`, as for a compressed tar). A ``datasets`` dataset whose ``Image`` feature decodes
(and converts no mode) is read with ``decode=False`` instead (``cast_column``): the workers then
decode the bytes in parallel, where the dataset would have decoded them one by one here. Item ``n``
is named ``LABEL:n`` (``LABEL``: the dataset's name and split, else its type). A checkpoint resumes
by iterating again and skipping the samples it counted (without decoding them): the iterable must
give the same samples in the same order. Under ``torchrun`` each rank reads the iterable it is given
(shard it, e.g. ``datasets.distributed.split_dataset_by_node``); the states are merged.

>>> import io
>>> from PIL import Image
>>> png = io.BytesIO(); Image.new("RGB", (2, 2), (10, 20, 30)).save(png, format="PNG")
>>> samples = [{"image": {"bytes": png.getvalue(), "path": "a.png"}, "label": 0},
...            {"image": Image.new("L", (1, 1), 7), "label": 1}]
>>> stream, _ = sample_stream(samples, "image")
>>> [(name, type(source).__name__) for name, source, _ in stream.samples()]
[('list:0', 'bytes'), ('list:1', 'Image')]
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterable, Iterator

from .units import StreamUnit

__all__ = ["SampleStream", "is_image_value", "sample_stream"]


def _is_pil(value: Any) -> bool:
    import sys

    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def is_image_value(value: Any) -> bool:
    """True for what a sample may hold as its image (module docstring)."""
    if _is_pil(value) or isinstance(value, (bytes, bytearray, memoryview, str, os.PathLike)):
        return True
    return isinstance(value, dict) and bool(value) and set(value) <= {"bytes", "path"}


class SampleStream(StreamUnit):
    """An iterable of samples as the one unit of a run (a :class:`~.units.StreamUnit`: read in order)."""

    __slots__ = ("iterable", "key")

    def __init__(self, iterable: Iterable[Any], key: str | None, label: str):
        super().__init__("", label, 0, 0, None, 1)
        self.iterable, self.key = iterable, key

    def identity(self) -> str:
        """What a checkpoint compares: the label and the key (the samples themselves cannot be compared)."""
        return f"samples\0{self.label}\0{self.key}"

    def samples(self) -> Iterator[tuple[str, Any, str | None]]:
        """``(name, source, None)`` per sample (``source``: bytes, a PIL image or a local path), or
        ``(name, None, reason)`` for a sample without an image."""
        for n, sample in enumerate(self.iterable):
            name = f"{self.label}:{n}"
            if self.key is None:
                value = sample
            else:
                try:
                    value = sample[self.key]
                except (KeyError, TypeError, IndexError):
                    keys = ", ".join(map(str, sample)) if isinstance(sample, dict) else type(sample).__name__
                    yield name, None, f"no {self.key!r} in the sample (it holds: {keys})"
                    continue
            source, reason = _source(value)
            yield name, source, reason

    def __repr__(self) -> str:
        return f"SampleStream({self.label!r}, key={self.key!r})"


def _source(value: Any) -> tuple[Any, str | None]:
    from .remote import is_url

    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return bytes(data), None
        if path is None:
            return None, "no image in the sample (neither bytes nor a path)"
        value = path
    if _is_pil(value):
        return value, None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if is_url(text):
            from .storelist import read_url

            return read_url(text), None  # a failure stops the run (RemoteReadError), never a bad item
        return text, None
    if value is None:
        return None, "no image in the sample (None)"
    return None, (f"the sample's image is a {type(value).__name__}, not a PIL image, bytes or a path (decoded "
                  "arrays and tensors go to compute_stats as batches, without key= naming images)")


def _label(iterable: Any) -> str:
    info = getattr(iterable, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    split = getattr(iterable, "split", None)
    if name:
        return f"{name}[{split}]" if split else str(name)
    return type(iterable).__name__


def _undecoded(iterable: Any, key: str | None) -> Any:
    """A ``datasets`` dataset whose ``Image`` feature ``key`` decodes (without a mode to convert to), cast to
    ``decode=False``: its samples then hold the encoded bytes, which the decode workers decode."""
    features = getattr(iterable, "features", None)
    feature = features.get(key) if key is not None and hasattr(features, "get") else None
    if (type(feature).__name__ == "Image" and getattr(feature, "decode", False) and getattr(feature, "mode", None)
            is None and hasattr(iterable, "cast_column")):
        return iterable.cast_column(key, type(feature)(decode=False))
    return iterable


def sample_stream(loader: Any, key: str | None) -> tuple[SampleStream | None, Any]:
    """``(SampleStream, None)`` when ``loader`` yields samples holding images (its first item is looked at),
    else ``(None, an iterable of the same items)`` for the batch path (the first item is not lost)."""
    import torch

    if isinstance(loader, (torch.Tensor, dict, bytes, str, os.PathLike)) or hasattr(loader, "__array__"):
        return None, loader
    if isinstance(loader, torch.utils.data.DataLoader):
        return None, loader  # batches, collated
    label = _label(loader)
    loader = _undecoded(loader, key)
    iterator = iter(loader)
    try:
        first = next(iterator)
    except StopIteration:
        return None, []
    except TypeError:
        return None, loader
    items = itertools.chain([first], iterator)
    value = first.get(key) if key is not None and isinstance(first, dict) else first if key is None else None
    if value is None or not is_image_value(value) or (key is None and isinstance(value, (str, os.PathLike))):
        return None, items
    return SampleStream(items, key, label), None
