"""Every report format in one place: a folder run (:class:`~gpustats.sources.engine.StatsRun`) and a
sampled run (:class:`~gpustats.sampling.SampledStats`) as a table, JSON or a ``Normalize`` line.

* ``format_run(run, "table" | "json" | "python")``: the ``gpustats stats`` report; JSON schema
  ``gpustats.stats/1`` (every key described in docs/cli.md);
* ``format_sampled(result, ...)``: the ``--sample-tolerance`` report, JSON schema ``gpustats.sample/1``;
  every format says whether the numbers are an estimate;
* ``format_demo(demo)``: ``gpustats demo``'s comparison with the forum recipe;
* ``write_report(text, output)``: stdout, or a file written atomically.

Floats are printed at full (round-trip) precision in JSON and in the python line; JSON is strict
(NaN and inf become ``null``).

>>> _row("mean", [0.5, float("nan")])
'  mean                0.500000       nan'
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["JSON_SCHEMA", "SAMPLE_JSON_SCHEMA", "PERCENTILES", "format_run", "format_sampled", "format_python",
           "run_to_dict", "jsonable", "zero_std_channels", "format_demo", "write_report"]

JSON_SCHEMA = "gpustats.stats/1"
#: JSON schema name of :func:`format_sampled`'s ``"json"`` output.
SAMPLE_JSON_SCHEMA = "gpustats.sample/1"
#: percentiles the table shows (the JSON has more: see Stats.to_dict)
PERCENTILES = (1, 5, 50, 95, 99)


def _text(value: str) -> str:
    """A string strict JSON parsers accept: bytes of a file name that are not UTF-8 (held by Python as lone
    surrogates, which ``json.dumps`` writes as ``\\udcff`` escapes that strict parsers reject) become
    ``\\xff`` text."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def jsonable(value: Any) -> Any:
    """numpy -> Python; NaN/inf -> None (strict JSON); strings made valid UTF-8 (:func:`_text`)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def zero_std_channels(std: Sequence[float], channels: Sequence[str] | None = None) -> list[str]:
    """Names of the channels whose std is 0 (constant data): ``Normalize`` would divide by zero there."""
    names = list(channels) if channels is not None and len(channels) == len(std) else [f"c{i}" for i in range(len(std))]
    return [name for name, v in zip(names, std) if float(v) == 0.0]


def _normalize_line(mean: Sequence[float], std: Sequence[float], comment: str = "",
                    channels: Sequence[str] | None = None) -> str:
    line = (f"transforms.Normalize(mean=[{', '.join(repr(float(v)) for v in mean)}], "
            f"std=[{', '.join(repr(float(v)) for v in std)}])")
    flat = zero_std_channels(std, channels)
    if flat:  # said where it is pasted
        warning = (f"# WARNING: std 0 in {', '.join(flat)} (constant): Normalize would divide by zero; use 1.0 "
                   "there")
        comment = f"{comment}; {warning[2:]}" if comment else warning
    return f"{line}  {comment}" if comment else line


def format_python(run: Any) -> str:
    """``transforms.Normalize(mean=[...], std=[...])`` with every float at full (round-trip) precision (a
    comment warns when a channel's std is 0)."""
    return _normalize_line(*run.stats.normalize_args(), channels=run.channels)


def run_to_dict(run: Any) -> dict[str, Any]:
    """The ``gpustats.stats/1`` document (docs/cli.md describes every key)."""
    mean, std = run.stats.normalize_args()
    return jsonable({
        "schema": JSON_SCHEMA,
        "channels": list(run.channels),
        "stats": run.stats.to_dict(),
        "normalize": {"mean": mean, "std": std},
        "images": run.images,
        "pixels": run.pixels,
        "files": run.files_total,
        "bytes": run.bytes,
        "bad_files": run.bad_files,
        "warnings": [{"message": text, "files": count} for text, count in sorted(run.warnings.items())],
        "skipped_by_extension": dict(sorted(run.skipped.items())),
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
        "decoders": run.decoders,
        "resumed_from": run.resumed_from,
        "options": run.options,
        "state": run.stats.state.to_dict(),
    })


def _row(label: str, values: Iterable[float], width: int = 10, digits: int = 6) -> str:
    return f"  {label:<18}" + "".join(f"{v:>{width}.{digits}f}" if math.isfinite(v) else f"{v:>{width}}"
                                      for v in values)


def _stats_lines(s: Any, names: Sequence[str]) -> list[str]:
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant channel: nan, said as nan
        return _stats_rows(s, names)


def _stats_rows(s: Any, names: Sequence[str]) -> list[str]:
    lines = [f"  {'':<18}" + "".join(f"{n:>10}" for n in names)]
    lines += [_row("mean", s.mean), _row(f"std (ddof={s.ddof})", s.std), _row("min", s.min), _row("max", s.max)]
    if s.histogram is not None:
        bound = s.percentile_error_bound()
        how = "exact" if bound == 0 else f"within {bound:.3g}, interpolated in bins"
        lines.append(f"  percentiles ({how}, from the {s.histogram.shape[1]}-bin histogram; --format json has "
                     "0.5 to 99.5)")
        for q in PERCENTILES:
            lines.append(_row(f"  p{q}", s.percentile(q)))
        if s.saturation_available:
            low_end, high_end = (v * s.scale for v in s.range_ends())
            sat = s.saturation()
            lines.append(_row(f"  saturated at {low_end:g}", sat["low"]))
            lines.append(_row(f"  saturated at {high_end:g}", sat["high"]))
    if s.state.comoment is not None:
        lines.append(f"  covariance (ddof={s.ddof})")
        lines += [_row(f"  {name}", row, digits=7) for name, row in zip(names, s.cov)]
        lines.append("  correlation")
        lines += [_row(f"  {name}", row) for name, row in zip(names, s.corr)]
        values, vectors = s.pca()
        lines.append("  PCA eigenvalues")
        lines.append(_row("", values, digits=7))
        lines.append("  PCA eigenvectors (columns)")
        lines += [_row(f"  {name}", row) for name, row in zip(names, vectors)]
    per = s.per_image
    if per is not None:
        lines.append(f"  per image (each of {per['images']} images counts once, whatever its size)")
        lines.append(_row("  mean of means", per["mean_of_means"]))
        lines.append(_row("  mean of stds", per["mean_of_stds"]))
        lines.append(_row("  mean of stds dd1", per["mean_of_stds_ddof1"]))
        single = np.asarray(per["images_per_channel"]) - np.asarray(per["images_per_channel_ddof1"])
        if single.any():
            lines.append(f"  ({_plural(int(single.max()), 'image')} of a single pixel left out of dd1: one value "
                         "has no ddof=1 std)")
        lines.append("  (mean of per-image stds with ddof=1 is how the often-copied CIFAR-10 std "
                     "0.2023, 0.1994, 0.2010 was made;")
        lines.append("   Normalize wants the std over all pixels, above)")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _printable(text: str) -> str:
    """A path or reason on one line: control characters (a newline in a file name) escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _short_reason(reason: str) -> str:
    """The library's reason a GPU is not used, shortened for the command line (``--device cpu``)."""
    head = reason.split(";")[0]
    head = head.split(" (")[0] if len(head) > 60 else head
    return head.replace("device='cpu'", "--device cpu")


def format_table(run: Any) -> str:
    """The human report: per-channel table, optional sections, bad files, counts, speed, device."""
    s = run.stats
    names = run.channels if len(run.channels) == s.channels else tuple(f"c{i}" for i in range(s.channels))
    head = [f"gpustats: {_plural(run.images, 'image')}, {run.pixels:,} pixels per channel"
            + (f", {_plural(len(run.bad_files), 'bad file')} skipped" if run.bad_files else "")]
    speed = (f"time: {run.elapsed_s:.2f} s, {run.images_per_s:,.1f} images/s, "
             f"{run.mb_per_s:,.{1 if run.mb_per_s >= 10 else 2}f} MB/s"
             + (" (from the completed checkpoint)" if run.from_complete_checkpoint else "")
             + (f" (resumed at file {run.resumed_from})" if run.resumed_from and not run.from_complete_checkpoint
                else ""))
    device = f"device: {run.device} ({run.backend} backend, strategy {run.strategy})"
    if run.cpu_reason and run.backend == "cpu" and run.options.get("device") != "cpu":
        device += f"; GPU not used: {_short_reason(run.cpu_reason)}"
    if run.decode == "cpu":
        workers = ("in this process (runs of under 64 files do not start worker processes)"
                   if run.workers == 0 and run.options.get("workers_asked") is None else
                   f"{_plural(run.workers, 'worker process')}" if run.workers else "in this process")
        decode = f"decode: cpu, {workers}"
        if run.decoders:
            decode += " (" + ", ".join(f"{name} for {_plural(n, 'image')}" for name, n in sorted(run.decoders.items())) + ")"
    else:
        decode = "decode: gpu (nvJPEG)"
    if run.decode_reason and run.options.get("decode") != "cpu" and run.decode == "cpu":
        decode += f" (GPU decoding not used: {run.decode_reason})"
    out = head + _stats_lines(s, names)
    if run.bad_files:
        out.append(f"bad files ({len(run.bad_files)}, skipped, not counted):")
        out += [f"  {_printable(b['path'])}: {_printable(b['reason'])}" for b in run.bad_files]
    for text, count in sorted(run.warnings.items()):
        out.append(f"warning ({_plural(count, 'file')}): {_printable(text)}")
    out += skipped_lines(run.skipped, bool(run.options.get("all_extensions")))
    out += [speed, device, decode, "", format_python(run)]
    return "\n".join(out)


def skipped_lines(skipped: dict[str, int], all_extensions: bool) -> list[str]:
    """What walking the folders left out, per extension: files ImageFolder would not read either, and
    archives (a folder walk does not open them)."""
    from .sources.listing import EXTRA_EXTENSIONS
    from .sources.units import is_archive_name

    archives = {ext: n for ext, n in skipped.items() if is_archive_name("x" + ext)}
    other = {ext: n for ext, n in skipped.items() if ext not in archives}
    out = []
    if other:
        listed = ", ".join(f"{n:,} {ext or '(no extension)'}" for ext, n in sorted(other.items(), key=lambda e: -e[1]))
        wider = "" if all_extensions or not set(other) & set(EXTRA_EXTENSIONS) else (
            f"; --all-extensions also reads {', '.join(EXTRA_EXTENSIONS)}")
        out.append(f"not counted, by extension (torchvision's ImageFolder does not read them either): {listed}{wider}")
    if archives:
        listed = ", ".join(f"{n:,} {ext}" for ext, n in sorted(archives.items()))
        out.append(f"archives inside the folders, not opened: {listed}; name an archive (or a brace pattern) to "
                   "read its images")
    return out


def format_run(run: Any, fmt: str = "table") -> str:
    """A folder run as ``"table"``, ``"json"`` (schema ``gpustats.stats/1``) or ``"python"``."""
    if fmt == "json":
        return json.dumps(run_to_dict(run), indent=2, allow_nan=False)
    if fmt == "python":
        mean, std = run.stats.normalize_args()
        if not all(math.isfinite(v) for v in (*mean, *std)):
            from .stats import StatsError

            raise StatsError("the statistics hold NaN or inf (a constant channel has std 0?): a Normalize line "
                             "would not work; use --format table or json")
        return format_python(run)
    if fmt == "table":
        return format_table(run)
    raise ValueError(f"format must be 'table', 'json' or 'python', got {fmt!r}")


#: what every format says when an interval is unbounded (one image: no spread between images to measure)
_UNBOUNDED = ("; the intervals are unbounded (inf; null in JSON): one image shows no spread between images, "
              "sample more")


def format_sampled(result: Any, fmt: str = "table", channels: Sequence[str] | None = None) -> str:
    """The report of a sampled run: ``"table"``, ``"json"`` (schema ``gpustats.sample/1``) or ``"python"``.

    Every format says that the numbers are an estimate (or exact, when the population was exhausted).
    """
    names = list(channels) if channels is not None else [f"c{i}" for i in range(result.channels)]
    mean, std = result.normalize_args()
    pct = f"{result.confidence:.0%}"
    if fmt == "json":
        doc = {"schema": SAMPLE_JSON_SCHEMA, "channels": names, **result.to_dict(),
               "normalize": {"mean": mean, "std": std}}
        if not all(np.isfinite(v).all() for v in result.half_widths.values()):
            doc["note"] += _UNBOUNDED  # JSON has no inf: the intervals' null ends are said in words
        return json.dumps(jsonable(doc), indent=2, allow_nan=False)
    half = max(np.max(result.half_widths["mean"]), np.max(result.half_widths["std"]))
    comment = (f"# ESTIMATE: ± {half:.2g} at {pct} confidence from {result.counted()}"
               + ("" if math.isfinite(half) else _UNBOUNDED) if result.is_estimate
               else f"# exact: {result.counted()}")
    python = _normalize_line(mean, std, comment, names)
    if fmt == "python":
        return python
    if fmt != "table":
        raise ValueError(f"format must be 'table', 'json' or 'python', got {fmt!r}")
    unbounded = "" if all(np.isfinite(v).all() for v in result.half_widths.values()) else _UNBOUNDED
    lines = [result.describe() + unbounded, "  " + " " * 18 + "".join(f"{n:>10}" for n in names)]
    for what, est, ci in (("mean", result.mean, result.mean_ci), ("std", result.std, result.std_ci)):
        lines += [_row(what, est), _row(f"  ± ({pct})", result.half_widths[what]),
                  _row(f"  {pct} CI low", ci[0]), _row(f"  {pct} CI high", ci[1])]
    share = f" ({result.units_visited / result.population_size:.1%})" if result.population_size else ""
    lines.append(f"read: {result.counted()}{share}, {result.pixels_used:,} pixels per channel; "
                 f"{result.images_per_second:.1f} {result.units}/s, {result.elapsed_s:.1f} s")
    if result.bad_files:
        lines.append(f"bad files ({len(result.bad_files)}, skipped, not counted):")
        lines += [f"  {_printable(str(path))}: {_printable(str(reason))}" for path, reason in result.bad_files]
    lines += ["", python]
    return "\n".join(lines)


def format_demo(demo: Any) -> str:
    """``gpustats demo``'s report (:class:`gpustats.demo.Demo`): the folder table, the recipe beside it, the line."""
    run = demo.run
    mean, std = run.stats.normalize_args()
    lines = [f"gpustats demo: {demo.files} files generated in a temporary folder (every colour mode, "
             f"{demo.bad} bad files)\n", format_table(run), "",
             "the common forum recipe on the same images (per image: ToTensor, then mean and std(ddof=1) of its",
             f"pixels; both averaged over the {demo.recipe_images} images, float32):",
             f"  {'':<18}" + "".join(f"{n:>10}" for n in run.channels),
             _row("gpustats mean", mean), _row("forum mean", demo.recipe_mean),
             _row("gpustats std", std), _row("forum std", demo.recipe_std),
             f"  transforms.Normalize(mean=[{', '.join(f'{v:.4f}' for v in demo.recipe_mean)}], "
             f"std=[{', '.join(f'{v:.4f}' for v in demo.recipe_std)}])   <- forum recipe", "",
             "why they differ: the recipe weights every image equally whatever its size (a 96x32 image counts as",
             "much as a 16x16 one), and averaging per-image stds leaves out how much the images differ from each other",
             "(the spread of their means), so its std is too small. gpustats uses every pixel once, exactly.", "",
             "the line to paste (gpustats, these sample images):", format_python(run), "",
             "on your own images:  gpustats stats /path/to/train --format python"]
    return "\n".join(lines)


def write_report(text: str, output: str | None) -> None:
    """Write ``text`` (a newline added when missing) to stdout (``output`` None) or to the file ``output``:
    atomically (:func:`gpustats.checkpoint.atomic_write_text`; a symlink stays a link, its target is
    replaced), or through it when it is a device or a pipe (``/dev/null``, ``/dev/fd/N``). Names that are
    not valid UTF-8 are escaped, not fatal."""
    import sys

    text = text if text.endswith("\n") else text + "\n"
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from .checkpoint import atomic_target, atomic_write_text

    target = atomic_target(output)
    if target is None:
        # /dev/null, a FIFO, a pipe (/dev/fd/N): write through it, never replace it with a file
        with open(output, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
    else:
        # a reader never sees half a report; a symlink stays a link, as the early check (cli_checks) expects
        atomic_write_text(target, text.encode("utf-8", "backslashreplace").decode("utf-8"))
