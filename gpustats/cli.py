"""The ``gpustats`` command: ``stats`` (a folder's per-channel statistics), ``demo`` and ``bench``.

``gpustats stats PATH...`` lists the images under PATH (sorted, see :mod:`gpustats.sources`),
decodes them (CPU worker processes, or nvJPEG on the GPU), feeds each file batch as a list of
variable-size uint8 images to one :class:`~gpustats.Accumulator`, and prints a table, JSON
(schema ``gpustats.stats/1``, documented in ``docs/cli.md``) or a paste-ready ``Normalize``
line. Bad files are skipped and listed (``--strict``: the first one is fatal). ``--checkpoint``
makes the run resumable with a bitwise identical result (:mod:`gpustats.checkpoint`).

Exit codes: 0 success; 1 failure (bad file under ``--strict``, no decodable image, unusable
device, checkpoint of another run, ...), printed as one ``gpustats: error: ...`` line on
stderr; 2 usage error (argparse); 130 interrupted (Ctrl-C; the checkpoint is saved first).

>>> build_parser().parse_args(["stats", "imgs", "--format", "json"]).format
'json'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

__all__ = ["main", "build_parser", "StatsRun", "run_stats", "format_table", "format_json", "format_python"]

JSON_SCHEMA = "gpustats.stats/1"
PERCENTILES = (1, 5, 50, 95, 99)
_CHANNEL_NAMES = {"RGB": ("R", "G", "B"), "L": ("L",)}


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


class StrictBadFile(CliError):
    """A bad file under ``--strict``."""


# ============================================================================ arguments
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpustats stats`` (shared with ``gpustats demo``'s code path)."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image folders and/or files")
    dev = parser.add_argument_group("device and decoding")
    dev.add_argument("--device", type=_device, default="auto",
                     help="auto (a usable GPU, else the CPU with the reason shown), cpu, cuda or cuda:N")
    dev.add_argument("--strategy", default="auto", help="CUDA reduction strategy (default auto)")
    dev.add_argument("--workers", type=_non_negative_int, default=None,
                     help="CPU decoding processes (default min(8, cores); 0 decodes in this process; "
                          "runs of fewer than 64 files always use 0)")
    dev.add_argument("--batch-size", type=_positive_int, default=64, help="files per batch (default 64)")
    dev.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                     help="auto: nvJPEG on the GPU when the statistics run there and torchvision is installed")
    img = parser.add_argument_group("what is measured")
    img.add_argument("--mode", choices=("RGB", "L"), default="RGB",
                     help="RGB (torchvision's default loader conversion) or L (luma)")
    img.add_argument("--resize", type=_positive_int, default=None, metavar="N",
                     help="shorter side to N first, like torchvision Resize(N) (default: raw pixels)")
    img.add_argument("--center-crop", type=_positive_int, default=None, metavar="N",
                     help="then a centre N x N crop (zero padded if smaller), like CenterCrop(N)")
    img.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                     help="files with more pixels are reported bad, before decoding (default: Pillow's limit)")
    img.add_argument("--histogram", action="store_true", help="exact 256-bin histograms, percentiles, saturation")
    img.add_argument("--covariance", action="store_true", help="channel covariance, correlation and PCA")
    img.add_argument("--per-image", action="store_true",
                     help="also image-weighted statistics (mean of per-image means/stds)")
    img.add_argument("--ddof", type=int, choices=(0, 1), default=0,
                     help="0: population std over all pixels (what Normalize wants; default); 1: sample std")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=("table", "json", "python"), default="table",
                     help="table (default), json (schema gpustats.stats/1, see docs/cli.md) or python "
                          "(a paste-ready transforms.Normalize line)")
    out.add_argument("--output", "-o", metavar="FILE", default=None, help="write the output to FILE instead of stdout")
    out.add_argument("--plot", metavar="FILE.png", default=None,
                     help="per-channel histogram plot (implies --histogram; needs pip install 'gpustats[plot]')")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notes on stderr")
    smp = parser.add_argument_group("sampling (an estimate with confidence intervals; see the README's Sampling section)")
    smp.add_argument("--sample-tolerance", type=_non_negative_float, default=None, metavar="T",
                     help="visit images in random order and stop once every channel's mean and std is known to "
                          "± T (e.g. 0.001) at --confidence; prints intervals and says the result is an estimate")
    smp.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    smp.add_argument("--max-images", type=_positive_int, default=None, metavar="N", help="visit at most N images")
    smp.add_argument("--seed", type=int, default=0, help="seed of the random visiting order (default 0)")
    run = parser.add_argument_group("robustness")
    run.add_argument("--strict", action="store_true", help="stop with exit status 1 at the first bad file")
    run.add_argument("--checkpoint", metavar="FILE", default=None,
                     help="save progress to FILE; rerunning the same command resumes (identical result)")
    run.add_argument("--checkpoint-every", type=_non_negative_float, default=30.0, metavar="SECONDS",
                     help="seconds between checkpoint writes (default 30; 0: after every batch)")


def build_parser(bench_arguments: bool = False) -> argparse.ArgumentParser:
    """The argument parser. ``bench_arguments``: import :mod:`gpustats.benchmark` for ``bench``'s options."""
    parser = argparse.ArgumentParser(
        prog="gpustats", description="Exact per-channel image statistics (mean, std, min, max, histograms) "
                                     "on GPU and CPU.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpustats {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    stats = sub.add_parser("stats", help="statistics of image folders/files",
                           description="Per-channel statistics of the images under PATH... "
                                       "(exit 0 success, 1 failure, 2 usage error; see docs/cli.md)")
    add_stats_arguments(stats)
    demo = sub.add_parser("demo", help="run on a built-in sample folder and compare with the forum recipe")
    demo.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    bench = sub.add_parser("bench", help="benchmark the reduction strategies against torch (see gpustats.benchmark)")
    if bench_arguments:
        from . import benchmark  # imported only when `bench` runs: `stats` works without it

        benchmark.add_arguments(bench)
    return parser


# ============================================================================ the run
class _Record(NamedTuple):
    index: int
    image: Any  # HWC numpy (CPU decode) or CHW tensor (GPU decode); None when bad
    bad_reason: str | None
    nbytes: int


@dataclasses.dataclass
class StatsRun:
    """What ``gpustats stats`` found: the result and everything the report shows."""

    stats: Any  # gpustats.Stats
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

    @property
    def pixels(self) -> int:
        return int(self.stats.count[0])

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _choose_decode(args: argparse.Namespace, acc: Any) -> tuple[str, str | None]:
    """("gpu" | "cpu", reason the GPU decoder is not used or None)."""
    geometry = args.resize is not None or args.center_crop is not None
    if args.decode == "cpu":
        return "cpu", None
    if args.decode == "gpu":
        if geometry:
            raise CliError("--decode gpu cannot --resize/--center-crop (the GPU decoder returns raw pixels); "
                           "use --decode cpu or auto")
        if acc.backend != "cuda":
            raise CliError(f"--decode gpu needs the statistics on a CUDA device, but they run on {acc.device}"
                           + (f" ({acc.cpu_reason})" if acc.cpu_reason else "") + "; use --decode cpu")
        from .sources.gpu import gpu_decode_available

        ok, why = gpu_decode_available(acc.device)
        if not ok:
            raise CliError(f"--decode gpu is not possible: {why}; use --decode cpu")
        return "gpu", None
    if acc.backend != "cuda":
        return "cpu", "the statistics run on the CPU"
    if geometry:
        return "cpu", "--resize/--center-crop are applied by the CPU decoder"
    from .sources.gpu import gpu_decode_available

    ok, why = gpu_decode_available(acc.device)
    return ("gpu", None) if ok else ("cpu", why)


def _iter_records(files: Sequence[Path], start: int, args: argparse.Namespace, decode: str, workers: int,
                  device: str, decode_opts: dict) -> Iterator[list[_Record]]:
    if decode == "gpu":
        from .sources.gpu import decode_files_gpu

        for first in range(start, len(files), args.batch_size):
            indices = list(range(first, min(len(files), first + args.batch_size)))
            records = decode_files_gpu([files[i] for i in indices], indices=indices, device=device,
                                       mode=decode_opts["mode"], max_pixels=decode_opts["max_pixels"])
            yield [_Record(r.index, r.tensor, r.bad_reason, r.nbytes) for r in records]
        return
    from .sources import iter_decoded

    for records in iter_decoded(files, workers=workers, batch_size=args.batch_size, start=start, **decode_opts):
        yield [_Record(r.index, r.array, r.bad_reason, r.nbytes) for r in records]


def _one_strip(images: list, chw: bool) -> Any:
    """The pixels of a batch of variable-size images as one 1-pixel-high image.

    Per-channel statistics (and covariance, histograms) do not depend on where a pixel sits, and
    integer totals are exact, so this gives the same state bit for bit as the list of images,
    with one reduction call per batch instead of one per image (the per-call overhead dominates
    for small images). Only ``--per-image`` needs the image boundaries, and keeps the list.
    """
    if len(images) == 1:
        return images[0]
    if chw:
        import torch

        return torch.cat([t.reshape(t.shape[0], -1) for t in images], dim=1)[:, None, :]
    import numpy as np

    channels = images[0].shape[2]
    return np.concatenate([a.reshape(-1, channels) for a in images])[None]


def _distributed_env(device: str = "auto") -> tuple[int, int]:
    """(rank, world) from torchrun's environment; (0, 1) for an ordinary run.

    ``--device cpu`` merges over gloo; otherwise :func:`~gpustats.distributed.init_from_env` picks.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return 0, 1
    try:
        from .distributed import init_from_env
    except ImportError as exc:
        raise CliError(f"WORLD_SIZE={world} asks for a distributed run, but gpustats.distributed cannot be "
                       f"imported ({exc})") from None
    rank, world = init_from_env("gloo" if device == "cpu" else None)
    return int(rank), int(world)


def _progress(total: int, initial: int, quiet: bool):
    from tqdm.auto import tqdm

    disable = quiet or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, initial=initial, unit="img", desc="gpustats", file=sys.stderr, disable=disable,
                dynamic_ncols=True, smoothing=0.1)


def run_stats(args: argparse.Namespace, note: Callable[[str], None] = lambda s: None) -> StatsRun:
    """Run ``gpustats stats`` with parsed ``args``; raises :class:`CliError` (and the library's errors)."""
    from .api import Accumulator
    from .checkpoint import (Checkpoint, check_compatible, file_list_fingerprint, rank_path, read_checkpoint,
                             write_checkpoint)
    from .sources import DEFAULT_MAX_PIXELS, list_images

    histogram = bool(args.histogram or args.plot)
    rank, world = _distributed_env(args.device)
    t0 = time.perf_counter()
    all_files = list_images(args.paths)
    files = all_files[rank::world] if world > 1 else all_files
    acc = Accumulator(None if args.device == "auto" else args.device, layout="HWC", strategy=args.strategy,
                      histogram=histogram, covariance=args.covariance, per_image=args.per_image)
    decode, decode_reason = _choose_decode(args, acc)
    if decode == "gpu":
        acc = Accumulator(acc.device, layout="CHW", strategy=args.strategy, histogram=histogram,
                          covariance=args.covariance, per_image=args.per_image)
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    decode_opts = {"mode": args.mode, "max_pixels": max_pixels, "resize": args.resize,
                   "center_crop": args.center_crop}
    workers = _default_workers() if args.workers is None else args.workers
    if args.workers is None and len(files) < 64:
        workers = 0  # starting worker processes costs more than decoding a few files

    # Options that change the result: a checkpoint made with others is refused.
    result_options = {
        "paths": [os.path.abspath(p) for p in args.paths], "mode": args.mode, "resize": args.resize,
        "center_crop": args.center_crop, "max_pixels": max_pixels, "histogram": histogram,
        "covariance": args.covariance, "per_image": args.per_image, "decode": decode,
        # per-image aggregates are merged in float64 per batch: keep the batch boundaries
        "batch_size": args.batch_size if args.per_image else None,
        "rank": rank, "world": world,
    }
    report_options = dict(result_options, ddof=args.ddof, batch_size=args.batch_size, workers=workers,
                          device=args.device, strategy=args.strategy, strict=args.strict)

    images, nbytes, start = 0, 0, 0
    bad_files: list[dict[str, str]] = []
    bad_order: list[int] = []
    prior_elapsed = 0.0
    resumed_from = None
    complete = False
    failure: BaseException | None = None  # a rank's expected failure, shared with the others below
    try:
        ck_path = None if args.checkpoint is None else rank_path(args.checkpoint, rank, world)
        fingerprint = file_list_fingerprint(files) if ck_path else ""
        if ck_path:
            previous = read_checkpoint(ck_path)
            if previous is not None:
                check_compatible(ck_path, previous, fingerprint=fingerprint, files_total=len(files),
                                 options=result_options)
                acc.load(previous.state)
                images, nbytes, start = previous.images, previous.bytes, previous.next_index
                bad_files = list(previous.bad_files)
                position = {os.fspath(p): rank + i * world for i, p in enumerate(files)}
                bad_order = [position.get(b["path"], -1) for b in bad_files]
                prior_elapsed = previous.elapsed_s
                complete = previous.complete
                resumed_from = start
                note(f"checkpoint {ck_path}: " + ("the run is complete; reporting it" if complete else
                                                  f"resuming at file {start} of {len(files)}"))

        def save(next_index: int, done: bool) -> None:
            if ck_path:
                write_checkpoint(ck_path, Checkpoint(
                    state=acc.state(), next_index=next_index, files_total=len(files), fingerprint=fingerprint,
                    options=result_options, bad_files=bad_files, images=images, bytes=nbytes,
                    elapsed_s=prior_elapsed + time.perf_counter() - t0, complete=done))

        next_index = start
        if not complete:
            bar = _progress(len(files), start, args.quiet)
            last_save = time.monotonic()
            run_bytes = 0
            try:
                for records in _iter_records(files, start, args, decode, workers, acc.device, decode_opts):
                    good = []
                    for record in records:
                        if record.image is None:
                            path = os.fspath(files[record.index])
                            if args.strict:
                                raise StrictBadFile(f"bad file {path}: {record.bad_reason} (--strict)")
                            bad_files.append({"path": path, "reason": str(record.bad_reason)})
                            bad_order.append(rank + record.index * world)  # position in the full list
                        else:
                            good.append(record.image if decode == "gpu" or record.image.ndim == 3
                                        else record.image[:, :, None])
                    batch_bytes = sum(r.nbytes for r in records)
                    if good:
                        # the whole batch counts, or (on error) none of it
                        acc.update(good if args.per_image else _one_strip(good, decode == "gpu"))
                    images += len(good)
                    nbytes += batch_bytes
                    run_bytes += batch_bytes
                    next_index = records[-1].index + 1
                    bar.update(len(records))
                    if not bar.disable:
                        bar.set_postfix_str(f"{run_bytes / 1e6 / max(bar.format_dict['elapsed'], 1e-9):.1f} MB/s",
                                            refresh=False)
                    if ck_path and time.monotonic() - last_save >= args.checkpoint_every:
                        save(next_index, False)
                        last_save = time.monotonic()
            except KeyboardInterrupt:
                bar.close()
                if ck_path:
                    save(next_index, False)
                    note(f"interrupted; progress saved in {ck_path} (rerun the same command to resume)")
                raise
            bar.close()
            if ck_path:
                save(len(files), True)
    except _expected_errors() as exc:
        if world == 1:
            raise
        failure = exc
    if world > 1:
        _agree_on_failure(failure)

    elapsed = prior_elapsed + time.perf_counter() - t0 if not complete else prior_elapsed
    state = acc.state()
    if world > 1:
        from .distributed import all_reduce_stats

        state = all_reduce_stats(state)
        images, nbytes, bad_files, elapsed = _gather_report(images, nbytes, list(zip(bad_order, bad_files)), elapsed)
    files_total = len(all_files)
    if state.is_empty:
        if bad_files:
            first = bad_files[0]
            raise CliError(f"none of the {files_total} files could be decoded (first: {first['path']}: "
                           f"{first['reason']})")
        raise CliError(f"no pixels were counted in {files_total} files")
    stats = dataclasses.replace(state.finalize(args.ddof), device=acc.device, strategy=acc.strategy)
    return StatsRun(stats=stats, channels=_CHANNEL_NAMES[args.mode], images=images, files_total=files_total,
                    bytes=nbytes, bad_files=bad_files, elapsed_s=elapsed, device=acc.device, backend=acc.backend,
                    strategy=acc.strategy, cpu_reason=acc.cpu_reason, decode=decode, decode_reason=decode_reason,
                    workers=0 if decode == "gpu" else workers, options=report_options, resumed_from=resumed_from,
                    from_complete_checkpoint=complete)


def _agree_on_failure(failure: BaseException | None) -> None:
    """Every rank learns whether any rank failed (a collective), so none waits forever in the merge.

    The failing rank re-raises its own error; the others raise one naming that rank and its error.
    """
    from .distributed import all_gather_json

    statuses = all_gather_json(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    for rank, message in enumerate(statuses):
        if message is not None:
            raise CliError(f"rank {rank} failed: {message}")


def _gather_report(images: int, nbytes: int, bad_files: list, elapsed: float):
    """Totals over ranks (torch.distributed is initialized by ``init_from_env``).

    ``bad_files``: ``(position in the full file list, {path, reason})`` pairs of this rank.
    """
    from .distributed import all_gather_json

    gathered = all_gather_json([images, nbytes, [list(b) for b in bad_files], elapsed])
    ordered = sorted((b for _, _, rank_bad, _ in gathered for b in rank_bad), key=lambda item: item[0])
    bad = [b for _, b in ordered]  # in file-list order, as a single process lists them
    return (sum(g[0] for g in gathered), sum(g[1] for g in gathered), bad, max(g[3] for g in gathered))


# ============================================================================ output
def _jsonable(value: Any) -> Any:
    """numpy -> Python; NaN/inf -> None (strict JSON)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def format_python(run: StatsRun) -> str:
    """``transforms.Normalize(mean=[...], std=[...])`` with every float at full (round-trip) precision."""
    mean, std = run.stats.normalize_args()
    return f"transforms.Normalize(mean=[{', '.join(repr(v) for v in mean)}], std=[{', '.join(repr(v) for v in std)}])"


def run_to_dict(run: StatsRun) -> dict[str, Any]:
    """The ``gpustats.stats/1`` document (docs/cli.md describes every key)."""
    mean, std = run.stats.normalize_args()
    return _jsonable({
        "schema": JSON_SCHEMA,
        "channels": list(run.channels),
        "stats": run.stats.to_dict(),
        "normalize": {"mean": mean, "std": std},
        "images": run.images,
        "pixels": run.pixels,
        "files": run.files_total,
        "bytes": run.bytes,
        "bad_files": run.bad_files,
        "elapsed_s": run.elapsed_s,
        "images_per_s": run.images_per_s,
        "mb_per_s": run.mb_per_s,
        "device": run.device,
        "backend": run.backend,
        "strategy": run.strategy,
        "cpu_reason": run.cpu_reason,
        "decode": run.decode,
        "decode_reason": run.decode_reason,
        "workers": run.workers,
        "resumed_from": run.resumed_from,
        "options": run.options,
        "state": run.stats.state.to_dict(),
    })


def format_json(run: StatsRun) -> str:
    return json.dumps(run_to_dict(run), indent=2, allow_nan=False)


def _row(label: str, values: Sequence[float], width: int = 10, digits: int = 6) -> str:
    return f"  {label:<18}" + "".join(f"{v:>{width}.{digits}f}" if math.isfinite(v) else f"{'nan':>{width}}"
                                      for v in values)


def format_table(run: StatsRun) -> str:
    """The human report: per-channel table, optional sections, bad files, counts, speed, device."""
    s = run.stats
    names = run.channels if len(run.channels) == s.channels else tuple(f"c{i}" for i in range(s.channels))
    lines = [f"  {'':<18}" + "".join(f"{n:>10}" for n in names)]
    lines += [_row("mean", s.mean), _row(f"std (ddof={s.ddof})", s.std), _row("min", s.min), _row("max", s.max)]
    if s.histogram is not None:
        lines.append("  percentiles (exact, from the 256-bin histogram)")
        for q in PERCENTILES:
            lines.append(_row(f"  p{q}", s.percentile(q)))
        if s.state.family == "int":
            sat = s.saturation()
            lines.append(_row("  saturated at 0", sat["low"]))
            lines.append(_row("  saturated at 255", sat["high"]))
    if s.state.comoment is not None:
        lines.append(f"  covariance (ddof={s.ddof})")
        for name, row in zip(names, s.cov):
            lines.append(_row(f"  {name}", row, digits=7))
        lines.append("  correlation")
        for name, row in zip(names, s.corr):
            lines.append(_row(f"  {name}", row))
        values, vectors = s.pca()
        lines.append("  PCA eigenvalues")
        lines.append(_row("", values, digits=7))
        lines.append("  PCA eigenvectors (columns)")
        for name, row in zip(names, vectors):
            lines.append(_row(f"  {name}", row))
    per = s.per_image
    if per is not None:
        lines.append(f"  per image (each of {per['images']} images counts once, whatever its size)")
        lines.append(_row("  mean of means", per["mean_of_means"]))
        lines.append(_row("  mean of stds", per["mean_of_stds"]))
        lines.append(_row("  mean of stds dd1", per["mean_of_stds_ddof1"]))
        lines.append("  (mean of per-image stds with ddof=1 is how the often-copied CIFAR-10 std "
                     "0.2023, 0.1994, 0.2010 was made;")
        lines.append("   Normalize wants the std over all pixels, above)")
    head = [f"gpustats: {run.images:,} images, {run.pixels:,} pixels per channel"
            + (f", {len(run.bad_files)} bad files skipped" if run.bad_files else "")]
    speed = (f"time: {run.elapsed_s:.2f} s, {run.images_per_s:,.1f} images/s, {run.mb_per_s:,.{1 if run.mb_per_s >= 10 else 2}f} MB/s"
             + (" (from the completed checkpoint)" if run.from_complete_checkpoint else "")
             + (f" (resumed at file {run.resumed_from})" if run.resumed_from and not run.from_complete_checkpoint
                else ""))
    device = f"device: {run.device} ({run.backend} backend, strategy {run.strategy})"
    if run.cpu_reason and run.backend == "cpu":
        device += f"; GPU not used: {run.cpu_reason}"
    decode = f"decode: {run.decode}" + (f", {run.workers} worker processes" if run.decode == "cpu" else "")
    if run.decode_reason and run.options.get("decode") != "cpu" and run.decode == "cpu":
        decode += f" (GPU decoding not used: {run.decode_reason})"
    out = head + lines
    if run.bad_files:
        out.append(f"bad files ({len(run.bad_files)}, skipped, not counted):")
        out += [f"  {b['path']}: {b['reason']}" for b in run.bad_files]
    out += [speed, device, decode, "", format_python(run)]
    return "\n".join(out)


def _emit(text: str, output: str | None, quiet: bool) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    text = text if text.endswith("\n") else text + "\n"
    if os.path.lexists(output) and (os.path.islink(output) or not os.path.isfile(output)):
        # /dev/null, a FIFO, a symlink: write through it, never replace it with a file
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        from .checkpoint import _atomic_write_text

        _atomic_write_text(output, text)  # a reader never sees half a report
    if not quiet:
        print(f"gpustats: wrote {output}", file=sys.stderr)


# ============================================================================ commands
def cmd_stats(args: argparse.Namespace) -> int:
    note = (lambda s: None) if args.quiet else (lambda s: print(f"gpustats: {s}", file=sys.stderr))
    if getattr(args, "sample_tolerance", None) is not None:
        return cmd_sample(args)
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()  # fail before the long run, not after
    try:
        run = run_stats(args, note)
        if _rank() != 0:
            return 0  # only rank 0 prints and writes
    finally:
        if "gpustats.distributed" in sys.modules:
            sys.modules["gpustats.distributed"].shutdown()  # a no-op unless init_from_env made a group
    text = {"table": format_table, "json": format_json, "python": format_python}[args.format](run)
    _emit(text, args.output, args.quiet)
    if args.plot:
        from .plot import plot_histograms

        plot_histograms(run.stats, args.plot, channel_names=run.channels, images=run.images)
        note(f"wrote {args.plot}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``gpustats stats --sample-tolerance T``: :func:`gpustats.sampling.estimate_stats` on the files."""
    from .sampling import estimate_stats, format_sampled
    from .sources import DEFAULT_MAX_PIXELS

    exact_only = [flag for flag, on in (("--histogram", args.histogram), ("--covariance", args.covariance),
                                        ("--per-image", args.per_image), ("--plot", args.plot),
                                        ("--checkpoint", args.checkpoint), ("--ddof 1", args.ddof != 0)) if on]
    if exact_only:
        raise CliError(f"{', '.join(exact_only)} need(s) every image; drop --sample-tolerance or these options")
    if not 0.0 < args.confidence < 1.0:
        raise CliError(f"--confidence must lie strictly between 0 and 1, got {args.confidence}")
    result = estimate_stats(
        args.paths, tolerance=args.sample_tolerance, confidence=args.confidence, max_images=args.max_images,
        seed=args.seed, batch_size=args.batch_size, device=None if args.device == "auto" else args.device,
        workers=_default_workers() if args.workers is None else args.workers,
        progress=not args.quiet and hasattr(sys.stderr, "isatty") and sys.stderr.isatty(), mode=args.mode,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels, resize=args.resize,
        center_crop=args.center_crop)
    if args.strict and result.bad_files:
        path, reason = result.bad_files[0]
        raise StrictBadFile(f"bad file {path}: {reason} (--strict)")
    _emit(format_sampled(result, args.format, _CHANNEL_NAMES.get(args.mode)), args.output, args.quiet)
    return 0


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # pragma: no cover
        pass
    return 0


def forum_recipe(files: Sequence[Path]) -> tuple[list[float], list[float], int]:
    """The often-pasted recipe, as written: per image ``ToTensor()`` (float32 / 255), then
    ``x.view(C, -1).mean(1)`` and ``.std(1)`` (unbiased, ddof=1), summed and divided by the
    number of images. Returns ``(mean, std, images)``; bad files are skipped."""
    import torch

    from .sources import BadImage, decode_image

    mean_sum = std_sum = None
    images = 0
    for path in files:
        try:
            array = decode_image(path)
        except BadImage:
            continue
        x = torch.from_numpy(array).permute(2, 0, 1).float().div(255)  # ToTensor
        flat = x.reshape(x.shape[0], -1)
        m, s = flat.mean(1), flat.std(1)
        mean_sum = m if mean_sum is None else mean_sum + m
        std_sum = s if std_sum is None else std_sum + s
        images += 1
    return (mean_sum / images).tolist(), (std_sum / images).tolist(), images


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from .sources import list_images
    from .sources.synthetic import make_demo_folder

    with tempfile.TemporaryDirectory(prefix="gpustats-demo-") as tmp:
        info = make_demo_folder(tmp)
        root = str(info["root"])
        parser = build_parser()
        stats_args = parser.parse_args(["stats", root, "--device", args.device, "--workers", "0", "--histogram",
                                        "--per-image"] + (["--quiet"] if args.quiet else []))
        run = run_stats(stats_args)
        run.bad_files = [{"path": os.path.relpath(b["path"], root), "reason": b["reason"]} for b in run.bad_files]
        forum_mean, forum_std, forum_images = forum_recipe(list_images([root]))
    print(f"gpustats demo: {len(info['listed'])} files generated in a temporary folder (every colour mode, "
          f"{len(info['bad'])} bad files)\n")
    print(format_table(run))
    mean, std = run.stats.normalize_args()
    names = run.channels
    print()
    print("the common forum recipe on the same images (per image: ToTensor, then mean and std(ddof=1) of its")
    print(f"pixels; both averaged over the {forum_images} images, float32):")
    print(f"  {'':<18}" + "".join(f"{n:>10}" for n in names))
    print(_row("gpustats mean", mean))
    print(_row("forum mean", forum_mean))
    print(_row("gpustats std", std))
    print(_row("forum std", forum_std))
    print(f"  transforms.Normalize(mean=[{', '.join(f'{v:.4f}' for v in forum_mean)}], "
          f"std=[{', '.join(f'{v:.4f}' for v in forum_std)}])   <- forum recipe")
    print()
    print("why they differ: the recipe weights every image equally whatever its size (a 96x32 image counts as")
    print("much as a 16x16 one), and averaging per-image stds leaves out how much the images differ from each other")
    print("(the spread of their means), so its std is too small. gpustats uses every pixel once, exactly.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import benchmark

    return int(benchmark.run(args) or 0)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .backends import BackendUnavailable
    from .batches import InputError
    from .checkpoint import CheckpointError
    from .plot import PlotUnavailable
    from .sources import SourceError
    from .stats import StatsError

    return (CliError, InputError, SourceError, BackendUnavailable, StatsError, CheckpointError, PlotUnavailable)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpustats`` and ``python -m gpustats``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bench = bool(argv) and argv[0] == "bench"
    if bench:
        try:
            parser = build_parser(bench_arguments=True)
        except ImportError as exc:
            print(f"gpustats: error: the benchmark module cannot be imported ({exc})", file=sys.stderr)
            return 1
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"stats": cmd_stats, "demo": cmd_demo, "bench": cmd_bench}[args.command]
    expected = _expected_errors()
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("gpustats: interrupted", file=sys.stderr)
        return 130
    except expected as exc:
        # SourceNotFoundError is also a FileNotFoundError, whose str() shows "[Errno None] None"
        message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        print(f"gpustats: error: {message}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. --output into a missing folder
        print(f"gpustats: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
