"""Random subsets with confidence intervals and tolerance-based early stopping.

Most users need the per-channel mean/std of a dataset to about three decimals, and a few hundred
randomly chosen images usually get there. :func:`estimate_stats` visits images in a seeded random
order, keeps per-image sufficient statistics, and stops as soon as the confidence interval of
every channel's mean *and* std is narrower than ``± tolerance`` (or at ``max_images``, or when the
data is exhausted, in which case the answer is exact).

Sampling units
--------------
Images (more exactly: dataset items / files), not pixels, are the sampling units: pixels of one
image are strongly correlated, so treating them as independent would give intervals that are
far too narrow. For unit ``i`` we keep, per channel, on the reported (0–1 for 8-bit) scale and in
float64::

    n_i   number of pixels
    s_i   sum of the pixel values
    m2_i  within-image centred sum of squares, sum (x - s_i/n_i)^2

(``m2_i`` carries the same information as the raw sum of squares ``q_i = m2_i + s_i^2/n_i`` but
without cancellation when the data has a large offset). A file that cannot be decoded is a unit
with ``n_i = 0``: it is part of the population and contributes no pixels, which the ratio estimator
below handles exactly.

Estimators and intervals: :mod:`gpustats.intervals`; the visiting order, stratified by size:
:mod:`gpustats.sample_design` (both with references).

Where the data comes from
-------------------------
* A folder, a file path, or a list of them (``str``/``PathLike``): the files are listed with
  :func:`gpustats.sources.list_images`, visited in a seeded random order and decoded with
  :func:`gpustats.sources.decode_image` (``**decode_opts``: ``mode``, ``max_pixels``, ``resize``,
  ``center_crop``; ``workers`` processes decode in parallel). Bad files are skipped and listed.
  Archives read in place (zip, uncompressed tar incl. nested tars, Parquet with ``column=``) are
  sampled by member or row the same way; a compressed tar has no random access: refused.
* A map-style dataset (``len()`` and ``__getitem__``, e.g. a list of arrays or a torchvision
  dataset): a seeded random permutation of its indices. Items may be anything
  :mod:`gpustats.batches` accepts (an image, an ``(image, label)`` pair, a dict); an item that
  holds several images is one unit (cluster sampling, still exact under the ratio estimator).
* A ``torch.utils.data.DataLoader`` over a map-style dataset: its ``dataset`` is sampled (the
  loader's sampler and batching are not used; its ``num_workers`` is).
* Any other iterable (a generator, an ``IterableDataset``) cannot be shuffled, and the first
  images of a folder or a stream are rarely a random sample: it is refused unless
  ``assume_shuffled=True``, which takes its batches in the order given, one unit per image.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> images = [rng.integers(0, 256, size=(8, 8 + i % 5, 3), dtype=np.uint8) for i in range(500)]
>>> est = estimate_stats(images, tolerance=0.01, device="cpu")
>>> est.stopped_because, est.images_used < 500, est.is_estimate
('tolerance', True, True)
>>> bool(np.all(est.half_widths["mean"] <= 0.01) and np.all(est.half_widths["std"] <= 0.01))
True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from .batches import InputError
from .intervals import (STOP_REASONS, SampledStats, UnitSums, combine_rows, exact_result, may_stop, next_check,
                        ratio_intervals, sampled_stats)
from .sample_design import checked_sizes, size_strata, sizes_of_items, unit_sizes, visiting_order
from .sample_units import UnitReducer, dataset_units, file_units, is_map_style, iterable_units, list_files

__all__ = ["SampleSpec", "SampledStats", "estimate_stats", "ratio_intervals", "sample_for_compute_stats",
           "STOP_REASONS", "estimate_folder_stats", "FOLDER_SAMPLE_OPTIONS"]

#: Default number of images that must be seen before the tolerance may stop the run.
DEFAULT_MIN_IMAGES = 30


# ============================================================================ the sources

@dataclass(frozen=True)
class SampleSpec:
    """How to sample, for ``compute_stats(loader, sample=SampleSpec(tolerance=1e-3))``.

    Fields as in :func:`estimate_stats`; ``compute_stats`` adds its ``device``, ``layout``,
    ``channels``, ``key`` and ``scale``.

    >>> import numpy as np
    >>> from gpustats import compute_stats
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(200)]
    >>> est = compute_stats(images, device="cpu", layout="HWC", sample=SampleSpec(tolerance=0.01))
    >>> est.is_estimate, est.images_used < 200, bool(np.all(est.half_widths["mean"] <= 0.01))
    (True, True, True)
    """

    tolerance: float
    confidence: float = 0.95
    max_images: int | None = None
    seed: int = 0
    batch_size: int = 64
    min_images: int = DEFAULT_MIN_IMAGES
    assume_shuffled: bool = False
    workers: int = 0
    decode_opts: dict = field(default_factory=dict)
    sizes: Any = None

    def run(self, source: Any, **options: Any) -> "SampledStats":
        """:func:`estimate_stats` on ``source`` with this spec's fields; ``options`` (``device``, ``layout``,
        ``channels``, ``key``, ``scale``, ``progress``, decode options for files, ...) are passed on."""
        return estimate_stats(source, tolerance=self.tolerance, confidence=self.confidence,
                              max_images=self.max_images, seed=self.seed, batch_size=self.batch_size,
                              min_images=self.min_images, assume_shuffled=self.assume_shuffled,
                              workers=self.workers, sizes=self.sizes, **options, **self.decode_opts)


# ============================================================================ the driver

def estimate_stats(
    dataset_or_files: Any,
    *,
    tolerance: float,
    confidence: float = 0.95,
    max_images: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: Any = None,
    scale: float | str = "auto",
    min_images: int = DEFAULT_MIN_IMAGES,
    assume_shuffled: bool = False,
    workers: int = 0,
    layout: str | None = None,
    channels: int | None = None,
    key: str | None = None,
    progress: bool = False,
    column: str | None = None,
    strict: bool = False,
    sizes: Any = None,
    all_extensions: bool = False,
    **decode_opts: Any,
) -> SampledStats:
    """Estimate per-channel mean and std from a seeded random subset of images, with intervals.

    Stops after the first batch at which at least ``min_images`` images were seen and every
    channel's mean and std half-width (at ``confidence``) is ``<= tolerance``; or at ``max_images``
    images (units); or when the data is exhausted (the result is then exact: ``is_estimate`` is
    False and the half-widths 0). ``tolerance=0`` never stops early (fixed-size sample of
    ``max_images``).

    ``dataset_or_files``: a folder / file path or a list of them, a map-style dataset (``len`` and
    ``__getitem__``), a DataLoader over one, or (with ``assume_shuffled=True``) any iterable of
    batches; see the module docstring. ``seed`` fixes the visiting order (same seed, same result).
    ``batch_size`` images are read between checks. ``device``: where per-image sums are taken
    (``None``: where each image already is -- the CPU for files and numpy arrays). ``scale``,
    ``layout``, ``channels``, ``key`` as in :func:`gpustats.compute_stats`. ``workers``: decoding
    processes for files (DataLoader workers for datasets). ``strict``: the first bad file met
    raises :class:`~gpustats.sources.engine.StrictBadFile` at once (else bad files are skipped and
    listed). ``sizes``: one number per item that grows with its pixel count (its pixels, or its file
    size), to stratify by size (:mod:`gpustats.sample_design`); files, archive members and lists of
    arrays are measured without it, other datasets are sampled without strata then (the result says
    that its intervals assume the unseen images are like the seen ones). ``all_extensions``: folders
    also yield GIF and the other :data:`~gpustats.sources.listing.EXTRA_EXTENSIONS` (default:
    exactly ImageFolder's extensions). ``**decode_opts`` go to
    :func:`gpustats.sources.decode_image` (files only).
    """
    started = time.perf_counter()
    _check_arguments(tolerance, confidence, max_images, batch_size, min_images)
    cap = None if max_images is None else int(max_images)
    files = list_files(dataset_or_files, column, all_extensions)
    if files is not None and layout is None:
        layout = "HWC"  # decode_image's layout (a 4x4 crop would otherwise be ambiguous)
    source = _open_source(dataset_or_files, files, cap=cap, seed=seed, batch_size=batch_size, workers=workers,
                          column=column, assume_shuffled=assume_shuffled, sizes=sizes, decode_opts=decode_opts)
    reducer = UnitReducer(device, layout, channels, key, scale)
    visit = _Visit(source, reducer, cap=cap, confidence=confidence, strict=strict)
    stopped = visit.run(tolerance, min_images, progress)
    return visit.finish(stopped, tolerance=tolerance, seed=seed, started=started,
                        units="files" if files is not None else "items" if source.population is not None else "images")


def _check_arguments(tolerance: Any, confidence: Any, max_images: Any, batch_size: Any, min_images: Any) -> None:
    """:func:`estimate_stats`' own arguments (``ValueError`` naming the argument)."""
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number >= 0 (on the reported scale, e.g. 0.001), got {tolerance!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if max_images is not None and (int(max_images) != max_images or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if min_images < 2:
        raise ValueError(f"min_images must be at least 2 (an interval needs a spread), got {min_images!r}")


@dataclass
class _Source:
    """What is sampled: the batches of units in visiting order, the population size (None: a stream),
    each unit's size when known before it is read, and the strata of the visiting order."""

    units: Any
    population: int | None
    known: Any = None
    design: dict = field(default_factory=dict)


def _open_source(source: Any, files: Any, *, cap: int | None, seed: int, batch_size: int, workers: int,
                 column: str | None, assume_shuffled: bool, sizes: Any, decode_opts: dict) -> _Source:
    """The units of ``source`` in a seeded random order (files, archive members, a map-style dataset or a
    DataLoader's), or in the order given (a stream, under ``assume_shuffled``); refuses what cannot be sampled."""
    loader_workers = workers
    if files is None and column is not None:
        raise TypeError("column= names the image column of Parquet files; this source is not a path")
    if files is None and decode_opts:
        raise TypeError(f"decode options ({', '.join(sorted(decode_opts))}) apply to image files and folders only")
    if files is None and isinstance(source, torch.utils.data.DataLoader) and not assume_shuffled:
        if not is_map_style(source.dataset):
            raise InputError(
                "this DataLoader wraps an IterableDataset, which cannot be visited in random order; "
                "pass assume_shuffled=True if its stream is already in random order")
        loader_workers = workers or source.num_workers
        source = source.dataset

    known = None  # each unit's size, when known before it is read (strata by size)
    if files is not None:
        population = len(files)
        known = unit_sizes(files) if sizes is None else checked_sizes(sizes, population)
        order = visiting_order(population, known, seed)
        stop = population if cap is None else min(cap, population)
        units = file_units(files, order, stop, batch_size, loader_workers, decode_opts)
    elif is_map_style(source) and not (assume_shuffled and isinstance(source, torch.utils.data.DataLoader)):
        population = len(source)
        known = sizes_of_items(source) if sizes is None else checked_sizes(sizes, population)
        order = visiting_order(population, known, seed)
        stop = population if cap is None else min(cap, population)
        units = dataset_units(source, order, stop, batch_size, loader_workers)
    elif assume_shuffled and isinstance(source, Iterable):
        if sizes is not None:
            raise TypeError("sizes= gives the size of each item of a dataset or file list; a stream has none")
        population = None
        units = iterable_units(source)
    elif isinstance(source, Iterable):
        raise InputError(
            f"a {type(source).__name__} cannot be visited in random order (it has no len() and indexing), and "
            "the first images of a stream are rarely a random sample; pass a map-style dataset, a list of "
            "files or a folder, or assume_shuffled=True if the stream is already in random order")
    else:
        raise InputError(f"cannot sample from a {type(source).__name__}; pass a folder, a list of image files, "
                         "a map-style dataset or (with assume_shuffled=True) an iterable of batches")
    design: dict[str, Any] = {}
    if known is not None:
        labels, stratum_sizes = size_strata(known)
        design = {"strata": labels[order], "stratum_sizes": stratum_sizes}
    return _Source(units, population, known, design)


class _Visit:
    """The sampling loop: per-unit sums in visiting order, bad files, and the stopping checks."""

    def __init__(self, source: _Source, reducer: UnitReducer, *, cap: int | None, confidence: float, strict: bool):
        self.source, self.reducer, self.cap = source, reducer, cap
        self.confidence, self.strict = confidence, strict
        self.sums = UnitSums()
        self.bad: list[tuple[str, str]] = []
        self.pending_bad = 0  # units without pixels seen before the channel count is known

    def visited(self) -> int:
        return self.sums.k + self.pending_bad

    def empty_unit(self) -> None:  # a unit of the population without pixels (a bad file, an item of no image)
        if self.sums.k == 0:
            self.pending_bad += 1
        else:
            zeros = np.zeros((1, self.sums.channels))
            self.sums.append(np.zeros(1), zeros, zeros)

    def check(self) -> dict:
        design, sums = self.source.design, self.sums
        strata = {} if not design else {"strata": design["strata"][:sums.k], "stratum_sizes": design["stratum_sizes"]}
        return ratio_intervals(*sums.arrays(), population_size=self.source.population, confidence=self.confidence,
                               **strata)

    def add(self, unit: tuple) -> None:
        """One unit: a bad file (``strict``: raises), an item (one unit, whatever images it holds) or an
        iterable's batch (one unit per image, up to the cap)."""
        cap, sums = self.cap, self.sums
        if unit[0] == "bad":
            if self.strict:
                from .sources.engine import StrictBadFile

                raise StrictBadFile(f"bad file {unit[1]}: {unit[2]} (strict)")
            self.bad.append((unit[1], unit[2]))
            self.empty_unit()
            return
        count, total, m2, ints = self.reducer.rows(unit[1])
        if count.shape[0] == 0:
            if unit[0] == "item":
                self.empty_unit()
            return
        if self.pending_bad:
            zeros = np.zeros((self.pending_bad, total.shape[1]))
            sums.append(np.zeros(self.pending_bad), zeros, zeros)
            self.pending_bad = 0
        if unit[0] == "item" and count.shape[0] > 1:  # one item holding several images: one unit
            n, s, q = combine_rows(count, total, m2)
            sums.append(np.array([n]), s[None, :], q[None, :], ints)
        elif unit[0] == "item":
            sums.append(count, total, m2, ints)
        else:  # an iterable's batch: one unit per image, up to the cap
            room = count.shape[0] if cap is None else min(count.shape[0], cap - self.visited())
            sums.append(count[:room], total[:room], m2[:room], None if ints is None else
                        tuple(a[:room] for a in ints))

    def run(self, tolerance: float, min_images: int, progress: bool) -> str:
        """Visit batch after batch until the tolerance is met, the cap is reached or the units run out;
        returns why it stopped (``"tolerance"``, ``"max_images"`` or ``"exhausted"``)."""
        cap, population, units = self.cap, self.source.population, self.source.units
        stopped = "exhausted"
        check_at = 0  # stopping checks: after each batch, at most every 2% more units (intervals.next_check)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cap if population is None else min(population, cap or population),
                       desc="gpustats sample", unit="img")
        try:
            for batch in units:
                for unit in batch:
                    if cap is not None and self.visited() >= cap:
                        break
                    self.add(unit)
                if bar is not None:
                    bar.update(len(batch))
                if cap is not None and self.visited() >= cap:
                    stopped = "max_images"
                    break
                if self.sums.images >= min_images and self.sums.k >= check_at:
                    check_at = next_check(self.sums.k)
                    if may_stop(self.check(), tolerance, min_images):
                        stopped = "tolerance"
                        break
        finally:
            if bar is not None:
                bar.close()
            close = getattr(units, "close", None)
            if close is not None:
                close()  # stops decoding workers early
        return stopped

    def finish(self, stopped: str, *, tolerance: float, seed: int, started: float, units: str) -> SampledStats:
        """The result: exact when every unit was seen, else the estimate and its intervals."""
        sums, bad, population = self.sums, self.bad, self.source.population
        if sums.k == 0:
            raise InputError("no image with pixels was found: the source was empty or every visited file was bad"
                             + (f" (e.g. {bad[0][0]}: {bad[0][1]})" if bad else ""))
        if self.pending_bad:
            zeros = np.zeros((self.pending_bad, sums.channels))
            sums.append(np.zeros(self.pending_bad), zeros, zeros)
        if population is not None:
            if sums.k >= population:
                stopped = "exhausted"
            elif stopped == "exhausted":  # the visiting order ended at the cap
                stopped = "max_images"
        exact = stopped == "exhausted"  # every unit was seen (a stream's size is known once it ends)
        r = exact_result(sums, self.reducer.scale) if exact else self.check()
        return sampled_stats(r, sums, exact=exact, population=population, stopped=stopped,
                             confidence=self.confidence, tolerance=tolerance, scale=self.reducer.scale, seed=seed,
                             bad=bad, sizes_known=self.source.known is not None,
                             strata=len(self.source.design.get("stratum_sizes", [1])),
                             elapsed_s=time.perf_counter() - started, units=units)

def sample_for_compute_stats(loader: Any, sample: SampleSpec, *, device: Any = None, options: Any = None,
                             ddof: int = 0, progress: bool = False, distributed: Any = "auto") -> SampledStats:
    """``compute_stats(loader, sample=SampleSpec(...))``: estimate mean/std instead of the exact pass.

    ``options``: the call's :class:`~gpustats.options.StatsOptions`; sampling reads ``layout``,
    ``channels``, ``key`` and ``scale``, and any other changed option raises (histograms,
    covariance and per-image statistics need every pixel), as do ``ddof=1`` and ``distributed``.
    """
    from .options import StatsOptions

    if not isinstance(sample, SampleSpec):
        raise TypeError(f"sample must be a gpustats.sampling.SampleSpec, got {type(sample).__name__}")
    options = options if options is not None else StatsOptions()
    asked = sorted(set(options.changed()) - {"layout", "channels", "key", "scale"})
    asked += (["ddof"] if ddof != 0 else []) + (["distributed"] if distributed not in ("auto", False, None) else [])
    if asked:
        raise InputError(f"sample= estimates mean and std only; {', '.join(asked)} need(s) the exact pass "
                         "(drop sample=, or drop these options)")
    return sample.run(loader, device=device, layout=options.layout, channels=options.channels, key=options.key,
                      scale=options.scale, progress=bool(progress))


#: the options of :func:`estimate_folder_stats` (``gpustats stats --sample-tolerance T`` passes its own)
FOLDER_SAMPLE_OPTIONS = ("confidence", "max_images", "seed", "device", "workers", "batch_size", "mode", "max_pixels",
                         "resize", "center_crop", "column", "strict", "all_extensions")


def estimate_folder_stats(paths: Any, *, tolerance: float, confidence: float | None = None,
                          max_images: int | None = None, seed: int | None = None, device: str | None = "auto",
                          workers: int | None = None, batch_size: int | None = None, max_pixels: int | None = None,
                          progress: bool = False, **options: Any) -> SampledStats:
    """:func:`estimate_stats` on image files, folders and archives with the folder engine's defaults: what
    ``gpustats stats PATH... --sample-tolerance T`` runs.

    None takes the default: ``confidence`` 0.95, ``seed`` 0, ``device`` ``"auto"`` (where each image is),
    ``workers`` :func:`gpustats.tuning.default_workers`, ``batch_size``
    :data:`gpustats.tuning.DEFAULT_BATCH_SIZE`, ``max_pixels`` Pillow's limit
    (:data:`gpustats.sources.DEFAULT_MAX_PIXELS`). ``progress``: a bar, on a terminal only. ``options``:
    ``mode``, ``resize``, ``center_crop``, ``column``, ``strict``, ``all_extensions`` as in
    :func:`estimate_stats`.
    """
    import sys

    from .sources import DEFAULT_MAX_PIXELS
    from .tuning import DEFAULT_BATCH_SIZE, default_workers

    return estimate_stats(
        paths, tolerance=tolerance, confidence=0.95 if confidence is None else confidence, max_images=max_images,
        seed=0 if seed is None else seed, batch_size=batch_size or DEFAULT_BATCH_SIZE,
        device=None if device in (None, "auto") else device, workers=default_workers() if workers is None else workers,
        progress=progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty(),
        max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels, **options)
