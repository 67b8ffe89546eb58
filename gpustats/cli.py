"""The ``gpustats`` command: ``stats`` (a folder's per-channel statistics), ``demo`` and ``bench``.

Argument parsing, one library call, the report: ``gpustats stats PATH...`` runs the folder engine
(:func:`gpustats.sources.engine.run_folder`, the same one ``compute_stats(path)`` runs) and
prints :mod:`gpustats.report`'s table, JSON (schema ``gpustats.stats/1``, documented in
``docs/cli.md``) or a paste-ready ``Normalize`` line; ``--sample-tolerance`` runs
:func:`gpustats.sampling.estimate_folder_stats` instead; ``demo`` runs :func:`gpustats.demo.run_demo`.
Every output location is checked before the first file is decoded (:mod:`gpustats.cli_checks`).

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
import sys
from typing import Sequence

from . import cli_checks as checks
from .cli_checks import StopSignals, check_before_run

__all__ = ["main", "build_parser", "JSON_SCHEMA"]


def __getattr__(name: str):
    """``JSON_SCHEMA`` (from :mod:`gpustats.report`, which imports numpy: loaded only when asked for,
    so that parsing arguments and ``--help`` import neither numpy nor torch)."""
    if name == "JSON_SCHEMA":
        from .report import JSON_SCHEMA

        return JSON_SCHEMA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ============================================================================ arguments
def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpustats stats`` (shared with ``gpustats demo``'s code path)."""
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image folders and files; archives read in place (.tar incl. tars inside it, .tar.gz, "
                             ".zip, .parquet, TFRecord shards); brace patterns such as 'train-{000000..001023}.tar'; "
                             "s3://, gs://, https:// paths (see docs/cli.md)")
    dev = parser.add_argument_group("device and decoding")
    dev.add_argument("--device", type=checks.device, default="auto",
                     help="auto (a usable GPU, else the CPU with the reason shown), cpu, cuda or cuda:N")
    dev.add_argument("--strategy", type=checks.strategy, default="auto",
                     help="CUDA reduction strategy: auto (default), atomic, tree, warp, welford, hist8 or vec")
    dev.add_argument("--workers", type=checks.non_negative_int, default=None,
                     help="CPU decoding processes (default min(8, cores); 0 decodes in this process; "
                          "runs of fewer than 64 files always use 0)")
    dev.add_argument("--batch-size", type=checks.positive_int, default=None,
                     help="files per batch (default 64, and 256 when the images are small: under 64 K values)")
    dev.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                     help="auto: nvJPEG on the GPU when the statistics run there and torchvision is installed")
    img = parser.add_argument_group("what is measured")
    img.add_argument("--mode", choices=("RGB", "L"), default="RGB",
                     help="RGB (torchvision's default loader conversion) or L (luma)")
    img.add_argument("--resize", type=checks.positive_int, default=None, metavar="N",
                     help="shorter side to N first, like torchvision Resize(N) (default: raw pixels)")
    img.add_argument("--center-crop", type=checks.positive_int, default=None, metavar="N",
                     help="then a centre N x N crop (zero padded if smaller), like CenterCrop(N)")
    img.add_argument("--max-pixels", type=checks.positive_int, default=None, metavar="N",
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
    smp.add_argument("--sample-tolerance", type=checks.non_negative_float, default=None, metavar="T",
                     help="visit images in random order and stop once every channel's mean and std is known to "
                          "± T (e.g. 0.001) at --confidence; prints intervals and says the result is an estimate")
    smp.add_argument("--confidence", type=checks.probability, default=None,
                     help="confidence level of the intervals, between 0 and 1 (default 0.95)")
    smp.add_argument("--max-images", type=checks.positive_int, default=None, metavar="N", help="visit at most N images")
    smp.add_argument("--seed", type=checks.non_negative_int, default=None,
                     help="seed of the random visiting order (default 0)")
    run = parser.add_argument_group("robustness")
    run.add_argument("--strict", action="store_true", help="stop with exit status 1 at the first bad file")
    run.add_argument("--checkpoint", metavar="FILE", default=None,
                     help="save progress to FILE; rerunning the same command resumes (identical result)")
    run.add_argument("--checkpoint-every", type=checks.non_negative_float, default=30.0, metavar="SECONDS",
                     help="seconds between checkpoint writes (default 30; 0: after every batch)")
    run.add_argument("--rendezvous-timeout", type=checks.positive_float, default=300.0, metavar="SECONDS",
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
    demo.add_argument("--device", type=checks.device, default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    bench = sub.add_parser("bench", help="benchmark the reduction strategies against torch (see gpustats.benchmark)")
    if bench_arguments:
        from . import benchmark  # imported only when `bench` runs: `stats` works without it

        benchmark.add_arguments(bench)
    return parser


# ============================================================================ output
def _emit(text: str, output: str | None, quiet: bool) -> None:
    from .report import write_report

    write_report(text, output)
    if output is not None and not quiet:
        print(f"gpustats: wrote {output}", file=sys.stderr)


def _note(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(f"gpustats: {s}", file=sys.stderr))


# ============================================================================ commands
#: set when this process is a rank other than 0 of a run whose failure rank 0 reports: it prints nothing
_quiet_rank = False


def cmd_stats(args: argparse.Namespace) -> int:
    global _quiet_rank
    from .distributed import is_main_process, rank_and_world, shutdown
    from .report import format_run
    from .sources.engine import ENGINE_OPTIONS, run_folder

    check_before_run(args)
    if getattr(args, "sample_tolerance", None) is not None:
        return cmd_sample(args)
    options = {name: getattr(args, name) for name in ENGINE_OPTIONS if hasattr(args, name)}
    options.update(histogram=bool(args.histogram or args.plot), progress=not args.quiet)
    try:
        run = run_folder(args.paths, note=_note(args.quiet), **options)
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
    """``gpustats stats --sample-tolerance T``: :func:`gpustats.sampling.estimate_folder_stats` on the files."""
    from .report import format_sampled
    from .sampling import FOLDER_SAMPLE_OPTIONS, estimate_folder_stats
    from .sources.engine import CHANNEL_NAMES

    result = estimate_folder_stats(args.paths, tolerance=args.sample_tolerance, progress=not args.quiet,
                                   **{name: getattr(args, name) for name in FOLDER_SAMPLE_OPTIONS})
    names = CHANNEL_NAMES.get(args.mode)
    _emit(format_sampled(result, args.format, names), args.output, args.quiet)
    _warn_constant(result.std, names, args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``gpustats demo``: :func:`gpustats.demo.run_demo`, reported by :func:`gpustats.report.format_demo`."""
    from .demo import run_demo
    from .report import format_demo

    print(format_demo(run_demo(args.device, progress=not args.quiet)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import benchmark

    return int(benchmark.run(args) or 0)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The library's expected failures and the command's own: one ``gpustats: error:`` line, exit status 1."""
    from .plot import PlotUnavailable
    from .sources.engine import expected_errors
    from .sources.remote import RemoteReadError

    return (checks.CliError, PlotUnavailable, RemoteReadError, *expected_errors())


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
