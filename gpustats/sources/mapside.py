"""Map-side reduction: the decode workers reduce what they decode and send back small states.

Pixels never leave the process that decoded them. Item ``b`` of :class:`ReducedBatches` decodes
the ``b``-th batch of files (``batch_size`` files from ``start``), reduces the good images while
they are hot in cache into the exact ``ChannelStats`` the CPU backend makes (uint8: histogram-
exact totals; co-moments and per-image rows when asked), and returns a :class:`BatchResult`: that
state as its exact JSON dict, counts, bad files and the warnings decoding raised. A run merges the
results in file order (:func:`iter_reduced` yields them in order whatever the worker count), so
its state is bitwise the one a single process reducing the same batches makes: independent of
worker count and resume point (uint8 totals are exact for any batch size; per-image aggregates
follow the batch boundaries, which ``batch_size`` fixes).

Without per-image statistics a batch's images are joined into one strip (statistics do not care
where a pixel sits) and reduced in one call; with them, each image stays its own row.

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

import os
import warnings
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch.utils.data

from .decode import DEFAULT_MAX_PIXELS, _check_options, decode_with_info
from .errors import BadImage

__all__ = ["BatchResult", "ReducedBatches", "iter_reduced"]

#: what ToTensor divides uint8 by: the scale of every folder run
_UINT8_SCALE = 255.0


class BatchResult(NamedTuple):
    """One batch of files, reduced. ``state`` is ``ChannelStats.to_dict()`` of its good images
    (``None`` when it has none); ``bad`` lists ``(file index, reason)``; ``warnings`` maps each
    warning text decoding raised to the number of files that raised it."""

    start: int
    stop: int
    state: dict | None
    images: int
    nbytes: int
    bad: list[tuple[int, str]]
    warnings: dict[str, int]
    decoders: dict[str, int] = {}


class ReducedBatches(torch.utils.data.Dataset):
    """Map-style dataset over batches of files: ``ds[b]`` decodes and reduces batch ``b``.

    ``decode_opts``: :func:`~gpustats.sources.decode_image`'s options (mode, max_pixels, resize,
    center_crop); ``histogram``/``covariance``/``per_image``: what the state holds.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], *, batch_size: int, start: int = 0,
                 stop: int | None = None, histogram: bool = False, covariance: bool = False,
                 per_image: bool = False, **decode_opts: Any):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        self.files = [os.fspath(f) for f in files]  # plain strings pickle cheaply to workers
        self.stop = len(self.files) if stop is None else min(int(stop), len(self.files))
        self.start = int(start)
        if not 0 <= self.start <= len(self.files):
            raise ValueError(f"start={start} is outside 0..{len(self.files)} (number of files)")
        self.batch_size = int(batch_size)
        unknown = set(decode_opts) - {"mode", "max_pixels", "resize", "center_crop"}
        if unknown:
            raise TypeError(f"unknown decode option(s): {', '.join(sorted(unknown))}")
        decode_opts.setdefault("max_pixels", DEFAULT_MAX_PIXELS)
        _check_options(decode_opts.get("mode", "RGB"), decode_opts.get("resize"), decode_opts.get("center_crop"))
        self.decode_opts = decode_opts
        self.extras = {"histogram": bool(histogram), "covariance": bool(covariance), "per_image": bool(per_image)}
        self._reducer = None  # made in the process that reduces (numba state does not travel)

    def __len__(self) -> int:
        return max(0, -(-(self.stop - self.start) // self.batch_size))

    def __getitem__(self, b: int) -> BatchResult:
        first = self.start + int(b) * self.batch_size
        last = min(self.stop, first + self.batch_size)
        arrays, bad, nbytes, seen, decoders = [], [], 0, {}, {}
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            for index in range(first, last):
                before = len(log)
                path = self.files[index]
                try:
                    nbytes += os.stat(path).st_size
                except OSError:
                    pass
                try:
                    array, decoder = decode_with_info(path, **self.decode_opts)
                    arrays.append(array)
                    decoders[decoder] = decoders.get(decoder, 0) + 1
                except BadImage as exc:
                    bad.append((index, exc.reason))
                except Exception as exc:  # never let one file end the run
                    bad.append((index, f"unexpected error: {type(exc).__name__}: {exc}"))
                for text in {str(w.message) for w in log[before:]}:
                    seen[text] = seen.get(text, 0) + 1
        state = self._reduce(arrays, b) if arrays else None
        return BatchResult(first, last, state, len(arrays), nbytes, bad, seen, decoders)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reducer"] = None  # numba state does not travel (spawned workers build their own)
        state.pop("_adapter", None)
        return state

    def warm_up(self) -> None:
        """Build the reducer and run it once on a tiny image (compiles or loads numba's code)."""
        self._reduce([np.zeros((2, 2, 1 if self.decode_opts.get("mode") == "L" else 3), np.uint8)], 0)

    def _reduce(self, arrays: list[np.ndarray], b: int) -> dict:
        if self._reducer is None:
            from ..backends import Options
            from ..backends.cpu import CpuReducer
            from ..batches import BatchAdapter

            self._reducer = CpuReducer(torch.device("cpu"), Options(**self.extras))
            self._adapter = BatchAdapter("HWC")
        if self.extras["per_image"] or len(arrays) == 1:
            batch: Any = arrays
        else:  # one strip of pixels: one reduction call for the whole batch
            batch = np.concatenate([a.reshape(-1, a.shape[2]) for a in arrays])[None]
        chunk = self._adapter.adapt(batch, b)
        return self._reducer.reduce_chunk(chunk, _UINT8_SCALE, b).to_dict()


def _one_thread(worker_id: int) -> None:
    """Decode workers reduce with one thread each: the workers are the parallelism."""
    import numba

    numba.set_num_threads(1)


def _identity(result: BatchResult) -> BatchResult:
    return result


def _threads_started() -> str | None:
    """The numba threading layer this process runs, or None when no parallel region has run yet."""
    try:
        import numba

        return numba.threading_layer()
    except (ValueError, ImportError):
        return None


def prefer_forksafe_threads() -> None:
    """Make numba pick a fork-safe threading layer (TBB or its workqueue; not GNU OpenMP), unless the
    user chose one (``NUMBA_THREADING_LAYER``) or threads already run. Decode workers are forked:
    then the parent may compile and warm the reducer, and the children inherit it ready to run."""
    if "NUMBA_THREADING_LAYER" not in os.environ and _threads_started() is None:
        import numba

        numba.config.THREADING_LAYER = "forksafe"


def _start_method() -> str | None:
    """``"spawn"`` when this process already runs numba's GNU OpenMP threads, else the default (fork).

    A forked child of a process that has used GNU OpenMP must not use it again (numba aborts it:
    "fork() called from a process already using GNU OpenMP"), and the workers reduce with numba.
    Fresh processes cost about a second to start; fork costs nothing, so it is kept when safe (see
    :func:`prefer_forksafe_threads`).
    """
    return "spawn" if _threads_started() == "omp" else None


def iter_reduced(files: Sequence[str | os.PathLike[str]], *, workers: int, batch_size: int, start: int = 0,
                 stop: int | None = None, **options: Any) -> Iterator[BatchResult]:
    """Yield the :class:`BatchResult` of every batch of ``files[start:stop]``, in file order.

    ``workers=0`` decodes and reduces in this process; ``workers>0`` in that many DataLoader worker
    processes (not persistent). ``options``: :class:`ReducedBatches`' keyword arguments.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers!r}")
    dataset = ReducedBatches(files, batch_size=batch_size, start=start, stop=stop, **options)
    if len(dataset) == 0:
        return
    prefer_forksafe_threads()
    context = _start_method()
    if workers > 0 and context is None:
        dataset.warm_up()  # compiled here once; forked workers inherit it instead of each loading it
    if workers == 0:
        for b in range(len(dataset)):
            yield dataset[b]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_identity, worker_init_fn=_one_thread,
                                         multiprocessing_context=context,
                                         persistent_workers=False, pin_memory=False)
    yield from loader
