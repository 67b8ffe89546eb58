"""Turn whatever a loader yields into the one canonical shape the reductions see (`Chunk`).

Accepted per batch:

* a torch tensor or numpy array: ``NCHW``, ``NHWC`` (4-D), ``CHW``, ``HWC`` (3-D), or with an
  explicit ``layout=``, ``NHW``/``HW`` (single-channel). numpy arrays of any strides are read
  (negative ones, e.g. ``x[:, ::-1]``, through a copy);
* a **tuple** is always ``(input, target, ...)``: only its first element counts, whatever the
  ranks of the others (``(x_chw, mask_chw)`` is one image, not two);
* dicts (``key=``; by default ``"image"``, ``"images"``, ``"img"``, ``"pixel_values"`` or the only
  array-valued entry);
* a **list** means images of different sizes (each ``CHW``/``HWC``, all of one rank): their pixels
  are concatenated per channel, never resized. One exception, for ``DataLoader``'s default
  collate (which turns ``(x, y)`` samples into ``[x, y]`` lists): a list whose first element is a
  4-D batch, a list, a tuple or a dict, or whose elements differ in rank, is read as
  ``[input, target, ...]``. Beware ``DataLoader(batch_size=None)``: it turns an ``(x_chw, y_chw)``
  sample into the list ``[x_chw, y_chw]``, which counts as two images; pass
  ``collate_fn=tuple`` there (or return a dict and pass ``key=``);
* a batch of zero images (a 4-D array with ``N == 0``) contributes nothing: it is not checked
  against the layout, channels or dtype of other batches, and settles none of them. An empty list
  or tuple is an error (no dtype to go by: most likely a loader bug).

The canonical shape is a list of 3-D *parts*: ``[N, C, L]`` (layout ``"CP"``, channel rows) or
``[N, L, C]`` (layout ``"PC"``, channel last), one row ``n`` per image, ``L`` pixels per image.
Both are views of the user's memory whenever the input is contiguous in H and W (NCHW, NHWC, CHW,
HWC and channels_last tensors all are). The third axis (rather than a 2-D ``[C, P]``/``[P, C]``
view) is what lets an NCHW batch be viewed without a copy and marks image boundaries for
per-image statistics (docs/design.md, "Data flow").

Layout is inferred only when unambiguous: the channel axis has size 1, 3 or 4 in exactly one
candidate position (axis 1 or 3 of a 4-D batch, axis 0 or 2 of a 3-D image). Once a layout is
known, later batches of the same rank reuse it, so an ambiguous last batch is read the same way.

>>> import numpy as np
>>> adapter = BatchAdapter()
>>> chunk = adapter.adapt(np.zeros((2, 8, 8, 3), dtype=np.uint8), batch_index=0)
>>> chunk.layout, chunk.channels, chunk.images, chunk.elements
('PC', 3, 2, 128)
>>> adapter.commit()  # after the batch was reduced: later batches keep this layout
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import functools
from typing import TYPE_CHECKING

import numpy as np

from .stats import FLOAT_DTYPES, INTEGER_DTYPES

if TYPE_CHECKING:  # torch loads with the first batch (InputError and the layouts need no torch)
    import torch

__all__ = ["BatchAdapter", "Chunk", "InputError", "LAYOUTS", "dtype_name"]

#: Layout names accepted by ``layout=`` and the position of their channel axis (None: no channel axis).
LAYOUTS = {"NCHW": 1, "NHWC": 3, "CHW": 0, "HWC": 2, "NHW": None, "HW": None}
_DEFAULT_KEYS = ("image", "images", "img", "pixel_values")

@functools.lru_cache(maxsize=None)
def _torch_dtypes() -> dict:
    import torch

    names = {
        torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16", torch.float16: "float16",
        torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64",
    }
    if hasattr(torch, "uint16"):
        names[torch.uint16] = "uint16"
    return names


class InputError(ValueError):
    """A batch cannot be read as images; the message says what to pass instead."""


def dtype_name(tensor: torch.Tensor) -> str:
    name = _torch_dtypes().get(tensor.dtype)
    if name is None:
        raise InputError(
            f"unsupported dtype {str(tensor.dtype).replace('torch.', '')}: gpustats reduces "
            f"{', '.join(INTEGER_DTYPES)} exactly and {', '.join(FLOAT_DTYPES)} in float64; "
            "cast the batch (e.g. x.to(torch.uint8) for 8-bit pixels or x.float())"
        )
    return name


@dataclass(frozen=True)
class Chunk:
    """One batch in canonical form.

    ``parts``: 3-D tensors, ``[N, C, L]`` when ``layout == "CP"`` else ``[N, L, C]``; every row
    ``n`` of every part is one image. ``elements`` is the number of values per channel.
    """

    parts: tuple[torch.Tensor, ...]
    layout: str
    dtype: str
    channels: int

    @property
    def images(self) -> int:
        return sum(int(p.shape[0]) for p in self.parts)

    @property
    def elements(self) -> int:
        pix = 2 if self.layout == "CP" else 1
        return sum(int(p.shape[0]) * int(p.shape[pix]) for p in self.parts)


def _to_tensor(x: Any) -> torch.Tensor | None:
    import torch

    if isinstance(x, torch.Tensor):
        if x.is_nested or x.layout != torch.strided:
            kind = "nested" if x.is_nested else str(x.layout).replace("torch.", "")
            raise InputError(f"a {kind} tensor holds no plain pixel grid; pass a dense tensor "
                             + ("(a list of its images: list(x.unbind()))" if x.is_nested else "(x.to_dense())"))
        if x.device.type == "meta":
            raise InputError("a tensor on the 'meta' device has no data to reduce; pass a tensor with values "
                             "(on the CPU or a GPU)")
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or x.dtype.kind not in "uif" or x.dtype.itemsize > 8:
            raise InputError(f"unsupported numpy dtype {x.dtype}; cast to uint8 or float32 (float64 at most)")
        if x.dtype.byteorder == ">":
            x = x.astype(x.dtype.newbyteorder("="))
        if any(s < 0 or s % x.itemsize for s in x.strides):
            x = np.ascontiguousarray(x)  # torch cannot view negative (x[:, ::-1]) or misaligned strides: copy
        with warnings.catch_warnings():  # read-only arrays are fine: we never write to the input
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(x)
    return None


def _is_array(x: Any) -> bool:
    import torch

    return isinstance(x, (torch.Tensor, np.ndarray))


class BatchAdapter:
    """Stateful converter: remembers the layout and channel count set by the first batch.

    Parameters mirror :func:`gpustats.compute_stats`: ``layout`` (one of :data:`LAYOUTS`),
    ``channels`` (keep the first ``channels`` channels, e.g. ``3`` to drop alpha), ``key``
    (dict entry holding the images).
    """

    def __init__(self, layout: str | None = None, channels: int | None = None, key: str | None = None):
        if layout is not None:
            if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
                raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
            layout = layout.upper()
        if channels is not None:
            if not isinstance(channels, numbers.Integral) or isinstance(channels, (bool, np.bool_)) or channels < 1:
                raise InputError(f"channels must be a positive int, got {channels!r}")
            channels = int(channels)
        self.layout = layout
        self.channels = channels
        self.key = key
        self._seen_layout: dict[int, str] = {}  # rank -> layout settled by an earlier batch
        self._seen_channels: int | None = None
        self._seen_dtype: str | None = None
        self._pending_layout: dict[int, str] = {}
        self._pending_channels: int | None = None
        self._pending_dtype: str | None = None

    # ---------------------------------------------------------------- unwrapping
    def _unwrap(self, batch: Any, batch_index: int, depth: int = 0) -> list[torch.Tensor] | torch.Tensor:
        if depth > 16:
            raise InputError(f"batch {batch_index} nests tuples/lists/dicts more than 16 levels deep before any "
                             "array; yield the images as a tensor, an (x, y) tuple, a dict or a list of images")
        depth += 1
        if isinstance(batch, Mapping):
            if self.key is not None:
                if self.key not in batch:
                    raise InputError(f"batch {batch_index} is a dict without key {self.key!r}; keys: {list(batch)}")
                return self._unwrap(batch[self.key], batch_index, depth)
            for k in _DEFAULT_KEYS:
                if k in batch:
                    return self._unwrap(batch[k], batch_index, depth)
            arrays = [k for k, v in batch.items() if _is_array(v) and np.ndim(v) >= 3]
            if len(arrays) == 1:
                return self._unwrap(batch[arrays[0]], batch_index, depth)
            raise InputError(
                f"batch {batch_index} is a dict with {'no' if not arrays else 'several'} image-like entries "
                f"({arrays or list(batch)}); pass key='...' to say which one holds the images"
            )
        tensor = _to_tensor(batch)
        if tensor is not None:
            return tensor
        if isinstance(batch, (list, tuple)):
            if len(batch) == 0:
                raise InputError(f"batch {batch_index} is an empty {type(batch).__name__}: no images and no "
                                 "dtype; yield a batch with zero images (e.g. x[:0]) or skip it")
            first = batch[0]
            if isinstance(batch, tuple) or isinstance(first, (list, tuple, Mapping)):
                return self._unwrap(first, batch_index, depth)  # (input, target, ...): only the input counts
            first_t = _to_tensor(first) if _is_array(first) else None
            if first_t is not None and first_t.dim() == 4:
                return first_t  # [x, y] from DataLoader's default collate: a 4-D batch and its labels
            if first_t is not None:
                image_rank = first_t.dim()
                if all(_is_array(b) and np.ndim(b) == image_rank for b in batch):
                    return [_to_tensor(b) for b in batch]  # a list of (variable-size) images
                return first_t  # [image, label]
        raise InputError(
            f"batch {batch_index} is a {type(batch).__name__}; expected a torch tensor or numpy array "
            "(NCHW, NHWC, CHW or HWC), an (x, y) pair, a dict of tensors, or a list of images"
        )

    # ---------------------------------------------------------------- layout
    def _layout_for(self, tensor: torch.Tensor, batch_index: int, in_list: bool) -> str:
        rank = tensor.dim()
        if self.layout is not None:
            layout = self.layout
            if in_list and len(layout) == 4:
                layout = layout[1:]  # images of a list are one rank lower than a batch
            expected = len(layout)
            if rank != expected:
                raise InputError(f"batch {batch_index} has {rank} dimensions {tuple(tensor.shape)}, but layout={self.layout!r} needs {expected}")
            return layout
        if rank not in (3, 4):
            raise InputError(
                f"batch {batch_index} has {rank} dimensions {tuple(tensor.shape)}; expected a 4-D batch "
                "(NCHW/NHWC) or a 3-D image (CHW/HWC); for single-channel data without a channel "
                "axis pass layout='NHW' or layout='HW'"
            )
        if rank in self._seen_layout:
            return self._seen_layout[rank]
        cands = ("NCHW", "NHWC") if rank == 4 else ("CHW", "HWC")
        sizes = {c: tensor.shape[LAYOUTS[c]] for c in cands}
        want = (self.channels,) if self.channels is not None else (1, 3, 4)
        fits = [c for c in cands if sizes[c] in want]
        if len(fits) != 1 and self.channels is not None:
            fits = [c for c in cands if sizes[c] in (1, 3, 4) and sizes[c] >= self.channels] if not fits else fits
        if len(fits) != 1:
            what = "both" if fits else "neither"
            raise InputError(
                f"cannot tell the channel axis of batch {batch_index} with shape {tuple(tensor.shape)}: "
                f"{what} of {' and '.join(cands)} fit{'s' if what == 'neither' else ''} (channel axis of size 1, 3 or 4); "
                f"pass layout='{cands[0]}' or layout='{cands[1]}' (or channels=...)"
            )
        self._pending_layout[rank] = fits[0]
        return fits[0]

    def _canonical(self, tensor: torch.Tensor, layout: str) -> tuple[torch.Tensor, str]:
        if layout in ("HW", "NHW"):
            t = tensor if layout == "NHW" else tensor.unsqueeze(0)
            return t.reshape(t.shape[0], 1, -1), "CP"
        if len(layout) == 3:
            tensor, layout = tensor.unsqueeze(0), "N" + layout
        n = tensor.shape[0]
        if layout == "NCHW":
            # a channels_last tensor is NHWC in memory: view it that way (no copy, contiguous rows)
            if tensor.dim() == 4 and tensor.shape[1] > 1 and tensor.stride(1) == 1 and not tensor.is_contiguous():
                return tensor.permute(0, 2, 3, 1).reshape(n, -1, tensor.shape[1]), "PC"
            return tensor.reshape(n, tensor.shape[1], -1), "CP"
        return tensor.reshape(n, -1, tensor.shape[3]), "PC"

    # ---------------------------------------------------------------- public
    def _no_images(self, tensor: torch.Tensor) -> bool:
        """A batch (4-D, or ``NHW`` with ``layout=``) of ``N == 0`` images."""
        if self.layout is not None and not self.layout.startswith("N"):
            return False  # layout names one image: there is no image axis to be empty
        return tensor.dim() == (4 if self.layout is None else len(self.layout)) and tensor.shape[0] == 0

    def adapt(self, batch: Any, batch_index: int) -> Chunk:
        """Convert one batch; raises :class:`InputError` with advice when it cannot.

        A batch of zero images gives a chunk without parts (``images == 0``) that carries the
        dtype and channels of the earlier batches (its own dtype if there were none), so that it
        merges as nothing; it settles no layout, channels or dtype for later batches.
        """
        self._pending_layout, self._pending_channels, self._pending_dtype = {}, None, None
        unwrapped = self._unwrap(batch, batch_index)
        tensors = unwrapped if isinstance(unwrapped, list) else [unwrapped]
        in_list = isinstance(unwrapped, list)
        if not in_list and self._no_images(unwrapped):
            own = dtype_name(unwrapped)  # an unsupported dtype is still an error
            return Chunk((), "CP", self._seen_dtype or own, self._seen_channels or self.channels or 0)
        parts: list[torch.Tensor] = []
        layout_out = None
        dtype = None
        for t in tensors:
            name = dtype_name(t)
            if dtype is not None and name != dtype:
                raise InputError(f"batch {batch_index} mixes dtypes {dtype} and {name}; convert the images to one dtype")
            dtype = name
            layout = self._layout_for(t, batch_index, in_list)
            part, canon = self._canonical(t, layout)
            if layout_out is not None and canon != layout_out:
                # a list mixing layouts: bring everything to channel rows (a copy, rare)
                part = part.transpose(1, 2) if canon == "PC" else part
                canon = "CP"
                parts = [p.transpose(1, 2) if layout_out == "PC" else p for p in parts]
            layout_out = canon
            parts.append(part)
        chan_axis = 1 if layout_out == "CP" else 2
        channels = int(parts[0].shape[chan_axis])
        if any(int(p.shape[chan_axis]) != channels for p in parts):
            raise InputError(f"batch {batch_index} mixes images with different channel counts; pass channels=...")
        if self.channels is not None:
            if channels < self.channels:
                raise InputError(f"batch {batch_index} has {channels} channels, fewer than channels={self.channels}")
            if channels > self.channels:
                parts = [p[:, : self.channels, :] if layout_out == "CP" else p[:, :, : self.channels] for p in parts]
                channels = self.channels
        if self._seen_channels is not None and channels != self._seen_channels:
            hint = " (pass channels=3 to drop alpha)" if {channels, self._seen_channels} == {3, 4} else " (pass channels=... to keep the same channels)"
            raise InputError(
                f"batch {batch_index} has {channels} channels, earlier batches had {self._seen_channels}{hint}"
            )
        self._pending_channels, self._pending_dtype = channels, dtype
        parts = [p for p in parts if p.numel() > 0]
        return Chunk(tuple(parts), layout_out, dtype, channels)

    def settled(self, rank: int) -> tuple[str, int] | None:
        """``(layout, channels)`` every later ``rank``-D tensor batch of that many channels is read with,
        as it is (no ``channels=`` cropping), once earlier batches settled them; else None. A backend's
        fast path relies on it to skip :meth:`adapt` for such batches."""
        if self.channels is not None or self._seen_channels is None:
            return None
        layout = self.layout if self.layout is not None else self._seen_layout.get(rank)
        if layout is None or len(layout) != rank:
            return None
        return layout, self._seen_channels

    def commit(self) -> None:
        """Remember the layout/channels of the last adapted batch (call once it was reduced without error)."""
        self._seen_layout.update(self._pending_layout)
        if self._pending_channels is not None:
            self._seen_channels = self._pending_channels
        if self._pending_dtype is not None:
            self._seen_dtype = self._pending_dtype
