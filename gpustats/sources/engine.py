"""The folder engine: a whole run over image files, for ``compute_stats(path)`` and ``gpustats stats``.

:func:`run_folder` lists the images (sorted, see :func:`list_images`), shards them across
``torchrun`` ranks, decodes and reduces them -- on the CPU in decode workers that send back only
small exact states (:mod:`.mapside`), or with nvJPEG on the GPU, where the pixels stay on the
device and an :class:`~gpustats.Accumulator` reduces them -- merges the states in file order,
skips and lists bad files (``strict=True``: the first one is fatal), saves and resumes
checkpoints (:mod:`gpustats.checkpoint`; a resumed run gives the identical result), shows a
progress bar, and merges across ranks. It returns a :class:`StatsRun`; its ``stats`` is a
:class:`FolderStats`: the :class:`~gpustats.Stats` plus what the run saw (images, bad files).

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
import sys
import time
from typing import Any, Callable, Sequence

from ..stats import Stats
from ..tuning import DEFAULT_BATCH_SIZE, MIN_FILES_FOR_WORKERS, default_workers
from .errors import SourceError

__all__ = ["FolderStats", "StatsRun", "RunError", "StrictBadFile", "run_folder", "ENGINE_OPTIONS", "CHANNEL_NAMES",
           "expected_errors"]

#: the channels of each ``mode``, as reports name them
CHANNEL_NAMES = {"RGB": ("R", "G", "B"), "L": ("L",)}

#: the engine's options and their defaults (``compute_stats(path, **options)``, ``gpustats stats``)
ENGINE_OPTIONS: dict[str, Any] = {
    "device": "auto", "strategy": "auto", "workers": None, "batch_size": None, "decode": "auto", "mode": "RGB",
    "resize": None, "center_crop": None, "max_pixels": None, "histogram": False, "covariance": False,
    "per_image": False, "ddof": 0, "strict": False, "checkpoint": None, "checkpoint_every": 30.0,
    "progress": False, "column": None, "all_extensions": False, "rendezvous_timeout": 300.0,
}


class RunError(SourceError):
    """An expected failure of a run (printed by the command as one line, exit status 1)."""


class StrictBadFile(RunError):
    """A bad file under ``strict=True``."""


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


@dataclasses.dataclass
class _Target:
    """Where the statistics run (``Accumulator``'s device, backend and reason), before any is made."""

    device: str
    backend: str
    cpu_reason: str | None


def _choose_decode(opts: dict, acc: Any) -> tuple[str, str | None]:
    """("gpu" | "cpu", reason the GPU decoder is not used or None)."""
    geometry = opts["resize"] is not None or opts["center_crop"] is not None
    if opts["decode"] == "cpu":
        return "cpu", None
    if opts["decode"] == "gpu":
        if geometry:
            raise RunError("decode='gpu' cannot resize or center-crop (the GPU decoder returns raw pixels); "
                           "use decode='cpu' (--decode cpu) or auto")
        if acc.backend != "cuda":
            raise RunError(f"decode='gpu' needs the statistics on a CUDA device, but they run on {acc.device}"
                           + (f" ({acc.cpu_reason})" if acc.cpu_reason else "") + "; use decode='cpu' (--decode cpu)")
        from .gpu import gpu_decode_available

        ok, why = gpu_decode_available(acc.device)
        if not ok:
            raise RunError(f"GPU decoding is not possible: {why}; use decode='cpu' (--decode cpu)")
        return "gpu", None
    if acc.backend != "cuda":
        return "cpu", "the statistics run on the CPU"
    if geometry:
        return "cpu", "resize/center-crop are applied by the CPU decoder"
    from .gpu import gpu_decode_available

    ok, why = gpu_decode_available(acc.device)
    return ("gpu", None) if ok else ("cpu", why)


def _progress(total: int, initial: int, enabled: bool):
    disable = not enabled or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    if disable:  # tqdm.auto's notebook detection costs a run ~0.2 s of imports: not for a bar never shown
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="img", desc="gpustats", file=sys.stderr, disable=disable,
                dynamic_ncols=True, smoothing=0.1)


def _options(overrides: dict) -> dict:
    unknown = set(overrides) - set(ENGINE_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) for a folder run: {', '.join(sorted(unknown))}; "
                        f"valid: {', '.join(sorted(ENGINE_OPTIONS))}")
    opts = dict(ENGINE_OPTIONS, **overrides)
    if opts["device"] is None:
        opts["device"] = "auto"
    for name in ("batch_size",):
        if opts[name] is not None and (not isinstance(opts[name], int) or isinstance(opts[name], bool)
                                       or opts[name] <= 0):
            raise ValueError(f"{name} must be a positive int (or None: {DEFAULT_BATCH_SIZE} files, small images "
                             f"more at a time), got {opts[name]!r}")
    if opts["workers"] is not None and (not isinstance(opts["workers"], int) or opts["workers"] < 0):
        raise ValueError(f"workers must be an int >= 0 (0 decodes in this process), got {opts['workers']!r}")
    if opts["decode"] not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode must be 'auto', 'cpu' or 'gpu', got {opts['decode']!r}")
    if opts["ddof"] not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {opts['ddof']!r}")
    from ..options import STRATEGY_NAMES
    from .decode import check_geometry

    if opts["strategy"] not in STRATEGY_NAMES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got {opts['strategy']!r}")
    timeout = opts["rendezvous_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"rendezvous_timeout must be a positive number of seconds, got {timeout!r}")
    check_geometry(opts["resize"], opts["center_crop"], opts["max_pixels"])
    return opts


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
    from ..backends import no_driver_reason, resolve_device
    from ..checkpoint import Checkpoint, check_compatible, rank_path, read_checkpoint, write_checkpoint
    from ..distributed import agree_on_failure, gather_run_totals, init_from_env
    from .decode import DEFAULT_MAX_PIXELS
    from .listing import extensions_for
    from .plan import Plan
    from .remote import RemoteReadError, message_of, shown_path
    from .units import list_units

    note = note or (lambda s: None)
    opts = _options(options)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stream = paths if hasattr(paths, "samples") else None  # an iterable of samples (sources.samples)
    histogram = bool(opts["histogram"])
    rank, world = init_from_env("gloo" if opts["device"] == "cpu" else None,
                                rendezvous_timeout=opts["rendezvous_timeout"])
    t0 = time.perf_counter()
    unreadable: list[tuple[str, str]] = []
    skipped: dict[str, int] = {}
    inner_archives: list[tuple[str, str]] = []  # zip/Parquet files inside tars: not read, said once the run ends
    # each rank reads the iterable of samples it is given (in the order of the ranks)
    units = [stream] * world if stream is not None else list_units(
        paths, unreadable=unreadable, column=opts["column"], extensions=extensions_for(bool(opts["all_extensions"])),
        skipped=skipped, inner_archives=inner_archives)
    plan = Plan(units, rank, world)
    device = None if opts["device"] == "auto" else opts["device"]
    extras = {"histogram": histogram, "covariance": opts["covariance"], "per_image": opts["per_image"]}
    # where the statistics would run, without building a reducer yet: the CPU path reduces in the
    # decode workers, and this process must not start numba's threads before forking them
    # (a machine without an NVIDIA driver is told apart without torch: a CPU run never imports it)
    no_driver = no_driver_reason() if opts["device"] == "auto" else None
    if opts["device"] == "cpu" or no_driver is not None:
        backend, where, cpu_reason = "cpu", "cpu", no_driver
    else:
        backend, where, cpu_reason = resolve_device(device)
    target = _Target(str(where), backend, cpu_reason)
    decode, decode_reason = _choose_decode(opts, target)
    acc = None
    if decode == "gpu":
        from ..accumulator import Accumulator

        acc = Accumulator(target.device, layout="CHW", strategy=opts["strategy"], **extras)
    max_pixels = DEFAULT_MAX_PIXELS if opts["max_pixels"] is None else opts["max_pixels"]
    batch_size = opts["batch_size"] or DEFAULT_BATCH_SIZE  # None: small images also go 256 at a time
    decode_opts = {"mode": opts["mode"], "max_pixels": max_pixels, "resize": opts["resize"],
                   "center_crop": opts["center_crop"]}
    workers = default_workers() if opts["workers"] is None else opts["workers"]
    if opts["workers"] is None and plan.total is not None and plan.total < MIN_FILES_FOR_WORKERS:
        workers = 0  # starting worker processes costs more than decoding a few files
    tasks = plan.tasks_at_most(batch_size)
    if tasks is not None and decode == "cpu":
        workers = min(workers, tasks)  # a process per task at most: more would start and wait idle
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if decode == "cpu" and opts["workers"] is not None and workers > usable:  # asked for: said once
        note(f"{workers} decode workers on {usable} usable CPU cores: decoding goes no faster than with {usable} "
             "(--workers)")

    # Options that change the result: a checkpoint made with others is refused.
    result_options = {
        "paths": [stream.label] if stream is not None else [shown_path(p) for p in paths],
        "mode": opts["mode"], "resize": opts["resize"],
        "center_crop": opts["center_crop"], "max_pixels": max_pixels, "histogram": histogram,
        "covariance": opts["covariance"], "per_image": opts["per_image"], "decode": decode,
        # per-image sums are exact for uint8, so batch_size cannot change them; per-image runs
        # record it all the same (a resumed run then cuts the very same batches)
        "batch_size": batch_size if opts["per_image"] else None,
        "rank": rank, "world": world,
    }
    if opts["column"] is not None:  # only when given: checkpoints of runs without it stay valid
        result_options["column"] = opts["column"]
    if opts["all_extensions"]:
        result_options["all_extensions"] = True
    report_options = dict(result_options, ddof=opts["ddof"], batch_size=batch_size, workers=workers,
                          workers_asked=opts["workers"], device=opts["device"], strategy=opts["strategy"],
                          strict=opts["strict"])

    from ..stats import ChannelStats

    state = ChannelStats.empty()  # CPU decode: the workers' states, merged here in file order
    images, nbytes, start = 0, 0, 0
    bad_files: list[dict[str, str]] = []
    bad_order: list[list[int]] = []  # each bad item's order among all ranks' items
    seen_warnings: dict[str, int] = {}
    decoders: dict[str, int] = {}  # images per CPU decoder (this run's part, not a resumed one)
    prior_elapsed = 0.0
    previous = None
    resumed_from = None
    complete = False
    failure: BaseException | None = None  # a rank's expected failure, shared with the others below

    def current_state():
        return acc.state() if decode == "gpu" else state

    try:
        ck_path = None if opts["checkpoint"] is None else rank_path(opts["checkpoint"], rank, world)
        fingerprint = plan.fingerprint() if ck_path else ""
        if ck_path:
            previous = read_checkpoint(ck_path)
            if previous is not None:
                check_compatible(ck_path, previous, fingerprint=fingerprint, files_total=plan.total,
                                 options=result_options)
                if decode == "gpu":
                    acc.load(previous.state)
                else:
                    state = previous.state
                images, nbytes, start = previous.images, previous.bytes, previous.next_index
                plan.resume_streams(previous.streams)
                bad_files = list(previous.bad_files)
                position = plan.orders_by_name() if world > 1 and bad_files else {}
                bad_order = [position.get(os.path.realpath(b["path"]), position.get(b["path"], [-1, 0]))
                             for b in bad_files]
                prior_elapsed = previous.elapsed_s
                complete = previous.complete
                resumed_from = start
                if opts["strict"] and bad_files:
                    first = bad_files[0]  # a strict rerun stops where a lenient run went on
                    raise StrictBadFile(f"bad file {first['path']}: {first['reason']} (strict; recorded by the "
                                        f"checkpoint {ck_path})")
                of_total = "" if plan.total is None else f" of {plan.total}"
                note(f"checkpoint {ck_path}: " + ("the run is complete; reporting it" if complete else
                                                  f"resuming at item {start}{of_total}"))

        def save(next_index: int, done: bool) -> None:
            if ck_path:
                write_checkpoint(ck_path, Checkpoint(
                    state=current_state(), next_index=next_index, fingerprint=fingerprint,
                    files_total=plan.total if plan.total is not None else plan.items_so_far,
                    options=result_options, bad_files=bad_files, images=images, bytes=nbytes,
                    elapsed_s=prior_elapsed + time.perf_counter() - t0, complete=done, streams=plan.streams_read()))

        if rank == 0 and resumed_from is None:
            for folder, reason in unreadable:  # listed like bad files (rank 0: once per run)
                if opts["strict"]:
                    raise StrictBadFile(f"{folder}: {reason} (strict)")
                bad_files.append({"path": folder, "reason": reason})
                bad_order.append([-1, 0])  # before every file
        next_index = start
        if not complete:
            bar = _progress(plan.total, start, opts["progress"])
            last_save = time.monotonic()
            run_bytes = 0
            if decode == "gpu":
                from .gpu import gpu_batches, gpu_strip

                batches = gpu_batches(plan, start, opts["batch_size"] or DEFAULT_BATCH_SIZE, acc.device, decode_opts)
            else:
                batches = ((r.start, r.stop, r, r.bad, r.nbytes) for r in
                           plan.cpu_results(start, workers=workers, batch_size=batch_size, extras=extras,
                                            small_tasks=opts["batch_size"] is None,
                                            decode_opts=decode_opts))
            try:
                for first, stop, good, bad, batch_bytes in batches:
                    batch_bad = []  # kept apart until the batch counts: an interrupt must not list them twice
                    for item in bad:
                        if opts["strict"]:
                            raise StrictBadFile(f"bad file {item.name}: {item.reason} (strict)")
                        batch_bad.append(({"path": item.name, "reason": item.reason}, item.order))
                    if decode == "gpu":
                        if good:  # the whole batch counts, or (on error) none of it
                            acc.update(good if opts["per_image"] else gpu_strip(good))
                        images += len(good)
                    else:
                        if good.state is not None:
                            state = state.merge(ChannelStats.from_dict(good.state))
                        images += good.images
                        for text, count in good.warnings.items():
                            seen_warnings[text] = seen_warnings.get(text, 0) + count
                        for name, count in good.decoders.items():
                            decoders[name] = decoders.get(name, 0) + count
                    bad_files.extend(b for b, _ in batch_bad)
                    bad_order.extend(order for _, order in batch_bad)  # positions in the full list
                    nbytes += batch_bytes
                    run_bytes += batch_bytes
                    next_index = stop
                    bar.update(stop - first)
                    if not bar.disable:
                        bar.set_postfix_str(f"{run_bytes / 1e6 / max(bar.format_dict['elapsed'], 1e-9):.1f} MB/s",
                                            refresh=False)
                    if ck_path and time.monotonic() - last_save >= opts["checkpoint_every"]:
                        save(next_index, False)
                        last_save = time.monotonic()
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the command makes it one)
                bar.close()
                if ck_path:
                    save(next_index, False)
                    note(f"progress saved in {ck_path} (rerun the same command to resume)")
                raise
            except RemoteReadError as exc:  # a store failed past its retries (sources.remote): one line
                bar.close()
                saved = "; rerun with --checkpoint FILE (checkpoint= in Python) to resume after such a failure"
                if ck_path:
                    save(next_index, False)
                    saved = f"; progress saved in {ck_path} (rerun the same command to resume)"
                raise RunError(f"{message_of(exc)}{saved}") from None
            except RuntimeError as exc:
                from concurrent.futures.process import BrokenProcessPool

                if "DataLoader worker" not in str(exc) and not isinstance(exc, BrokenProcessPool):
                    raise
                bar.close()  # a decode worker died (the OOM killer, a signal): one line, progress kept
                if "signal: Terminated" in str(exc) or "signal: Interrupt" in str(exc):
                    # SIGTERM/SIGINT sent to the whole process group (a scheduler, a terminal): an interrupt
                    if ck_path:
                        save(next_index, False)
                        note(f"progress saved in {ck_path} (rerun the same command to resume)")
                    interrupt = KeyboardInterrupt()
                    interrupt.signum = 15 if "Terminated" in str(exc) else 2  # SIGTERM / SIGINT: the exit status
                    raise interrupt from None
                saved = ""
                if ck_path:
                    save(next_index, False)
                    saved = f"; progress saved in {ck_path} (rerun to resume)"
                raise RunError(f"a decode worker process died ({str(exc).splitlines()[0].rstrip('. ')}; out of "
                               f"memory?){saved}; try fewer --workers or a smaller --batch-size") from None
            bar.close()
            if ck_path:
                save(next_index, True)
    except expected_errors() as exc:
        if world == 1:
            raise
        failure = exc
    if world > 1:
        agree_on_failure(failure, RunError)

    _note_inner_archives((inner_archives if rank == 0 else []) + plan.inner_archives, note)
    elapsed = prior_elapsed + time.perf_counter() - t0 if not complete else prior_elapsed
    final = current_state()
    if world > 1:
        from ..distributed import all_reduce_stats

        final = all_reduce_stats(final)
        images, nbytes, bad_files, elapsed = gather_run_totals(images, nbytes, list(zip(bad_order, bad_files)), elapsed)
    files_total = _files_total(plan, previous_total=previous.files_total if resumed_from is not None else None,
                               complete=complete)
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
        if target.backend != "cpu":
            cpu_reason = (f"the images are reduced where they are decoded (CPU workers); {target.device} "
                          "reduces what nvJPEG decodes (--decode gpu)")
    base = final.finalize(opts["ddof"])
    stats = FolderStats(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Stats)},
                        images=images, files=files_total, bad_files=tuple(bad_files),
                        warnings=tuple(sorted(seen_warnings.items())), skipped=tuple(sorted(skipped.items())))
    stats = dataclasses.replace(stats, device=run_device, strategy=strategy)
    return StatsRun(stats=stats, channels=CHANNEL_NAMES[opts["mode"]], images=images, files_total=files_total,
                    bytes=nbytes, bad_files=bad_files, elapsed_s=elapsed, device=run_device, backend=backend,
                    strategy=strategy, cpu_reason=cpu_reason, decode=decode, decode_reason=decode_reason,
                    workers=0 if decode == "gpu" else workers, options=report_options, resumed_from=resumed_from,
                    from_complete_checkpoint=complete, warnings=seen_warnings, decoders=decoders, skipped=skipped)


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
