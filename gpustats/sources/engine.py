"""The folder engine: a whole run over image files, for ``compute_stats(path)`` and ``gpustats stats``.

:func:`run_folder` lists the images (sorted, see :func:`list_images`), shards them across
``torchrun`` ranks, decodes and reduces them -- on the CPU in decode workers that send back only
small exact states (:mod:`.reduce_tasks`), or with nvJPEG on the GPU, where the pixels stay on the
device and an :class:`~gpustats.Accumulator` reduces them -- merges the states in file order,
skips and lists bad files (``strict=True``: the first one is fatal), saves and resumes
checkpoints (:mod:`gpustats.checkpoint`; a resumed run gives the identical result), shows a
progress bar, and merges across ranks. It returns a :class:`StatsRun`; its ``stats`` is a
:class:`FolderStats`: the :class:`~gpustats.Stats` plus what the run saw (images, bad files).

Three steps: :func:`~.folder_plan.plan_run` decides what the run does before a file is read,
:func:`~.folder_loop.run_loop` reduces (resuming and saving checkpoints), and the report is made here.

>>> import tempfile
>>> from gpustats.sources.synthetic import make_tiny_folder
>>> root = tempfile.mkdtemp()
>>> files = make_tiny_folder(root, 5)
>>> run = run_folder([root], device="cpu", workers=0)
>>> run.images, run.stats.images, len(run.stats.bad_files)
(5, 5, 0)
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

from ..stats import Stats
from .errors import RunError, SourceError, StrictBadFile
from .folder_plan import ENGINE_OPTIONS

__all__ = ["FolderStats", "StatsRun", "RunError", "StrictBadFile", "run_folder", "ENGINE_OPTIONS", "CHANNEL_NAMES",
           "expected_errors"]

#: the channels of each ``mode``, as reports name them
CHANNEL_NAMES = {"RGB": ("R", "G", "B"), "L": ("L",)}


@dataclasses.dataclass(frozen=True, eq=False)
class FolderStats(Stats):
    """:class:`~gpustats.Stats` of image files, with what the run saw.

    ``images``: images counted; ``files``: files listed (all ranks); ``bad_files``: ``{path,
    reason}`` of each file skipped, in listing order; ``warnings``: each decoder warning and the
    number of files that raised it; ``skipped``: ``(extension, files)`` left out while walking the
    folders (not images to ``torchvision.datasets.ImageFolder``, or archives, which a folder walk
    does not open), sorted.
    """

    images: int = 0
    files: int = 0
    bad_files: tuple = ()
    warnings: tuple = ()
    skipped: tuple = ()


@dataclasses.dataclass
class StatsRun:
    """What a folder run found: the result and everything the command's report shows."""

    stats: FolderStats
    channels: tuple[str, ...]
    images: int
    files_total: int
    bytes: int
    bad_files: list[dict[str, str]]
    elapsed_s: float
    device: str
    backend: str
    strategy: str
    cpu_reason: str | None
    decode: str
    decode_reason: str | None
    workers: int
    options: dict[str, Any]
    resumed_from: int | None = None
    from_complete_checkpoint: bool = False
    warnings: dict[str, int] = dataclasses.field(default_factory=dict)
    decoders: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # files a folder walk left out, per extension

    @property
    def pixels(self) -> int:
        return int(self.stats.count[0])

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run_folder(paths: Sequence[str | os.PathLike[str]], *, note: Callable[[str], None] | None = None,
               **options: Any) -> StatsRun:
    """Statistics of the image files under ``paths`` (folders and/or files); see the module docstring.

    ``options`` (defaults in :data:`ENGINE_OPTIONS`): ``device`` ("auto", "cpu", "cuda", "cuda:N"),
    ``strategy``, ``workers`` (decode processes; None: min(8, cores), 0 for runs under 64 files),
    ``batch_size`` (files per batch; None: 64, and at least 256 when the images are small), ``decode`` ("auto", "cpu", "gpu": nvJPEG), ``mode`` ("RGB",
    "L"), ``resize``, ``center_crop``, ``max_pixels``, ``histogram``, ``covariance``,
    ``per_image``, ``ddof``, ``strict``, ``checkpoint`` (a file path: resumable),
    ``checkpoint_every`` (seconds), ``progress`` (a bar on a terminal), ``column`` (the image column
    of Parquet files or feature of TFRecord shards; found when None), ``all_extensions`` (also read GIF and
    the other :data:`~.listing.EXTRA_EXTENSIONS`; default: exactly ImageFolder's), ``rendezvous_timeout``
    (seconds a ``torchrun`` rank waits for the others to join, :func:`gpustats.distributed.init_from_env`).
    ``paths`` may name archives, TFRecord shards, brace patterns (:mod:`.units`) and remote paths
    (:mod:`.remote`), or be an iterable of samples (a :class:`~.samples.SampleStream`). ``note`` receives one-line
    remarks (resumed from a checkpoint, ...). Raises :class:`RunError` and the library's errors.
    """
    from .folder_loop import run_loop
    from .folder_plan import plan_run

    note = note or (lambda s: None)
    setup = plan_run(paths, options, note)
    tally = run_loop(setup, note, expected_errors())
    return _report(setup, tally, note)


def _report(setup: Any, tally: Any, note: Callable[[str], None]) -> StatsRun:
    """The run's result from every rank's tally (merged in rank order under ``torchrun``)."""
    from ..distributed import gather_run_totals

    opts, plan, rank, world, decode, acc = setup.opts, setup.plan, setup.rank, setup.world, setup.decode, setup.acc
    images, nbytes, bad_files, complete = tally.images, tally.nbytes, tally.bad_files, tally.complete
    _note_inner_archives((setup.inner_archives if rank == 0 else []) + plan.inner_archives, note)
    elapsed = tally.prior_elapsed + time.perf_counter() - setup.t0 if not complete else tally.prior_elapsed
    final = tally.current_state(setup)
    if world > 1:
        from ..distributed import all_reduce_stats

        final = all_reduce_stats(final)
        images, nbytes, bad_files, elapsed = gather_run_totals(images, nbytes, list(zip(tally.bad_order, bad_files)),
                                                               elapsed)
    files_total = _files_total(plan, previous_total=tally.previous.files_total if tally.resumed_from is not None
                               else None, complete=complete)
    if final.is_empty:
        if bad_files:
            first = bad_files[0]
            raise RunError(f"none of the {files_total} files could be decoded (first: {first['path']}: "
                           f"{first['reason']})")
        raise RunError(f"no pixels were counted in {files_total} files")
    if decode == "gpu":
        run_device, backend, strategy, cpu_reason = acc.device, acc.backend, acc.strategy, acc.cpu_reason
    else:
        run_device, backend, strategy = "cpu", "cpu", "cpu decode workers"
        cpu_reason = setup.target.cpu_reason
        if setup.target.backend != "cpu":
            cpu_reason = (f"the images are reduced where they are decoded (CPU workers); {setup.target.device} "
                          "reduces what nvJPEG decodes (--decode gpu)")
    base = final.finalize(opts["ddof"])
    stats = FolderStats(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Stats)},
                        images=images, files=files_total, bad_files=tuple(bad_files),
                        warnings=tuple(sorted(tally.seen_warnings.items())),
                        skipped=tuple(sorted(setup.skipped.items())))
    stats = dataclasses.replace(stats, device=run_device, strategy=strategy)
    return StatsRun(stats=stats, channels=CHANNEL_NAMES[opts["mode"]], images=images, files_total=files_total,
                    bytes=nbytes, bad_files=bad_files, elapsed_s=elapsed, device=run_device, backend=backend,
                    strategy=strategy, cpu_reason=cpu_reason, decode=decode, decode_reason=setup.decode_reason,
                    workers=0 if decode == "gpu" else setup.workers, options=setup.report_options,
                    resumed_from=tally.resumed_from, from_complete_checkpoint=complete, warnings=tally.seen_warnings,
                    decoders=tally.decoders, skipped=setup.skipped)


def _note_inner_archives(found: list[tuple[str, str]], note: Callable[[str], None]) -> None:
    """One note per tar holding zip or Parquet files, which are not read inside a tar."""
    by_archive: dict[str, list[str]] = {}
    for archive, member in found:
        by_archive.setdefault(archive, []).append(member)
    for archive, members in by_archive.items():
        note(f"{archive} holds {len(members)} zip/Parquet file(s) (first: {members[0]!r}), which are not read inside "
             "a tar (only tars are): extract them and name them")


def _files_total(plan: Any, previous_total: int | None, complete: bool) -> int:
    """Items listed on every rank (good and bad); compressed tars count once read (a collective then)."""
    if not plan.has_streams:
        return plan.all_known
    mine = previous_total if complete else plan.total if plan.total is not None else plan.items_so_far
    if plan.world > 1:
        from ..distributed import all_gather_json

        return sum(all_gather_json(mine))
    return mine


def expected_errors() -> tuple[type[BaseException], ...]:
    """The library's expected failures (each one line to a user; ``gpustats`` exits 1), which a
    ``torchrun`` rank shares with the others instead of leaving them waiting."""
    from ..backends import BackendUnavailable
    from ..batches import InputError
    from ..checkpoint import CheckpointError
    from ..stats import StatsError

    return (SourceError, InputError, BackendUnavailable, StatsError, CheckpointError)
