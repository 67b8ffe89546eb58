"""The ``gpustats`` command: ``stats`` (a folder's per-channel statistics), ``demo`` and ``bench``.

Argument parsing, one library call, the report: ``gpustats stats PATH...`` runs the folder engine
(:func:`gpustats.sources.engine.run_folder`, the same one ``compute_stats(path)`` runs) and
prints :mod:`gpustats.report`'s table, JSON (schema ``gpustats.stats/1``, documented in
``docs/cli.md``) or a paste-ready ``Normalize`` line; ``--sample-tolerance`` runs
:func:`gpustats.sampling.estimate_stats` instead. Every output location is checked before the
first file is decoded.

Exit codes: 0 success; 1 failure (bad file under ``--strict``, no decodable image, unusable
device, checkpoint of another run, ...), printed as one ``gpustats: error: ...`` line on
stderr (under ``torchrun`` by rank 0 only); 2 usage error (argparse); 130 interrupted (Ctrl-C)
and 143 terminated (SIGTERM, what job schedulers send): the checkpoint is saved first and
``gpustats: interrupted`` printed once.

>>> build_parser().parse_args(["stats", "imgs", "--format", "json"]).format
'json'
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from .cli_checks import CliError, StopSignals, check_before_run

__all__ = ["main", "build_parser", "JSON_SCHEMA"]


def __getattr__(name: str):
    """``JSON_SCHEMA`` (from :mod:`gpustats.report`, which imports numpy: loaded only when asked for,
    so that parsing arguments and ``--help`` import neither numpy nor torch)."""
    if name == "JSON_SCHEMA":
        from .report import JSON_SCHEMA

        return JSON_SCHEMA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_CHANNEL_NAMES = {"RGB": ("R", "G", "B"), "L": ("L",)}


# ============================================================================ arguments
def _int_at_least(minimum: int, what: str):
    """An argparse type: an int >= ``minimum`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.95), got {text!r}")
    return value


def _strategy(text: str) -> str:
    from .options import STRATEGY_NAMES

    if text not in STRATEGY_NAMES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STRATEGY_NAMES)}, got {text!r}")
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpustats stats`` (shared with ``gpustats demo``'s code path)."""
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image folders and files; archives read in place (.tar incl. tars inside it, .tar.gz, "
                             ".zip, .parquet, TFRecord shards); brace patterns such as 'train-{000000..001023}.tar'; "
                             "s3://, gs://, https:// paths (see docs/cli.md)")
    dev = parser.add_argument_group("device and decoding")
    dev.add_argument("--device", type=_device, default="auto",
                     help="auto (a usable GPU, else the CPU with the reason shown), cpu, cuda or cuda:N")
    dev.add_argument("--strategy", type=_strategy, default="auto",
                     help="CUDA reduction strategy: auto (default), atomic, tree, warp, welford, hist8 or vec")
    dev.add_argument("--workers", type=_non_negative_int, default=None,
                     help="CPU decoding processes (default min(8, cores); 0 decodes in this process; "
                          "runs of fewer than 64 files always use 0)")
    dev.add_argument("--batch-size", type=_positive_int, default=None,
                     help="files per batch (default 64, and 256 when the images are small: under 64 K values)")
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
    img.add_argument("--column", default=None, metavar="NAME",
                     help="Parquet: the column holding the encoded images (default: found; binary, or a struct "
                          "with a 'bytes' field)")
    img.add_argument("--all-extensions", action="store_true",
                     help="in folders, also read .gif, .jfif, .jpe, .pbm, .pnm (default: exactly the extensions "
                          "torchvision's ImageFolder reads; the report counts what was left out)")
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
                     help="per-channel histogram plot in the format its name asks for (.png, .pdf, .svg, ...; "
                          "implies --histogram; needs pip install 'gpustats[plot]')")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notes on stderr")
    smp = parser.add_argument_group("sampling (an estimate with confidence intervals; see the README's Sampling section)")
    smp.add_argument("--sample-tolerance", type=_non_negative_float, default=None, metavar="T",
                     help="visit images in random order and stop once every channel's mean and std is known to "
                          "± T (e.g. 0.001) at --confidence; prints intervals and says the result is an estimate")
    smp.add_argument("--confidence", type=_probability, default=None,
                     help="confidence level of the intervals, between 0 and 1 (default 0.95)")
    smp.add_argument("--max-images", type=_positive_int, default=None, metavar="N", help="visit at most N images")
    smp.add_argument("--seed", type=_int_at_least(0, "an integer >= 0"), default=None,
                     help="seed of the random visiting order (default 0)")
    run = parser.add_argument_group("robustness")
    run.add_argument("--strict", action="store_true", help="stop with exit status 1 at the first bad file")
    run.add_argument("--checkpoint", metavar="FILE", default=None,
                     help="save progress to FILE; rerunning the same command resumes (identical result)")
    run.add_argument("--checkpoint-every", type=_non_negative_float, default=30.0, metavar="SECONDS",
                     help="seconds between checkpoint writes (default 30; 0: after every batch)")
    run.add_argument("--rendezvous-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                     help="under torchrun: seconds a rank waits for the others to join (default 300)")


def build_parser(bench_arguments: bool = False) -> argparse.ArgumentParser:
    """The argument parser. ``bench_arguments``: import :mod:`gpustats.benchmark` for ``bench``'s options."""
    parser = argparse.ArgumentParser(
        prog="gpustats", description="Exact per-channel image statistics (mean, std, min, max, histograms) "
                                     "on GPU and CPU.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpustats {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    stats = sub.add_parser("stats", help="statistics of image folders, files and archives",
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


# ============================================================================ output
def _emit(text: str, output: str | None, quiet: bool) -> None:
    text = text if text.endswith("\n") else text + "\n"
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from .checkpoint import _atomic_write_text, atomic_target

    target = atomic_target(output)
    if target is None:
        # /dev/null, a FIFO, a pipe (/dev/fd/N): write through it, never replace it with a file
        with open(output, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
    else:
        # a reader never sees half a report; names that are not valid UTF-8 are escaped, not fatal; a symlink
        # stays a link (its target is replaced), as the early check (cli_checks) expects
        _atomic_write_text(target, text.encode("utf-8", "backslashreplace").decode("utf-8"))
    if not quiet:
        print(f"gpustats: wrote {output}", file=sys.stderr)


def _note(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(f"gpustats: {s}", file=sys.stderr))


# ============================================================================ commands
_ENGINE_ARGS = ("device", "strategy", "workers", "batch_size", "decode", "mode", "resize", "center_crop",
                "max_pixels", "covariance", "per_image", "ddof", "strict", "checkpoint", "checkpoint_every", "column",
                "all_extensions", "rendezvous_timeout")


#: set when this process is a rank other than 0 of a run whose failure rank 0 reports: it prints nothing
_quiet_rank = False


def cmd_stats(args: argparse.Namespace) -> int:
    global _quiet_rank
    from .distributed import is_main_process, rank_and_world, shutdown
    from .report import format_run
    from .sources.engine import run_folder

    check_before_run(args)
    if getattr(args, "sample_tolerance", None) is not None:
        return cmd_sample(args)
    try:
        run = run_folder(args.paths, note=_note(args.quiet), histogram=bool(args.histogram or args.plot),
                         progress=not args.quiet, **{name: getattr(args, name) for name in _ENGINE_ARGS})
        if not is_main_process():
            return 0  # only rank 0 prints and writes
    except BaseException:
        rank, world = rank_and_world()
        _quiet_rank = world > 1 and rank != 0  # every rank learnt the failure; rank 0 says it
        raise
    finally:
        shutdown()  # a no-op unless the run made a process group
    _emit(format_run(run, args.format), args.output, args.quiet)
    _warn_constant(run.stats.std, run.channels, args.quiet)
    if args.plot:
        from .plot import plot_histograms

        plot_histograms(run.stats, args.plot, channel_names=run.channels, images=run.images)
        _note(args.quiet)(f"wrote {args.plot}")
    return 0


def _warn_constant(std, channels, quiet: bool) -> None:
    """A channel with std 0 makes the Normalize line divide by zero: say so (the line also carries a comment)."""
    from .report import zero_std_channels

    flat = zero_std_channels(std, channels)
    if flat:
        _note(quiet)(f"warning: std is 0 in channel(s) {', '.join(flat)} (every pixel has the same value): "
                     "Normalize would divide by zero; use std 1.0 for those channels or drop them")


def cmd_sample(args: argparse.Namespace) -> int:
    """``gpustats stats --sample-tolerance T``: :func:`gpustats.sampling.estimate_stats` on the files."""
    from .report import format_sampled
    from .sampling import estimate_stats
    from .sources import DEFAULT_MAX_PIXELS

    exact_only = [flag for flag, on in (("--histogram", args.histogram), ("--covariance", args.covariance),
                                        ("--per-image", args.per_image), ("--plot", args.plot),
                                        ("--checkpoint", args.checkpoint), ("--ddof 1", args.ddof != 0)) if on]
    if exact_only:
        raise CliError(f"{', '.join(exact_only)} need(s) every image; drop --sample-tolerance or these options")
    confidence = 0.95 if args.confidence is None else args.confidence
    workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    result = estimate_stats(
        args.paths, tolerance=args.sample_tolerance, confidence=confidence, max_images=args.max_images,
        seed=0 if args.seed is None else args.seed, batch_size=args.batch_size or 64,
        device=None if args.device == "auto" else args.device, workers=workers,
        progress=not args.quiet and hasattr(sys.stderr, "isatty") and sys.stderr.isatty(), mode=args.mode,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels, resize=args.resize,
        center_crop=args.center_crop, column=args.column, strict=args.strict,  # --strict: at the first bad file
        all_extensions=args.all_extensions)
    names = _CHANNEL_NAMES.get(args.mode)
    _emit(format_sampled(result, args.format, names), args.output, args.quiet)
    _warn_constant(result.std, names, args.quiet)
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

    from .report import _row, format_python, format_table
    from .sources import list_images
    from .sources.engine import run_folder
    from .sources.synthetic import make_demo_folder

    with tempfile.TemporaryDirectory(prefix="gpustats-demo-") as tmp:
        info = make_demo_folder(tmp)
        root = str(info["root"])
        run = run_folder([root], device=args.device, workers=0, histogram=True, per_image=True,
                         progress=not args.quiet)
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
    print()
    print("the line to paste (gpustats, these sample images):")
    print(format_python(run))
    print()
    print("on your own images:  gpustats stats /path/to/train --format python")
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
    from .sources.remote import RemoteReadError
    from .stats import StatsError

    return (CliError, InputError, SourceError, BackendUnavailable, StatsError, CheckpointError, PlotUnavailable,
            RemoteReadError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpustats`` and ``python -m gpustats``; returns the exit status."""
    global _quiet_rank
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal gets escapes, not a traceback
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - a detached or closed stream
                pass
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
    _quiet_rank = False
    try:
        with StopSignals():
            return handler(args)
    except KeyboardInterrupt as exc:
        import signal

        if not _quiet_rank:
            print("gpustats: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    except expected as exc:
        # SourceNotFoundError is also a FileNotFoundError, whose str() shows "[Errno None] None"
        message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        if type(exc).__name__ == "RemoteReadError":  # a store failed past its retries (sampling: no checkpoint)
            from .sources.remote import message_of

            message = message_of(exc)
        if not _quiet_rank:  # under torchrun rank 0 reports every rank's failure
            print(f"gpustats: error: {message}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. --output into a missing folder
        if not _quiet_rank:
            print(f"gpustats: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
