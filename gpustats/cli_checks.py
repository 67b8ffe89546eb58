"""What ``gpustats stats`` checks before a run, and how a run stops on a signal.

* the argument types (:func:`positive_int`, :func:`probability`, :func:`device`, ...): a bad value is
  argparse's usage error (exit status 2);
* :func:`check_before_run`: options that would do nothing (or need every image, under
  ``--sample-tolerance``), geometry that makes every image too
  large, outputs that cannot be written (the very temporary file of each final atomic write is
  made and removed: :func:`gpustats.checkpoint.write_problem`), outputs that are each other or an
  input, a closed stdout -- all before the first file is decoded, each one line (:class:`CliError`);
* :class:`StopSignals`: SIGTERM (what job schedulers send) becomes the same ``KeyboardInterrupt``
  as Ctrl-C (:class:`Interrupted`), so the run saves its checkpoint and cleans up alike.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

__all__ = ["CliError", "Interrupted", "StopSignals", "check_before_run", "int_at_least", "positive_int",
           "non_negative_int", "non_negative_float", "positive_float", "probability", "strategy", "device"]


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


# ------------------------------------------------------------ argument types (argparse: usage error, exit 2)
def int_at_least(minimum: int, what: str):
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


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def _seconds(text: str, least: str) -> float:
    """A finite number of seconds ``>= 0`` (``least=">= 0"``) or ``> 0``, else argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 if least == ">= 0" else value > 0) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds {least}, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    return _seconds(text, ">= 0")


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.95), got {text!r}")
    return value


def strategy(text: str) -> str:
    from .options import STRATEGY_NAMES

    if text not in STRATEGY_NAMES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STRATEGY_NAMES)}, got {text!r}")
    return text


def positive_float(text: str) -> float:
    return _seconds(text, "> 0")


def device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _check_writable(path: str | None, what: str) -> None:
    """Fail before the run, naming the path as given, unless the final write of ``path`` can succeed
    (:func:`gpustats.checkpoint.write_problem`: the very temporary file of the atomic write is made)."""
    from .checkpoint import write_problem

    problem = None if path is None else write_problem(path, what)
    if problem is not None:
        raise CliError(problem)


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before the run, outputs that are one another or one of the inputs (a file given, an archive,
    or an image a folder given would list): writing them would destroy the checkpoint or an input."""
    from .sources.listing import extensions_for, is_image_name

    outputs = [(what, path) for what, path in (("--output", args.output), ("--plot", getattr(args, "plot", None)),
                                               ("--checkpoint", getattr(args, "checkpoint", None))) if path]
    for i, (what, path) in enumerate(outputs):
        for other_what, other in outputs[:i]:
            if _same_file(path, other):
                raise CliError(f"{other_what} and {what} name the same file ({path!r}); give each its own file")
    if not outputs:
        return
    try:
        from .sources.units import expand_paths

        local = [p for p in args.paths if "://" not in os.fspath(p)]  # objects in a store are no local outputs
        inputs = [os.fspath(p) for p in expand_paths(local)] if local else []
    except (OSError, ValueError):
        return  # a missing or refused input: the run reports it
    extensions = extensions_for(bool(getattr(args, "all_extensions", False)))
    for what, path in outputs:
        real = os.path.realpath(path)
        for given in inputs:
            if os.path.isdir(given):
                inside = os.path.relpath(real, os.path.realpath(given)).replace(os.sep, "/")
                if (inside.split("/")[0] != ".." and is_image_name(real, extensions)
                        and not any(part.startswith(".") for part in inside.split("/"))):
                    raise CliError(f"{what} {path!r} lies in the input folder {given!r} and is named like an image: "
                                   "it would be read as one (now or on the next run); write it elsewhere")
            elif _same_file(path, given):
                raise CliError(f"{what} {path!r} is an input of this run (writing it would destroy it); give "
                               "another file name")


def _check_stdout(args: argparse.Namespace) -> None:
    """Without --output the report goes to stdout: it must be open (``>&-`` closes it)."""
    if args.output is None and (sys.stdout is None or getattr(sys.stdout, "closed", False)):
        raise CliError("stdout is closed, so the report has nowhere to go; pass --output FILE (or open stdout)")


_SAMPLING_ONLY = (("--confidence", "confidence"), ("--max-images", "max_images"), ("--seed", "seed"))


def check_before_run(args: argparse.Namespace) -> None:
    """Every check that needs no file decoded: options that do nothing here, geometry that makes every image
    too large, outputs that cannot be written or that are inputs, a closed stdout, options that need every
    image under ``--sample-tolerance``."""
    from .sources.decode import check_geometry

    if getattr(args, "sample_tolerance", None) is None:
        ignored = [flag for flag, name in _SAMPLING_ONLY if getattr(args, name, None) is not None]
        if ignored:
            raise CliError(f"{', '.join(ignored)} appl{'ies' if len(ignored) == 1 else 'y'} only with "
                           "--sample-tolerance T; add it or drop them")
    try:
        check_geometry(args.resize, args.center_crop, args.max_pixels)
    except ValueError as exc:
        raise CliError(str(exc).replace("resize=", "--resize ").replace("center_crop=", "--center-crop ")) from None
    _check_stdout(args)
    for path, what in ((args.output, "--output"), (args.plot, "--plot"), (args.checkpoint, "--checkpoint")):
        _check_writable(path, what)
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    if args.checkpoint and world.isdigit() and int(world) > 1 and rank.isdigit():  # torchrun: FILE.rank{r}
        from .checkpoint import rank_path

        _check_writable(rank_path(args.checkpoint, int(rank), int(world)), "--checkpoint")
    _check_outputs(args)
    if args.plot:
        from .plot import plot_format, require_matplotlib

        require_matplotlib()  # fail before the long run, not after
        try:
            plot_format(args.plot)
        except ValueError as exc:
            raise CliError(f"--plot {args.plot!r}: {exc}") from None
    if getattr(args, "sample_tolerance", None) is not None:
        exact_only = [flag for flag, on in (("--histogram", args.histogram), ("--covariance", args.covariance),
                                            ("--per-image", args.per_image), ("--plot", args.plot),
                                            ("--checkpoint", args.checkpoint), ("--ddof 1", args.ddof != 0)) if on]
        if exact_only:
            raise CliError(f"{', '.join(exact_only)} need(s) every image; drop --sample-tolerance or these options")


class Interrupted(KeyboardInterrupt):
    """SIGTERM (what job schedulers send) or SIGINT: a ``KeyboardInterrupt``, so every ``except
    KeyboardInterrupt`` saves the checkpoint and cleans up alike; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """While a command runs: the first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread; a
    later SIGTERM is ignored (the run is already stopping and saving), a later SIGINT interrupts again."""

    def __enter__(self) -> "StopSignals":
        import signal

        self.stopping = False
        self.previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except (ValueError, OSError):  # not the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum: int, frame) -> None:
        import signal

        if self.stopping and signum == signal.SIGTERM:
            return
        self.stopping = True
        raise Interrupted(signum)

    def __exit__(self, *exc) -> None:
        import signal

        for signum, handler in self.previous.items():
            # once stopping, later SIGTERMs stay ignored: the process is on its way out, with its exit status
            signal.signal(signum, signal.SIG_IGN if self.stopping and signum == signal.SIGTERM else handler)
