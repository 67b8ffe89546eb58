"""What a folder run will do, decided before the first file is read (:func:`plan_run`).

The options validated (:data:`ENGINE_OPTIONS` their defaults), the files listed and sharded across
``torchrun`` ranks (:class:`~.plan.Plan`), where the statistics run and who decodes (CPU workers, or
nvJPEG on the GPU), how many workers and files per batch (defaults: :mod:`gpustats.tuning`), and the
options a checkpoint must match. :mod:`.folder_loop` then runs it; :mod:`.engine` reports it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from ..tuning import DEFAULT_BATCH_SIZE, MIN_FILES_FOR_WORKERS, default_workers
from .errors import RunError

__all__ = ["ENGINE_OPTIONS", "RunSetup", "check_options", "choose_decode", "plan_run"]

#: the engine's options and their defaults (``compute_stats(path, **options)``, ``gpustats stats``)
ENGINE_OPTIONS: dict[str, Any] = {
    "device": "auto", "strategy": "auto", "workers": None, "batch_size": None, "decode": "auto", "mode": "RGB",
    "resize": None, "center_crop": None, "max_pixels": None, "histogram": False, "covariance": False,
    "per_image": False, "ddof": 0, "strict": False, "checkpoint": None, "checkpoint_every": 30.0,
    "progress": False, "column": None, "all_extensions": False, "rendezvous_timeout": 300.0,
}


@dataclasses.dataclass
class Target:
    """Where the statistics run (``Accumulator``'s device, backend and reason), before any is made."""

    device: str
    backend: str
    cpu_reason: str | None


@dataclasses.dataclass
class RunSetup:
    """Everything :func:`plan_run` decided (see the module docstring)."""

    opts: dict
    paths: Any
    stream: Any  # an iterable of samples (sources.samples), or None
    rank: int
    world: int
    t0: float  # the run's clock started (after the ranks met)
    unreadable: list  # (folder, reason) of folders that could not be listed
    skipped: dict  # files a folder walk left out, per extension
    inner_archives: list  # (tar, member) of zip/Parquet files inside tars: not read, said once the run ends
    plan: Any
    target: Target
    decode: str
    decode_reason: str | None
    acc: Any  # the Accumulator that reduces what nvJPEG decodes, or None (CPU decode)
    extras: dict
    batch_size: int
    decode_opts: dict
    workers: int
    result_options: dict  # options that change the result: a checkpoint made with others is refused
    report_options: dict


def choose_decode(opts: dict, acc: Any) -> tuple[str, str | None]:
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


def check_options(overrides: dict) -> dict:
    """:data:`ENGINE_OPTIONS` updated with ``overrides``, each checked (``TypeError``: an unknown name;
    ``ValueError``: a bad value)."""
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


def _where(opts: dict) -> Target:
    """Where the statistics would run, without building a reducer yet: the CPU path reduces in the
    decode workers, and this process must not start numba's threads before forking them (a machine
    without an NVIDIA driver is told apart without torch: a CPU run never imports it)."""
    from ..backends import no_driver_reason, resolve_device, simulator_on

    device = None if opts["device"] == "auto" else opts["device"]
    no_driver = no_driver_reason() if opts["device"] == "auto" else None
    if opts["device"] == "auto" and simulator_on():  # resolve_device's answer, without importing torch
        backend, where, cpu_reason = "cpu", "cpu", "no GPU requested"
    elif opts["device"] == "cpu" or no_driver is not None:
        backend, where, cpu_reason = "cpu", "cpu", no_driver
    else:
        backend, where, cpu_reason = resolve_device(device)
    return Target(str(where), backend, cpu_reason)


def plan_run(paths: Any, options: dict, note: Callable[[str], None]) -> RunSetup:
    """Check the options, join the ``torchrun`` ranks, list and shard the files, and decide the rest
    (see the module docstring)."""
    from ..distributed import init_from_env
    from .decode import DEFAULT_MAX_PIXELS
    from .listing import extensions_for
    from .plan import Plan
    from .remote import shown_path
    from .units import list_units

    opts = check_options(options)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stream = paths if hasattr(paths, "samples") else None  # an iterable of samples (sources.samples)
    histogram = bool(opts["histogram"])
    rank, world = init_from_env("gloo" if opts["device"] == "cpu" else None,
                                rendezvous_timeout=opts["rendezvous_timeout"])
    t0 = time.perf_counter()
    unreadable: list[tuple[str, str]] = []
    skipped: dict[str, int] = {}
    inner_archives: list[tuple[str, str]] = []
    # each rank reads the iterable of samples it is given (in the order of the ranks)
    units = [stream] * world if stream is not None else list_units(
        paths, unreadable=unreadable, column=opts["column"], extensions=extensions_for(bool(opts["all_extensions"])),
        skipped=skipped, inner_archives=inner_archives)
    plan = Plan(units, rank, world)
    extras = {"histogram": histogram, "covariance": opts["covariance"], "per_image": opts["per_image"]}
    target = _where(opts)
    decode, decode_reason = choose_decode(opts, target)
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
    return RunSetup(opts=opts, paths=paths, stream=stream, rank=rank, world=world, t0=t0, unreadable=unreadable,
                    skipped=skipped, inner_archives=inner_archives, plan=plan, target=target, decode=decode,
                    decode_reason=decode_reason, acc=acc, extras=extras, batch_size=batch_size,
                    decode_opts=decode_opts, workers=workers, result_options=result_options,
                    report_options=report_options)
