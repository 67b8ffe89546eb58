"""Map-side reduction: the decode workers reduce what they decode and send back small states.

Pixels never leave the process that decoded them. Item ``b`` of :class:`ReducedBatches` decodes
the ``b``-th task of items (``batch_size`` files or archive members from ``start``, or a Parquet
row group: :mod:`.segment`), reduces the good images while
they are hot in cache into the exact ``ChannelStats`` the CPU backend makes (uint8: histogram-
exact totals; co-moments and per-image rows when asked), and returns a :class:`BatchResult`: that
state as its exact JSON dict, counts, bad items and the warnings decoding raised. Workers read
what they decode themselves (files, members by byte range, row groups); :func:`reduce_records`
is the same reduction for bytes read elsewhere (a compressed tar's stream, :mod:`.streamed`). A
run merges the results in item order (:func:`iter_reduced` yields them in order whatever the worker count), so
its state is bitwise the one a single process reducing the same batches makes: independent of
worker count, batch size and resume point (uint8 totals and per-image sums are exact integers).

Without per-image statistics a batch's small images are joined into one strip (statistics do not
care where a pixel sits) and reduced in one call, and large ones are reduced where they lie; with
per-image statistics, each image stays its own row.

Routes. A decoded image reaches its state by one of four routes, chosen here and only here, all
ending in the one state builder :func:`gpustats.backends.int_state.int_state` (the same state bit
for bit whichever is taken; tests/test_pixel_routes.py):

1. a run's first image is small (:data:`~gpustats.backends.cpu.SMALL_PART` values): arrays, reduced
   with numpy (:mod:`gpustats.backends.cpu_small`) until the process has loaded numba
   (:func:`_numba_pays`), then with
2. numba's loops (:class:`~gpustats.backends.cpu.CpuReducer`); large images go there too when they
   come as arrays (L images; RGB ones the views below could not read in place);
3. large images without co-moments: Pillow's own histogram of each image, no array made
   (:func:`gpustats.backends.cpu_small.hist_u8_state`);
4. large RGB images with co-moments: Pillow's memory read in place, 4 bytes a pixel, by the RGBX
   sink (:class:`gpustats.backends.cpu.RgbxSink`).

:func:`_pixels` decides what decoding hands over (1-2: arrays, 3: histograms, 4: views) and
:meth:`_Reduce.decoded` sends each to its route.

>>> import os, tempfile
>>> from PIL import Image
>>> folder = tempfile.mkdtemp()
>>> files = [os.path.join(folder, f"{i}.png") for i in range(3)]
>>> for i, f in enumerate(files):
...     Image.new("RGB", (2, 2), (i, 2 * i, 3 * i)).save(f)
>>> [(r.start, r.stop, r.images) for r in iter_reduced(files, workers=0, batch_size=2)]
[(0, 2, 2), (2, 3, 1)]
"""

from __future__ import annotations

import functools
import operator
import os
import sys
import warnings
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from ..backends.cpu import SMALL_PART
from .decode import DEFAULT_MAX_PIXELS, _check_options, check_decode_names, decode_bytes, decode_file, decode_pil
from .errors import BadImage
from .remote import RemoteReadError
from .segment import Segment
from .workers import ordered_results

__all__ = ["BadItem", "BatchResult", "ReducedBatches", "iter_reduced", "reduce_records"]

#: what ToTensor divides uint8 by: the scale of every folder run
_UINT8_SCALE = 255.0


class BadItem(NamedTuple):
    """An item skipped: its index in the rank's order, the reason, its name (a path or
    ``archive.tar:member``) and its order among all ranks' items (``[unit, position in unit]``)."""

    index: int
    reason: str
    name: str
    order: list


class BatchResult(NamedTuple):
    """One batch of items, reduced. ``state`` is ``ChannelStats.to_dict()`` of its good images
    (``None`` when it has none); ``bad`` lists :class:`BadItem`; ``warnings`` maps each warning
    text decoding raised to the number of items that raised it."""

    start: int
    stop: int
    state: dict | None
    images: int
    nbytes: int
    bad: list[BadItem]
    warnings: dict[str, int]
    decoders: dict[str, int] = {}


class _Decoded:
    """What decoding one batch gave: the good arrays and everything the report needs."""

    def __init__(self, sink: Any = None) -> None:
        self.arrays: list[np.ndarray] = []
        self.hists: list[np.ndarray] = []  # [C, 256] counts of images decoded to their histograms
        self.sink = sink  # views of RGB pixels are reduced into it as they come (backends.cpu.RgbxSink)
        self.bad: list[BadItem] = []
        self.nbytes = 0
        self.warnings: dict[str, int] = {}
        self.decoders: dict[str, int] = {}


def _decode_records(records: Iterable[tuple], decode_opts: dict, out: _Decoded, pixels: str) -> _Decoded:
    """Decode ``(index, name, order, source)`` records into ``out``; ``source`` is a file path (``str``),
    the item's ``bytes`` or a :class:`BadImage` (it could not be read). ``pixels`` (see :func:`_pixels`):
    "readonly" or "view" (arrays; RGB views go into ``out.sink`` when it has one) or "histogram" (each
    image's ``[C, 256]`` counts). Never raises for an item."""
    from .pixelview import rgbx_base

    keep = out.hists if pixels == "histogram" else out.arrays
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        for index, name, order, source in records:
            before = len(log)
            try:
                if isinstance(source, BadImage):
                    raise source
                if isinstance(source, str):
                    array, decoder, size = decode_file(source, out=pixels, **decode_opts)
                    out.nbytes += size
                elif not isinstance(source, (bytes, bytearray, memoryview)):  # a PIL image (sources.samples)
                    array, decoder = decode_pil(source, name=name, out=pixels, **decode_opts)
                else:
                    out.nbytes += len(source)
                    array, decoder = decode_bytes(source, name=name, out=pixels, **decode_opts)
                base = rgbx_base(array) if out.sink is not None else None
                if base is None:
                    keep.append(array)
                else:  # reduced now, while hot; its memory is freed for the next image
                    out.sink.add(base)
                array = base = None
                out.decoders[decoder] = out.decoders.get(decoder, 0) + 1
            except BadImage as exc:
                out.bad.append(BadItem(index, exc.reason, name, order))
            except RemoteReadError:
                raise  # a network failure stops the run (the engine saves the checkpoint); never a bad item
            except Exception as exc:  # never let one item end the run
                out.bad.append(BadItem(index, f"unexpected error: {type(exc).__name__}: {exc}", name, order))
            for text in {str(w.message) for w in log[before:]}:
                out.warnings[text] = out.warnings.get(text, 0) + 1
    return out


class _Reduce:
    """Reduces decoded arrays into the exact state (one per process; numba state does not travel).

    Until this process has loaded numba (:meth:`load_numba`, or the first image too large for
    :mod:`~gpustats.backends.cpu_small`), small uint8 images are reduced with numpy alone: same
    integers, same state, without numba's ~0.4 s start (see :func:`_numba_pays`)."""

    _cache: dict = {}

    @classmethod
    def get(cls, extras: dict) -> "_Reduce":
        key = tuple(sorted(extras.items()))
        if key not in cls._cache:
            cls._cache[key] = cls(extras)
        return cls._cache[key]

    def __init__(self, extras: dict):
        from ..backends import Options
        from ..batches import BatchAdapter

        self.per_image = extras["per_image"]
        self.options = Options(**extras)
        self.reducer: Any = None  # the numba CpuReducer, once loaded
        self.adapter = BatchAdapter("HWC")
        self.stacked = BatchAdapter("NHWC")

    def load_numba(self) -> None:
        """Build the numba reducer (imports numba; its loops load on their first call)."""
        if self.reducer is None:
            import numba  # noqa: F401  (imported first: prefer_forksafe_threads acts on an imported numba)

            from ..backends.cpu import CpuReducer

            prefer_forksafe_threads()
            # one thread: decode workers are the parallelism, and in process (workers=0) decoding dominates;
            # "cpu" for the torch.device: the chunks are numpy (numpy_chunk), and torch is not imported
            self.reducer = CpuReducer("cpu", self.options, threads=1, loops="numba")

    def sink(self, pixels: str) -> Any:
        """Where a batch decoded as ``pixels`` reduces RGB views as they come (``RgbxSink``: numba's loop
        without the array reducer, so without torch), or None."""
        if pixels != "view" or not self.options.covariance:
            return None
        import numba  # noqa: F401  (imported first: prefer_forksafe_threads acts on an imported numba)

        from ..backends.cpu import RgbxSink

        prefer_forksafe_threads()
        return RgbxSink(self.options)

    def decoded(self, done: _Decoded, b: int) -> Any:
        """The state of a batch's decoded images (arrays, histograms, the sink's), or None when it has none."""
        from ..backends.cpu_small import hist_u8_state

        parts = [self(done.arrays, b) if done.arrays else None,
                 hist_u8_state(np.stack(done.hists), self.options, _UINT8_SCALE) if done.hists else None,
                 done.sink.state(_UINT8_SCALE) if done.sink is not None else None]
        parts = [part for part in parts if part is not None]
        return functools.reduce(lambda a, c: a.merge(c), parts) if parts else None

    def __call__(self, arrays: list[np.ndarray], b: int) -> Any:
        from ..backends.cpu import numpy_chunk
        from ..backends.cpu_small import is_small_u8, small_u8_state

        arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]  # e.g. views

        if self.reducer is None and is_small_u8(arrays):
            return small_u8_state(arrays, self.options, _UINT8_SCALE)
        self.load_numba()
        # (without per-image statistics, backends.cpu joins the small images into one strip: one call)
        if self.per_image and len(arrays) > 1 and all(a.size < SMALL_PART and a.shape == arrays[0].shape
                                                      for a in arrays):
            # small images of one size (CIFAR-like): one [N, H, W, C] block, each image still its own row
            stack = np.stack(arrays)
            chunk = numpy_chunk([stack], stacked=True)
            return self.reducer.reduce_chunk(chunk if chunk is not None else self.stacked.adapt(stack, b), _UINT8_SCALE, b)
        chunk = numpy_chunk(arrays)  # None: not HWC uint8, for the adapter (torch) to convert or refuse
        return self.reducer.reduce_chunk(chunk if chunk is not None else self.adapter.adapt(arrays, b), _UINT8_SCALE, b)


# items from which a run loads numba even when its images are small; files per task when they are
# small (measured, with the machine: gpustats.tuning)
from ..tuning import NUMBA_FROM_ITEMS as _NUMBA_FROM_ITEMS, SMALL_TASK as _SMALL_TASK  # noqa: E402


def _first_values(segment: Segment, start: int, decode_opts: dict) -> int | None:
    """Values of the run's first image once decoded (its size from the file's header, after ``resize``
    and ``center_crop``), or None when unknown (archive members and rows, unreadable files)."""
    try:
        unit = segment.units[segment.locate(start)[0]]
        if not isinstance(unit, (str, os.PathLike)):  # an archive member or a row: not read for a guess
            return None
        source = os.fspath(unit)
        from PIL import Image

        from .geometry import crop_hw, resized_size

        with Image.open(source) as im:
            width, height = im.size
        if decode_opts.get("resize") is not None:
            width, height = resized_size(width, height, int(decode_opts["resize"]))
        if decode_opts.get("center_crop") is not None:
            height, width = crop_hw(decode_opts["center_crop"])
        return width * height * (1 if decode_opts.get("mode") == "L" else 3)
    except Exception:  # unreadable or not an image: decoding will report it
        return None


def _pixels(extras: dict, small: bool) -> str:
    """What decoding hands the reduction (``out`` of :func:`~.decode._decode`): small images as "readonly"
    arrays (numpy reduces them a little faster than Pillow makes histograms); larger ones as their
    "histogram" (exact counts measured by Pillow on the decoded image: no array is made and no numba
    is needed), or, when the run needs the pixels themselves (co-moments), as a "view" of Pillow's own
    memory (no copy; :mod:`.pixelview`). Never does the choice change a number (tested).

    (Moments alone from views by numba's sums measured ~1.5% faster than Pillow's histogram in a
    3,000-JPEG run without numba's ~0.4 s start: not worth that start below ~15,000 images a worker.)"""
    if small:
        return "readonly"
    return "view" if extras["covariance"] else "histogram"


def _numba_pays(dataset: "ReducedBatches") -> bool:
    """Whether this run should load numba before its workers fork: it reduces arrays, and has many items
    or a first image too large for numpy's small-image path (unknown: assumed large). A wrong guess
    costs time only."""
    if dataset.pixels == "histogram":
        return False
    return len(dataset.segment) - dataset.start >= _NUMBA_FROM_ITEMS or not dataset.small


def reduce_records(first: int, stop: int, records: Iterable[tuple], extras: dict, decode_opts: dict,
                   b: int = 0, pixels: str | None = None) -> BatchResult:
    """Decode and reduce one batch of ``(index, name, order, source)`` records (see :func:`_decode_records`;
    ``pixels`` None: :func:`_pixels` for images of unknown size)."""
    pixels = pixels or _pixels(extras, small=False)
    reduce = _Reduce.get(extras)
    done = _decode_records(records, decode_opts, _Decoded(reduce.sink(pixels)), pixels)
    state = reduce.decoded(done, b)
    state = None if state is None else state.to_dict()
    images = sum(done.decoders.values())
    return BatchResult(first, stop, state, images, done.nbytes, done.bad, done.warnings, done.decoders)


class ReducedBatches:
    """Map-style dataset over tasks: ``ds[b]`` decodes and reduces task ``b`` (a batch of items, or a
    Parquet row group read ``batch_size`` rows at a time; see :mod:`.segment`).

    ``files``: image paths or a :class:`~gpustats.sources.segment.Segment`; ``start``/``stop``:
    positions in it (results carry ``segment.offset + position``). ``decode_opts``:
    :func:`~gpustats.sources.decode_image`'s options (mode, max_pixels, resize, center_crop);
    ``histogram``/``covariance``/``per_image``: what the state holds. ``small_tasks``: when the first
    image is small, tasks of at least ``_SMALL_TASK`` files (the engine's default ``batch_size``).
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]] | Segment, *, batch_size: int, start: int = 0,
                 stop: int | None = None, histogram: bool = False, covariance: bool = False,
                 per_image: bool = False, small_tasks: bool = False, **decode_opts: Any):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        self.segment = files if isinstance(files, Segment) else Segment.of_files(files)
        self.start = int(start)
        if not 0 <= self.start <= len(self.segment):
            raise ValueError(f"start={start} is outside 0..{len(self.segment)} (number of items)")
        self.batch_size = int(batch_size)
        check_decode_names(decode_opts)
        decode_opts.setdefault("max_pixels", DEFAULT_MAX_PIXELS)
        _check_options(decode_opts.get("mode", "RGB"), decode_opts.get("resize"), decode_opts.get("center_crop"))
        self.decode_opts = decode_opts
        self.extras = {"histogram": bool(histogram), "covariance": bool(covariance), "per_image": bool(per_image)}
        first = _first_values(self.segment, self.start, decode_opts) if self.start < len(self.segment) else None
        self.small = first is not None and first < SMALL_PART  # judged by the first image (speed only)
        self.pixels = _pixels(self.extras, self.small)
        # small_tasks and small images: tasks of _SMALL_TASK files (results do not depend on the split)
        grow = small_tasks and self.small and not self.segment.has_rowgroups
        task = max(self.batch_size, _SMALL_TASK) if grow else self.batch_size
        self.tasks = self.segment.tasks(self.start, stop, task)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, b: int) -> BatchResult:
        first, stop, rowgroup = self.tasks[int(b)]
        seg, offset = self.segment, self.segment.offset
        if rowgroup:
            return self._rowgroup(first, stop, int(b))
        records = ((offset + p, *record) for p, record in enumerate(seg.records(first, stop), first))
        return reduce_records(offset + first, offset + stop, records, self.extras, self.decode_opts, int(b),
                              self.pixels)

    def warm_up(self) -> None:
        """Build this process's reducer and, when the run needs numba (:func:`_numba_pays`), run it once
        on a tiny image (compiles or loads numba's code), and decode a tiny PNG (Pillow loads its common
        format plugins, the optional JPEG decoder is looked up): forked workers inherit all of it ready
        to run instead of each paying for it."""
        import io

        from PIL import Image

        from .decode import _fast_jpeg

        reduce = _Reduce.get(self.extras)
        if _numba_pays(self):
            channels = 1 if self.decode_opts.get("mode") == "L" else 3
            sink = reduce.sink(self.pixels) if channels == 3 else None
            if sink is not None:  # RGB views: their own loop
                sink.add(np.zeros((2, 2, 4), np.uint8))
                sink.state(_UINT8_SCALE)
            else:
                reduce.load_numba()
                reduce([np.zeros((2, 2, channels), np.uint8)], 0)
        png = io.BytesIO()
        Image.new("RGB", (2, 2)).save(png, format="PNG")
        decode_bytes(png.getvalue(), **self.decode_opts)
        _fast_jpeg()

    def _rowgroup(self, first: int, stop: int, b: int) -> BatchResult:
        """A Parquet row group (from ``first``): its column read once, decoded and reduced ``batch_size`` rows
        at a time, the states merged here in row order."""
        from ..stats import ChannelStats
        from .parquetsrc import iter_values, rechunk

        seg, offset = self.segment, self.segment.offset
        unit, local = seg.rowgroup(first)
        done, state, pos = _Decoded(), ChannelStats.empty(), first
        from .tarindex import max_member_bytes

        for values in rechunk(iter_values(unit.container, unit.layout, unit.group, batch_rows=self.batch_size,
                                           paths=True), local, stop - first, self.batch_size, max_member_bytes()):
            records = [(offset + pos + i, seg.name(pos + i), seg.order(pos + i), BadImage(reason) if data is None
                        else data) for i, (data, reason, _) in enumerate(values)]
            row_paths = {offset + pos + i: path for i, (_, _, path) in enumerate(values) if path is not None}
            pos += len(values)
            reduce = _Reduce.get(self.extras)
            done.arrays, done.hists, done.sink = [], [], reduce.sink(self.pixels)
            bad_before = len(done.bad)
            _decode_records(records, self.decode_opts, done, self.pixels)
            for k in range(bad_before, len(done.bad)):  # a bad row is named by its number and its path
                path = row_paths.get(done.bad[k].index)
                if path is not None:
                    done.bad[k] = done.bad[k]._replace(reason=f"{done.bad[k].reason} (the row's path: {path!r})")
            counted = reduce.decoded(done, b)
            if counted is not None:
                state = state.merge(counted)
            values = records = None  # the chunk's bytes are not held while the next chunk is read
        images = sum(done.decoders.values())
        return BatchResult(offset + first, offset + stop, None if state.is_empty else state.to_dict(), images,
                           done.nbytes, done.bad, done.warnings, done.decoders)


def _threads_started() -> str | None:
    """The numba threading layer this process runs, or None when no parallel region has run yet
    (nor numba been imported: then none can have run, and finding out would cost its import)."""
    if "numba" not in sys.modules:
        return None
    try:
        import numba

        return numba.threading_layer()
    except (ValueError, ImportError):
        return None


def prefer_forksafe_threads() -> None:
    """Make numba pick a fork-safe threading layer (TBB or its workqueue; not GNU OpenMP), unless the
    user chose one (``NUMBA_THREADING_LAYER``) or threads already run. Decode workers are forked:
    then the parent may compile and warm the reducer, and the children inherit it ready to run.
    Nothing to do before numba is imported (:meth:`_Reduce.load_numba` calls this after importing it)."""
    if "numba" in sys.modules and "NUMBA_THREADING_LAYER" not in os.environ and _threads_started() is None:
        import numba

        numba.config.THREADING_LAYER = "forksafe"


def _start_method() -> str:
    """How decode workers start: ``"fork"`` where the platform has it and this process does not run
    numba's GNU OpenMP threads, else ``"spawn"``; raises :class:`~.mainguard.UnguardedMain` first when
    fresh processes would re-run a script that calls gpustats outside ``if __name__ == "__main__":``.

    A forked child of a process that has used GNU OpenMP must not use it again (numba aborts it:
    "fork() called from a process already using GNU OpenMP"), and the workers reduce with numba.
    gpustats' own loops never start numba's threads (:mod:`gpustats.backends.cpu_float_loops`), so
    only the user's own parallel numba code can force ``spawn``. Fresh processes cost about a second to
    start; fork costs nothing, so it is asked for explicitly where safe (not left to the platform's
    default, which is ``forkserver`` from Python 3.14 on Linux and ``spawn`` on macOS).
    """
    import multiprocessing

    from .mainguard import check_main_guard

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and _threads_started() != "omp" \
        else "spawn"
    check_main_guard(method)
    return method


def iter_reduced(files: Sequence[str | os.PathLike[str]], *, workers: int, batch_size: int, start: int = 0,
                 stop: int | None = None, **options: Any) -> Iterator[BatchResult]:
    """Yield the :class:`BatchResult` of every task of ``files[start:stop]`` (paths or a
    :class:`~gpustats.sources.segment.Segment`), in item order.

    ``workers=0`` decodes and reduces in this process; ``workers>0`` in that many worker processes
    (:func:`.workers.ordered_results`; not persistent). ``options``: :class:`ReducedBatches`' keyword
    arguments.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers!r}")
    dataset = ReducedBatches(files, batch_size=batch_size, start=start, stop=stop, **options)
    if len(dataset) == 0:
        return
    prefer_forksafe_threads()
    if workers == 0:
        if _numba_pays(dataset) and dataset.pixels != "view":  # (views go to RgbxSink, which needs no reducer)
            _Reduce.get(dataset.extras).load_numba()
        for b in range(len(dataset)):
            yield dataset[b]
        return
    context = _start_method()
    dataset.warm_up()  # compiled (or loaded) here once: forked workers inherit it, spawned ones load its disk cache
    yield from ordered_results(functools.partial(operator.getitem, dataset), range(len(dataset)),
                               workers=min(workers, len(dataset)), method=context)  # no idle processes
