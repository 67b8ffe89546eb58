"""Validation of a parsed checkpoint, entry by entry: types, ranges, and the invariants between them.

Every check raises :class:`CheckpointError` naming the entry (``state.count[2]``) and what it
should be; nothing a hand-edited or damaged file holds may give a traceback. Integer states are
checked exactly (sums must fit the counts and the min/max, means and M2 must be those of the
sums); float states within a small slack; per-image aggregates against the min/max. The one home
of these rules: :mod:`gpustats.checkpoint` checks a checkpoint's entries with them, and
:meth:`gpustats.stats.ChannelStats.from_dict` (``from_json``) checks a state with
:func:`check_state` (so this module must not import :mod:`gpustats.stats`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .numerics import FLOAT_DTYPES, INTEGER_DTYPES, exact_moments

_STATE_FORMAT = "gpustats.ChannelStats/1"
_INT64_MAX = 2**63 - 1
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
_DECIMAL = re.compile(r"-?[0-9]{1,40}")  # exact integer totals: 40 digits is far beyond any real one
_DYADIC = re.compile(r"-?[0-9a-f]{1,320}p[0-9]{1,4}")  # exact per-image sums, m << shift: bounded too


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run (other options/files, damaged); one line, says what to do."""


class NotACheckpointError(CheckpointError):
    """The file is no gpustats checkpoint at all (an image, another program's JSON): pass another path."""



_MISSING = object()


def _kind(value: Any) -> str:
    if value is _MISSING or value is None or isinstance(value, (bool, int, float)):  # shown as they are
        return "missing" if value is _MISSING else _short(value)
    return f"a {type(value).__name__}" + (f" {_short(value)}" if isinstance(value, str) else "")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expect(ok: bool, where: str, value: Any, expected: str) -> None:
    if not ok:
        raise CheckpointError(f"{where} is {_kind(value)}, expected {expected}")


def _int(value: Any, where: str, lo: int = 0, hi: int = _INT64_MAX) -> int:
    _expect(type(value) is int and lo <= value <= hi, where, value, f"an integer in {lo}..{hi}")
    return value


def _bool(value: Any, where: str) -> bool:
    _expect(isinstance(value, bool), where, value, "true or false")
    return value


def _list(value: Any, where: str, length: int | None = None) -> list:
    _expect(isinstance(value, list), where, value, "a list")
    if length is not None and len(value) != length:
        raise CheckpointError(f"{where} has {len(value)} entries, expected {length}")
    return value


def _each(d: dict, name: str, convert: Any, length: int | None = None, prefix: str = "state.") -> list:
    """``d[name]`` as a list (of ``length`` entries), each converted/checked by ``convert(value, where)``."""
    where = prefix + name
    return [convert(v, f"{where}[{i}]") for i, v in enumerate(_list(d.get(name, _MISSING), where, length))]


def _hex(value: Any, where: str) -> float:
    try:
        number = float.fromhex(value) if isinstance(value, str) and len(value) <= 64 else None
    except (ValueError, OverflowError):
        number = None
    _expect(number is not None, where, value, "a float.hex() string")
    return number


def _decimal(value: Any, where: str) -> int:
    _expect(isinstance(value, str) and _DECIMAL.fullmatch(value) is not None, where, value, "a decimal integer string")
    return int(value)


def _options(value: Any) -> dict[str, Any]:
    _expect(isinstance(value, dict), "options", value, "an object")
    scalar = (type(None), bool, int, float, str)
    for key, item in value.items():  # flat values only: nothing nested deep enough to hurt a comparison
        flat = isinstance(item, scalar) or (isinstance(item, list) and all(isinstance(v, scalar) for v in item))
        _expect(flat, f"options[{_short(key)}]", item, "a value or a list of values")
    return dict(value)


def _bad_file(entry: Any, where: str) -> dict[str, str]:
    ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("reason"), str)
    _expect(ok, where, entry, '{"path": str, "reason": str}')
    return {"path": entry["path"], "reason": entry["reason"]}


def check_state(d: Any) -> None:
    """Validate the JSON dict of a :class:`~gpustats.stats.ChannelStats` (types, lengths, invariants);
    :class:`CheckpointError` names the first entry that is wrong (``state.count[2] is -1, ...``)."""
    _expect(isinstance(d, dict), "state", d, "an object")
    _expect(d.get("format") == _STATE_FORMAT, "state.format", d.get("format", _MISSING), repr(_STATE_FORMAT))
    dtype = d.get("dtype", _MISSING)
    _expect(dtype in (None,) + INTEGER_DTYPES + FLOAT_DTYPES, "state.dtype", dtype, "a dtype name or null")
    if dtype is not None:
        _check_state(d, dtype)


def _check_state(d: dict, dtype: str) -> None:
    count = _each(d, "count", _int)
    channels = len(count)
    _expect(channels > 0, "state.count", count, "one count per channel")
    scale = _hex(d.get("scale", _MISSING), "state.scale")
    _expect(0 < scale < math.inf, "state.scale", scale, "a finite number > 0")
    rows = {name: _each(d, name, _hex, channels) for name in ("mean", "m2", "min", "max")}
    nonfinite = _each(d, "nonfinite", _int, channels)
    hist = d.get("hist")
    if hist is not None:
        hist_rows = _list(hist, "state.hist", channels)
        bins = len(_list(hist_rows[0], "state.hist[0]"))
        for c, row in enumerate(hist_rows):
            total = sum(_int(v, f"state.hist[{c}][{b}]") for b, v in enumerate(_list(row, f"state.hist[{c}]", bins)))
            # every integer value lands in a bin (clip or error); float NaN/inf never do
            if bins == 0 or total > count[c] or (dtype in INTEGER_DTYPES and total != count[c]):
                raise CheckpointError(f"state.hist[{c}] holds {total} values in {bins} bins, the count is {count[c]}")
        lo, hi = _each(d, "hist_range", _hex, 2)
        _expect(-math.inf < lo < hi < math.inf, "state.hist_range", [lo, hi], "finite lo < hi")
        _expect(dtype != "uint8" or (bins, lo, hi) == (256, 0, 256), "state.hist_range", [lo, hi], "256 bins of uint8")
    (_check_int_state if dtype in INTEGER_DTYPES else _check_float_state)(d, dtype, count, rows, nonfinite)
    if "images" in d:
        _check_images(d["images"], channels, count, nonfinite, rows)


def _check_images(images: Any, channels: int, count: list[int], nonfinite: list[int], rows: dict) -> None:
    """Per-image aggregates (:mod:`gpustats.image_moments`): exact sums of the per-image values for
    integer data, or float64 rows; then (mean, std, std with ddof=1) of each channel within min/max."""
    from .image_moments import ImageMoments

    _expect(isinstance(images, dict), "state.images", images, "an object")
    k = _int(images.get("images", _MISSING), "state.images.images")
    counts = [k] * channels
    if "counts" in images:
        counts = _each(images, "counts", lambda v, where: _int(v, where, hi=k), channels, prefix="state.images.")
    if "counts_ddof1" in images:  # images with two values or more: at most those with one
        for c, (n1, n) in enumerate(zip(_each(images, "counts_ddof1", _int, channels, prefix="state.images."), counts)):
            if n1 > n:
                raise CheckpointError(f"state.images.counts_ddof1[{c}] is {n1}, more than the {n} images counted there")
    if "sums" in images:  # integer data: [3][C] exact sums as "<hex mantissa>p<shift>"
        for name in ("sums", "sumsqs"):
            for r, row in enumerate(_list(images.get(name, _MISSING), f"state.images.{name}", 3)):
                for c, value in enumerate(_list(row, f"state.images.{name}[{r}]", channels)):
                    _expect(isinstance(value, str) and _DYADIC.fullmatch(value) is not None,
                            f"state.images.{name}[{r}][{c}]", value, "an exact sum as text (hex mantissa p shift)")
    else:
        for name in ("mean", "m2") + (("mean_lo",) if "mean_lo" in images else ()):
            _each(images, name, _hex, 3 * channels, prefix="state.images.")
    try:
        parsed = ImageMoments.from_dict(images)
    except (ValueError, TypeError, KeyError, OverflowError, ArithmeticError) as exc:
        raise CheckpointError(f"state.images cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    means, m2s = parsed.mean.reshape(-1), parsed.m2.reshape(-1)  # rows: per-image mean, std, std ddof=1
    for c in (c for c in range(channels) if count[c] and not nonfinite[c]):
        lo, hi = rows["min"][c], rows["max"][c]
        slack, bound = _bounds(lo, hi, k)  # per-image means lie in [lo, hi], stds in [0, hi - lo]
        fits = ([lo - slack <= means[c] <= hi + slack]
                + [-slack <= means[r * channels + c] <= hi - lo + slack for r in (1, 2)]
                + [0 <= m2s[r * channels + c] <= bound for r in range(3)])
        if not all(fits):
            raise CheckpointError(f"state.images of channel {c} do not fit min {lo!r} and max {hi!r}")


def _check_int_state(d: dict, dtype: str, count: list[int], rows: dict, nonfinite: list[int]) -> None:
    """Exact invariants of integer data: every total fits the count and the min/max, to the last bit."""
    channels = len(count)
    if len(set(count)) != 1 or any(nonfinite) or not count[0]:
        raise CheckpointError(f"state.count is {count} with nonfinite {nonfinite}; integer data counts every "
                              "value of every channel (equal counts > 0, nothing non-finite)")
    isum, isumsq = _each(d, "isum", _decimal, channels), _each(d, "isumsq", _decimal, channels)
    lo_type, hi_type = _INT_RANGES[dtype]
    n = count[0]
    for c in range(channels):
        lo, hi, s, q = rows["min"][c], rows["max"][c], isum[c], isumsq[c]
        if not (lo_type <= lo <= hi <= hi_type and lo == int(lo) and hi == int(hi)):
            raise CheckpointError(f"state channel {c}: min {lo!r} and max {hi!r} are not {dtype} values, min <= max")
        lo, hi = int(lo), int(hi)
        smallest_sq = 0 if lo <= 0 <= hi else min(lo * lo, hi * hi)
        if not (n * lo <= s <= n * hi and n * smallest_sq <= q <= n * max(lo * lo, hi * hi) and n * q >= s * s):
            raise CheckpointError(f"state channel {c}: sums {s} and {q} of {n} values do not fit min {lo} and max {hi}")
    mean, m2 = exact_moments(count, isum, isumsq)
    for c in range(channels):
        if mean[c] != rows["mean"][c] or m2[c] != rows["m2"][c]:
            raise CheckpointError(f"state channel {c}: mean/m2 disagree with the exact sums {isum[c]} and {isumsq[c]}")
    has_cross, has_comoment = d.get("icross") is not None, d.get("comoment") is not None
    if has_cross != has_comoment:
        raise CheckpointError("state has only one of icross and comoment; integer covariance needs both")
    if has_cross:
        cross = _matrix(d, "icross", _decimal, channels)
        for i in range(channels):
            for j in range(channels):
                if cross[i][j] != cross[j][i] or cross[i][i] != isumsq[i] or cross[i][j] ** 2 > isumsq[i] * isumsq[j]:
                    raise CheckpointError(f"state.icross[{i}][{j}] is not consistent with isumsq (symmetric, diagonal, "
                                          "Cauchy-Schwarz)")
        _check_comoment(d, channels, finite=True)


def _check_float_state(d: dict, dtype: str, count: list[int], rows: dict, nonfinite: list[int]) -> None:
    """Invariants of float data; NaN/inf are allowed only where non-finite values were met (propagate)."""
    _expect(d.get("isum") is None and d.get("icross") is None, "state.isum", d.get("isum"), "none for float data")
    for c, n in enumerate(count):
        mean, m2, lo, hi = (rows[name][c] for name in ("mean", "m2", "min", "max"))
        if n == 0:
            _expect(m2 == 0 and math.isfinite(mean), f"state.m2[{c}]", m2, "0 (and a finite mean) for a count of 0")
            continue
        if not all(math.isfinite(v) for v in (mean, m2, lo, hi)):
            if nonfinite[c] == 0:
                raise CheckpointError(f"state channel {c} holds NaN or inf but no non-finite value was counted")
            continue
        slack, bound = _bounds(lo, hi, n)
        if not (lo <= hi and lo - slack <= mean <= hi + slack and -1e-5 * bound <= m2 <= bound):
            raise CheckpointError(f"state channel {c}: count {n}, mean {mean!r}, m2 {m2!r} do not fit min {lo!r} "
                                  f"and max {hi!r}")
    if d.get("comoment") is not None:  # its diagonal holds M2s: the same bound as m2
        _check_comoment(d, len(count), finite=not any(nonfinite),
                        most=[_bounds(lo, hi, n)[1] for lo, hi, n in zip(rows["min"], rows["max"], count)])


def _bounds(lo: float, hi: float, n: int) -> tuple[float, float]:
    """Slack around [lo, hi] and the largest M2 of ``n`` values in it (Popoviciu: ``n (hi - lo)**2 / 4``).
    Float32 runs and float64 merges round a little outside exact bounds: 1e-5 of the data's scale."""
    slack = 1e-5 * max(abs(lo), abs(hi))
    return slack, n * ((hi - lo) * (hi - lo) / 4 + slack * slack) * (1 + 1e-5) if n else 0.0


def _matrix(d: dict, name: str, convert: Any, channels: int) -> list[list]:
    return _each(d, name, lambda row, where: [convert(v, f"{where}[{j}]")
                                              for j, v in enumerate(_list(row, where, channels))], channels)


def _check_comoment(d: dict, channels: int, finite: bool, most: list[float] | None = None) -> None:
    rows = _matrix(d, "comoment", _hex, channels)
    diag = [rows[i][i] for i in range(channels)]
    ok = all(math.isfinite(v) for row in rows for v in row) and all(0 <= v <= m for v, m in zip(diag, most or diag))
    if finite and not (ok and all(abs(rows[i][j]) <= math.sqrt(diag[i] * diag[j]) * (1 + 1e-6) + 1e-300
                                  for i in range(channels) for j in range(channels))):  # Cauchy-Schwarz
        raise CheckpointError("state.comoment is not a co-moment matrix (finite, C_ii >= 0, |C_ij| <= sqrt(C_ii C_jj))")


# ------------------------------------------------------------------------------ file list identity
