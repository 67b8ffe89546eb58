"""Resumable runs for ``gpustats stats --checkpoint FILE``: atomic JSON snapshots of a run.

A checkpoint holds the exact :class:`~gpustats.stats.ChannelStats` (floats as hex strings), the
position in the sorted file list where the run goes on (``next_index``), the file list's
fingerprint (:func:`file_list_fingerprint`), the options that change the result and the bad files
met so far. Writes are atomic (temporary file in the same folder, fsync, ``os.replace``, fsync of
the folder): a run killed at any moment, even by SIGKILL, leaves the old or the new checkpoint. A
new file gets the permissions the umask allows (as ``open`` does), a rewritten one keeps its
permission bits, a symlinked one stays a symlink. A resumed run reduces the same file batches in
the same order (batches are cut at ``start + k * batch_size``; a checkpoint is written only after
a whole batch): 8-bit results are bitwise identical, per-image aggregates too (the batch size is
then a fingerprinted option).

Reading trusts nothing: types, ranges and invariants are checked (counts are non-negative ints,
exact sums fit their counts and min/max, booleans are booleans, indices are in range, one entry per
channel, ...). A problem is one :class:`CheckpointError` line naming the file, the entry and what
to do; a file that is no gpustats checkpoint at all (an image passed by mistake, another
program's JSON) raises :class:`NotACheckpointError`, which asks for another path, never to delete.

>>> import tempfile, os
>>> from gpustats.stats import ChannelStats
>>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
>>> write_checkpoint(path, Checkpoint(state=ChannelStats.empty(), next_index=0, files_total=2,
...                                   fingerprint="abc", options={"mode": "RGB"}))
>>> read_checkpoint(path).fingerprint
'abc'
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import stat
from typing import Any, Sequence

from .stats import FLOAT_DTYPES, INTEGER_DTYPES, ChannelStats, StatsError, exact_row_moments

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "NotACheckpointError", "check_compatible",
           "file_list_fingerprint", "rank_path", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = "gpustats.checkpoint/1"
_STATE_FORMAT = "gpustats.ChannelStats/1"
_INT64_MAX = 2**63 - 1
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
_DECIMAL = re.compile(r"-?[0-9]{1,40}")  # exact integer totals: 40 digits is far beyond any real one
_FINGERPRINT_VERSION = "v2"


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run (other options/files, damaged); one line, says what to do."""


class NotACheckpointError(CheckpointError):
    """The file is no gpustats checkpoint at all (an image, another program's JSON): pass another path."""


class _Hostile(Exception):
    """A JSON value no checkpoint contains (non-finite number, huge integer): stop parsing."""


@dataclasses.dataclass
class Checkpoint:
    """Everything needed to go on with a run (and to refuse a run it does not belong to)."""

    state: ChannelStats
    next_index: int
    files_total: int
    fingerprint: str
    options: dict[str, Any]
    bad_files: list[dict[str, str]] = dataclasses.field(default_factory=list)
    images: int = 0  # good images reduced so far
    bytes: int = 0  # file bytes read so far (for MB/s)
    elapsed_s: float = 0.0  # processing time summed over the runs that made this checkpoint
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "state"}
        return {"format": CHECKPOINT_FORMAT, **fields, "state": self.state.to_dict()}

    @staticmethod
    def from_dict(d: Any) -> "Checkpoint":
        """Validate a parsed checkpoint and build it: :class:`NotACheckpointError` if ``d`` is none, else
        :class:`CheckpointError` naming the first entry of a wrong type, out of range or inconsistent."""
        if not isinstance(d, dict):
            raise NotACheckpointError(f"not a gpustats checkpoint (its JSON is {_kind(d)}, not an object)")
        fmt = d.get("format")
        if fmt != CHECKPOINT_FORMAT:
            if isinstance(fmt, str) and fmt.startswith("gpustats.checkpoint/"):
                raise NotACheckpointError(f"a checkpoint of another gpustats version (format {_short(fmt)}; "
                                          f"this version reads {CHECKPOINT_FORMAT!r})")
            raise NotACheckpointError(f"not a gpustats checkpoint (no \"format\": {CHECKPOINT_FORMAT!r} entry)")
        files_total = _int(d.get("files_total", _MISSING), "files_total")
        next_index = _int(d.get("next_index", _MISSING), "next_index", hi=files_total)
        complete = _bool(d.get("complete", False), "complete")
        if complete and next_index != files_total:
            raise CheckpointError(f"complete is true but next_index is {next_index} of {files_total} files")
        images = _int(d.get("images", 0), "images", hi=next_index)  # one good image per file at most
        fingerprint, elapsed = d.get("fingerprint", _MISSING), d.get("elapsed_s", 0.0)
        _expect(isinstance(fingerprint, str), "fingerprint", fingerprint, "a string")
        _expect(type(elapsed) in (int, float) and 0 <= elapsed < math.inf, "elapsed_s", elapsed, "seconds >= 0")
        state = _state(d.get("state", _MISSING))
        if state.is_empty and images:
            raise CheckpointError(f"the state is empty but {images} images were counted")
        if state.images is not None and state.images.images != images:
            raise CheckpointError(f"the per-image state holds {state.images.images} images, the checkpoint {images}")
        options = _options(d.get("options", _MISSING))
        for option, part in (("histogram", "hist"), ("covariance", "comoment"), ("per_image", "images")):
            has = getattr(state, part) is not None
            if not state.is_empty and isinstance(options.get(option), bool) and options[option] != has:
                raise CheckpointError(f"options.{option} is {options[option]}, the state has {('no ', '')[has]}{part}")
        bad_files = _each({"bad_files": [], **d}, "bad_files", _bad_file, prefix="")
        return Checkpoint(state=state, next_index=next_index, files_total=files_total, fingerprint=fingerprint,
                          options=options, bad_files=bad_files, images=images, bytes=_int(d.get("bytes", 0), "bytes"),
                          elapsed_s=float(elapsed), complete=complete)


# ------------------------------------------------------------------------------ validation helpers
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


def _state(d: Any) -> ChannelStats:
    """Validate the JSON of a :class:`ChannelStats` (types, lengths, invariants), then build it."""
    _expect(isinstance(d, dict), "state", d, "an object")
    _expect(d.get("format") == _STATE_FORMAT, "state.format", d.get("format", _MISSING), repr(_STATE_FORMAT))
    dtype = d.get("dtype", _MISSING)
    _expect(dtype in (None,) + INTEGER_DTYPES + FLOAT_DTYPES, "state.dtype", dtype, "a dtype name or null")
    if dtype is not None:
        _check_state(d, dtype)
    try:  # the checks above cover what from_dict reads; this is the net under them
        return ChannelStats.from_dict(d)
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError, RecursionError,
            StatsError) as exc:
        raise CheckpointError(f"state cannot be rebuilt ({type(exc).__name__}: {_short(str(exc), 120)})") from None


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
    if "images" in d:  # per-image aggregates: rows (mean, std ddof=0, std ddof=1) per channel
        images = d["images"]
        _expect(isinstance(images, dict), "state.images", images, "an object")
        k = _int(images.get("images", _MISSING), "state.images.images")
        means = _each(images, "mean", _hex, 3 * channels, prefix="state.images.")  # [3, C] row-major: per-image
        m2s = _each(images, "m2", _hex, 3 * channels, prefix="state.images.")  # mean, std, std with ddof=1
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
    mean, m2 = exact_row_moments(count, isum, isumsq)
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
def file_list_fingerprint(files: Sequence[str | os.PathLike[str]]) -> str:
    """Identity of a file list: ``"v2:" + sha256(resolved paths, sizes) + ":" + sha256(paths as listed, sizes)``.

    The first digest is what :func:`check_compatible` compares: each path with its folder
    resolved (absolute, symlinks and ``..`` followed; the file name as listed) and its size in
    bytes, in order. So ``corpus`` and ``/abs/path/corpus`` give the same file list. The second
    digest is the fingerprint gpustats wrote before ``v2`` (paths as typed); it is kept so that a
    checkpoint written by an earlier version still resumes when the paths are typed as then.
    """
    resolved, typed = hashlib.sha256(), hashlib.sha256()
    folders: dict[str, str] = {}
    for path in files:
        name = os.fspath(path)
        size = -1  # a file that vanished, unless:
        with contextlib.suppress(OSError):
            size = os.stat(name).st_size
        folder, base = os.path.split(name)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder or os.curdir)
        for digest, shown in ((resolved, os.path.join(folders[folder], base)), (typed, name)):
            digest.update(shown.encode("utf-8", "surrogateescape") + b"\0" + str(size).encode() + b"\n")
    return f"{_FINGERPRINT_VERSION}:{resolved.hexdigest()}:{typed.hexdigest()}"


def _same_file_list(saved: str, now: str) -> bool:
    """v2 fingerprints match on the resolved digest; one written before v2 (one bare digest) on the typed one."""
    saved_parts, now_parts = saved.split(":"), now.split(":")
    if saved == now or len(now_parts) != 3 or now_parts[0] != _FINGERPRINT_VERSION:
        return saved == now
    return saved_parts[1:2] == now_parts[1:2] if saved_parts[0] == _FINGERPRINT_VERSION else saved == now_parts[2]


def _resolved_paths(options: dict[str, Any]) -> dict[str, Any]:
    paths = options.get("paths")
    listed = isinstance(paths, list) and all(isinstance(p, str) for p in paths)
    return dict(options, paths=[os.path.realpath(p) for p in paths]) if listed else options


def rank_path(path: str | os.PathLike[str], rank: int, world: int) -> str:
    """The checkpoint file of one rank: ``FILE.rank{r}`` when ``world > 1``, else ``FILE``."""
    return f"{os.fspath(path)}.rank{rank}" if world > 1 else os.fspath(path)


# ------------------------------------------------------------------------------ the file
def _atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same folder, flush, fsync, replace.

    A new file gets ``0o666`` less the umask (applied by the kernel, default ACLs too), as
    ``open(path, "w")`` would; an existing file keeps its permission bits."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    mode = None  # a new file, unless:
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    tmp = os.path.join(folder, f"{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fh = os.fdopen(os.open(tmp, flags, 0o666), "w", encoding="utf-8")  # 64 random bits: no retry loop
    try:
        with fh:
            if mode is not None:
                os.chmod(tmp, mode)  # before any byte is written: nobody reads it with other permissions
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX); harmless to skip elsewhere
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a reader sees the old or the new file, never a mix).

    A symlink is written through (its target is replaced, the link stays); a path that exists but
    is no regular file (a folder, ``/dev/null``) raises :class:`CheckpointError`.
    """
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):
        raise CheckpointError(f"checkpoint path {os.fspath(path)!r} is not a regular file; pass a file path")
    _atomic_write_text(target, json.dumps(checkpoint.to_dict(), separators=(",", ":")))


def _number(text: str, kind: type = float) -> Any:
    """JSON number hook: refuses NaN/Infinity, floats out of range and integers of over 40 digits."""
    if kind is None or not math.isfinite(float(text)) or (kind is int and len(text.lstrip("-")) > 40):
        raise _Hostile(f"the number {_short(text)}, out of range" if kind else f"the constant {text}")
    return kind(text)


def _looks_like(head: bytes) -> str:
    magic = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"PK\x03\x04": "a zip archive"}
    known = [what for start, what in magic.items() if head.startswith(start)] + [
        "binary data" if b"\0" in head[:4096] else "an empty file" if not head.strip() else "not a JSON object"]
    return known[0]


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or ``None`` when there is none; errors are one line naming the file.

    :class:`NotACheckpointError` for another kind of file (an image, binary data, other JSON: "pass
    another checkpoint path", the file is left alone); :class:`CheckpointError` for a damaged or
    doctored checkpoint (wrong types, numbers out of range, inconsistent statistics, deep nesting:
    names the entry, "delete it to start over")."""
    path = os.fspath(path)
    other = "; pass another checkpoint path (this file was not changed)"

    def foreign(what: str) -> CheckpointError:
        return NotACheckpointError(f"{path!r} is not a gpustats checkpoint ({what}){other}")

    def broken(problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path!r} is damaged ({problem}); delete it to start over")

    try:
        if os.path.exists(path) and not os.path.isfile(path):
            raise foreign("not a regular file")
        with open(path, "rb") as fh:
            raw = fh.read(1 << 16)
            if raw.lstrip()[:1] == b"{":  # a checkpoint is a JSON object: read the rest of that only
                raw += fh.read()
            elif fh.read(1):
                raise foreign(_looks_like(raw))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc.strerror or exc}") from None
    ours = b'"gpustats.checkpoint/' in raw  # decides between "damaged" and "not a checkpoint"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise (broken("not UTF-8 text") if ours else foreign(_looks_like(raw))) from None
    try:
        data = json.loads(text, parse_int=lambda t: _number(t, int), parse_float=_number,
                          parse_constant=lambda t: _number(t, None))
    except (ValueError, RecursionError, _Hostile) as exc:
        problem = ("JSON nested too deeply" if isinstance(exc, RecursionError) else f"it holds {exc}"
                   if isinstance(exc, _Hostile) else f"not valid JSON: {_short(str(exc), 120)}")
        invalid = isinstance(exc, json.JSONDecodeError)
        raise (broken(problem) if ours else foreign(_looks_like(raw) if invalid else problem)) from None
    try:
        return Checkpoint.from_dict(data)
    except NotACheckpointError as exc:
        raise NotACheckpointError(f"{path!r} is {exc}{other}") from None
    except CheckpointError as exc:
        raise broken(str(exc)) from None


def check_compatible(path: str, checkpoint: Checkpoint, *, fingerprint: str, files_total: int | None,
                     options: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` was made by this very run.

    ``options["paths"]`` and the file list are compared resolved (absolute, symlinks followed),
    so ``corpus`` and ``/abs/path/corpus`` are the same run; see :func:`file_list_fingerprint`.
    ``files_total=None``: the number of items is not known before the run (compressed tars are
    counted as they are read); the fingerprint alone then says whether the items are the same.
    """
    fix = f"delete {path!r} to start over, or rerun with the same paths and options"
    if _resolved_paths(checkpoint.options) != _resolved_paths(options):
        diffs = [f"{key}: checkpoint {_short(old, 200)}, now {_short(new, 200)}"
                 for key in sorted(set(checkpoint.options) | set(options))
                 for old, new in [(checkpoint.options.get(key, "<unset>"), options.get(key, "<unset>"))]
                 if _resolved_paths({key: old}) != _resolved_paths({key: new})]
        raise CheckpointError(f"checkpoint {path!r} was made with other options ({'; '.join(diffs)}); {fix}")
    if (files_total is not None and checkpoint.files_total != files_total) or not _same_file_list(
            checkpoint.fingerprint, fingerprint):
        raise CheckpointError(
            f"checkpoint {path!r} was made for another file list ({checkpoint.files_total} files then, "
            f"{files_total} now, or names/sizes changed); {fix}")
    if files_total is not None and not 0 <= checkpoint.next_index <= files_total:
        raise CheckpointError(f"checkpoint {path!r} is damaged (next_index {checkpoint.next_index} of "
                              f"{files_total} files); delete it to start over")
