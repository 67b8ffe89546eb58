"""Resumable runs for ``gpustats stats --checkpoint FILE``: atomic JSON snapshots of a run.

A checkpoint holds the exact :class:`~gpustats.stats.ChannelStats` (floats as hex strings), the
position in the sorted file list where the run goes on (``next_index``), the file list's
fingerprint (:func:`file_list_fingerprint`: every file's resolved path, size and modification
time, so a file rewritten since is noticed), the options that change the result and the bad files
met so far. Writes are atomic (temporary file in the same folder, fsync, ``os.replace``, fsync of
the folder): a run killed at any moment, even by SIGKILL, leaves the old or the new checkpoint,
and the next write removes the temporary file a killed process left (:func:`remove_stale_temps`). A
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
import socket
import stat
from typing import Any, Sequence

from .checkpoint_checks import (
    _MISSING,
    CheckpointError,
    NotACheckpointError,
    _bad_file,
    _bool,
    _each,
    _expect,
    _int,
    _kind,
    _options,
    _short,
    check_state,
)
from .stats import ChannelStats, StatsError

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "NotACheckpointError", "atomic_target",
           "atomic_write_bytes", "atomic_write_text",
           "check_compatible", "file_list_fingerprint", "probe_atomic_write", "rank_path", "read_checkpoint",
           "remove_stale_temps", "temp_path", "write_checkpoint", "write_problem"]

CHECKPOINT_FORMAT = "gpustats.checkpoint/1"
_STATE_FORMAT = "gpustats.ChannelStats/1"
_INT64_MAX = 2**63 - 1
_FINGERPRINT_VERSION = "v3"  # file lists: resolved path, size, st_mtime_ns per file


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
    # items of each stream (a compressed or remote tar, a TFRecord shard) read to its end, by its segment
    # number: a resumed run does not read them again (sources.plan.Plan.streams_read)
    streams: dict[str, int] = dataclasses.field(default_factory=dict)

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
        streams = d.get("streams", {})
        _expect(isinstance(streams, dict) and all(isinstance(k, str) and k.isdigit() and len(k) < 19 for k in streams),
                "streams", streams, "an object of segment numbers")
        streams = {k: _int(v, f"streams.{k}", hi=files_total) for k, v in streams.items()}
        if sum(streams.values()) > files_total:
            raise CheckpointError(f"the streams hold {sum(streams.values())} items, more than files_total {files_total}")
        return Checkpoint(state=state, next_index=next_index, files_total=files_total, fingerprint=fingerprint,
                          options=options, bad_files=bad_files, images=images, bytes=_int(d.get("bytes", 0), "bytes"),
                          elapsed_s=float(elapsed), complete=complete, streams=streams)


def _state(d: Any) -> ChannelStats:
    """The checkpoint's state: checked entry by entry (:func:`~gpustats.checkpoint_checks.check_state`, which
    names the entry at fault), then built."""
    check_state(d)
    try:  # the checks cover what from_dict reads; this is the net under them
        return ChannelStats.from_dict(d)
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError, RecursionError,
            StatsError) as exc:
        raise CheckpointError(f"state cannot be rebuilt ({type(exc).__name__}: {_short(str(exc), 120)})") from None


def file_list_fingerprint(files: Sequence[str | os.PathLike[str]]) -> str:
    """Identity of a file list and of the files' contents as the file system tells them:
    ``"v3:" + sha256`` over each file's path (its folder resolved: absolute, symlinks and ``..``
    followed; the file name as listed), size in bytes and modification time in nanoseconds
    (``st_mtime_ns``), in order.

    So ``corpus`` and ``/abs/path/corpus`` give the same fingerprint, and a file rewritten since
    the checkpoint (even with the same size) gives another one: the run is refused rather than
    resumed with a changed file. What cannot be seen this way: a file changed with its size and
    its modification time put back (``touch -d``, some copy tools).
    """
    digest = hashlib.sha256()
    folders: dict[str, str] = {}
    for path in files:
        name = os.fspath(path)
        size = mtime = -1  # a file that vanished, unless:
        with contextlib.suppress(OSError):
            info = os.stat(name)
            size, mtime = info.st_size, info.st_mtime_ns
        folder, base = os.path.split(name)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder or os.curdir)
        shown = os.path.join(folders[folder], base)
        digest.update(shown.encode("utf-8", "surrogateescape") + f"\0{size}\0{mtime}\n".encode())
    return f"{_FINGERPRINT_VERSION}:{digest.hexdigest()}"


def _older_fingerprint(saved: str) -> bool:
    """A fingerprint written before modification times were recorded: ``v2:...`` or a bare sha256 (file
    lists), ``a1:...`` (archives)."""
    return saved.startswith(("v2:", "a1:")) or (len(saved) == 64 and all(c in "0123456789abcdef" for c in saved))


def _resolved_paths(options: dict[str, Any]) -> dict[str, Any]:
    paths = options.get("paths")
    listed = isinstance(paths, list) and all(isinstance(p, str) for p in paths)
    return dict(options, paths=[os.path.realpath(p) for p in paths]) if listed else options


def rank_path(path: str | os.PathLike[str], rank: int, world: int) -> str:
    """The checkpoint file of one rank: ``FILE.rank{r}`` when ``world > 1``, else ``FILE``."""
    return f"{os.fspath(path)}.rank{rank}" if world > 1 else os.fspath(path)


# ------------------------------------------------------------------------------ the file
#: temporary files of atomic writes: ``.<name>.gpustats-<host>-<pid>-<random>.tmp`` in the target's folder
#: (hidden, so that a folder walk never lists them; the host and process say whose they are)
_TEMP_TAG = ".gpustats-"
_TEMP = re.compile(r"\.gpustats-([0-9a-f]{8})-(\d{10})-[0-9a-f]{16}\.tmp\Z")
_TEMP_SUFFIX_BYTES = len(_TEMP_TAG) + 8 + 1 + 10 + 1 + 16 + len(".tmp")
_swept: set[tuple[str, str]] = set()  # (folder, stem) already cleaned of stale temporary files


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such folder
        return 255


def _temp_stem(folder: str, base: str) -> str:
    """``base`` cut (at a character boundary) so that the temporary name fits the folder's name limit."""
    raw = base.encode("utf-8", "surrogateescape")
    room = max(1, _name_max(folder) - 1 - _TEMP_SUFFIX_BYTES)
    if len(raw) > room:
        cut = room
        while cut > 1 and (raw[cut] & 0xC0) == 0x80:  # not inside a UTF-8 sequence
            cut -= 1
        raw = raw[:cut]
    return raw.decode("utf-8", "surrogateescape")


def temp_path(path: str | os.PathLike[str]) -> str:
    """The temporary file an atomic write of ``path`` goes through: in the same folder, hidden, named after
    ``path`` (cut to fit the file-name limit: a legal name always gets a legal temporary name), this host
    and process (:func:`remove_stale_temps` finds those of dead processes)."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{_temp_stem(folder, base)}{_TEMP_TAG}{_host_tag()}-{os.getpid():010d}-"
                                f"{secrets.token_hex(8)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files that atomic writes of ``path`` left behind when their process was killed
    (``kill -9``, a power cut): only files named by :func:`temp_path` for ``path``, made on this host by a
    process that no longer runs. Returns the names removed. Once per file and process; not on Windows
    (where probing a process id would end it)."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    stem = _temp_stem(folder, base)
    if os.name == "nt" or (folder, stem) in _swept:
        return []
    _swept.add((folder, stem))
    head, host, removed = f".{stem}", _host_tag(), []
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.startswith(head + _TEMP_TAG)]
    except OSError:
        return []
    for name in names:
        match = _TEMP.match(name, len(head))
        if match is None or match.group(1) != host:
            continue
        pid = int(match.group(2))
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return removed


def atomic_target(path: str | os.PathLike[str]) -> str | None:
    """The file an atomic write of ``path`` replaces: ``path`` resolved (a symlink, even a dangling one,
    stays a link and its target is written), or None when ``path`` exists and is not a regular file (a
    folder, a device such as ``/dev/null``, a pipe): such a path can only be written through, or refused."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        return None
    return os.path.realpath(path)


def _open_temp(path: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    remove_stale_temps(path)
    tmp = temp_path(path)
    return tmp, os.open(tmp, flags, 0o666)  # 64 random bits: no retry loop


def probe_atomic_write(path: str | os.PathLike[str]) -> None:
    """Create and remove the temporary file an atomic write of ``path`` (a regular file's path, see
    :func:`atomic_target`) would create, exactly as :func:`atomic_write_text` does (same folder, same name
    length, same flags): raises that write's ``OSError`` before any work is done."""
    tmp, fd = _open_temp(os.fspath(path))
    os.close(fd)
    os.unlink(tmp)


def write_problem(path: str | os.PathLike[str], what: str) -> str | None:
    """Why writing ``path`` (named ``what``, e.g. ``--output``) at the end of a run would fail, found now: for
    a regular file (new, existing, or behind a symlink) the very temporary file the atomic write makes is
    created and removed where it goes (:func:`probe_atomic_write`); None when the write can succeed."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return f"{what} {path!r} is a folder; give a file name"
    target = atomic_target(path)
    if target is None:  # /dev/null, a pipe: written through
        return None if os.access(path, os.W_OK) else f"{what} {path!r} is not writable"
    if os.path.lexists(target) and not os.access(target, os.W_OK):
        return f"{what} {path!r} is not writable"
    folder = os.path.dirname(target)
    via = f" (where the symlink {path!r} points)" if os.path.islink(path) else ""
    if not os.path.isdir(folder):
        return f"{what} {path!r}: the folder {folder!r}{via} does not exist"
    try:
        probe_atomic_write(target)
    except OSError as exc:
        return (f"{what} {path!r}: cannot write in the folder {folder!r}{via} ({exc.strerror or exc}; the file is "
                "written through a temporary file there)")
    return None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder (:func:`temp_path`), flush,
    fsync, replace. The temporary file is removed on any error or interrupt; one left by a killed process
    is removed by the next write (:func:`remove_stale_temps`).

    A new file gets ``0o666`` less the umask (applied by the kernel, default ACLs too), as
    ``open(path, "w")`` would; an existing file keeps its permission bits."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    mode = None  # a new file, unless:
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
    tmp, fd = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.chmod(tmp, mode)  # before any byte is written: nobody reads it with other permissions
            fh.write(data)
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
    target = atomic_target(path)
    if target is None:
        raise CheckpointError(f"checkpoint path {os.fspath(path)!r} is not a regular file; pass a file path")
    atomic_write_text(target, json.dumps(checkpoint.to_dict(), separators=(",", ":")))


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
    if checkpoint.fingerprint != fingerprint and _older_fingerprint(checkpoint.fingerprint):
        raise CheckpointError(f"checkpoint {path!r} was made by an earlier gpustats, which did not record the files' "
                              f"modification times, so it cannot tell whether a file changed since; delete {path!r} "
                              "to start over")
    if (files_total is not None and checkpoint.files_total != files_total) or checkpoint.fingerprint != fingerprint:
        raise CheckpointError(
            f"checkpoint {path!r} was made for another file list ({checkpoint.files_total} files then, "
            f"{files_total} now, or names, sizes or modification times changed: a file was added, removed or "
            f"rewritten); {fix}")
    if files_total is not None and not 0 <= checkpoint.next_index <= files_total:
        raise CheckpointError(f"checkpoint {path!r} is damaged (next_index {checkpoint.next_index} of "
                              f"{files_total} files); delete it to start over")
